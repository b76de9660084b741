"""The imaging physics of synthetic particles: conformations along normal modes, exact projections of
scattering-factor densities, CTF and noise at a set SNR, in memory (:func:`simulate_particles`).

Physics of one image (batched in torch, on CPU or GPU):

1. Conformation: ``x = x0 + sum_k q_k v_k`` (Angstrom) of the centred reference (its geometric centre at the
   origin, which is the centre pixel ``box // 2`` of the images).
2. Density and projection: every atom is Peng's 5-Gaussian electron scattering factor (all atoms by default),
   projected exactly in Fourier space (:class:`DirectProjector`, the mathematics of
   :func:`deephemnma.imaging.projection.project_fourier` arranged for speed): the image is the projection of
   the potential band-limited at the image's Nyquist frequency, i.e. what "simulate a finer map, project,
   then downscale with an ideal anti-alias filter" converges to (no voxel map per image). Rotation by the Xmipp ZYZ
   matrix ``A(rot, tilt, psi)``; a recorded shift ``s`` (pixels, Xmipp) means the particle is drawn at ``-s``.
3. CTF (:mod:`deephemnma.imaging.ctf`; defocus per image, astigmatism), then noise before and after the CTF at a
   total SNR (definition in :mod:`deephemnma.imaging.noise`: variance of the clean CTF-filtered image over the
   variance of the total noise, both over the whole image), optional phase flip, optional contrast inversion.
4. ``oversampling`` > 1 literally simulates at ``oversampling`` times finer pixels (projection, CTF and noise
   on that grid) and Fourier-crops to the output box (anti-aliased downscaling, as the paper's 256 -> 128).
   ``snr_grid`` says where the SNR holds: on the output images (``'output'``), or on the finer simulated
   images before the crop (``'simulation'``). The paper set SNR 0.1 on 256 x 256 images of 0.325 A: the crop
   keeps most of the signal's variance but only ``1 / oversampling^2`` of the white noise's, so the same
   images cropped to 64 px of 1.3 A have an SNR of about 1 (``oversampling=4, snr_grid='simulation'``
   reproduces them), while ``snr=0.1`` on the 64-px output would be about ten times noisier than the paper's.
5. Scale: with noise, images are divided by the total noise standard deviation (noise of unit variance, as
   normalised particles), so the clean images have variance ``snr`` on average; without noise they are the
   projected potential per area (1/Angstrom).

Noise level: ``snr_scope='dataset'`` (default, as a real microscope) uses one noise standard deviation for all
images, calibrated on the mean signal variance of the first :data:`CALIBRATION_COUNT` images;
``'image'`` scales the noise of each image to its own signal variance.

Data sets on disk with their ground truth: :mod:`deephemnma.simulate.dataset`; per-image parameters:
:mod:`deephemnma.simulate.parameters`; the molecule: :mod:`deephemnma.simulate.setup`.

Determinism: the per-image parameters come from ``numpy`` streams of the seed; the noise of chunk ``c`` comes
from a torch generator seeded with ``(seed, c)`` (:func:`chunk_seed`), so a resumed run writes the same images
as an uninterrupted one (same chunk size and device type; CPU and CUDA generators differ).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch

from deephemnma.imaging.ctf import CTFParams, ctf_2d
from deephemnma.imaging.filters import crop_rfft_to_box, rfft_weights
from deephemnma.imaging.noise import noise_spectrum_scale, split_noise_variances, total_noise_variance
from deephemnma.imaging.rotations import euler_to_matrix_torch
from deephemnma.nma.deform import deform
from deephemnma.runtime.errors import InputError
from deephemnma.simulate.config import SNR_GRIDS, SNR_SCOPES
from deephemnma.simulate.setup import SimulationSetup

#: Images whose mean signal variance sets the noise level of a dataset (``snr_scope='dataset'``).
CALIBRATION_COUNT = 256


# ----------------------------------------------------------------------------------------------
# In-memory simulation
# ----------------------------------------------------------------------------------------------
class SimulatedImages(NamedTuple):
    """``images`` (n, box, box) float32; ``clean`` the same images without noise (or None)."""

    images: np.ndarray
    clean: Optional[np.ndarray]


@dataclass
class _Imaging:
    box: int
    pixel_size: float
    oversampling: int
    phase_flip: bool
    invert_contrast: bool
    device: torch.device
    snr_grid: str = 'output'
    dtype: torch.dtype = torch.float32

    @property
    def fine_box(self) -> int:
        return self.box * self.oversampling

    @property
    def fine_pixel(self) -> float:
        return self.pixel_size / self.oversampling

    @property
    def snr_box(self) -> int:
        """Size (pixels) of the images on which the SNR holds."""
        return self.fine_box if self.snr_grid == 'simulation' else self.box


def _signal_batch(setup: SimulationSetup, imaging: _Imaging, amplitudes: np.ndarray, angles: np.ndarray,
                  shifts: np.ndarray, ctf: Optional[CTFParams]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fine-grid rfft ``(B, H, W)`` of the CTF-filtered projections, and the fine-grid CTF (or None)."""
    device, dtype = imaging.device, imaging.dtype
    q = torch.as_tensor(amplitudes, dtype=dtype, device=device)
    projector = setup.projector(imaging.fine_box, imaging.fine_pixel, device, dtype)
    coords = deform(projector.coords, projector.vectors, q)
    rotations = euler_to_matrix_torch(torch.as_tensor(angles, dtype=dtype, device=device))
    fine_shifts = torch.as_tensor(shifts, dtype=dtype, device=device) * imaging.oversampling
    transform = projector.project(coords, rotations, fine_shifts)
    if ctf is None:
        return transform, None
    values = _distinct_ctfs(ctf, imaging.fine_box, imaging.fine_pixel, len(q), device, dtype)
    return transform * values, values


