"""EM map -> pseudoatoms: isotropic 3D Gaussians approximating the map to a chosen error (Jonic & Sorzano 2016).

All pseudoatoms share one standard deviation ``sigma`` (Angstrom; ContinuousFlex's default is 1 voxel); each has a
position and a weight (its integral, map units x Angstrom^3). Growth: Gaussians are added at the largest
local maxima of the residual map (map minus model), then all positions and weights are refined together by
L-BFGS (torch) on the squared error; the model grows until the relative error
``||map - model|| / ||map||`` reaches the target (or ``max_atoms``). Gaussians are integrated exactly over
voxels (erf), as in :func:`deephemnma.molecule.density.gaussians_to_map`.

Coordinates are in Angstrom from the map centre (voxel ``box // 2`` on each axis), like atoms in
:mod:`deephemnma.molecule.density`. As a :class:`Structure` (for NMA and PDB files, Xmipp's layout), each
pseudoatom is an atom ``DENS`` of residue ``DENS`` numbered 1, 2, ... with its weight in the B-factor column
and the header lines ``REMARK xmipp_convert_vol2pseudo`` / ``REMARK fixedGaussian SIGMA`` /
``REMARK intensityColumn Bfactor``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from deephemnma.molecule.density import gaussians_to_map, voxel_fractions
from deephemnma.molecule.structure import Structure, read_structure, write_structure
from deephemnma.runtime.errors import InputError

PSEUDO_NAME = 'DENS'
#: ContinuousFlex's default pseudoatom Gaussian standard deviation, in voxels.
DEFAULT_SIGMA_VOXELS = 1.0
#: ContinuousFlex's default target approximation error (relative).
DEFAULT_TARGET_ERROR = 0.05
#: Growth stops early when STALL_ROUNDS rounds lower the error by less than the fraction STALL_GAIN (the
#: target is then out of reach with this sigma, e.g. a map sharper than the Gaussians).
STALL_ROUNDS = 2
STALL_GAIN = 0.01


@dataclass
class PseudoAtoms:
    """Pseudoatoms: coords (P, 3) Angstrom from the map centre, weights (P,) integrals, a common sigma (Angstrom)."""

    coords: np.ndarray
    weights: np.ndarray
    sigma: float
    relative_error: float = float('nan')

    def __len__(self) -> int:
        return len(self.coords)

    def to_structure(self) -> Structure:
        """The pseudoatoms as a Structure (Xmipp's pseudoatom PDB layout; weight in the B-factor column)."""
        n = len(self)
        return Structure(coords=self.coords, elements=np.full(n, 'C', dtype=object),
                         atom_names=np.full(n, PSEUDO_NAME, dtype=object),
                         residue_names=np.full(n, PSEUDO_NAME, dtype=object),
                         residue_numbers=np.arange(1, n + 1), chain_ids=np.full(n, 'A', dtype=object),
                         b_factors=self.weights,
                         remarks=['xmipp_convert_vol2pseudo', f'fixedGaussian {self.sigma:.6f}',
                                  'intensityColumn Bfactor'])

    def to_map(self, box: int, pixel_size: float) -> np.ndarray:
        """The model's map (box, box, box) ``[z, y, x]`` on a grid of ``pixel_size`` Angstrom."""
        return gaussians_to_map(self.coords, self.weights[:, None], np.full((len(self), 1), self.sigma),
                                box, pixel_size)

    def write(self, path: str | os.PathLike) -> None:
        """Write as a PDB (or mmCIF) file."""
        write_structure(path, self.to_structure())


def read_pseudoatoms(path: str | os.PathLike) -> PseudoAtoms:
    """Read a pseudoatom PDB written by :meth:`PseudoAtoms.write` or by Xmipp (sigma from ``fixedGaussian``)."""
    sigma = None
    with open(path, errors='replace') as handle:
        for line in handle:
            if line.startswith('REMARK') and 'fixedGaussian' in line:
                sigma = float(line.split()[-1])
                break
    if sigma is None:
        raise InputError(f'{path}: not a pseudoatom file (no "REMARK fixedGaussian SIGMA" line)')
    structure = read_structure(path, remove_hydrogens=False, remove_waters=False)
    return PseudoAtoms(coords=structure.coords, weights=structure.b_factors, sigma=sigma)


def _axis_weights(positions: torch.Tensor, sigma: float, box: int) -> torch.Tensor:
    """(P, box): integral of a unit 1D Gaussian (sigma in voxels) over each voxel of one axis."""
    grid = torch.arange(box, dtype=positions.dtype, device=positions.device)
    return voxel_fractions(grid[None, :] - positions[:, None], sigma)


def render(positions: torch.Tensor, masses: torch.Tensor, sigma: float, box: int, chunk: int = 2048) -> torch.Tensor:
    """Map (box, box, box) ``[z, y, x]`` of Gaussians at ``positions`` (P, 3) in voxels (x, y, z) with integrals
    ``masses`` (P,) in voxel units; differentiable."""
    volume = positions.new_zeros(box, box * box)
    for start in range(0, len(positions), chunk):
        p = positions[start:start + chunk]
        wx, wy, wz = (_axis_weights(p[:, k], sigma, box) for k in range(3))
        plane = (masses[start:start + chunk, None, None] * wy[:, :, None] * wx[:, None, :]).reshape(len(p), -1)
        volume = volume + wz.T @ plane
    return volume.reshape(box, box, box)


def _residual_peaks(residual: torch.Tensor, allowed: torch.Tensor, count: int) -> torch.Tensor:
    """Voxel positions (K, 3) (x, y, z) of the ``count`` largest positive local maxima of the residual."""
    pooled = F.max_pool3d(residual[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    peaks = (residual == pooled) & (residual > 0) & allowed
    values = torch.where(peaks, residual, torch.zeros_like(residual)).reshape(-1)
    count = min(count, int(peaks.sum()))
    if count == 0:
        return residual.new_zeros(0, 3)
    top = torch.topk(values, count).indices
    box = residual.shape[0]
    z, y, x = top // (box * box), (top // box) % box, top % box
    return torch.stack([x, y, z], dim=1).to(residual.dtype)


def _refine(volume: torch.Tensor, positions: torch.Tensor, masses: torch.Tensor, sigma: float,
            iterations: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS on positions (voxels) and square-root masses (masses stay >= 0) minimising the squared error."""
    pos = positions.clone().requires_grad_(True)
    root = masses.clamp_min(0).sqrt().requires_grad_(True)
    optimiser = torch.optim.LBFGS([pos, root], lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn='strong_wolfe', tolerance_grad=1e-10, tolerance_change=1e-12)
    box = volume.shape[0]

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = ((render(pos, root ** 2, sigma, box) - volume) ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return pos.detach(), (root ** 2).detach()


def _stalled(errors: List[float], rounds: int = STALL_ROUNDS, gain: float = STALL_GAIN) -> bool:
    """True when the last ``rounds`` rounds lowered the error by less than the fraction ``gain``."""
    return len(errors) > rounds and errors[-1] > (1.0 - gain) * errors[-1 - rounds]


def map_to_pseudoatoms(volume: np.ndarray, pixel_size: float, sigma: Optional[float] = None,
                       target_error: float = DEFAULT_TARGET_ERROR, threshold: Optional[float] = None,
                       max_atoms: int = 50000, growth: float = 0.3, iterations: int = 100, device: str = 'cpu',
                       progress: Optional[Callable[[int, float], None]] = None) -> PseudoAtoms:
    """Approximate a cubic map ``[z, y, x]`` by Gaussians of standard deviation ``sigma`` (Angstrom).

    sigma: default ``DEFAULT_SIGMA_VOXELS`` voxels; target_error: relative L2 error ||map - model|| / ||map||
    at which growth stops; threshold: map value below which no pseudoatom is seeded (default: 5 % of the map
    maximum); growth: fraction of the current number of pseudoatoms added per round; iterations: L-BFGS
    iterations per round; progress(count, error) is called after each round. Growth also stops when the error
    stalls (see STALL_ROUNDS); the result's ``relative_error`` says what was reached.
    """
    data = np.asarray(volume, dtype=np.float64)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f'a cubic 3D map is needed, not an array of shape {data.shape}')
    if not np.isfinite(data).all() or data.max() <= 0:
        raise InputError('the map has no positive density (or non-finite values)')
    if not 0 < target_error < 1:
        raise InputError(f'target error {target_error} must be in (0, 1)')
    sigma_voxels = DEFAULT_SIGMA_VOXELS if sigma is None else sigma / pixel_size
    box = data.shape[0]
    scale = float(data.max())
    target = torch.as_tensor(data / scale, device=torch.device(device))
    allowed = target > (0.05 if threshold is None else threshold / scale)
    norm = float(torch.linalg.norm(target))
    peak_mass = (math.sqrt(2 * math.pi) * sigma_voxels) ** 3
    positions, masses = target.new_zeros(0, 3), target.new_zeros(0)
    initial = max(8, int(float(target[allowed].sum()) / peak_mass))
    errors: List[float] = []
    while len(positions) < max_atoms:
        residual = target - render(positions, masses, sigma_voxels, box)
        errors.append(float(torch.linalg.norm(residual)) / norm)
        if progress is not None:
            progress(len(positions), errors[-1])
        if errors[-1] <= target_error or _stalled(errors):
            break
        count = max(8, int(growth * len(positions))) if len(positions) else initial
        seeds = _residual_peaks(residual, allowed, min(count, max_atoms - len(positions)))
        if len(seeds) == 0:
            break
        seed_values = residual[seeds[:, 2].long(), seeds[:, 1].long(), seeds[:, 0].long()]
        positions = torch.cat([positions, seeds])
        masses = torch.cat([masses, 0.5 * seed_values * peak_mass])
        positions, masses = _refine(target, positions, masses, sigma_voxels, iterations)
        keep = masses > 1e-3 * float(masses.max())
        positions, masses = positions[keep], masses[keep]
    error = float(torch.linalg.norm(target - render(positions, masses, sigma_voxels, box))) / norm
    coords = ((positions - box // 2) * pixel_size).cpu().numpy()
    return PseudoAtoms(coords=coords, weights=(masses * scale * pixel_size ** 3).cpu().numpy(),
                       sigma=sigma_voxels * pixel_size, relative_error=error)


def map_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two maps over all voxels."""
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])
