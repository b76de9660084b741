"""Atoms -> 3D Coulomb-potential maps with electron scattering factors (voxel-averaged, mass-conserving).

Maps are ``(box, box, box)`` arrays indexed ``[z, y, x]``; the voxel ``box // 2`` on each axis is the origin of
the atom coordinates (Angstrom, already centred). Each atom is a sum of 5 Gaussians (Peng 1996, see
:mod:`deephemnma.molecule.scattering`); every Gaussian is integrated exactly over each voxel (a product of erf
differences), so even Gaussians much narrower than a voxel keep their integral. The value of a voxel is the
integral of the potential over the voxel divided by the voxel volume.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch

from deephemnma.molecule.scattering import gaussian_parameters, gaussian_variances


def voxel_fractions(distance_px: torch.Tensor, sigma_px: torch.Tensor | float) -> torch.Tensor:
    """Integral of a unit 1D Gaussian of standard deviation ``sigma_px`` over the unit voxel whose centre lies
    ``distance_px`` from the Gaussian's centre (pixels; broadcast): ``(erf((d + 1/2) / (sqrt 2 s)) - erf((d -
    1/2) / (sqrt 2 s))) / 2``. The one voxel-integration rule of atom, bead and pseudoatom maps; differentiable."""
    scale = 1.0 / (math.sqrt(2.0) * sigma_px)
    return 0.5 * (torch.erf((distance_px + 0.5) * scale) - torch.erf((distance_px - 0.5) * scale))


def _axis_weights(positions_px: torch.Tensor, sigmas_px: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Integral over unit voxels of 1D unit Gaussians: ``(N, K, W)`` for voxels ``floor(pos) + offsets``."""
    base = torch.floor(positions_px)[:, None, None] + offsets[None, None, :]
    return voxel_fractions(base - positions_px[:, None, None], sigmas_px[:, :, None])


def atoms_to_map(coords: np.ndarray, elements: Iterable[str], box: int, pixel_size: float,
                 bfactor: float = 0.0, weights: Optional[np.ndarray] = None, chunk: int = 4096,
                 device: str = 'cpu') -> np.ndarray:
    """Scattering-potential map of atoms at ``coords`` (N, 3) Angstrom, centred on voxel ``box // 2``.

    ``bfactor`` (Angstrom^2) blurs every atom; ``weights`` (N,) scales atoms (default 1). Returns float32
    ``(box, box, box)`` indexed ``[z, y, x]``, in units of Angstrom^-2 (scattering amplitude per voxel volume).
    """
    a, b = gaussian_parameters(list(elements), bfactor)
    return gaussians_to_map(coords, a, np.sqrt(gaussian_variances(b)), box, pixel_size, weights, chunk, device)


def gaussians_to_map(coords: np.ndarray, amplitudes: np.ndarray, sigmas: np.ndarray, box: int, pixel_size: float,
                     weights: Optional[np.ndarray] = None, chunk: int = 4096, device: str = 'cpu') -> np.ndarray:
    """Map of isotropic Gaussian mixtures: atom ``j`` is ``sum_k amplitudes[j,k] N(coords_j, sigmas[j,k]^2)``.

    ``coords`` (N, 3) Angstrom; ``amplitudes`` (N, K) integrals; ``sigmas`` (N, K) Angstrom. Used for atoms
    (Peng's 5 Gaussians) and for pseudoatoms (one Gaussian each).
    """
    dev = torch.device(device)
    positions = torch.as_tensor(np.asarray(coords, dtype=np.float64), device=dev) / pixel_size + box // 2
    amps = torch.as_tensor(np.asarray(amplitudes, dtype=np.float64), device=dev)
    if weights is not None:
        amps = amps * torch.as_tensor(np.asarray(weights, dtype=np.float64), device=dev)[:, None]
    sig = torch.as_tensor(np.asarray(sigmas, dtype=np.float64), device=dev) / pixel_size
    half = int(math.ceil(4.0 * float(sig.max()) + 1.0)) if sig.numel() else 1
    offsets = torch.arange(-half, half + 1, device=dev, dtype=torch.float64)
    volume = torch.zeros(box ** 3, dtype=torch.float64, device=dev)
    for start in range(0, positions.shape[0], chunk):
        _splat_chunk(volume, positions[start:start + chunk], amps[start:start + chunk],
                     sig[start:start + chunk], offsets, box)
    voxel_volume = pixel_size ** 3
    return (volume.reshape(box, box, box) / voxel_volume).to(torch.float32).cpu().numpy()


def _splat_chunk(volume: torch.Tensor, positions: torch.Tensor, amps: torch.Tensor, sig: torch.Tensor,
                 offsets: torch.Tensor, box: int) -> None:
    wx, wy, wz = (_axis_weights(positions[:, i], sig, offsets) for i in range(3))
    values = torch.einsum('nk,nkx,nky,nkz->nzyx', amps, wx, wy, wz)
    base = torch.floor(positions).long()
    ix = base[:, 0, None] + offsets.long()[None, :]
    iy = base[:, 1, None] + offsets.long()[None, :]
    iz = base[:, 2, None] + offsets.long()[None, :]
    inside = ((iz[:, :, None, None] >= 0) & (iz[:, :, None, None] < box) & (iy[:, None, :, None] >= 0)
              & (iy[:, None, :, None] < box) & (ix[:, None, None, :] >= 0) & (ix[:, None, None, :] < box))
    flat = (iz[:, :, None, None] * box + iy[:, None, :, None]) * box + ix[:, None, None, :]
    volume.index_add_(0, flat[inside], values[inside])
