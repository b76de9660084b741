"""Inference speed: the full path (stack -> normalise -> network -> conversion -> STAR) vs the bare model.

Builds a stack of random images (memory-mapped .mrcs) and an untrained network of the chosen architecture,
then measures in the same run (1) the bare forward pass on random tensors already in memory and (2) the full
``deephemnma infer`` path: reading the stack, normalising, predicting, converting quaternions to Euler angles
and un-scaling, and writing the particle file. ``infer_ratio_vs_bare_model`` = full speed / bare speed.

Examples::

    deephemnma bench infer                       # CPU, 128 x 128, ResNet-34
    deephemnma bench infer --device cuda --images 200000 --batch-size 1024
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from deephemnma.bench import work_folder
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.data.stacks import ImageSource
from deephemnma.nn import targets as tg
from deephemnma.nn.config import TrainConfig
from deephemnma.nn.infer import Predictor, labels_to_particles, predict_source
from deephemnma.nn.model import ARCHITECTURES, DeepHemnmaNet, NetworkConfig
from deephemnma.nn.modelfile import TrainedModel, load_model, save_model
from deephemnma.runtime.machine import amp_supported, resolve_device


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--images', type=int, help='images in the stack (default: 1,536 on CPU, 100,000 on GPU)')
    parser.add_argument('--box', type=int, default=128)
    parser.add_argument('--arch', choices=sorted(ARCHITECTURES), default='resnet34')
    parser.add_argument('--batch-size', type=int, help='default: 128 on CPU, 1024 on GPU')
    parser.add_argument('--readers', type=int, default=1, help='threads reading images ahead of the network')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--workdir', help='folder for the stack and outputs (default: temporary)')


def _model_file(folder: Path, arch: str, box: int) -> Path:
    config = TrainConfig(arch=arch)  # the network a training with these settings makes (hypotheses included)
    network = DeepHemnmaNet(NetworkConfig(outputs=tg.output_sizes(config.types, 3, config.hypotheses), arch=arch))
    scaling = tg.Scaling(0.0, 1.0, np.zeros(3), np.full(3, 100.0), np.zeros(2), np.full(2, 3.0))
    path = folder / 'model.pt'
    save_model(path, network, network.state_dict(), scaling, box, box, config, {})
    return path


def _bare_speed(model: TrainedModel, device: torch.device, batch: int, box: int, count: int) -> float:
    """Images per second of the network alone on random input already on the device."""
    network = model.network.to(device).eval()
    images = torch.randn(batch, 1, box, box, device=device)
    if device.type == 'cuda':
        network, images = network.to(memory_format=torch.channels_last), images.contiguous(
            memory_format=torch.channels_last)
    use_amp = amp_supported(device)
    steps = max(2, count // batch)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        network(images)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.time()
        for _ in range(steps):
            network(images)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return steps * batch / (time.time() - start)


def run(args: argparse.Namespace) -> dict:
    with work_folder(args.workdir, 'infer') as folder:
        return _measure(args, folder)


def _measure(args: argparse.Namespace, folder: Path) -> dict:
    """The benchmark's figures, with its data and outputs in ``folder``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    count = args.images or (100_000 if device.type == 'cuda' else 1536)
    batch = args.batch_size or (1024 if device.type == 'cuda' else 128)
    rng = np.random.default_rng(0)
    stack = folder / 'images.mrcs'
    write_stack(stack, rng.normal(size=(count, args.box, args.box)).astype(np.float32), 1.0)
    particles = Particles(image=stack_locations(str(stack), count), pixel_size=1.0)
    write_particles(folder / 'input.star', particles)
    model = load_model(_model_file(folder, args.arch, args.box), device)
    predictor = Predictor(model, device)
    # warm-up of the full path (thread pools, allocator) on a few batches
    predict_source(predictor, ImageSource(particles.image[:batch * 2]), batch, progress=False)
    bare_before = _bare_speed(model, device, batch, args.box, min(count, batch * 6))
    start = time.time()
    particles = read_particles(folder / 'input.star')
    raw = predict_source(predictor, ImageSource(particles.image, folder), batch, args.readers, progress=False)
    write_particles(folder / 'predicted.star', labels_to_particles(particles, tg.decode(raw, model.scaling)))
    full = count / (time.time() - start)
    bare_after = _bare_speed(model, device, batch, args.box, min(count, batch * 6))
    bare = (bare_before + bare_after) / 2
    written = read_particles(folder / 'predicted.star')
    figures = {'images': count, 'box': args.box, 'arch': args.arch, 'batch_size': batch,
               'readers': args.readers, 'amp': predictor.amp, 'written_rows': len(written),
               'full_images_per_second': full, 'bare_images_per_second': bare,
               'bare_before_after': [bare_before, bare_after], 'infer_ratio_vs_bare_model': full / bare}
    if device.type == 'cuda':
        figures['infer_images_per_second_gpu'] = full
    return figures
