"""Batched, differentiable projection of Gaussian-mixture atoms, computed exactly in Fourier space.

Every atom is a sum of isotropic 3D Gaussians (Peng's 5 per element, or one per coarse bead/pseudoatom). The
projection of a 3D Gaussian of integral ``a`` and per-axis variance ``v`` is a 2D Gaussian whose Fourier
transform is ``a exp(-2 pi^2 v |k|^2)`` (``= a exp(-b |k|^2 / 4)`` with Peng's ``b = 8 pi^2 v``). Atoms that
share a form factor ("types") are grouped: per type the structure factor
``S_t(ky, kx) = sum_j w_j exp(-2 pi i (kx x_j + ky y_j))`` is one batched complex matmul of separable
exponentials ``(B, H, N_t) @ (B, N_t, W)``; the image transform is ``sum_t g_t(|k|) S_t`` times the shift phases
and the CTF. The result is the projection band-limited at Nyquist (no aliasing), sampled at pixel centres.

Conventions (see :mod:`deephemnma.imaging.rotations`): an atom at ``r`` (Angstrom, from the box centre) goes to
the image point ``((A r)_x, (A r)_y)``; x is the column, y the row; the origin is pixel ``(box//2, box//2)``.
A recorded shift ``s`` (pixels, Xmipp) brings the particle back to the centre, so the particle is drawn at
``-s``. Image scale: pixel values are projected potential per area, i.e. ``sum of a_i`` (Angstrom) per atom
divided by the pixel area (Angstrom^2): the image sums to ``sum_j w_j sum_i a_i / pixel_size^2``.

Two classes compute this: :class:`FourierProjector` (complex, differentiable, any atom model: the aligner) and
:class:`DirectProjector` (real arithmetic, forward only, one model on one grid: the simulator's fast path).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from deephemnma.molecule.scattering import gaussian_parameters, gaussian_variances


def _floating(values) -> torch.Tensor:
    """A floating tensor (float64 for non-tensor input; tensors keep their floating dtype)."""
    if isinstance(values, torch.Tensor) and values.is_floating_point():
        return values
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


@dataclass
class AtomModel:
    """Form factors of the atoms of a model, grouped in types.

    ``amplitudes`` (T, K) Angstrom and ``variances`` (T, K) Angstrom^2: the K Gaussians of each type (integral
    and per-axis real-space variance; zero amplitudes pad types with fewer Gaussians); ``types`` (N,) the type
    of each atom; ``weights`` (N,) a per-atom scale (1 for atoms, the weight of a pseudoatom);
    ``atom_variances`` (N,) Angstrom^2, optional, one more isotropic Gaussian blur per atom (beads of different
    widths share one type and one matmul: the blur is separable in kx and ky).
    """

    amplitudes: torch.Tensor
    variances: torch.Tensor
    types: torch.Tensor
    weights: torch.Tensor
    atom_variances: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        self.amplitudes = _floating(self.amplitudes)
        self.amplitudes = self.amplitudes.reshape(-1, self.amplitudes.shape[-1])
        self.variances = _floating(self.variances).reshape(self.amplitudes.shape)
        self.types = torch.as_tensor(self.types, dtype=torch.long).reshape(-1)
        self.weights = _floating(self.weights).reshape(-1)
        if self.weights.shape != self.types.shape:
            raise ValueError(f'AtomModel: {len(self.weights)} weights for {len(self.types)} atoms')
        if self.atom_variances is not None:
            self.atom_variances = _floating(self.atom_variances).reshape(-1)
            if self.atom_variances.shape != self.types.shape:
                raise ValueError(f'AtomModel: {len(self.atom_variances)} atom variances for {len(self.types)} atoms')

    @property
    def num_types(self) -> int:
        return int(self.amplitudes.shape[0])

    @classmethod
    def from_gaussians(cls, amplitudes: np.ndarray, variances: np.ndarray,
                       weights: Optional[np.ndarray] = None) -> 'AtomModel':
        """Per-atom Gaussians ``amplitudes`` (N, K) Angstrom, ``variances`` (N, K) Angstrom^2, grouped by rows."""
        amps = np.asarray(amplitudes, dtype=np.float64).reshape(len(amplitudes), -1)
        var = np.asarray(variances, dtype=np.float64).reshape(amps.shape)
        table = np.concatenate([amps, var], axis=1)
        unique, inverse = np.unique(np.round(table, 10), axis=0, return_inverse=True)
        k = amps.shape[1]
        w = np.ones(len(amps)) if weights is None else np.asarray(weights, dtype=np.float64)
        return cls(torch.as_tensor(unique[:, :k]), torch.as_tensor(unique[:, k:]),
                   torch.as_tensor(inverse.reshape(-1)), torch.as_tensor(w))

    @classmethod
    def from_elements(cls, elements: Sequence[str], bfactor: float = 0.0) -> 'AtomModel':
        """All-atom model: Peng's 5 Gaussians per element (:mod:`deephemnma.molecule.scattering`)."""
        a, b = gaussian_parameters(list(elements), bfactor)
        return cls.from_gaussians(a, gaussian_variances(b))

    @classmethod
    def beads(cls, weights: np.ndarray, sigma: float | np.ndarray) -> 'AtomModel':
        """One Gaussian per bead of integral ``weights`` (N,) and standard deviation ``sigma`` (Angstrom)."""
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), w.shape)
        return cls(torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(len(w), dtype=torch.long), torch.as_tensor(w),
                   torch.as_tensor(sig ** 2))

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> 'AtomModel':
        variances = None if self.atom_variances is None else self.atom_variances.to(device, dtype)
        return AtomModel(self.amplitudes.to(device, dtype), self.variances.to(device, dtype),
                         self.types.to(device), self.weights.to(device, dtype), variances)


