"""The reference the images are aligned against: a coarse (or all-atom) model of the structure the modes
are defined on, with the mode vectors restricted to it.

Residue beads sit at the scattering-weighted centre of their atoms with their summed scattering and spread
(:func:`residue_beads`), one per residue or two (main chain and side chain); C-alpha models get beads of
:data:`CA_BEAD_SIGMA`; pseudoatom references keep their own Gaussians. Amplitudes keep the meaning they have on
the model the modes were computed on (:mod:`deephemnma.nma.modes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from deephemnma.imaging.projection import AtomModel
from deephemnma.molecule.scattering import gaussian_parameters, gaussian_variances
from deephemnma.nma.deform import DEFAULT_DEFORMATION, model_rotations

#: Main-chain atom names: with ``split_side_chains`` they form one bead per residue, the others a second one.
MAIN_CHAIN_ATOMS = frozenset({'N', 'CA', 'C', 'O', 'OXT', 'P', "O5'", "C5'", "C4'", "C3'", "O3'", 'OP1', 'OP2'})


def residue_beads(structure, extra_sigma: float = 0.0, split_side_chains: bool = False):
    """A coarse model of a :class:`~deephemnma.molecule.structure.Structure`: Gaussian beads of residues.

    One bead per residue (or, with ``split_side_chains``, one for its main-chain atoms and one for the rest).
    Each bead sits at the scattering-weighted centre of its atoms, carries their summed scattering (sum of
    Peng's ``a``, Angstrom) and has the per-axis variance of their scattering (weighted spread of the atoms
    about the centre plus the atoms' own mean form-factor variance, plus ``extra_sigma^2``). Returns
    ``(centres (R, 3) Angstrom in the structure's frame, model, membership (N,) bead index of each atom,
    atom_weights (N,))``; ``membership`` and ``atom_weights`` restrict mode vectors defined on the atoms to the
    beads (:func:`bead_vectors`).
    """
    a, b = gaussian_parameters(list(structure.elements))
    atom_weights = a.sum(axis=1)
    atom_variance = (a * gaussian_variances(b)).sum(axis=1) / atom_weights
    membership, keys = structure.residue_index()
    if split_side_chains:
        side = np.array([name.strip() not in MAIN_CHAIN_ATOMS for name in structure.atom_names], dtype=np.int64)
        _, membership = np.unique(membership * 2 + side, return_inverse=True)
    count = int(membership.max()) + 1
    totals = np.bincount(membership, weights=atom_weights, minlength=count)

    def weighted_mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(membership, weights=atom_weights * values, minlength=count) / totals

    centres = np.stack([weighted_mean(structure.coords[:, i]) for i in range(3)], axis=1)
    spread = weighted_mean(((structure.coords - centres[membership]) ** 2).sum(axis=1)) / 3.0
    variances = spread + weighted_mean(atom_variance) + extra_sigma ** 2
    return centres, AtomModel.beads(totals, np.sqrt(variances)), membership, atom_weights


def bead_vectors(vectors: np.ndarray, membership: np.ndarray, atom_weights: np.ndarray) -> np.ndarray:
    """Mode vectors (M, N, 3) on atoms -> (M, R, 3) displacements of the residue beads (weighted means).

    The amplitudes keep their meaning: ``x_bead(q) = x0_bead + sum_k q_k v_bead_k`` is the weighted centre of
    the displaced atoms ``x0 + sum_k q_k v_k`` (the restricted vectors are not renormalised).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    count = int(membership.max()) + 1
    totals = np.bincount(membership, weights=atom_weights, minlength=count)
    out = np.zeros((vectors.shape[0], count, 3))
    for m in range(vectors.shape[0]):
        for i in range(3):
            out[m, :, i] = np.bincount(membership, weights=atom_weights * vectors[m, :, i], minlength=count)
    return out / totals[None, :, None]

#: Width (Angstrom) of the bead of a residue when the model has a single atom per residue (C-alpha models).
CA_BEAD_SIGMA = 2.5
#: Reference models: one bead per residue, two (main chain and side chain), or all atoms.
COARSE_MODELS = ('residues', 'residues2', 'atoms')


@dataclass
class AlignReference:
    """The reference the images are aligned against: atoms or beads, their form factors and mode vectors.

    ``coords`` (N, 3) Angstrom, centred on the box centre; ``vectors`` (M, N, 3) displacements per unit
    amplitude (amplitudes keep the meaning they have on the model the modes were computed on);
    ``mode_numbers`` (M,) Xmipp numbers; ``rotations`` (M, N, 3) the local angular velocities of the screw
    deformation model, None for the linear model (:mod:`deephemnma.nma.deform`).
    """

    coords: np.ndarray
    model: AtomModel
    vectors: np.ndarray
    mode_numbers: np.ndarray
    rotations: Optional[np.ndarray] = None
    #: Projection libraries of the global search by grid (see ``Aligner.library``): made once and shared by
    #: every aligner of this reference in the process (e.g. the guided search and the global search of its
    #: outliers).
    libraries: Dict[tuple, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def deformation(self) -> str:
        return 'linear' if self.rotations is None else 'screw'

    @property
    def num_modes(self) -> int:
        return int(self.vectors.shape[0])

    def amplitude_scale(self) -> np.ndarray:
        """Amplitude (M,) that moves this model by 1 Angstrom RMS along each mode."""
        rms = np.sqrt((self.vectors ** 2).sum(axis=(1, 2)) / self.coords.shape[0])
        return 1.0 / np.maximum(rms, 1e-12)

    def radius_of_gyration(self) -> float:
        weights = self.model.weights.numpy()
        centre = (weights[:, None] * self.coords).sum(0) / weights.sum()
        return float(np.sqrt((weights * ((self.coords - centre) ** 2).sum(1)).sum() / weights.sum()))


def reference_from_modes(modes, coarse: str = 'residues2', centre: Optional[np.ndarray] = None,
                         deformation: str = DEFAULT_DEFORMATION) -> AlignReference:
    """Build the reference from :class:`~deephemnma.nma.modes.NormalModes` (vectors on ``modes.structure``).

    ``coarse``: ``'residues2'`` two Gaussian beads per residue (main chain and side chain), ``'residues'`` one
    per residue (each bead at the scattering-weighted centre of its atoms, with their summed scattering and
    spread; vectors restricted by weighted means, see :func:`~deephemnma.hemnma.reference.residue_beads`),
    ``'atoms'`` every atom with Peng's form factors. A model with one atom per residue (C-alpha/P) gets beads
    of :data:`CA_BEAD_SIGMA`; a pseudoatom model (Xmipp's ``fixedGaussian`` remark) its own Gaussians, with
    the weights of its B-factor column. ``centre`` (Angstrom) is subtracted from the coordinates; default the
    geometric centre of the structure's atoms (Xmipp's ``--centerPDB``, and the simulator's convention).
    ``deformation``: 'screw' or 'linear' (:mod:`deephemnma.nma.deform`); the screw model's local rotations
    are fitted on the reference model itself (beads, atoms or pseudoatoms).
    """
    reference = _reference_model(modes, coarse, centre)
    reference.rotations = model_rotations(reference.coords, reference.vectors, deformation)
    return reference


def _reference_model(modes, coarse: str, centre: Optional[np.ndarray]) -> AlignReference:
    """The linear reference of :func:`reference_from_modes`."""
    structure = modes.structure
    origin = structure.centre() if centre is None else np.asarray(centre, dtype=np.float64)
    numbers = np.asarray(modes.numbers)
    vectors = np.asarray(modes.vectors, dtype=np.float64)
    if coarse not in COARSE_MODELS:
        raise ValueError(f"unknown coarse model '{coarse}' (choose one of {', '.join(COARSE_MODELS)})")
    sigma = pseudoatom_sigma(structure)
    if sigma is not None:
        model = AtomModel.beads(np.asarray(structure.b_factors, dtype=np.float64), sigma)
        return AlignReference(structure.coords - origin, model, vectors, numbers)
    if coarse == 'atoms':
        return AlignReference(structure.coords - origin, AtomModel.from_elements(structure.elements), vectors,
                              numbers)
    membership, keys = structure.residue_index()
    if len(keys) == len(structure):
        model = AtomModel.beads(np.ones(len(structure)), CA_BEAD_SIGMA)
        return AlignReference(structure.coords - origin, model, vectors, numbers)
    centres, model, membership, atom_weights = residue_beads(structure, split_side_chains=coarse == 'residues2')
    return AlignReference(centres - origin, model, bead_vectors(vectors, membership, atom_weights), numbers)


def pseudoatom_sigma(structure) -> Optional[float]:
    """The Gaussian standard deviation (Angstrom) of a pseudoatom structure (``REMARK fixedGaussian``), else None."""
    for remark in structure.remarks:
        words = remark.split()
        if len(words) >= 2 and words[0] == 'fixedGaussian':
            return float(words[1])
    return None
