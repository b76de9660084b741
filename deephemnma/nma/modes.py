"""Normal modes and the amplitude convention used everywhere in DeepHEMNMA.

* Mode vectors ``v_k`` (N, 3) have unit norm over the 3N coordinates of the model they are defined on, and a
  conformation is ``x(q) = x0 + sum_k q_k v_k`` (Angstrom; :mod:`deephemnma.nma.deform`). An amplitude q
  therefore moves the atoms of that model by ``|q| / sqrt(N)`` Angstrom RMS: the amplitude scale depends on the
  model (the same q = 200 moves the 1,656-atom AK chain by about 5 A RMS and its 214-atom C-alpha model by
  about 14 A).
* Modes are carried to another model of the same molecule with :meth:`NormalModes.transfer_to`, WITHOUT
  renormalising: coarse -> full, every atom takes the displacement of its residue's representative atom
  (C-alpha or P); full -> coarse, the representative atoms keep their own displacement. So one amplitude
  vector produces the same displacement of corresponding atoms on both models; the transferred vectors are
  no longer of unit norm on the new model (``norm_atoms`` remembers the size of the model they are
  normalised on).
* Mode files exchanged with Xmipp/ContinuousFlex (:mod:`deephemnma.nma.files`) hold these vectors as they are
  (Xmipp applies amplitudes without normalising), so amplitudes estimated by Xmipp with our files have the
  same meaning.
* Numbering as in Xmipp: modes 1-6 are the rigid-body motions, 7 is the first non-rigid mode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from deephemnma.molecule.structure import Structure
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

#: Number of rigid-body modes of a connected 3D network.
RIGID_MODES = 6
#: Xmipp number of the first non-rigid mode.
FIRST_MODE_NUMBER = RIGID_MODES + 1
#: ContinuousFlex's default collectivity threshold for enabling modes.
DEFAULT_COLLECTIVITY_THRESHOLD = 0.15


def check_amplitude_table(values, source: str, num_modes: Optional[int] = None) -> np.ndarray:
    """Amplitudes as a float ``(images, modes)`` array (a vector holds one mode's amplitude of each image).

    InputError naming ``source`` when the table is empty, has another number of modes than ``num_modes`` or
    holds NaN or infinite values.
    """
    table = np.asarray(values, dtype=np.float64)
    if table.ndim == 1:
        table = table[:, None]
    if table.ndim != 2 or table.size == 0:
        raise InputError(f'{source}: expected a non-empty (images, modes) table of amplitudes, got shape '
                         f'{table.shape}')
    if num_modes is not None and table.shape[1] != num_modes:
        raise InputError(f'{source}: {table.shape[1]} amplitudes per row for {num_modes} modes')
    if not np.all(np.isfinite(table)):
        raise InputError(f'{source}: NaN or infinite amplitudes')
    return table


def parse_mode_numbers(text: str) -> List[int]:
    """Xmipp mode numbers from text such as ``'7-9 11'`` or ``'7,8,9'`` -> ``[7, 8, 9, 11]`` ([] when blank).

    Raises InputError naming the text when a part is neither a number nor an increasing range ``first-last``.
    """
    numbers: List[int] = []
    for part in (text or '').replace(',', ' ').split():
        first, dash, last = part.partition('-')
        try:
            start = int(first)
            stop = int(last) if dash else start
        except ValueError:
            raise InputError(f"mode numbers '{text}': '{part}' is not a number or a range such as 7-9") from None
        if stop < start:
            raise InputError(f"mode numbers '{text}': the range '{part}' goes down")
        numbers.extend(range(start, stop + 1))
    return numbers


@dataclass
class NormalModes:
    """Non-rigid normal modes of ``structure``.

    vectors (M, N, 3): mode displacements, unit norm over 3N on the model they were computed on;
    eigenvalues (M,): squared frequencies (gamma units / Angstrom^2); numbers (M,): Xmipp numbers (7 = first
    non-rigid mode); collectivity (M,): Brueschweiler's degree of collectivity in (0, 1];
    rigid_eigenvalues (6,), rigid_vectors (6, N, 3): the skipped rigid-body modes;
    cutoff: network radius (Angstrom); method: 'ANM' or 'RTB'; block_size: residues per RTB block (0: none);
    norm_atoms: number of atoms of the model on which the vectors have unit norm.
    """

    vectors: np.ndarray
    eigenvalues: np.ndarray
    numbers: np.ndarray
    collectivity: np.ndarray
    rigid_eigenvalues: np.ndarray
    rigid_vectors: np.ndarray
    structure: Structure
    cutoff: float
    method: str = 'ANM'
    block_size: int = 0
    gamma: float = 1.0
    norm_atoms: int = 0
    info: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.norm_atoms:
            self.norm_atoms = self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def num_atoms(self) -> int:
        return self.vectors.shape[1]

    def select(self, numbers: Sequence[int]) -> 'NormalModes':
        """The modes with the given Xmipp numbers, in that order (InputError for a number not computed)."""
        position = {int(n): i for i, n in enumerate(self.numbers)}
        missing = [n for n in numbers if int(n) not in position]
        if missing:
            raise InputError(f'mode(s) {missing} not computed; available: {self.numbers.min()}-{self.numbers.max()}')
        idx = np.array([position[int(n)] for n in numbers], dtype=np.int64)
        return replace(self, vectors=self.vectors[idx], eigenvalues=self.eigenvalues[idx],
                       numbers=self.numbers[idx], collectivity=self.collectivity[idx])

    def enabled(self, threshold: float = DEFAULT_COLLECTIVITY_THRESHOLD) -> np.ndarray:
        """Boolean mask of the modes whose collectivity reaches ``threshold`` (ContinuousFlex's rule)."""
        return self.collectivity >= threshold

    def centred(self) -> 'NormalModes':
        """These modes on their structure moved so that its geometric centre is the origin (the frame of the
        project's images and maps: the box centre is coordinate 0)."""
        return replace(self, structure=self.structure.with_coords(self.structure.coords - self.structure.centre()))

    def transfer_to(self, target: Structure) -> 'NormalModes':
        """These modes on another model of the same molecule, amplitudes keeping their meaning.

        Each target atom takes the vector of the source atom with the same chain, residue and atom name;
        failing that, the vector of its residue's representative source atom (the only atom of the residue in
        the source, else its CA or P). No renormalisation (see the module docstring). InputError when a target
        residue has no counterpart in the source.
        """
        index = source_atom_for(self.structure, target)
        return replace(self, vectors=self.vectors[:, index], rigid_vectors=self.rigid_vectors[:, index],
                       structure=target, norm_atoms=self.norm_atoms)

    def save(self, path: str | os.PathLike) -> None:
        """Write everything (modes and the structure they are defined on) to one ``.npz`` file."""
        arrays = {'vectors': self.vectors, 'eigenvalues': self.eigenvalues, 'numbers': self.numbers,
                  'collectivity': self.collectivity, 'rigid_eigenvalues': self.rigid_eigenvalues,
                  'rigid_vectors': self.rigid_vectors, 'cutoff': self.cutoff, 'method': self.method,
                  'block_size': self.block_size, 'gamma': self.gamma, 'norm_atoms': self.norm_atoms}
        arrays.update({f'structure_{k}': v for k, v in _structure_arrays(self.structure).items()})
        with atomic_path(path, suffix='.npz') as tmp:
            with open(tmp, 'wb') as handle:
                np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'NormalModes':
        """Read a file written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                structure = Structure(**{k[len('structure_'):]: data[k] for k in data.files
                                         if k.startswith('structure_')})
                return cls(vectors=data['vectors'], eigenvalues=data['eigenvalues'], numbers=data['numbers'],
                           collectivity=data['collectivity'], rigid_eigenvalues=data['rigid_eigenvalues'],
                           rigid_vectors=data['rigid_vectors'], structure=structure,
                           cutoff=float(data['cutoff']), method=str(data['method']),
                           block_size=int(data['block_size']), gamma=float(data['gamma']),
                           norm_atoms=int(data['norm_atoms']))
        except (OSError, KeyError, ValueError) as error:
            raise InputError(f'{path}: not a DeepHEMNMA modes file ({error})') from error


def _structure_arrays(structure: Structure) -> Dict[str, np.ndarray]:
    text = ('elements', 'atom_names', 'residue_names', 'chain_ids', 'insertion_codes')
    return {'coords': structure.coords, 'residue_numbers': structure.residue_numbers,
            'b_factors': structure.b_factors, 'occupancies': structure.occupancies,
            'is_hetero': structure.is_hetero,
            **{k: getattr(structure, k).astype(str) for k in text}}


def source_atom_for(source: Structure, target: Structure) -> np.ndarray:
    """For each target atom, the index of the source atom whose displacement it takes (see transfer_to)."""
    by_atom = {key + (name,): i for i, (key, name) in
               enumerate(zip(source.residue_keys(), source.atom_names.tolist()))}
    residue_atoms: Dict[tuple, List[int]] = {}
    for i, key in enumerate(source.residue_keys()):
        residue_atoms.setdefault(key, []).append(i)
    representative = {}
    for key, atoms in residue_atoms.items():
        if len(atoms) == 1:
            representative[key] = atoms[0]
        else:
            names = source.atom_names[atoms].tolist()
            for name in ('CA', 'P'):
                if name in names:
                    representative[key] = atoms[names.index(name)]
                    break
    index = np.empty(len(target), dtype=np.int64)
    for i, (key, name) in enumerate(zip(target.residue_keys(), target.atom_names.tolist())):
        found = by_atom.get(key + (name,), representative.get(key))
        if found is None:
            chain, number, icode = key
            raise InputError(f'cannot transfer modes: residue {chain}:{number}{icode} ({target.residue_names[i]}) '
                             'of the target has no representative atom in the model the modes were computed on')
        index[i] = found
    return index


def collectivity(vectors: np.ndarray) -> np.ndarray:
    """Degree of collectivity (Brueschweiler 1995) of modes (M, N, 3): exp(-sum p log p) / N, p = |u_i|^2 / |u|^2."""
    squared = np.einsum('mnk,mnk->mn', vectors, vectors)
    p = squared / squared.sum(axis=1, keepdims=True)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    return np.exp(entropy) / vectors.shape[1]
