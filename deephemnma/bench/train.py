"""Train the network on simulated adenylate kinase particles and measure its errors on held-out images.

``--quick`` (CPU learnability check): 64 x 64 images, SNR 1, no CTF, 2,000 training + 250 validation images
and 500 held-out images, ground-truth labels, ResNet-18 on the images Fourier-cropped to 32 px, in-plane
rotation augmentation, as many epochs as fit in 15 minutes at the speed measured on a few steps. Without
``--quick`` (paper-like, for a GPU): 128 x 128, SNR 0.1, CTF (200 kV, Cs 2 mm, 0.5 um underfocus,
phase-flipped), 14,000 training + 2,000 validation + 2,000 held-out images, ResNet-34, trained on the labels
that this project's HEMNMA engine estimates for the training and validation images (``--labels truth``: the
ground truth instead); the engine's own errors on the held-out images are reported beside the network's
(``hemnma``). Images of the paper's conformations (helix over modes 7-9 of 4AKE chain A, all atoms), uniform
orientations, shifts in [-5, 5] px, simulated with ``deephemnma.simulate.physics`` and fixed seeds.

Figures: ``amp_rel_mae`` and ``shift_rel_mae`` (held-out MAE over the MAE of predicting the training mean),
``angle_median_deg`` (median geodesic angle), the paper's mean axis angle, MAEs, RMSDs of the atoms for each
parameter type alone, training throughput and the CPU load while it ran.

Examples::

    deephemnma bench train --quick
    deephemnma bench train --device cuda
    deephemnma bench train --device cuda --labels truth --epochs 30
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from deephemnma.bench import work_folder
from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, concatenate, stack_locations
from deephemnma.data.stacks import ImageSource
from deephemnma.hemnma.aligner import AlignSettings
from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.hemnma.stack import align_particles
from deephemnma.nma.deform import deform
from deephemnma.nn.config import TrainConfig, preset_config
from deephemnma.nn.evaluate import parameter_errors, rmsd_errors
from deephemnma.nn.infer import Predictor, predict_source
from deephemnma.nn.model import DeepHemnmaNet, NetworkConfig
from deephemnma.nn.modelfile import load_model
from deephemnma.nn.targets import decode, labels_from_particles, output_sizes
from deephemnma.nn.trainer import run_training
from deephemnma.runtime.machine import amp_supported, resolve_device
from deephemnma.simulate import conformations
from deephemnma.simulate.parameters import sample_angles, sample_shifts, stream
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import PAPER_DEFOCUS, PAPER_MICROSCOPE, paper_ak_setup, paper_ctf

QUICK = dict(box=64, network_box=32, snr=1.0, ctf=False, train=2000, validation=250, heldout=500, arch='resnet18',
             epochs=None, batch_size=64, lr=1e-3, dropout=0.1, max_rotation=180.0, amp=False, budget_s=900,
             labels='truth')
FULL = dict(box=128, network_box=0, snr=0.1, ctf=True, train=14000, validation=2000, heldout=2000, arch='resnet34',
            epochs=60, batch_size=256, lr=1e-3, dropout=0.5, max_rotation=180.0, amp=True, budget_s=None,
            labels='hemnma')

MAX_SHIFT_PX = 5.0


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--quick', action='store_true', help='the CPU learnability check (64 px, SNR 1)')
    parser.add_argument('--epochs', type=int, help='override the epochs (--quick: chosen from the speed measured '
                                                   'on a few steps to train for about 14 minutes)')
    parser.add_argument('--train-images', type=int, help='override the number of training images')
    parser.add_argument('--batch-size', type=int, help='override the batch size')
    parser.add_argument('--lr', type=float, help='override the maximum learning rate')
    parser.add_argument('--dropout', type=float, help='override the MLP dropout')
    parser.add_argument('--max-rotation', type=float, help='override the in-plane rotation augmentation (deg)')
    parser.add_argument('--network-box', type=int, help='override the network input size (px; 0: the images\')')
    parser.add_argument('--labels', choices=('truth', 'hemnma'),
                        help='training labels: the ground truth or this project\'s HEMNMA estimates '
                             '(default: truth with --quick, hemnma without)')
    parser.add_argument('--align-batch', type=int, default=1024, help='images per HEMNMA batch on a GPU (64 on CPU)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: all usable cores)')
    parser.add_argument('--workdir', help='keep the simulated data and the model here (default: temporary)')
    parser.add_argument('--seed', type=int, default=0)


def _pixel_size(setup, amplitudes: np.ndarray, box: int) -> float:
    """The smallest pixel size (A, rounded up to 0.05) at which the atoms of these conformations, shifted by
    up to 5 px, stay 2 px inside the box."""
    reach = float(np.linalg.norm(deform(setup.structure.coords, setup.modes.vectors, amplitudes).numpy(),
                                 axis=-1).max())
    return float(np.ceil(reach / (box // 2 - MAX_SHIFT_PX - 2) * 20) / 20)


def _epochs_for_budget(config: TrainConfig, box: int, count: int, budget_s: float, device: torch.device) -> int:
    """Epochs that fit in ``budget_s`` seconds at the speed of a few timed training steps of ``config``
    (network input size, mixed precision), with 15 % for validation and checkpoints; at least 3."""
    network = DeepHemnmaNet(NetworkConfig(outputs=output_sizes(config.types, 3, config.hypotheses),
                                          arch=config.arch)).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, fused=True)
    images = torch.randn(config.batch_size, 1, config.network_box or box, config.network_box or box, device=device)
    use_amp = config.amp and amp_supported(device)
    elapsed = 0.0
    for step in range(5):
        begin = time.time()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = sum(v.float().abs().mean() for v in network(images).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed += (time.time() - begin) if step > 1 else 0.0
    per_epoch = 1.15 * elapsed / 3 * count / config.batch_size
    return int(max(3, budget_s // per_epoch))


def simulate_set(setup, count: int, box: int, pixel_size: float, snr: float, ctf: bool, seed: int,
                 device: torch.device, folder: Path, name: str) -> Particles:
    """Simulate ``count`` particles (helix conformations, uniform angles) into ``folder/name.mrcs``."""
    amplitudes = conformations.helix(count, stream(seed, 'conformations')).amplitudes
    angles = sample_angles(count, stream(seed, 'angles'))
    shifts = sample_shifts(count, stream(seed, 'shifts'), MAX_SHIFT_PX)
    params = paper_ctf() if ctf else None
    images = simulate_particles(setup, amplitudes, angles, shifts, box, pixel_size, ctf=params, snr=snr,
                                seed=seed, phase_flip=ctf, device=device).images
    stack = folder / f'{name}.mrcs'
    write_stack(stack, images, pixel_size)
    microscope = dict(defocus_u=np.full(count, PAPER_DEFOCUS), defocus_v=np.full(count, PAPER_DEFOCUS),
                      **PAPER_MICROSCOPE) if ctf else {}
    return Particles(image=stack_locations(str(stack), count), pixel_size=pixel_size, angles=angles,
                     shifts=shifts, amplitudes=amplitudes, **microscope)


def hemnma_labels(setup, particles: Particles, folder: Path, device: torch.device, batch: int) -> Particles:
    """``particles`` with the angles, shifts and amplitudes this project's HEMNMA engine estimates (global
    search, the coarse two-beads-per-residue reference with the all-atom modes restricted to it)."""
    reference = reference_from_modes(setup.modes, 'residues2')
    return align_particles(particles, reference, AlignSettings(), folder, device=device,
                           chunk_size=batch if device.type == 'cuda' else 64)


def run(args: argparse.Namespace) -> dict:
    with work_folder(args.workdir, 'train') as folder:
        return _measure(args, folder)


def _measure(args: argparse.Namespace, folder: Path) -> dict:
    """The benchmark's figures, with its data and outputs in ``folder``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(QUICK if args.quick else FULL)
    size['epochs'] = args.epochs or size['epochs']
    size['train'] = args.train_images or size['train']
    for key in ('batch_size', 'lr', 'dropout', 'max_rotation', 'network_box', 'labels'):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    device = resolve_device(args.device)
    start = time.time()
    setup = paper_ak_setup()
    pixel_size = _pixel_size(setup, conformations.helix(500, np.random.default_rng(0)).amplitudes, size['box'])
    fit = simulate_set(setup, size['train'], size['box'], pixel_size, size['snr'], size['ctf'], args.seed,
                       device, folder, 'train')
    validation = simulate_set(setup, size['validation'], size['box'], pixel_size, size['snr'], size['ctf'],
                              args.seed + 1, device, folder, 'validation')
    heldout = simulate_set(setup, size['heldout'], size['box'], pixel_size, size['snr'], size['ctf'],
                           args.seed + 2, device, folder, 'heldout')
    simulation_seconds = time.time() - start
    training_set = true_training_set = concatenate([fit, validation])
    hemnma: dict = {}
    if size['labels'] == 'hemnma':
        align_start = time.time()
        training_set = hemnma_labels(setup, training_set, folder / 'align_train', device, args.align_batch)
        aligned_heldout = hemnma_labels(setup, heldout, folder / 'align_heldout', device, args.align_batch)
        align_seconds = time.time() - align_start
        hemnma = {'align_seconds': align_seconds,
                  'align_images_per_second': (len(training_set) + len(heldout)) / align_seconds,
                  'train_label_errors': parameter_errors(labels_from_particles(training_set),
                                                         labels_from_particles(true_training_set))}
    config = preset_config('fast', arch=size['arch'], epochs=size['epochs'] or 1, batch_size=size['batch_size'],
                           lr=size['lr'], dropout=size['dropout'], max_rotation_deg=size['max_rotation'],
                           network_box=size['network_box'], amp=size['amp'], patience=0, outlier_threshold=0.0,
                           validation=size['validation'], test=0, seed=args.seed)
    if size['epochs'] is None:
        config.epochs = _epochs_for_budget(config, size['box'], size['train'], size['budget_s'], device)
    load_before = os.getloadavg()[0]
    train_start = time.time()
    trainer, _ = run_training(training_set, config, folder / 'model', device, progress=False)
    train_seconds = time.time() - train_start
    images_seen = trainer.steps_per_epoch * trainer.global_batch * len(trainer.history)
    model = load_model(folder / 'model' / 'model.pt', device)
    raw = predict_source(Predictor(model, device), ImageSource(heldout.image), 256, progress=False)
    estimated, truth = decode(raw, model.scaling), labels_from_particles(heldout)
    figures = parameter_errors(estimated, truth, model.scaling.amplitude_mean, model.scaling.shift_mean)
    figures.update(rmsd_errors(estimated, truth, setup.structure.coords, setup.modes.vectors, pixel_size))
    if hemnma:
        engine = labels_from_particles(aligned_heldout)
        engine_figures = parameter_errors(engine, truth, model.scaling.amplitude_mean, model.scaling.shift_mean)
        engine_figures.update(rmsd_errors(engine, truth, setup.structure.coords, setup.modes.vectors, pixel_size))
        hemnma['heldout'] = engine_figures
    speed_key = 'train_images_per_second_gpu' if device.type == 'cuda' else 'train_images_per_second_cpu'
    return {'mode': 'quick' if args.quick else 'full',
            'labels': 'HEMNMA (this engine)' if hemnma else 'ground truth', 'box': size['box'],
            'network_box': trainer.network_box, 'pixel_size': pixel_size, 'snr': size['snr'], 'ctf': size['ctf'],
            'arch': size['arch'],
            'train_images': size['train'], 'validation_images': size['validation'],
            'heldout_images': size['heldout'], 'epochs': len(trainer.history),
            'best_epoch': max(trainer.best_epoch.values()) + 1, **figures,
            speed_key: images_seen / train_seconds, 'train_seconds': train_seconds,
            'simulation_seconds': simulation_seconds, 'total_seconds': time.time() - start,
            'hemnma': hemnma or None,
            'amp': trainer.use_amp, 'load_average_1min_start': load_before,
            'load_average_1min_end': os.getloadavg()[0], 'config': config.to_dict()}
