"""HEMNMA engine: elastic and rigid-body 3D-to-2D alignment of particle images, batched on CPU or GPU.

For every image, find the normal-mode amplitudes ``q`` (M,), the Xmipp ZYZ Euler angles and the shifts (pixels,
Xmipp sign) whose projection of the deformed reference ``x0 + sum_k q_k v_k`` best matches the image, by the
normalised cross-correlation (NCC) computed in Fourier space over a disk of frequencies, with each image's CTF
in the model (``|CTF|`` for phase-flipped images, the CTF for raw ones, none for CTF-corrected ones).

1. Global search (no prior pose): a library of projections of the reference at a few starting conformations
   (a grid of amplitudes) over orientations every ``angular_step`` degrees (Fibonacci directions times in-plane
   angles), at low resolution, is correlated with every image at every shift of a grid in one matrix product per
   template chunk (the per-image CTF enters through a second product for the template norms). The ``top_k`` best
   candidates, kept apart by at least 1.5 angular steps, go on.
2. Joint continuous refinement of amplitudes, rotations (a small rotation ``Exp(w)`` applied to the candidate's
   matrix) and shifts with Adam on the NCC, batched over images and candidates, at increasing resolution; after
   each stage only the best candidates of each image are kept. Parameters are scaled so that one unit moves the
   model by about one Angstrom.

The local mode skips the global search and refines from given poses (and amplitudes). The guided mode (predict
then refine) replaces step 1 by a search restricted to the library orientations within ``hypothesis_radius``
degrees of a few hypotheses per image (e.g. the network's predictions), at shifts near the predicted one, of every
start conformation (or, with ``nearest_start``, of the one nearest to the predicted amplitudes); a candidate then
starts from the predicted amplitudes where they score higher than its start conformation.
Each image is processed independently of the others in its batch, so results do not depend on how images are
grouped into processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from deephemnma.hemnma.reference import AlignReference
from deephemnma.imaging.ctf import CTF_STATES, CTFParams, ctf_2d
from deephemnma.imaging.projection import FourierProjector, ProjectorCache, crop_rfft, fourier_indices
from deephemnma.imaging.rotations import euler_to_matrix, matrix_to_euler
from deephemnma.nma.deform import deform

#: The default global search starts from the 2^M corners of the amplitude box of up to this many modes.
MAX_CORNER_MODES = 3


#: :class:`AlignSettings` fields that change how fast, not what, the engine computes.
_SPEED_ONLY_SETTINGS = ('template_chunk', 'projection_chunk')


@dataclass
class AlignSettings:
    """Parameters of the search and refinement (resolutions in Angstrom, shifts in pixels of the images).

    The global search starts from every combination of ``start_amplitudes`` for each mode; by default
    (None) from +-``start_displacement`` Angstrom RMS along each mode (+-100 for all-atom AK modes 7-9): the
    2^M corners of the first (up to :data:`MAX_CORNER_MODES`) modes, the other modes at 0 (the refinement moves
    all of them; on the adenylate kinase transition benchmark five modes started so find 98% of the poses
    within 15 degrees, where starting from +-1 step along each of four modes found 95%).
    Refinement stage ``i`` runs ``refine_steps[i]`` Adam steps at ``refine_resolutions[i]`` and keeps the
    ``refine_keep[i]`` best candidates of each image. ``hypothesis_radius`` (degrees): the guided search
    scores the library orientations within this angle of each hypothesis, at shifts within
    ``hypothesis_shift_range`` pixels (steps of 1 px) of the hypothesis's shift. ``nearest_start``: with
    predicted amplitudes, the guided search scores only the templates of the start conformation nearest to them
    (1/8 of the products with 8 start conformations), for a network whose amplitudes are good (the demo's network,
    amplitude error 58, then gave group maps up to 0.65 A coarser). The library is projected ``projection_chunk``
    templates at a time and scored ``template_chunk`` templates per matrix product: small enough for the intermediate
    arrays to stay in a CPU's caches (on 2 CPU cores, building the library took 9 s instead of 23 and scoring 0.04 s
    per image instead of 0.06 with chunks of 8,192), and the results do not
    depend on them.
    """

    angular_step: float = 10.0
    shift_range: float = 6.0
    shift_step: float = 2.0
    search_resolution: float = 10.0
    start_amplitudes: Optional[Tuple[float, ...]] = None
    start_displacement: float = 2.5
    top_k: int = 8
    refine_resolutions: Tuple[float, ...] = (10.0, 7.0, 5.0, 3.5)
    refine_steps: Tuple[int, ...] = (30, 25, 25, 25)
    refine_keep: Tuple[int, ...] = (3, 1, 1, 1)
    learning_rate: float = 0.5
    ctf_mode: str = 'phase_flipped'
    template_chunk: int = 2048
    projection_chunk: int = 64
    hypothesis_radius: float = 30.0
    hypothesis_shift_range: float = 1.0
    nearest_start: bool = False

    @staticmethod
    def stages(resolutions: Sequence[float], top_k: int = 8, steps: Optional[Sequence[int]] = None
               ) -> Dict[str, tuple]:
        """``refine_resolutions``, ``refine_steps`` and ``refine_keep`` for these refinement stages (Angstrom,
        coarse to fine): each stage takes the steps of its position in ``steps`` (default: the global search's)
        and the default kept candidates of its position (the last value for further stages), keeping at most
        ``top_k``."""
        steps, keep = tuple(steps or AlignSettings.refine_steps), AlignSettings.refine_keep
        count = len(resolutions)
        return {'refine_resolutions': tuple(float(r) for r in resolutions),
                'refine_steps': tuple(steps[min(i, len(steps) - 1)] for i in range(count)),
                'refine_keep': tuple(min(keep[min(i, len(keep) - 1)], top_k) for i in range(count))}

    def result_settings(self) -> Dict[str, object]:
        """The settings that change the results (the chunk sizes only change the speed): those a resumed
        alignment must share with the first run."""
        return {name: value for name, value in self.__dict__.items() if name not in _SPEED_ONLY_SETTINGS}

    def __post_init__(self) -> None:
        if self.ctf_mode not in CTF_STATES:
            raise ValueError(f"ctf_mode '{self.ctf_mode}' must be one of {CTF_STATES}")
        if not (len(self.refine_resolutions) == len(self.refine_steps) == len(self.refine_keep)):
            raise ValueError('refine_resolutions, refine_steps and refine_keep must have the same length')


# ----------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------
def orientation_grid(step_deg: float) -> np.ndarray:
    """Euler angles (R, 3) degrees covering SO(3) about every ``step_deg``.

    Projection directions on a Fibonacci sphere (about ``4 pi / step^2`` of them) times in-plane angles every
    ``step_deg`` (psi), in Xmipp's ZYZ convention (the direction is given by rot and tilt).
    """
    step = math.radians(step_deg)
    count = max(int(round(4.0 * math.pi / step ** 2)), 2)
    index = np.arange(count) + 0.5
    tilt = np.degrees(np.arccos(1.0 - 2.0 * index / count))
    rot = np.degrees(np.mod(index * math.pi * (3.0 - math.sqrt(5.0)), 2.0 * math.pi))
    psi = np.arange(0.0, 360.0, step_deg)
    directions = np.stack([rot, tilt], axis=1)
    grid = np.concatenate([np.repeat(directions, len(psi), axis=0), np.tile(psi, count)[:, None]], axis=1)
    return grid


def amplitude_grid(values: Sequence[float], num_modes: int) -> np.ndarray:
    """Starting conformations (C, M) of the global search: every combination of ``values`` for each mode."""
    if num_modes == 0:
        return np.zeros((1, 0))
    mesh = np.meshgrid(*([np.asarray(sorted(set(float(v) for v in values)))] * num_modes), indexing='ij')
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def so3_ball_fraction(angle_rad: float) -> float:
    """Fraction of uniformly distributed rotations within ``angle_rad`` of a given rotation
    (``(a - sin a) / pi`` under the Haar measure)."""
    angle = min(max(angle_rad, 0.0), math.pi)
    return (angle - math.sin(angle)) / math.pi


def small_rotation(vectors: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``Exp([w]_x)`` (..., 3, 3) of rotation vectors ``w`` (..., 3) radians (Rodrigues)."""
    theta2 = (vectors ** 2).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-12)
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                        torch.stack([-y, x, zero], -1)], -2)
    eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device).expand_as(skew)
    a = torch.sin(theta) / theta
    b = (1.0 - torch.cos(theta)) / (theta2 + 1e-12)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, a)
    b = torch.where(small, 0.5 - theta2 / 24.0, b)
    return eye + a * skew + b * (skew @ skew)


