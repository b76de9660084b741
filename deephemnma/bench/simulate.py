"""Particle simulator: projection exactness, SNR, CTF zeros, throughput and the memory bound of streaming.

Figures (the paper's adenylate kinase: 4AKE chain A, 1,656 atoms, modes 7-9, 128 x 128 px at 0.65 A/px):

* ``projection_cc_vs_voxel``: lowest correlation, over random poses (uniform on SO(3), shifts up to 5 px),
  between the simulator's noise-free, CTF-free projections and an independent path: a voxel map of the same
  atoms at twice finer sampling (``density.atoms_to_map``), rotated by cubic B-spline interpolation
  (``scipy.ndimage.affine_transform``), summed along z, Fourier-cropped to the image grid and shifted by
  ``scipy.ndimage.fourier_shift``; both are then band-limited the same way, to the frequencies below the
  image's Nyquist frequency in every direction (a disc: a real image cannot hold a shifted Nyquist component).
* ``snr_measured_over_target``: mean signal variance over mean noise variance of 256 produced images (noise =
  images - clean images) divided by the target SNR 0.1 (CTF, half of the noise before it).
* ``ctf_zero_error_px``: largest distance (Fourier pixels) between the minima of the radially averaged power
  spectrum of CTF-filtered white noise (the simulator's noise with all of it before the CTF) and the zeros of
  the CTF formula, at 200 kV, Cs 2 mm, defocus 0.5 and 2 um, 512 px of 1 A; zeros closer than 4 Fourier
  pixels to a neighbour cannot be resolved by a radial average and are left out.
* ``images_per_second_cpu``: ``simulate_particles`` with CTF and noise (noise level given, i.e. without the
  one-off calibration of a data set) with ``torch.set_num_threads(2)``, per wall-clock second; the load
  average of the machine before and after is reported, since the cores may be shared, and
  ``images_per_second_cpu_time`` gives the rate per second of the process's CPU time times its threads (the
  rate the 2 threads reach on idle cores; thread spin-waiting counts as work, so it errs low).
  ``images_per_second_gpu`` likewise on CUDA (null without a GPU).
* ``peak_rss_mb``: peak resident memory (``VmHWM`` of a child process) of ``simulate_to_disk`` writing
  the stack; measured at several image counts to show that it does not grow with the number of images
  (the streaming bound: one chunk of images in memory, the stack's memory map opened per chunk).

Examples::

    deephemnma bench simulate --quick
    deephemnma bench simulate --rss-counts 2000 100000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from deephemnma.imaging.ctf import CTFParams, ctf_zero_frequencies
from deephemnma.imaging.filters import fourier_crop
from deephemnma.molecule.density import atoms_to_map
from deephemnma.simulate import conformations as conf
from deephemnma.simulate.independent import project_volume
from deephemnma.simulate.parameters import sample_angles, sample_shifts
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import SimulationSetup, paper_ak_setup, paper_ctf

PAPER_BOX, PAPER_PIXEL = 128, 0.65


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--quick', action='store_true', help='fewer poses, images and smaller memory runs')
    parser.add_argument('--poses', type=int, help='poses compared with the voxel path (default 20; quick 5)')
    parser.add_argument('--speed-count', type=int, help='images timed on CPU (default 1024; quick 256)')
    parser.add_argument('--gpu-count', type=int, default=20000, help='images timed on a GPU')
    parser.add_argument('--rss-counts', type=int, nargs='+',
                        help='image counts of the memory runs (default 2000 10000; quick 300 1200)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')


def voxel_projection_cc(setup: SimulationSetup, angles: np.ndarray, shifts: np.ndarray, box: int,
                        pixel_size: float, oversampling: int = 2) -> np.ndarray:
    """Per pose, the correlation of the simulator's projection of the reference with the voxel path."""
    analytic = simulate_particles(setup, np.zeros((len(angles), setup.num_modes)), angles, shifts, box,
                                    pixel_size).images
    fine_box, fine_pixel = box * oversampling, pixel_size / oversampling
    volume = atoms_to_map(setup.structure.coords, list(setup.structure.elements), fine_box, fine_pixel)
    coefficients = ndimage.spline_filter(volume.astype(np.float64), order=3)
    frequency = np.fft.fftfreq(box) * box
    disc = np.hypot(frequency[:, None], frequency[None, :]) < box / 2  # below Nyquist in every direction
    out = []
    for pose, shift, reference in zip(angles, shifts, analytic):
        projection = project_volume(coefficients, pose, prefiltered=True) * fine_pixel
        image = fourier_crop(torch.as_tensor(projection, dtype=torch.float64)[None], box)[0].numpy()
        image = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), (-shift[1], -shift[0])) * disc).real
        reference = np.fft.ifft2(np.fft.fft2(reference) * disc).real
        out.append(np.corrcoef(image.ravel(), reference.ravel())[0, 1])
    return np.array(out)


