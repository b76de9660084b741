"""Normal modes of an elastic network (Tirion 1996; anisotropic network model), with RTB for large models.

Network: atoms closer than a cutoff radius (Angstrom, or a percentile of nearest-neighbour distances as in
Xmipp/ContinuousFlex) are joined by identical springs of constant ``gamma``. The modes are the eigenvectors of
the 3N x 3N Hessian (ProDy's ANM Hessian, same eigenvalues for the same gamma); the 6 lowest (zero) modes are
the rigid-body motions, skipped and reported. Non-rigid modes are numbered as in Xmipp: 7, 8, 9, ...
RTB (rotation-translation blocks; Tama et al. 2000): blocks of ``rtb_block_size`` consecutive residues of a
chain move rigidly; the Hessian is projected on the 6 rigid-body motions of each block, diagonalised there,
and the vectors are mapped back to the atoms (they stay of unit norm since the projection is orthonormal).
The amplitude convention of the vectors is described in :mod:`deephemnma.nma.modes`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from deephemnma.molecule.structure import Structure
from deephemnma.nma.modes import FIRST_MODE_NUMBER, RIGID_MODES, NormalModes, collectivity
from deephemnma.runtime.errors import InputError

#: Neighbours per atom of the distance histogram behind a percentile cutoff (10: the 95th percentile then
#: gives a rigid network on C-alpha and pseudoatom models, where 3 neighbours leave floppy atoms).
PERCENTILE_NEIGHBOURS = 10
#: Largest problem solved densely on CPU by the 'auto' solver (degrees of freedom).
DENSE_LIMIT_CPU = 3000
#: Largest problem solved densely on a GPU by the 'auto' solver (degrees of freedom).
DENSE_LIMIT_GPU = 30000


def percentile_cutoff(coords: np.ndarray, percentile: float, neighbours: int = PERCENTILE_NEIGHBOURS) -> float:
    """The distance (Angstrom) below which ``percentile`` % of the distances of each atom to its
    ``neighbours`` nearest neighbours fall (ContinuousFlex's relative cutoff)."""
    if not 0 < percentile <= 100:
        raise InputError(f'cutoff percentile {percentile} must be in (0, 100]')
    k = min(neighbours, len(coords) - 1)
    if k < 1:
        raise InputError('a percentile cutoff needs at least 2 atoms')
    distances, _ = cKDTree(coords).query(coords, k=k + 1)
    return float(np.percentile(distances[:, 1:], percentile))


def contact_pairs(coords: np.ndarray, cutoff: float) -> np.ndarray:
    """Pairs (P, 2) of atom indices i < j closer than ``cutoff`` Angstrom."""
    return cKDTree(coords).query_pairs(cutoff, output_type='ndarray')


def count_components(num_atoms: int, pairs: np.ndarray) -> int:
    """Number of connected parts of the network."""
    graph = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num_atoms, num_atoms))
    return int(connected_components(graph, directed=False)[0])


def check_network(coords: np.ndarray, cutoff: float) -> np.ndarray:
    """Pairs of the network; InputError when it has fewer than 3 atoms or is not connected."""
    if len(coords) < 3:
        raise InputError(f'{len(coords)} atom(s): an elastic network needs at least 3 atoms')
    if cutoff <= 0:
        raise InputError(f'cutoff {cutoff} A must be positive')
    pairs = contact_pairs(coords, cutoff)
    parts = count_components(len(coords), pairs)
    if parts > 1:
        raise InputError(f'the cutoff of {cutoff:.2f} A leaves the elastic network in {parts} disconnected parts: '
                         'increase the cutoff (each part would add 6 zero-frequency modes)')
    return pairs


def anm_hessian(coords: np.ndarray, cutoff: float, gamma: float = 1.0,
                pairs: Optional[np.ndarray] = None) -> sp.bsr_matrix:
    """The 3N x 3N ANM Hessian (block sparse, 3 x 3 blocks): H_ij = -gamma d d^T / |d|^2, H_ii = -sum_j H_ij."""
    coords = np.asarray(coords, dtype=np.float64)
    n = len(coords)
    pairs = contact_pairs(coords, cutoff) if pairs is None else pairs
    i, j = pairs[:, 0], pairs[:, 1]
    d = coords[j] - coords[i]
    blocks = -gamma * d[:, :, None] * d[:, None, :] / np.einsum('pk,pk->p', d, d)[:, None, None]
    diagonal = np.zeros((n, 3, 3))
    np.add.at(diagonal, i, -blocks)
    np.add.at(diagonal, j, -blocks)
    rows = np.concatenate([i, j, np.arange(n)])
    cols = np.concatenate([j, i, np.arange(n)])
    data = np.concatenate([blocks, blocks, diagonal])
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return sp.bsr_matrix((data[order], cols[order], indptr), shape=(3 * n, 3 * n))