# ----------------------------------------------------------------------------------------------
# Fourier-space images
# ----------------------------------------------------------------------------------------------
@dataclass
class FourierBand:
    """The frequencies of a disk of ``radius`` Fourier pixels on the cropped rfft grid of a ``box`` image."""

    box: int
    radius: float
    rows: torch.Tensor       # (F,) index into the cropped grid rows
    cols: torch.Tensor       # (F,) index into the cropped grid columns
    fy: torch.Tensor         # (F,) cycles per pixel
    fx: torch.Tensor

    @classmethod
    def make(cls, box: int, radius: float, device: torch.device) -> 'FourierBand':
        radius = float(min(radius, box // 2 - 1))
        iy, ix = fourier_indices(box, radius, device)
        rr, cc = torch.meshgrid(torch.arange(len(iy), device=device), torch.arange(len(ix), device=device),
                                indexing='ij')
        ky, kx = iy[rr].double(), ix[cc].double()
        inside = (ky ** 2 + kx ** 2 <= radius ** 2) & ((ky != 0) | (kx != 0))
        # On the kx = 0 column only half of the rows are independent (Hermitian symmetry), so every kept
        # frequency stands for a Hermitian pair and all carry the same weight in correlations.
        inside = inside & ((kx > 0) | (ky > 0))
        return cls(box, radius, rr[inside], cc[inside], (ky[inside] / box).float(), (kx[inside] / box).float())

    @property
    def size(self) -> int:
        return int(self.rows.numel())

    def take(self, cropped: torch.Tensor) -> torch.Tensor:
        """Values ``(..., F)`` of cropped rfft arrays ``(..., H, W)`` at the band's frequencies."""
        return cropped[..., self.rows, self.cols]


@dataclass
class PreparedImages:
    """Images in Fourier space (full rfft grid) with the CTF factor of the model, for a batch."""

    transforms: torch.Tensor    # (B, box, box//2+1) complex
    ctf: torch.Tensor           # (B, box, box//2+1) real factor applied to the model

    def band(self, band: FourierBand) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, F) complex, ctf (B, F))`` on ``band``."""
        images = band.take(crop_rfft(self.transforms, band.radius))
        ctf = band.take(crop_rfft(self.ctf, band.radius))
        return images, ctf


def prepare_images(images: torch.Tensor, ctf_params: Optional[CTFParams], pixel_size: float,
                   ctf_mode: str) -> PreparedImages:
    """Fourier transforms of ``(B, box, box)`` images and the CTF factor of their model."""
    images = images - images.mean(dim=(-2, -1), keepdim=True)
    transforms = torch.fft.rfft2(images)
    count, box = images.shape[0], images.shape[-1]
    if ctf_mode == 'none' or ctf_params is None:
        factor = torch.ones(count, box, box // 2 + 1, device=images.device, dtype=images.dtype)
    else:
        factor = ctf_2d(ctf_params, box, pixel_size, count, device=images.device, dtype=images.dtype)
        if ctf_mode == 'phase_flipped':
            factor = factor.abs()
    return PreparedImages(transforms, factor)


def ncc(model: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of complex ``(..., F)`` arrays (band frequencies, one per Hermitian pair)."""
    num = (model.conj() * images).real.sum(-1)
    den = torch.sqrt((model.abs() ** 2).sum(-1) * (images.abs() ** 2).sum(-1) + 1e-30)
    return num / den


