"""Reconstruction accuracy and speed: FSC of a clean reconstruction against the true map, and timings.

Accuracy (``clean_fsc05_px``): the paper's adenylate kinase reference (4AKE chain A, all atoms) is simulated
as a 64^3 map (:func:`deephemnma.molecule.density.atoms_to_map`, 1.5 A/px); 5,000 noise-free, CTF-free 64 x 64
projections of the same atoms at random poses (uniform on SO(3), shifts up to 3 px) are computed exactly in
Fourier space by the simulator (:mod:`deephemnma.imaging.projection`, independent of the reconstruction's
gridding); they are reconstructed with the true poses; the FSC against the true map gives the resolution in
pixels at 0.5 (2.0 is Nyquist). Speed (``seconds_10k_128_*``): 10,000 images of 128 x 128 with CTFs
(reconstruction with full CTF correction and half maps), streamed in batches, with
``torch.set_num_threads(threads)`` and again with one thread (on a shared machine whose load exceeds its
cores, OpenMP threads mostly wait for each other); the machine's load average is reported with them.

Examples::

    deephemnma bench reconstruct
    deephemnma bench reconstruct --count 2000 --speed-count 2000
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from deephemnma.data.stacks import array_batches
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.fsc import fsc
from deephemnma.imaging.rotations import matrix_to_euler, random_rotations
from deephemnma.molecule.density import atoms_to_map
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup
from deephemnma.space.reconstruct import reconstruct


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--count', type=int, default=5000, help='clean projections for the accuracy test')
    parser.add_argument('--box', type=int, default=64, help='box of the accuracy test (pixels)')
    parser.add_argument('--pixel-size', type=float, default=1.5, help='pixel size of the accuracy test (A)')
    parser.add_argument('--speed-count', type=int, default=10000, help='images for the timings')
    parser.add_argument('--speed-box', type=int, default=128, help='image size for the timings')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads for the CPU timing')
    parser.add_argument('--pad', type=float, default=1.0, help='padding factor of the reconstruction')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)


def clean_accuracy(count: int, box: int, pixel_size: float, pad: float, batch_size: int,
                   seed: int) -> Dict[str, float]:
    """FSC resolutions of a clean reconstruction against the map of the atoms it was projected from."""
    setup = paper_ak_setup()
    truth = atoms_to_map(setup.structure.coords, setup.structure.elements, box, pixel_size)
    rng = np.random.default_rng(seed)
    angles = matrix_to_euler(random_rotations(count, rng))
    shifts = rng.uniform(-3.0, 3.0, (count, 2))
    started = time.perf_counter()
    images = simulate_particles(setup, np.zeros((count, setup.num_modes)), angles, shifts, box, pixel_size,
                                batch_size=batch_size).images
    simulated = time.perf_counter() - started
    started = time.perf_counter()
    result = reconstruct(array_batches(images, batch_size), angles, shifts, box, pixel_size, pad=pad)
    elapsed = time.perf_counter() - started
    curve = fsc(result.volume, truth, pixel_size)
    halves = result.half_map_fsc()
    return {'clean_fsc05_px': round(curve.resolution_px(0.5), 3),
            'clean_fsc0143_px': round(curve.resolution_px(0.143), 3),
            'clean_fsc_at_nyquist': round(float(curve.values[-1]), 4),
            'clean_halfmap_fsc0143_px': round(halves.resolution_px(0.143), 3),
            'clean_images': count, 'clean_box': box, 'clean_pixel_size': pixel_size,
            'clean_simulation_seconds': round(simulated, 2), 'clean_reconstruction_seconds': round(elapsed, 2)}


def _random_batches(count: int, box: int, batch_size: int, seed: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Streamed batches of random images (the timing does not depend on the content)."""
    generator = np.random.default_rng(seed)
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        yield np.arange(start, start + size), generator.standard_normal((size, box, box), dtype=np.float32)


def timed_reconstruction(count: int, box: int, pad: float, batch_size: int, device: str,
                         seed: int) -> float:
    """Seconds to reconstruct ``count`` images of ``box`` with CTF correction and half maps on ``device``."""
    rng = np.random.default_rng(seed)
    angles = matrix_to_euler(random_rotations(count, rng))
    shifts = rng.uniform(-5, 5, (count, 2))
    defocus = rng.uniform(5000, 20000, count)
    ctf = CTFParams(defocus, defocus, np.zeros(count), 200.0, 2.0, 0.1)
    if device == 'cuda':
        torch.cuda.synchronize()
    started = time.perf_counter()
    reconstruct(_random_batches(count, box, batch_size, seed), angles, shifts, box, 1.3, ctf=ctf,
                ctf_mode='full', pad=pad, device=device)
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> Dict[str, object]:
    torch.set_num_threads(args.threads)
    figures: Dict[str, object] = clean_accuracy(args.count, args.box, args.pixel_size, args.pad,
                                                args.batch_size, args.seed)
    load_before = os.getloadavg()[0]
    figures['seconds_10k_128_cpu'] = round(timed_reconstruction(args.speed_count, args.speed_box, args.pad,
                                                                args.batch_size, 'cpu', args.seed), 2)
    figures['cpu_threads'] = args.threads
    figures['load_average_1min'] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    # On a shared, oversubscribed machine OpenMP threads wait for each other: one thread shows the raw cost.
    torch.set_num_threads(1)
    figures['seconds_10k_128_cpu_1thread'] = round(timed_reconstruction(args.speed_count, args.speed_box, args.pad,
                                                                        args.batch_size, 'cpu', args.seed), 2)
    torch.set_num_threads(args.threads)
    gpu: Optional[float] = None
    if torch.cuda.is_available():
        timed_reconstruction(256, args.speed_box, args.pad, args.batch_size, 'cuda', args.seed)  # warm-up
        gpu = round(timed_reconstruction(args.speed_count, args.speed_box, args.pad, 1024, 'cuda', args.seed), 2)
    figures['seconds_10k_128_gpu'] = gpu
    figures.update({'speed_images': args.speed_count, 'speed_box': args.speed_box, 'pad': args.pad})
    return figures