def rtb_blocks(structure: Structure, block_size: int) -> np.ndarray:
    """Per atom, its block: ``block_size`` consecutive residues of one chain form a block."""
    if block_size < 1:
        raise InputError(f'RTB block size {block_size} must be at least 1 residue')
    residue, keys = structure.residue_index()
    chain_of_residue = [k[0] for k in keys]
    block_of_residue = np.empty(len(keys), dtype=np.int64)
    block, previous_chain, count = -1, None, 0
    for r, chain in enumerate(chain_of_residue):
        if chain != previous_chain or count == block_size:
            block, count, previous_chain = block + 1, 0, chain
        block_of_residue[r] = block
        count += 1
    return block_of_residue[residue]


def rtb_projection(coords: np.ndarray, blocks: np.ndarray) -> sp.csr_matrix:
    """The orthonormal 3N x D matrix whose columns are the rigid motions (3 translations, up to 3 rotations)
    of each block; D = 6 per block (fewer for blocks of 1 or 2 atoms)."""
    rows, cols, vals = [], [], []
    column = 0
    order = np.argsort(blocks, kind='stable')
    bounds = np.flatnonzero(np.diff(blocks[order])) + 1
    for atoms in np.split(order, bounds):
        y = coords[atoms] - coords[atoms].mean(axis=0)
        n = len(atoms)
        basis = np.zeros((n, 3, 6))
        for k in range(3):
            basis[:, k, k] = 1.0
            axis = np.zeros(3)
            axis[k] = 1.0
            basis[:, :, 3 + k] = np.cross(axis, y)
        u, s, _ = np.linalg.svd(basis.reshape(3 * n, 6), full_matrices=False)
        rank = int((s > 1e-6 * s[0]).sum())
        u = u[:, :rank]
        dof = (3 * atoms[:, None] + np.arange(3)).reshape(-1)
        rows.append(np.repeat(dof, rank))
        cols.append(np.tile(np.arange(column, column + rank), len(dof)))
        vals.append(u.reshape(-1))
        column += rank
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(3 * len(coords), column))


def _solve_dense(matrix, count: int, device: str) -> Tuple[np.ndarray, np.ndarray]:
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if device != 'cpu':
        import torch
        values, vectors = torch.linalg.eigh(torch.as_tensor(dense, device=device))
        return values[:count].cpu().numpy(), vectors[:, :count].cpu().numpy()
    return scipy.linalg.eigh(dense, subset_by_index=[0, count - 1], driver='evr')


def _solve_sparse(matrix, count: int) -> Tuple[np.ndarray, np.ndarray]:
    matrix = sp.csc_matrix(matrix)
    scale = float(matrix.diagonal().mean())
    values, vectors = spla.eigsh(matrix, k=count, sigma=-1e-6 * scale, which='LM', tol=0.0)
    order = np.argsort(values)
    return values[order], vectors[:, order]


def solve_lowest(matrix, count: int, solver: str = 'auto', device: str = 'cpu') -> Tuple[np.ndarray, np.ndarray]:
    """The ``count`` lowest eigenpairs of a symmetric positive semi-definite matrix.

    solver: 'dense' (LAPACK, or torch.linalg.eigh on a GPU device), 'sparse' (ARPACK shift-invert around a
    tiny negative shift, so the factorised matrix is positive definite) or 'auto' (dense for small problems,
    or medium ones on a GPU; sparse otherwise).
    """
    size = matrix.shape[0]
    if solver == 'auto':
        limit = DENSE_LIMIT_GPU if device != 'cpu' else DENSE_LIMIT_CPU
        solver = 'dense' if size <= limit or count >= size - 1 else 'sparse'
    if solver == 'dense':
        return _solve_dense(matrix, count, device)
    if solver == 'sparse':
        return _solve_sparse(matrix, count)
    raise InputError(f"unknown solver {solver!r}; choose 'auto', 'dense' or 'sparse'")