# ----------------------------------------------------------------------------------------------
# The aligner
# ----------------------------------------------------------------------------------------------
@dataclass
class Candidates:
    """Poses per image and candidate: rotations (B, K, 3, 3), shifts (B, K, 2) px, amplitudes (B, K, M)."""

    rotations: torch.Tensor
    shifts: torch.Tensor
    amplitudes: torch.Tensor
    scores: torch.Tensor = None


#: Score of the templates a guided search leaves out (below any normalised cross-correlation).
_EXCLUDED_SCORE = -2.0


class _Pool:
    """The ``size`` best-scoring library templates seen so far for each image of a batch (score, template,
    shift index)."""

    def __init__(self, batch: int, device: torch.device, dtype: torch.dtype, size: int = 64):
        self.size = size
        self.scores = torch.full((batch, 0), _EXCLUDED_SCORE, device=device, dtype=dtype)
        self.index = torch.zeros((batch, 0), dtype=torch.long, device=device)
        self.shift = torch.zeros((batch, 0), dtype=torch.long, device=device)

    def add(self, scores: torch.Tensor, index: torch.Tensor, shift: torch.Tensor) -> None:
        """Offer ``(B, P)`` scores of templates ``index`` at shift indices ``shift``; keeps the best, sorted."""
        scores, index, shift = (torch.cat(pair, dim=1) for pair in ((self.scores, scores), (self.index, index),
                                                                      (self.shift, shift)))
        keep = scores.topk(min(self.size, scores.shape[1]), dim=1).indices
        self.scores, self.index, self.shift = scores.gather(1, keep), index.gather(1, keep), shift.gather(1, keep)