def _distinct_ctfs(ctf: CTFParams, box: int, pixel_size: float, count: int, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """``ctf_2d`` for a batch, computed once per distinct parameter set (images of a CTF group share one)."""
    batched = ctf.batched(count, device, dtype)
    table = torch.stack([batched.defocus_u, batched.defocus_v, batched.defocus_angle, batched.phase_shift], dim=1)
    distinct, inverse = torch.unique(table, dim=0, return_inverse=True)
    if len(distinct) == count:
        return ctf_2d(batched, box, pixel_size, count, device=device, dtype=dtype)
    values = ctf_2d(dataclasses.replace(batched, defocus_u=distinct[:, 0], defocus_v=distinct[:, 1],
                                        defocus_angle=distinct[:, 2], phase_shift=distinct[:, 3]),
                    box, pixel_size, len(distinct), device=device, dtype=dtype)
    return values[inverse]


def _to_output_grid(transform: torch.Tensor, imaging: _Imaging) -> torch.Tensor:
    """Crop a fine rfft grid to the output box and rescale so that pixel values are kept."""
    if imaging.oversampling == 1:
        return transform
    return crop_rfft_to_box(transform, imaging.box) / imaging.oversampling ** 2


def _on_snr_grid(transform: torch.Tensor, imaging: _Imaging) -> torch.Tensor:
    """A fine rfft grid as the images on which the SNR holds see it."""
    return transform if imaging.snr_grid == 'simulation' else _to_output_grid(transform, imaging)


def _variance_from_rfft(transform: torch.Tensor, box: int) -> torch.Tensor:
    """Per image, the variance over the pixels of ``irfft2(transform)`` (Parseval, without the mean)."""
    power = transform.real ** 2 + transform.imag ** 2
    total = (power * rfft_weights(box, transform.device, power.dtype)).sum(dim=(-2, -1)) - power[..., 0, 0]
    return total / box ** 4


def _signal_variances(setup: SimulationSetup, imaging: _Imaging, amplitudes, angles, shifts,
                      ctf: Optional[CTFParams], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(amplitudes), batch_size):
        rows = slice(start, start + batch_size)
        transform, _ = _signal_batch(setup, imaging, amplitudes[rows], angles[rows], shifts[rows],
                                     None if ctf is None else ctf.rows(rows))
        out.append(_variance_from_rfft(_on_snr_grid(transform, imaging), imaging.snr_box).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def noise_std_for_snr(setup: SimulationSetup, amplitudes: np.ndarray, angles: np.ndarray, shifts: np.ndarray,
                      box: int, pixel_size: float, snr: float, ctf: Optional[CTFParams] = None,
                      oversampling: int = 1, device: str | torch.device = 'cpu', batch_size: int = 128,
                      snr_grid: str = 'output') -> float:
    """The total noise standard deviation (projection units, on the ``snr_grid`` images) that gives ``snr`` on
    average over these images: ``sqrt(mean signal variance / snr)``."""
    check_snr(snr)
    check_snr_grid(snr_grid)
    imaging = _Imaging(box, pixel_size, oversampling, False, False, torch.device(device), snr_grid)
    batched = None if ctf is None else ctf.batched(len(amplitudes), imaging.device, imaging.dtype)
    return _calibrated_noise_std(setup, imaging, np.asarray(amplitudes), np.asarray(angles), np.asarray(shifts),
                                 batched, snr, batch_size)


def _calibrated_noise_std(setup: SimulationSetup, imaging: _Imaging, amplitudes, angles, shifts,
                          batched_ctf: Optional[CTFParams], snr: float, batch_size: int) -> float:
    """``sqrt(mean signal variance / snr)`` over these images (``batched_ctf``: one row per image, or None)."""
    variances = _signal_variances(setup, imaging, amplitudes, angles, shifts, batched_ctf, batch_size)
    return float(np.sqrt(variances.mean() / snr))


def check_snr_grid(snr_grid: str) -> None:
    if snr_grid not in SNR_GRIDS:
        raise InputError(f"unknown SNR grid '{snr_grid}'; choose one of {', '.join(SNR_GRIDS)}")


def check_snr(snr: float) -> None:
    if not snr > 0:
        raise InputError(f'the SNR must be positive, not {snr}')


def simulate_particles(setup: SimulationSetup, amplitudes: np.ndarray, angles: np.ndarray, shifts: np.ndarray,
                       box: int, pixel_size: float, ctf: Optional[CTFParams] = None, snr: Optional[float] = None,
                       seed: int = 0, noise_before_ctf: float = 0.5, snr_scope: str = 'dataset',
                       noise_std: Optional[float] = None, phase_flip: bool = False, invert_contrast: bool = False,
                       oversampling: int = 1, return_clean: bool = False, device: str | torch.device = 'cpu',
                       batch_size: int = 128, snr_grid: str = 'output') -> SimulatedImages:
    """Simulate images in memory (see the module docstring for the physics and the scale).

    ``amplitudes`` (n, M) of ``setup.modes``; ``angles`` (n, 3) Xmipp ZYZ degrees; ``shifts`` (n, 2) pixels
    (Xmipp sign); ``box`` pixels and ``pixel_size`` Angstrom of the output; ``ctf`` scalar or per-image
    parameters (None: no CTF); ``snr`` total SNR (None: no noise); ``noise_before_ctf`` fraction of the noise
    variance that comes from before the CTF; ``snr_scope`` 'dataset' (one noise level, calibrated on the first
    images of this call unless ``noise_std`` is given) or 'image'; ``noise_std`` total noise standard deviation
    in projection units (overrides the calibration); ``snr_grid`` where ``snr`` and ``noise_std`` hold
    (:data:`SNR_GRIDS`, see the module docstring); ``seed`` seeds the noise. Returns float32 arrays.
    """
    amplitudes = np.asarray(amplitudes, dtype=np.float64).reshape(len(amplitudes), -1)
    angles, shifts = np.asarray(angles, dtype=np.float64), np.asarray(shifts, dtype=np.float64)
    count = len(amplitudes)
    if angles.shape != (count, 3) or shifts.shape != (count, 2) or amplitudes.shape[1] != setup.num_modes:
        raise InputError(f'per-image parameters do not match: amplitudes {amplitudes.shape} for '
                         f'{setup.num_modes} modes, angles {angles.shape}, shifts {shifts.shape}')
    if snr_scope not in SNR_SCOPES:
        raise InputError(f"unknown SNR scope '{snr_scope}'; choose one of {', '.join(SNR_SCOPES)}")
    if oversampling < 1:
        raise InputError(f'oversampling {oversampling} must be a positive integer')
    if snr is not None:
        check_snr(snr)
    check_snr_grid(snr_grid)
    imaging = _Imaging(box, pixel_size, int(oversampling), phase_flip, invert_contrast, torch.device(device),
                       snr_grid)
    batched_ctf = None if ctf is None else ctf.batched(count, imaging.device, imaging.dtype)
    if snr is not None and snr_scope == 'dataset' and noise_std is None:
        calibration = slice(0, min(count, CALIBRATION_COUNT))
        noise_std = _calibrated_noise_std(setup, imaging, amplitudes[calibration], angles[calibration],
                                          shifts[calibration],
                                          None if batched_ctf is None else batched_ctf.rows(calibration),
                                          snr, batch_size)
    generator = torch.Generator(device=imaging.device).manual_seed(int(seed))
    images = np.empty((count, box, box), dtype=np.float32)
    clean = np.empty_like(images) if return_clean else None
    with torch.no_grad():
        for start in range(0, count, batch_size):
            rows = slice(start, min(start + batch_size, count))
            noisy_batch, clean_batch = _simulate_batch(
                setup, imaging, amplitudes[rows], angles[rows], shifts[rows],
                None if batched_ctf is None else batched_ctf.rows(rows), snr, noise_before_ctf, snr_scope,
                noise_std, generator, return_clean)
            images[rows] = noisy_batch
            if clean is not None:
                clean[rows] = clean_batch
    return SimulatedImages(images, clean)


def _simulate_batch(setup: SimulationSetup, imaging: _Imaging, amplitudes, angles, shifts,
                    ctf: Optional[CTFParams], snr: Optional[float], before_fraction: float, snr_scope: str,
                    noise_std: Optional[float], generator: torch.Generator, want_clean: bool):
    """One batch: ``(images, clean or None)`` as float32 numpy arrays on the output grid."""
    signal, ctf_fine = _signal_batch(setup, imaging, amplitudes, angles, shifts, ctf)
    flip = torch.sign(ctf_fine) if (imaging.phase_flip and ctf_fine is not None) else None
    scale = torch.ones(len(amplitudes), dtype=imaging.dtype, device=imaging.device)
    total = signal
    if snr is not None:
        if snr_scope == 'image':
            variance = _variance_from_rfft(_on_snr_grid(signal, imaging), imaging.snr_box) / snr
        else:
            variance = torch.full_like(scale, float(noise_std) ** 2)
        noise, output_variance = _noise(variance, before_fraction, ctf_fine, imaging, generator)
        total = signal + noise
        scale = 1.0 / torch.sqrt(output_variance)
    if imaging.invert_contrast:
        scale = -scale
    images = _finish(total, flip, imaging, scale)
    clean = _finish(signal, flip, imaging, scale) if want_clean else None
    return images, clean


def _noise(variance: torch.Tensor, before_fraction: float, ctf_fine: Optional[torch.Tensor], imaging: _Imaging,
           generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fine-grid rfft of noise whose total variance on the SNR grid is ``variance`` (B,), and its variance
    (B,) on the output images. White noise of variance v on the fine grid keeps v / oversampling^2 after the
    crop; the part before the CTF keeps its share of the CTF's power at the kept frequencies."""
    ctf_out = None if ctf_fine is None else crop_rfft_to_box(ctf_fine, imaging.box)
    factor = imaging.oversampling ** 2
    if imaging.snr_grid == 'simulation':
        fine_before, fine_after = split_noise_variances(variance, before_fraction, ctf_fine)
        output_variance = total_noise_variance(fine_before, fine_after, ctf_out) / factor
    else:
        var_before, var_after = split_noise_variances(variance, before_fraction, ctf_out)
        fine_before, fine_after = var_before * factor, var_after * factor
        output_variance = variance
    white = torch.randn(len(variance), imaging.fine_box, imaging.fine_box, generator=generator,
                        device=imaging.device, dtype=imaging.dtype)
    scale = noise_spectrum_scale(fine_before, fine_after, ctf_fine, (imaging.fine_box, imaging.fine_box // 2 + 1))
    return torch.fft.rfft2(white) * scale, output_variance


def _finish(transform: torch.Tensor, flip: Optional[torch.Tensor], imaging: _Imaging,
            scale: torch.Tensor) -> np.ndarray:
    if flip is not None:
        transform = transform * flip
    out = torch.fft.irfft2(_to_output_grid(transform, imaging), s=(imaging.box, imaging.box))
    return (out * scale[:, None, None]).cpu().numpy().astype(np.float32, copy=False)