def check_rigidity(values: np.ndarray, scale: float, cutoff: float) -> None:
    """InputError when more than the 6 rigid-body eigenvalues are zero (atoms with too few springs)."""
    floppy = int(np.sum(values[RIGID_MODES:] < 1e-9 * scale))
    if floppy:
        raise InputError(f'the elastic network with a cutoff of {cutoff:.2f} A is not rigid: {floppy} more '
                         'zero-frequency mode(s) than the 6 rigid-body ones (atoms with too few neighbours); '
                         'increase the cutoff')


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make each column's largest-magnitude component positive (deterministic signs)."""
    largest = vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])]
    return vectors * np.where(largest < 0, -1.0, 1.0)


def resolve_cutoff(coords: np.ndarray, cutoff: Optional[float], percentile: Optional[float]) -> float:
    """The network radius in Angstrom: ``cutoff`` itself, or the ``percentile`` cutoff when given."""
    if percentile is not None:
        return percentile_cutoff(coords, percentile)
    if cutoff is None:
        raise InputError('give a cutoff (Angstrom) or a percentile')
    return float(cutoff)


def degrees_of_freedom(structure: Structure, rtb_block_size: int = 0) -> int:
    """Degrees of freedom of the elastic network: 3 per atom, or the rigid motions of each RTB block."""
    if not rtb_block_size:
        return 3 * len(structure)
    coords = np.asarray(structure.coords, dtype=np.float64)
    return rtb_projection(coords, rtb_blocks(structure, rtb_block_size)).shape[1]


def check_mode_count(n_modes: int, dof: int, atoms: int, rtb_block_size: int = 0) -> None:
    """InputError when ``n_modes`` non-rigid modes exceed what ``dof`` degrees of freedom allow."""
    if n_modes < 1:
        raise InputError(f'number of modes {n_modes} must be at least 1')
    if n_modes + RIGID_MODES > dof:
        raise InputError(f'{n_modes} modes asked but the model has only {dof - RIGID_MODES} non-rigid degrees '
                         f'of freedom ({atoms} atoms' + (f', RTB blocks of {rtb_block_size} residues)'
                                                         if rtb_block_size else ')'))


def compute_modes(structure: Structure, n_modes: int = 20, cutoff: Optional[float] = 10.0,
                  percentile: Optional[float] = None, rtb_block_size: int = 0, gamma: float = 1.0,
                  solver: str = 'auto', device: str = 'cpu') -> NormalModes:
    """The ``n_modes`` lowest non-rigid elastic-network modes of ``structure`` (Xmipp numbers 7 ... 6+n_modes).

    cutoff: network radius in Angstrom (ignored when ``percentile`` is given: then the radius is that
    percentile of nearest-neighbour distances); rtb_block_size: residues per RTB block (0: full ANM);
    device: 'cpu' or a torch device for the dense eigensolver. Raises InputError for too few atoms, a
    disconnected network or more modes than degrees of freedom.
    """
    coords = np.asarray(structure.coords, dtype=np.float64)
    radius = resolve_cutoff(coords, cutoff, percentile)
    pairs = check_network(coords, radius)
    check_mode_count(n_modes, 3 * len(coords), len(coords), rtb_block_size)
    hessian = anm_hessian(coords, radius, gamma, pairs)
    projection = None
    if rtb_block_size:
        projection = rtb_projection(coords, rtb_blocks(structure, rtb_block_size))
        matrix = (projection.T @ (hessian.tocsr() @ projection)).tocsr()
        matrix = (matrix + matrix.T) * 0.5
    else:
        matrix = hessian
    dof = matrix.shape[0]
    check_mode_count(n_modes, dof, len(coords), rtb_block_size)
    count = n_modes + RIGID_MODES
    values, reduced = solve_lowest(matrix, count, solver, device)
    check_rigidity(values, float(matrix.diagonal().mean()), radius)
    vectors = projection @ reduced if projection is not None else reduced
    vectors = _fix_signs(vectors / np.linalg.norm(vectors, axis=0))
    modes = vectors.T.reshape(count, len(coords), 3)
    return NormalModes(vectors=modes[RIGID_MODES:], eigenvalues=values[RIGID_MODES:],
                       numbers=np.arange(FIRST_MODE_NUMBER, FIRST_MODE_NUMBER + n_modes),
                       collectivity=collectivity(modes[RIGID_MODES:]),
                       rigid_eigenvalues=values[:RIGID_MODES], rigid_vectors=modes[:RIGID_MODES],
                       structure=structure, cutoff=radius, method='RTB' if rtb_block_size else 'ANM',
                       block_size=int(rtb_block_size), gamma=gamma,
                       info={'springs': int(len(pairs)), 'degrees_of_freedom': int(dof)})