def form_factors(model: AtomModel, k2: torch.Tensor) -> torch.Tensor:
    """``(T,) + k2.shape`` projected form factors ``sum_i a_i exp(-2 pi^2 v_i k^2)`` at ``k2`` (1/Angstrom^2)."""
    amps = model.amplitudes.to(k2.device, k2.dtype)
    var = model.variances.to(k2.device, k2.dtype)
    shape = (amps.shape[0], amps.shape[1]) + (1,) * k2.ndim
    return (amps.reshape(shape) * torch.exp(-2.0 * math.pi ** 2 * var.reshape(shape) * k2)).sum(dim=1)


def fourier_indices(box: int, radius: Optional[float] = None, device: torch.device = torch.device('cpu')):
    """Integer frequency indices ``(iy (H,), ix (W,))`` of the rfft grid of a ``box`` image, optionally cropped.

    Without ``radius`` this is the full rfft grid (``fftfreq * box`` rows, ``rfftfreq * box`` columns); with a
    ``radius`` (Fourier pixels) only rows and columns with ``|i| <= radius`` are kept, in the same order as
    :func:`crop_rfft` keeps them.
    """
    iy = torch.fft.fftfreq(box, d=1.0 / box, device=device).round().long()
    ix = torch.fft.rfftfreq(box, d=1.0 / box, device=device).round().long()
    if radius is not None:
        iy = iy[iy.abs() <= radius]
        ix = ix[ix <= radius]
    return iy, ix


def crop_rfft(transforms: torch.Tensor, radius: float) -> torch.Tensor:
    """Keep rows/columns ``|i| <= radius`` of ``(..., box, box//2+1)`` rfft2 arrays (order of fourier_indices)."""
    box = transforms.shape[-2]
    iy, ix = fourier_indices(box, radius, transforms.device)
    rows = torch.where(iy >= 0, iy, iy + box)
    return transforms[..., rows, :][..., :len(ix)]


class Projector(abc.ABC):
    """The projection interface: the 2D DFT of projections of one atom model on one grid.

    :meth:`project` takes ``coords`` (N, 3) or (B, N, 3) Angstrom (centred on the box centre), Xmipp rotation
    matrices ``rotations`` (B, 3, 3) and shifts (B, 2) pixels (Xmipp: the particle is drawn at ``-shift``) or
    None, and returns the unnormalised DFT (as ``torch.fft.rfft2`` gives it) of the projections, complex, on the
    projector's rfft grid (full, or cropped to a band). Implementations: :class:`FourierProjector` (any model,
    differentiable: the aligner) and :class:`DirectProjector` (atoms, forward only, fast: the simulator).
    """

    box: int
    pixel_size: float

    @abc.abstractmethod
    def project(self, coords: torch.Tensor, rotations: torch.Tensor, shifts: Optional[torch.Tensor]) -> torch.Tensor:
        """DFT ``(B, H, W)`` of the projections (see the class docstring)."""