def radial_power(images: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum (bins of 1 Fourier pixel) of ``(n, box, box)`` images."""
    box = images.shape[-1]
    power = (np.abs(np.fft.fft2(images)) ** 2).mean(axis=0)
    frequency = np.fft.fftfreq(box) * box
    radius = np.rint(np.hypot(frequency[:, None], frequency[None, :])).astype(int)
    keep = radius <= box // 2
    return np.bincount(radius[keep], weights=power[keep]) / np.bincount(radius[keep])


def ctf_zero_errors(setup: SimulationSetup, defocus: float, box: int = 512, pixel_size: float = 1.0,
                    count: int = 16, voltage: float = 200.0, cs: float = 2.0, amplitude_contrast: float = 0.1,
                    min_spacing: float = 4.0) -> List[float]:
    """Distances (Fourier pixels) between the formula's CTF zeros and the minima of the radial power spectrum
    of the simulator's CTF-filtered noise, for zeros at least ``min_spacing`` px from their neighbours."""
    rng = np.random.default_rng(11)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus, voltage=voltage, cs=cs,
                    amplitude_contrast=amplitude_contrast)
    out = simulate_particles(setup, np.zeros((count, setup.num_modes)), sample_angles(count, rng),
                               np.zeros((count, 2)), box, pixel_size, ctf=ctf, snr=1.0, noise_before_ctf=1.0,
                               seed=3, return_clean=True)
    profile = radial_power(out.images - out.clean)
    zeros = ctf_zero_frequencies(defocus, voltage, cs, amplitude_contrast, 0.5 / pixel_size).numpy()
    radii = zeros * box * pixel_size
    bounds = np.concatenate([[0.0], radii, [box / 2]])
    errors = []
    for i, zero in enumerate(radii):
        spacing = min(zero - bounds[i], bounds[i + 2] - zero)
        if spacing < min_spacing or zero < 2:
            continue
        low, high = int(np.floor(zero - spacing / 2)), int(np.ceil(zero + spacing / 2))
        window = np.arange(max(low, 1), min(high, len(profile) - 2) + 1)
        best = window[np.argmin(profile[window])]
        left, middle, right = profile[best - 1], profile[best], profile[best + 1]
        curvature = left - 2 * middle + right
        offset = 0.5 * (left - right) / curvature if curvature > 0 else 0.0
        errors.append(float(abs(best + offset - zero)))
    return errors


def _images_per_second(setup: SimulationSetup, count: int, device: str, batch_size: int) -> Tuple[float, float]:
    """``(images per wall-clock second, images per second of this process's CPU time x threads)``; the second
    is what the threads would reach on otherwise idle cores (shared cores stretch the wall clock)."""
    rng = np.random.default_rng(0)
    amplitudes = conf.helix(count, rng).amplitudes
    angles, shifts = sample_angles(count, rng), sample_shifts(count, rng)
    ctf = paper_ctf()
    run = (lambda n: simulate_particles(setup, amplitudes[:n], angles[:n], shifts[:n], PAPER_BOX, PAPER_PIXEL,
                                          ctf=ctf, snr=0.1, noise_std=1.0, device=device, batch_size=batch_size))
    run(min(count, batch_size))  # warm-up (allocations, kernels)
    if device != 'cpu':
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    run(count)
    if device != 'cpu':
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, count * torch.get_num_threads() / cpu