@dataclass
class _Library:
    templates: torch.Tensor      # (T, 2F) real: [Re, Im] of the template transforms
    power: torch.Tensor          # (T, F) |template|^2
    rotations: torch.Tensor      # (T, 3, 3)
    amplitudes: torch.Tensor     # (T, M)
    band: FourierBand
    orientations: int            # orientations per start conformation (the templates are start-major)


class Aligner:
    """Aligns batches of images of one size and pixel size against one reference."""

    def __init__(self, reference: AlignReference, box: int, pixel_size: float,
                 settings: AlignSettings = AlignSettings(), device: torch.device = torch.device('cpu')):
        self.reference = reference
        self.box = int(box)
        self.pixel_size = float(pixel_size)
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.coords = torch.as_tensor(reference.coords, dtype=self.dtype, device=self.device)
        self.vectors = torch.as_tensor(reference.vectors, dtype=self.dtype, device=self.device)
        self.rotations = (None if reference.rotations is None else
                          torch.as_tensor(reference.rotations, dtype=self.dtype, device=self.device))
        self.model = reference.model.to(self.device, self.dtype)
        self.amplitude_unit = torch.as_tensor(reference.amplitude_scale(), dtype=self.dtype, device=self.device)
        self.rotation_unit = 1.0 / max(reference.radius_of_gyration(), 1.0)
        self.shift_unit = 1.0 / self.pixel_size
        self._projectors = ProjectorCache(lambda box, pixel_size, radius, device, dtype:
                                          FourierProjector(self.model, box, pixel_size, radius, device, dtype))

    # -- forward model ----------------------------------------------------------------------------
    def radius(self, resolution: float) -> float:
        """Fourier radius (pixels of the rfft grid) of ``resolution`` Angstrom."""
        return self.box * self.pixel_size / resolution

    def projector(self, band: FourierBand) -> FourierProjector:
        """The forward model on the cropped grid of ``band`` (made once per band radius)."""
        return self._projectors(self.box, self.pixel_size, band.radius, self.device, self.dtype)

    def deformed(self, amplitudes: torch.Tensor) -> torch.Tensor:
        """Coordinates (B, N, 3) of the reference displaced by amplitudes (B, M) (the reference's deformation
        model)."""
        return deform(self.coords, self.vectors, amplitudes, self.rotations)

    def project_band(self, amplitudes: torch.Tensor, rotations: torch.Tensor, shifts: Optional[torch.Tensor],
                     band: FourierBand) -> torch.Tensor:
        """Model transforms (B, F) on ``band`` (no CTF)."""
        return band.take(self.projector(band).project(self.deformed(amplitudes), rotations, shifts))

    # -- global search ------------------------------------------------------------------------------
    def library(self) -> _Library:
        """The projection library of the global search, built once per grid (size, pixel size, device, search
        resolution, angular step, start conformations) and kept by the reference for its other aligners."""
        s = self.settings
        key = (self.box, self.pixel_size, str(self.device), s.search_resolution, s.angular_step,
               self.start_conformations().tobytes())
        if key not in self.reference.libraries:
            self.reference.libraries[key] = self._build_library()
        return self.reference.libraries[key]

    def _build_library(self) -> _Library:
        s = self.settings
        band = FourierBand.make(self.box, self.radius(s.search_resolution), self.device)
        rotations = torch.as_tensor(euler_to_matrix(orientation_grid(s.angular_step)), dtype=self.dtype,
                                    device=self.device)
        starts = torch.as_tensor(self.start_conformations(), dtype=self.dtype, device=self.device)
        parts, powers, rot_all, amp_all = [], [], [], []
        with torch.no_grad():
            for amplitudes in starts:
                coords = self.deformed(amplitudes[None])[0]
                for start in range(0, len(rotations), s.projection_chunk):
                    chunk = rotations[start:start + s.projection_chunk]
                    values = band.take(self.projector(band).project(coords, chunk, None))
                    parts.append(torch.cat([values.real, values.imag], dim=1))
                    powers.append(values.abs() ** 2)
                rot_all.append(rotations)
                amp_all.append(amplitudes[None].expand(len(rotations), -1))
        return _Library(torch.cat(parts), torch.cat(powers), torch.cat(rot_all), torch.cat(amp_all), band,
                        len(rotations))

    def start_conformations(self) -> np.ndarray:
        """Starting amplitudes (C, M) of the global search (see :class:`AlignSettings`)."""
        s = self.settings
        if s.start_amplitudes is not None:
            return amplitude_grid(s.start_amplitudes, self.reference.num_modes)
        modes = self.reference.num_modes
        unit = self.reference.amplitude_scale() * s.start_displacement
        corners = min(modes, MAX_CORNER_MODES)
        starts = np.zeros((2 ** corners, modes))
        starts[:, :corners] = amplitude_grid((-1.0, 1.0), corners) * unit[None, :corners] if corners else 0.0
        return starts

    def shift_grid(self, shift_range: Optional[float] = None, step: Optional[float] = None) -> torch.Tensor:
        """Shifts (S, 2) pixels of the global search (or of another ``shift_range`` and ``step``, pixels)."""
        s = self.settings
        shift_range = s.shift_range if shift_range is None else shift_range
        step = s.shift_step if step is None else step
        steps = int(math.floor(shift_range / step + 1e-9))
        values = torch.arange(-steps, steps + 1, device=self.device, dtype=self.dtype) * step
        sy, sx = torch.meshgrid(values, values, indexing='ij')
        return torch.stack([sx.reshape(-1), sy.reshape(-1)], dim=1)

    def _shifted_images(self, prepared: PreparedImages, band: FourierBand, shifts: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images x CTF at every search shift (S, 2) or (B, S, 2) px as real columns ``(B, S, 2F)`` ([Re, Im];
        the model drawn at -s is correlated with the image multiplied by exp(-2 pi i k.s)), the squared CTF
        ``(B, F)`` and the image norms ``(B,)`` on ``band``."""
        images, ctf = prepared.band(band)
        phase = torch.polar(torch.ones(shifts.shape[:-1] + (band.size,), device=self.device, dtype=self.dtype),
                            -2.0 * math.pi * (shifts[..., :1] * band.fx + shifts[..., 1:] * band.fy))
        shifted = (images * ctf)[:, None, :] * phase                                    # (B, S, F)
        return torch.cat([shifted.real, shifted.imag], dim=-1), ctf ** 2, torch.sqrt((images.abs() ** 2).sum(-1))

    def global_search(self, prepared: PreparedImages) -> Candidates:
        """Best ``top_k`` distinct candidates per image from the library (no prior pose)."""
        shifts = self.shift_grid()
        return self._candidates(self._score_library(prepared, shifts), shifts)

    def guided_search(self, prepared: PreparedImages, hypotheses: torch.Tensor, centres: torch.Tensor,
                      amplitudes: Optional[torch.Tensor] = None) -> Candidates:
        """Best ``top_k`` distinct candidates per image among the library templates whose orientation lies within
        ``hypothesis_radius`` of one of the image's hypotheses (B, H, 3, 3), at shifts within
        ``hypothesis_shift_range`` px (steps of 1 px) of the image's shift ``centres`` (B, 2), of every start
        conformation (with the setting ``nearest_start`` and predicted ``amplitudes`` (B, M), of the one nearest to
        them, :meth:`nearest_start`). With predicted amplitudes, a candidate starts from them where they score
        higher than from its start conformation."""
        offsets = self.shift_grid(self.settings.hypothesis_shift_range, 1.0)
        shifts = centres.to(self.device, self.dtype)[:, None, :] + offsets[None]              # (B, S, 2)
        allowed = self._near_hypotheses(hypotheses.to(self.device, self.dtype))
        if amplitudes is None:
            return self._candidates(self._score_library(prepared, shifts, allowed), shifts)
        amplitudes = amplitudes.to(self.device, self.dtype)
        starts = self.nearest_start(amplitudes) if self.settings.nearest_start else None
        candidates = self._candidates(self._score_library(prepared, shifts, allowed, starts), shifts)
        return self._better_start(prepared, candidates, amplitudes)

    def nearest_start(self, amplitudes: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the library's start conformation nearest to ``amplitudes`` (B, M), distances in Angstrom
        RMS along each mode."""
        scale = torch.as_tensor(self.reference.amplitude_scale(), dtype=self.dtype, device=self.device)
        starts = torch.as_tensor(self.start_conformations(), dtype=self.dtype, device=self.device)
        return torch.cdist(amplitudes / scale, starts / scale).argmin(dim=1)

    def _better_start(self, prepared: PreparedImages, candidates: Candidates, amplitudes: torch.Tensor
                      ) -> Candidates:
        """``candidates`` whose amplitudes are replaced by ``amplitudes`` (B, M) where these score higher at
        the search resolution, in the candidate's pose."""
        band = self.library().band
        images, ctf = prepared.band(band)
        batch, count = candidates.shifts.shape[:2]
        proposed = amplitudes[:, None, :].expand_as(candidates.amplitudes)
        with torch.no_grad():
            scores = [ncc(self.project_band(start.reshape(batch * count, -1), candidates.rotations.reshape(-1, 3, 3),
                                            candidates.shifts.reshape(-1, 2), band).reshape(batch, count, -1)
                          * ctf[:, None], images[:, None]) for start in (candidates.amplitudes, proposed)]
        better = scores[1] > scores[0]
        return Candidates(candidates.rotations, candidates.shifts,
                          torch.where(better[..., None], proposed, candidates.amplitudes),
                          torch.where(better, scores[1], scores[0]))

    def _near_hypotheses(self, hypotheses: torch.Tensor) -> torch.Tensor:
        """``(B, R)`` True for the library orientations among the ``hypothesis_radius`` ball's worth nearest to
        one of each image's hypotheses (B, H, 3, 3)."""
        lib = self.library()
        grid = lib.rotations[:lib.orientations]
        nearest = max(1, min(lib.orientations, math.ceil(lib.orientations * so3_ball_fraction(
            math.radians(self.settings.hypothesis_radius)))))
        allowed = torch.zeros(hypotheses.shape[0], lib.orientations, dtype=torch.bool, device=self.device)
        for hypothesis in hypotheses.unbind(1):                                                # (B, 3, 3)
            closeness = torch.einsum('bij,tij->bt', hypothesis, grid)                           # trace(H^T R)
            allowed.scatter_(1, closeness.topk(nearest, dim=1).indices, True)
        return allowed

    def _score_library(self, prepared: PreparedImages, shifts: torch.Tensor, allowed: Optional[torch.Tensor] = None,
                       starts: Optional[torch.Tensor] = None) -> '_Pool':
        """The best templates of each image at its best shift of ``shifts`` ((S, 2) for every image or (B, S, 2),
        px), among the orientations ``allowed`` (B, R) (all when None) of the start conformation ``starts`` (B,)
        of each image (every start conformation when None): each chunk of templates against every image (that
        scores it) and shift in one matrix product, faster than gathering each image's templates."""
        lib = self.library()
        shifted, ctf_power, image_norm = self._shifted_images(prepared, lib.band, shifts)      # (B, S, 2F)
        batch = shifted.shape[0]
        # images that score the same templates: (rows, first template of their block)
        if starts is None:
            span, groups = len(lib.templates), [(slice(None), 0)]
        else:
            span = lib.orientations
            groups = [(torch.nonzero(starts == start).reshape(-1), int(start) * span) for start in starts.unique()]
        pool = _Pool(batch, self.device, self.dtype)
        with torch.no_grad():
            for first in range(0, span, self.settings.template_chunk):
                positions = torch.arange(first, min(first + self.settings.template_chunk, span), device=self.device)
                index = positions.expand(batch, -1) if starts is None else \
                    starts[:, None] * lib.orientations + positions                              # (B, T)
                score, shift_index = torch.empty(index.shape, dtype=self.dtype, device=self.device), \
                    torch.empty(index.shape, dtype=torch.long, device=self.device)
                for rows, offset in groups:
                    block = slice(offset + first, offset + first + len(positions))
                    score[rows], shift_index[rows] = self._template_scores(
                        shifted[rows], ctf_power[rows], image_norm[rows], block)
                if allowed is not None:
                    score = score.masked_fill(~allowed.gather(1, index % lib.orientations), _EXCLUDED_SCORE)
                pool.add(score, index, shift_index)
        return pool

    def _template_scores(self, shifted: torch.Tensor, ctf_power: torch.Tensor, image_norm: torch.Tensor,
                         block: slice) -> Tuple[torch.Tensor, torch.Tensor]:
        """NCC (B, T) of the library templates ``block`` with images shifted as in :meth:`_shifted_images`
        (``shifted`` (B, S, 2F), ``ctf_power`` (B, F), ``image_norm`` (B,)) at their best shift, and that shift's
        index (B, T)."""
        lib = self.library()
        batch, count = shifted.shape[:2]
        num = (lib.templates[block] @ shifted.reshape(batch * count, -1).T).reshape(-1, batch, count)   # (T, B, S)
        norm = torch.sqrt(lib.power[block] @ ctf_power.T + 1e-30)                                # (T, B)
        score, shift_index = (num / norm[..., None]).max(dim=2)
        return score.T / image_norm[:, None], shift_index.T

    def _candidates(self, pool: '_Pool', shifts: torch.Tensor) -> Candidates:
        """The ``top_k`` best candidates of ``pool`` (shifts (S, 2) for every image or (B, S, 2) per image, px),
        kept at least 1.5 angular steps apart."""
        lib = self.library()
        chosen = self._distinct(lib.rotations[pool.index], self.settings.top_k, 1.5 * self.settings.angular_step)
        index = pool.index.gather(1, chosen)
        shift_index = pool.shift.gather(1, chosen)[..., None].expand(-1, -1, 2)
        chosen_shifts = shifts.expand(len(index), -1, -1).gather(1, shift_index)
        return Candidates(lib.rotations[index], chosen_shifts, lib.amplitudes[index], pool.scores.gather(1, chosen))

    @staticmethod
    def _distinct(rotations: torch.Tensor, count: int, min_angle_deg: float) -> torch.Tensor:
        """Per image, positions of up to ``count`` candidates (sorted by score) at least ``min_angle`` apart.

        ``rotations`` (B, P, 3, 3) sorted best first; where fewer are distinct, the best are repeated.
        """
        batch, pool = rotations.shape[:2]
        relative = torch.einsum('bpji,bqjk->bpqik', rotations, rotations)
        trace = relative.diagonal(dim1=-2, dim2=-1).sum(-1)
        cos_min = math.cos(math.radians(min_angle_deg))
        near = (trace - 1.0) / 2.0 > cos_min                                           # (B, P, P)
        chosen = torch.zeros(batch, count, dtype=torch.long, device=rotations.device)
        taken = torch.zeros(batch, pool, dtype=torch.bool, device=rotations.device)
        blocked = torch.zeros(batch, pool, dtype=torch.bool, device=rotations.device)
        rows = torch.arange(batch, device=rotations.device)
        for k in range(count):
            free = ~blocked
            has_free = free.any(dim=1)
            first = torch.where(has_free, free.float().argmax(dim=1), torch.zeros_like(rows))
            chosen[:, k] = first
            taken[rows, first] = True
            blocked = blocked | near[rows, first] | taken
        return chosen

    # -- continuous refinement -----------------------------------------------------------------------
    def refine(self, prepared: PreparedImages, candidates: Candidates) -> Candidates:
        """Joint refinement of amplitudes, rotations and shifts, coarse to fine; returns the best per image."""
        s = self.settings
        current = candidates
        for stage, (resolution, steps, keep) in enumerate(zip(s.refine_resolutions, s.refine_steps,
                                                              s.refine_keep)):
            band = FourierBand.make(self.box, self.radius(resolution), self.device)
            images, ctf = prepared.band(band)
            current = self._refine_stage(images, ctf, band, current, steps, s.learning_rate / (1 + stage))
            order = current.scores.argsort(dim=1, descending=True)[:, :keep]
            current = _gather_candidates(current, order)
        return current

    def _refine_stage(self, images: torch.Tensor, ctf: torch.Tensor, band: FourierBand, start: Candidates,
                      steps: int, learning_rate: float) -> Candidates:
        batch, count = start.shifts.shape[:2]
        flat = batch * count
        rot0 = start.rotations.reshape(flat, 3, 3).detach()
        shift0 = start.shifts.reshape(flat, 2).detach()
        amp0 = start.amplitudes.reshape(flat, -1).detach()
        images = images[:, None, :].expand(-1, count, -1).reshape(flat, -1)
        ctf = ctf[:, None, :].expand(-1, count, -1).reshape(flat, -1)
        p_amp = torch.zeros_like(amp0, requires_grad=True)
        p_rot = torch.zeros(flat, 3, dtype=self.dtype, device=self.device, requires_grad=True)
        p_shift = torch.zeros_like(shift0, requires_grad=True)
        optimiser = torch.optim.Adam([p_amp, p_rot, p_shift], lr=learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1.0 - 0.9 * i / max(steps, 1))

        def current():
            amplitudes = amp0 + p_amp * self.amplitude_unit
            rotations = small_rotation(p_rot * self.rotation_unit) @ rot0
            shifts = shift0 + p_shift * self.shift_unit
            return amplitudes, rotations, shifts

        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            amplitudes, rotations, shifts = current()
            model = self.project_band(amplitudes, rotations, shifts, band) * ctf
            loss = -ncc(model, images).sum()
            loss.backward()
            optimiser.step()
            schedule.step()
        with torch.no_grad():
            amplitudes, rotations, shifts = current()
            model = self.project_band(amplitudes, rotations, shifts, band) * ctf
            scores = ncc(model, images)
        return Candidates(rotations.reshape(batch, count, 3, 3), shifts.reshape(batch, count, 2),
                          amplitudes.reshape(batch, count, -1), scores.reshape(batch, count))

    # -- whole batches --------------------------------------------------------------------------------
    def align(self, images: torch.Tensor, ctf_params: Optional[CTFParams] = None,
              initial: Optional[Dict[str, np.ndarray]] = None,
              hypotheses: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Align ``(B, box, box)`` images: global search, or local mode when ``initial`` holds ``angles`` (B, 3)
        deg, ``shifts`` (B, 2) px and optionally ``amplitudes`` (B, M), or guided mode when ``hypotheses``
        holds ``angles`` (B, H, 3) deg and ``shifts`` (B, 2) px to search around (and optionally predicted
        ``amplitudes`` (B, M) to start from where they score higher). Returns numpy ``angles``, ``shifts``,
        ``amplitudes``, ``score`` (NCC at the finest resolution)."""
        images = torch.as_tensor(images, dtype=self.dtype).to(self.device)
        prepared = prepare_images(images, ctf_params, self.pixel_size, self.settings.ctf_mode)
        if initial is not None:
            candidates = self._initial_candidates(initial, images.shape[0])
        elif hypotheses is not None:
            batch = images.shape[0]
            matrices = euler_to_matrix(np.asarray(hypotheses['angles'], dtype=np.float64).reshape(batch, -1, 3))
            centres = np.asarray(hypotheses['shifts'], dtype=np.float64).reshape(batch, 2)
            amplitudes = hypotheses.get('amplitudes')
            candidates = self.guided_search(prepared, torch.as_tensor(matrices, dtype=self.dtype),
                                            torch.as_tensor(centres, dtype=self.dtype),
                                            None if amplitudes is None else torch.as_tensor(
                                                np.asarray(amplitudes).reshape(batch, -1), dtype=self.dtype))
        else:
            candidates = self.global_search(prepared)
        best = self.refine(prepared, candidates)
        rotations = best.rotations[:, 0].detach().double().cpu().numpy()
        return {'angles': matrix_to_euler(rotations), 'shifts': best.shifts[:, 0].detach().double().cpu().numpy(),
                'amplitudes': best.amplitudes[:, 0].detach().double().cpu().numpy(),
                'score': best.scores[:, 0].detach().double().cpu().numpy()}

    def _initial_candidates(self, initial: Dict[str, np.ndarray], batch: int) -> Candidates:
        angles = np.asarray(initial['angles'], dtype=np.float64).reshape(batch, 3)
        shifts = np.asarray(initial['shifts'], dtype=np.float64).reshape(batch, 2)
        amplitudes = initial.get('amplitudes')
        amplitudes = np.zeros((batch, self.reference.num_modes)) if amplitudes is None else \
            np.asarray(amplitudes, dtype=np.float64).reshape(batch, -1)
        as_tensor = (lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)[:, None])
        return Candidates(as_tensor(euler_to_matrix(angles)), as_tensor(shifts), as_tensor(amplitudes))


def _gather_candidates(candidates: Candidates, order: torch.Tensor) -> Candidates:
    def take(values: torch.Tensor) -> torch.Tensor:
        index = order.reshape(order.shape + (1,) * (values.ndim - 2)).expand(order.shape + values.shape[2:])
        return values.gather(1, index)
    return Candidates(take(candidates.rotations), take(candidates.shifts), take(candidates.amplitudes),
                      candidates.scores.gather(1, order))