class ProjectorCache:
    """Projectors of one model, each made once per grid and kept: ``cache(box, pixel_size, radius, device,
    dtype)`` calls ``make`` with the same arguments the first time (building a projector precomputes its
    frequency grid and form factors)."""

    def __init__(self, make: Callable[[int, float, Optional[float], torch.device, torch.dtype], Projector]):
        self._make = make
        self._made: Dict[tuple, Projector] = {}

    def __call__(self, box: int, pixel_size: float, radius: Optional[float] = None,
                 device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32) -> Projector:
        key = (int(box), float(pixel_size), None if radius is None else float(radius), str(device), dtype)
        if key not in self._made:
            self._made[key] = self._make(int(box), float(pixel_size), radius, torch.device(device), dtype)
        return self._made[key]


class FourierProjector(Projector):
    """Complex, differentiable projections of one atom model on one (cropped) rfft grid: the aligner's forward model.

    The frequency grid, the projected form factors, the atoms of each type and their blur factors depend only on
    the model, ``box`` (pixels), ``pixel_size`` (Angstrom) and ``radius`` (Fourier pixels, see
    :func:`fourier_indices`), so they are computed once here and reused by every call (an optimisation step, a
    chunk of library templates).
    """

    def __init__(self, model: AtomModel, box: int, pixel_size: float, radius: Optional[float] = None,
                 device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32,
                 atom_chunk: int = 8192):
        self.box, self.pixel_size, self.dtype = int(box), float(pixel_size), dtype
        self.device = torch.device(device)
        iy, ix = fourier_indices(self.box, radius, self.device)
        self.fy = iy.to(dtype) / self.box        # cycles per pixel, (H,)
        self.fx = ix.to(dtype) / self.box        # (W,)
        k2 = (self.fy[:, None] ** 2 + self.fx[None, :] ** 2) / self.pixel_size ** 2
        factors = form_factors(model, k2).to(dtype) / self.pixel_size ** 2   # (T, H, W), per pixel area
        model = model.to(self.device, dtype)
        types = model.types.cpu()
        #: (factor (H, W), atom indices (n,), magnitude along x (1, W, n), along y (1, H, n)) per atom group.
        self.groups = []
        for t in range(model.num_types):
            members = torch.nonzero(types == t).reshape(-1)
            for start in range(0, len(members), atom_chunk):
                idx = members[start:start + atom_chunk].to(self.device)
                magnitude_x, magnitude_y = _atom_magnitudes(model, idx, self.fx / self.pixel_size,
                                                            self.fy / self.pixel_size)
                self.groups.append((factors[t], idx, magnitude_x, magnitude_y))

    def project(self, coords: torch.Tensor, rotations: torch.Tensor, shifts: Optional[torch.Tensor],
                ctf: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised DFT (as ``torch.fft.rfft2`` would give) of the projections, complex ``(B, H, W)``.

        ``coords`` (N, 3) or (B, N, 3) Angstrom, centred; ``rotations`` (B, 3, 3) Xmipp matrices; ``shifts``
        (B, 2) pixels (Xmipp: particle drawn at ``-shift``) or None; ``ctf`` (B, H, W) on this grid, multiplied
        in. Differentiable in ``coords``, ``rotations`` and ``shifts``.
        """
        batch = rotations.shape[0]
        coords = coords.to(self.device, self.dtype)
        if coords.ndim == 2:
            coords = coords.unsqueeze(0).expand(batch, -1, -1)
        # Image-plane coordinates in pixels from pixel 0: (A r)_x, (A r)_y plus the centre.
        planar = torch.einsum('bij,bnj->bni', rotations[:, :2, :], coords) / self.pixel_size + self.box // 2
        if shifts is not None:
            planar = planar - shifts.to(self.device, self.dtype)[:, None, :]
        real = torch.zeros(batch, len(self.fy), len(self.fx), dtype=self.dtype, device=self.device)
        imag = torch.zeros_like(real)
        for factor, idx, magnitude_x, magnitude_y in self.groups:
            # exp(-i a) exp(-i b) = (cos a cos b - sin a sin b) - i (sin a cos b + cos a sin b), in real bmms
            # whose operands both run over the atoms last (on a CPU the forward products take half the time they
            # take with the x factors laid out (B, n, W); forward and backward together, about the same).
            angle_x = (2.0 * math.pi) * self.fx[:, None] * planar[:, None, idx, 0]          # (B, W, n)
            angle_y = (2.0 * math.pi) * self.fy[:, None] * planar[:, None, idx, 1]          # (B, H, n)
            cos_x = (magnitude_x * torch.cos(angle_x)).transpose(1, 2)
            sin_x = (magnitude_x * torch.sin(angle_x)).transpose(1, 2)
            cos_y, sin_y = magnitude_y * torch.cos(angle_y), magnitude_y * torch.sin(angle_y)
            real = real + factor * (torch.bmm(cos_y, cos_x) - torch.bmm(sin_y, sin_x))
            imag = imag - factor * (torch.bmm(sin_y, cos_x) + torch.bmm(cos_y, sin_x))
        total = torch.complex(real, imag)
        return total if ctf is None else total * ctf.to(self.device, self.dtype)


def project_fourier(coords: torch.Tensor, model: AtomModel, rotations: torch.Tensor, shifts: Optional[torch.Tensor],
                    box: int, pixel_size: float, radius: Optional[float] = None,
                    ctf: Optional[torch.Tensor] = None, atom_chunk: int = 8192) -> torch.Tensor:
    """One call of a :class:`FourierProjector` made for it, on the device and in the dtype of ``rotations``."""
    projector = FourierProjector(model, box, pixel_size, radius, rotations.device, rotations.dtype, atom_chunk)
    return projector.project(coords, rotations, shifts, ctf)


def _atom_magnitudes(model: AtomModel, idx: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor):
    """Separable per-atom factors: ``(1, W, n)`` weight x blur along kx and ``(1, H, n)`` blur along ky."""
    weights = model.weights[idx]
    if model.atom_variances is None:
        return weights[None, None, :].expand(1, len(kx), -1), torch.ones(1, len(ky), len(idx), dtype=kx.dtype,
                                                                            device=kx.device)
    variances = model.atom_variances[idx]
    blur_x = torch.exp(-2.0 * math.pi ** 2 * kx[:, None] ** 2 * variances[None, :])
    blur_y = torch.exp(-2.0 * math.pi ** 2 * ky[:, None] * ky[:, None] * variances[None, :])
    return (weights[None, :] * blur_x)[None], blur_y[None]


def project_atoms(coords: torch.Tensor, model: AtomModel, rotations: torch.Tensor, shifts: Optional[torch.Tensor],
                  box: int, pixel_size: float, ctf: Optional[torch.Tensor] = None,
                  atom_chunk: int = 8192) -> torch.Tensor:
    """Projections ``(B, box, box)`` of the atoms (potential per area, 1/Angstrom; see the module docstring).

    ``coords`` (N, 3) or (B, N, 3) Angstrom centred; ``model`` the atoms' form factors; ``rotations``
    (B, 3, 3); ``shifts`` (B, 2) pixels or None; ``ctf`` optional (B, box, box//2+1) rfft-grid CTF.
    """
    transform = project_fourier(coords, model, rotations, shifts, box, pixel_size, None, ctf, atom_chunk)
    return torch.fft.irfft2(transform, s=(box, box))


class DirectProjector(Projector):
    """Exact Fourier-space projections of one atom model on one image grid, specialised for fast simulation.

    The same mathematics as :func:`project_fourier` (separable exponentials per
    atom type, times the types' projected form factors, divided by the pixel area; same conventions, same
    result to float32 rounding, checked in the tests) arranged for forward-only speed: real arithmetic with
    ``cos``/``sin`` tables, the atoms sorted by type once, and the rows ``+ky`` and ``-ky`` both obtained from
    one real product ``[cos; sin](ky) @ [cos, sin](kx)`` over ``ky >= 0`` per type (half the work of the
    complex product over all rows). ``coords`` (N, 3) Angstrom centred and ``vectors`` (M, N, 3) are stored in
    that sorted order (:attr:`coords`, :attr:`vectors`), so deform with them before calling :meth:`project`. Work arrays
    are reused between calls, so one projector must not be used by several threads at once.
    """

    def __init__(self, coords: np.ndarray, vectors: np.ndarray, model: AtomModel, box: int, pixel_size: float,
                 device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32):
        if model.atom_variances is not None:
            raise ValueError('DirectProjector handles atoms with per-type form factors only')
        types = model.types.cpu().numpy()
        order = np.argsort(types, kind='stable')
        self.box, self.pixel_size, self.device, self.dtype = int(box), float(pixel_size), device, dtype
        self.coords = torch.as_tensor(np.asarray(coords)[order], dtype=dtype, device=device)
        self.vectors = torch.as_tensor(np.asarray(vectors)[:, order], dtype=dtype, device=device)
        counts = np.bincount(types, minlength=model.num_types)
        stops = np.cumsum(counts)
        self.bounds = [(t, int(stop - count), int(stop)) for t, (count, stop) in enumerate(zip(counts, stops))
                       if count]
        weights = model.weights.cpu().numpy()[order]
        self.weights = None if np.all(weights == 1.0) else torch.as_tensor(weights, dtype=dtype, device=device)
        half = self.box // 2
        k = torch.arange(half + 1, device=device, dtype=torch.float64)
        k2 = (k[:, None] ** 2 + k[None, :] ** 2) / (self.box * self.pixel_size) ** 2
        factors = form_factors(model, k2) / self.pixel_size ** 2  # (T, ky >= 0, kx >= 0)
        self.factors = factors.repeat(1, 2, 2).to(dtype)  # one copy per block of [cos; sin](y) x [cos, sin](x)
        rows = torch.fft.fftfreq(self.box, d=1.0 / self.box, device=device).round().long()
        # Output row i takes row |ky| of the +ky block (ky >= 0) or of the -ky block (stacked after it).
        self._row_index = torch.where(rows >= 0, rows, half + 1 - rows)
        self._frequencies = k.to(dtype) * (2.0 * math.pi / self.box)
        self._buffers: dict = {}

    def _buffer(self, name: str, shape: Tuple[int, ...]) -> torch.Tensor:
        """A work array kept between calls of the same batch size: large fresh allocations cost page faults."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._buffers[name] = buffer
        return buffer

    def project(self, coords: torch.Tensor, rotations: torch.Tensor, shifts: Optional[torch.Tensor]) -> torch.Tensor:
        """rfft2 ``(B, box, box // 2 + 1)`` of the projections of ``coords`` (B, N, 3) in :attr:`coords` order,
        rotated by ``rotations`` (B, 3, 3), particles drawn at ``-shifts`` (B, 2) pixels."""
        # planar[0] = x (columns), planar[1] = y (rows), in pixels from pixel 0: (2, B, N).
        planar = torch.einsum('bij,bnj->ibn', rotations[:, :2, :], coords) / self.pixel_size + self.box // 2
        if shifts is not None:
            planar = planar - shifts.T[:, :, None]
        width = len(self._frequencies)
        phase = torch.mul(planar[..., None], self._frequencies, out=self._buffer('phase', planar.shape + (width,)))
        table = self._buffer('table', planar.shape + (2 * width,))
        torch.cos(phase, out=table[..., :width])  # table[axis] = [cos | sin] of x (0) or y (1)
        torch.sin(phase, out=table[..., width:])
        if self.weights is not None:
            table[0] *= self.weights[None, :, None]
        blocks = torch.zeros(len(coords), 2 * width, 2 * width, dtype=phase.dtype, device=phase.device)
        for t, start, stop in self.bounds:
            product = torch.bmm(table[1, :, start:stop].transpose(1, 2), table[0, :, start:stop])
            blocks.addcmul_(product, self.factors[t])
        cc, cs = blocks[:, :width, :width], blocks[:, :width, width:]
        sc, ss = blocks[:, width:, :width], blocks[:, width:, width:]
        # exp(-i(a + b)) = (cos a cos b - sin a sin b) - i (sin a cos b + cos a sin b); -ky flips sin(ky).
        plus = torch.complex(cc - ss, -(cs + sc))
        minus = torch.complex(cc + ss, sc - cs)
        return torch.index_select(torch.cat([plus, minus], dim=1), 1, self._row_index)