# VmHWM is the peak of this process's own memory map; ru_maxrss would also carry the parent's peak across exec.
_RSS_CHILD = '''
import sys, torch
torch.set_num_threads({threads})
from deephemnma.simulate.config import SimulationConfig
from deephemnma.simulate.dataset import simulate_to_disk
simulate_to_disk(SimulationConfig(count={count}, chunk_size=1000), sys.argv[1])
print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')) / 1024.0)
'''


def peak_rss_mb(count: int, threads: int) -> float:
    """Peak resident memory (MB) of a fresh process writing ``count`` paper-like images to disk."""
    with tempfile.TemporaryDirectory(prefix='deephemnma-rss-') as folder:
        result = subprocess.run([sys.executable, '-c', _RSS_CHILD.format(count=count, threads=threads), folder],
                                capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    quick = args.quick
    poses = args.poses or (5 if quick else 20)
    speed_count = args.speed_count or (256 if quick else 1024)
    rss_counts: Sequence[int] = args.rss_counts or ((300, 1200) if quick else (2000, 10000))
    load_before = os.getloadavg()
    setup = paper_ak_setup()
    rng = np.random.default_rng(1)
    cc = voxel_projection_cc(setup, sample_angles(poses, rng), sample_shifts(poses, rng), PAPER_BOX,
                             PAPER_PIXEL)

    amplitudes, angles, shifts = conf.helix(256, rng).amplitudes, sample_angles(256, rng), sample_shifts(256, rng)
    ctf = paper_ctf()
    noisy = simulate_particles(setup, amplitudes, angles, shifts, PAPER_BOX, PAPER_PIXEL, ctf=ctf, snr=0.1,
                                 seed=2, return_clean=True)
    noise = noisy.images - noisy.clean
    snr_ratio = float(noisy.clean.var(axis=(1, 2)).mean() / noise.var(axis=(1, 2)).mean() / 0.1)

    ca_setup = paper_ak_setup(coarse='CA')  # the signal does not matter for the noise spectrum
    zero_errors = {f'{d / 1e4:g}um': ctf_zero_errors(ca_setup, d) for d in (5000.0, 20000.0)}

    cpu_rate, cpu_time_rate = _images_per_second(setup, speed_count, 'cpu', 128)
    gpu_rate: Optional[float] = None
    gpu_name = None
    if torch.cuda.is_available():
        gpu_rate = _images_per_second(setup, args.gpu_count, 'cuda', 1024)[0]
        gpu_name = torch.cuda.get_device_name(0)
    load_after_speed = os.getloadavg()
    rss = {int(n): peak_rss_mb(int(n), args.threads) for n in rss_counts}
    return {
        'projection_cc_vs_voxel': float(cc.min()), 'projection_cc_vs_voxel_mean': float(cc.mean()),
        'projection_poses': poses,
        'snr_measured_over_target': snr_ratio,
        'ctf_zero_error_px': max(max(e) for e in zero_errors.values()),
        'ctf_zeros_compared': {k: len(v) for k, v in zero_errors.items()},
        'images_per_second_cpu': cpu_rate, 'images_per_second_cpu_time': cpu_time_rate,
        'cpu_threads': args.threads, 'speed_images': speed_count,
        'images_per_second_gpu': gpu_rate, 'gpu': gpu_name,
        'peak_rss_mb': max(rss.values()), 'peak_rss_mb_by_count': rss,
        'peak_rss_method': 'VmHWM of a fresh child process running simulate_to_disk (paper setup, chunks of '
                           '1000 images) at each count; flat in the count = bounded by one chunk',
        'load_average_before': load_before, 'load_average_after_speed': load_after_speed,
    }
