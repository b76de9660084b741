"""Atomic structures: read PDB/mmCIF (gemmi), select atoms, coarse-grain, write single- or multi-model files.

A :class:`Structure` is a flat list of atoms (arrays of equal length N) in the order of the file's
ATOM/HETATM records; coordinates are in Angstrom. This order is the order of the mode files exchanged with
Xmipp/ContinuousFlex (one "vx vy vz" line per atom), so every operation here keeps the file order.

Residues are identified by ``(chain_id, residue_number, insertion_code)``. Coarse-graining keeps one
representative atom per residue: C-alpha for amino acids (``'CA'``), plus P for nucleotides (``'CA+P'``), as
for large complexes in HEMNMA (the ribosome model of the paper has 17,082 C-alpha/P atoms).
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

#: Coarse-graining levels and the atom names they keep.
COARSE_LEVELS: Dict[str, Tuple[str, ...]] = {'CA': ('CA',), 'CA+P': ('CA', 'P')}

ResidueKey = Tuple[str, int, str]


@dataclass
class Structure:
    """N atoms as parallel arrays, in file order; coordinates (N, 3) in Angstrom."""

    coords: np.ndarray
    elements: np.ndarray
    atom_names: np.ndarray
    residue_names: np.ndarray
    residue_numbers: np.ndarray
    chain_ids: np.ndarray
    insertion_codes: np.ndarray = None
    b_factors: np.ndarray = None
    occupancies: np.ndarray = None
    is_hetero: np.ndarray = None
    remarks: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.float64).reshape(-1, 3)
        n = len(self.coords)
        defaults = {'insertion_codes': '', 'b_factors': 0.0, 'occupancies': 1.0, 'is_hetero': False}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, np.full(n, value, dtype=type(value) if not isinstance(value, str) else object))
        for name in ('elements', 'atom_names', 'residue_names', 'chain_ids', 'insertion_codes'):
            setattr(self, name, np.asarray(getattr(self, name), dtype=object))
        self.residue_numbers = np.asarray(self.residue_numbers, dtype=np.int64)
        self.b_factors = np.asarray(self.b_factors, dtype=np.float64)
        self.occupancies = np.asarray(self.occupancies, dtype=np.float64)
        self.is_hetero = np.asarray(self.is_hetero, dtype=bool)
        for name in ('elements', 'atom_names', 'residue_names', 'residue_numbers', 'chain_ids',
                     'insertion_codes', 'b_factors', 'occupancies', 'is_hetero'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'Structure: {name} has {len(getattr(self, name))} entries for {n} atoms')

    def __len__(self) -> int:
        return len(self.coords)

    def subset(self, indices: np.ndarray) -> 'Structure':
        """The atoms at ``indices`` (integer array or boolean mask), in that order."""
        indices = np.asarray(indices)
        take = (lambda a: a[indices])
        return replace(self, coords=take(self.coords), elements=take(self.elements),
                       atom_names=take(self.atom_names), residue_names=take(self.residue_names),
                       residue_numbers=take(self.residue_numbers), chain_ids=take(self.chain_ids),
                       insertion_codes=take(self.insertion_codes), b_factors=take(self.b_factors),
                       occupancies=take(self.occupancies), is_hetero=take(self.is_hetero),
                       remarks=list(self.remarks))

    def with_coords(self, coords: np.ndarray) -> 'Structure':
        """A copy with other coordinates (N, 3) Angstrom, same atoms."""
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape != self.coords.shape:
            raise ValueError(f'coordinates of shape {coords.shape} for a structure of {len(self)} atoms')
        return replace(self, coords=coords.copy(), remarks=list(self.remarks))

    def residue_keys(self) -> List[ResidueKey]:
        """``(chain, residue number, insertion code)`` of every atom."""
        return list(zip(self.chain_ids.tolist(), self.residue_numbers.tolist(), self.insertion_codes.tolist()))

    def residue_index(self) -> Tuple[np.ndarray, List[ResidueKey]]:
        """Per atom, the index of its residue (residues numbered in order of first appearance) and the keys."""
        order: Dict[ResidueKey, int] = {}
        index = np.empty(len(self), dtype=np.int64)
        for i, key in enumerate(self.residue_keys()):
            index[i] = order.setdefault(key, len(order))
        return index, list(order)

    def chains(self) -> List[str]:
        """Chain identifiers in order of appearance."""
        return list(dict.fromkeys(self.chain_ids.tolist()))

    def centre(self) -> np.ndarray:
        """The geometric centre (3,) Angstrom."""
        return self.coords.mean(axis=0)

    def radius(self) -> float:
        """Largest distance (Angstrom) of an atom from the geometric centre."""
        return float(np.linalg.norm(self.coords - self.centre(), axis=1).max())


def kabsch(source: np.ndarray, target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rotations (..., 3, 3) and translations (..., 3) with ``R x + t`` the least-squares fit of source points
    (..., P, 3) onto target points (..., P, 3)."""
    source_centre, target_centre = source.mean(-2), target.mean(-2)
    covariance = np.swapaxes(source - source_centre[..., None, :], -1, -2) @ (target - target_centre[..., None, :])
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    fix = np.ones(sign.shape + (3,))
    fix[..., 2] = sign
    rotation = np.swapaxes(vt, -1, -2) @ (fix[..., :, None] * np.swapaxes(u, -1, -2))
    return rotation, target_centre - (rotation @ source_centre[..., None])[..., 0]


def common_atoms(first: Structure, second: Structure) -> Tuple[np.ndarray, np.ndarray]:
    """Indices ``(in_first, in_second)`` of the atoms both structures have, in ``first``'s order: the same chain
    (chains paired in their order of appearance, so their names may differ), residue number, insertion code and
    atom name. InputError when they share no atom."""
    def keys(structure: Structure) -> List[tuple]:
        order = {chain: i for i, chain in enumerate(structure.chains())}
        return [(order[c], int(r), i, n.strip()) for c, r, i, n in zip(structure.chain_ids, structure.residue_numbers,
                                                                         structure.insertion_codes,
                                                                         structure.atom_names)]
    position = {key: i for i, key in enumerate(keys(second))}
    pairs = [(i, position[key]) for i, key in enumerate(keys(first)) if key in position]
    if not pairs:
        raise InputError('the two structures have no atom in common (same chain order, residue number and atom '
                         'name)')
    return tuple(np.array(index, dtype=np.int64) for index in zip(*pairs))


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


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(f'{path}: no such file')
    if path.is_dir():
        raise InputError(f'{path}: is a folder, not a structure file')
    if path.stat().st_size == 0:
        raise InputError(f'{path}: the file is empty')


def _read_gemmi(path: Path):
    import gemmi
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, IndexError) as error:
        raise InputError(f'{path}: not a readable PDB/mmCIF file ({error})') from error
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f'{path}: no atoms found (is it a PDB or mmCIF file?)')
    return st


def read_structure(path: str | os.PathLike, chains: Optional[Sequence[str]] = None,
                   remove_hydrogens: bool = True, remove_waters: bool = True) -> Structure:
    """Read the first model of a PDB or mmCIF file (gemmi), keeping alternative location A only.

    ``chains``: chain identifiers to keep (None keeps all). Raises InputError for a missing, empty or
    corrupt file, an unknown chain, or a selection without atoms.
    """
    path = Path(path)
    _check_readable(path)
    st = _read_gemmi(path)
    st.remove_alternative_conformations()
    if remove_hydrogens:
        st.remove_hydrogens()
    if remove_waters:
        st.remove_waters()
    model = st[0]
    available = [chain.name for chain in model]
    if chains:
        unknown = [c for c in chains if c not in available]
        if unknown:
            raise InputError(f'{path}: chain(s) {", ".join(unknown)} not found; the file has chains '
                             f'{", ".join(dict.fromkeys(available))}')
    wanted = set(chains) if chains else None
    columns: Dict[str, list] = {k: [] for k in ('coords', 'elements', 'atom_names', 'residue_names',
                                                'residue_numbers', 'chain_ids', 'insertion_codes',
                                                'b_factors', 'occupancies', 'is_hetero')}
    for chain in model:
        if wanted is not None and chain.name not in wanted:
            continue
        for residue in chain:
            for atom in residue:
                columns['coords'].append((atom.pos.x, atom.pos.y, atom.pos.z))
                columns['elements'].append(atom.element.name)
                columns['atom_names'].append(atom.name)
                columns['residue_names'].append(residue.name)
                columns['residue_numbers'].append(residue.seqid.num)
                columns['chain_ids'].append(chain.name)
                columns['insertion_codes'].append(residue.seqid.icode.strip())
                columns['b_factors'].append(atom.b_iso)
                columns['occupancies'].append(atom.occ)
                columns['is_hetero'].append(residue.het_flag == 'H')
    if not columns['coords']:
        what = f'chain(s) {", ".join(chains)}' if chains else 'the file'
        raise InputError(f'{path}: no atoms selected in {what}')
    remarks = [line[len('REMARK'):].strip() for line in st.raw_remarks if line.startswith('REMARK')]
    return Structure(**{k: np.array(v, dtype=object) if k in ('elements', 'atom_names', 'residue_names',
                                                               'chain_ids', 'insertion_codes') else np.array(v)
                        for k, v in columns.items()}, remarks=remarks)


def select_chains(structure: Structure, chains: Sequence[str]) -> Structure:
    """The atoms of the given chains; InputError when none is selected."""
    mask = np.isin(structure.chain_ids, list(chains))
    if not mask.any():
        raise InputError(f'no atoms in chain(s) {", ".join(chains)}; chains are {", ".join(structure.chains())}')
    return structure.subset(np.flatnonzero(mask))


def select_atom_names(structure: Structure, names: Sequence[str]) -> np.ndarray:
    """Indices of the atoms with one of ``names`` (calcium ions named CA are excluded: element must not be Ca)."""
    names_mask = np.isin(structure.atom_names, list(names))
    calcium = np.char.upper(structure.elements.astype(str)) == 'CA'
    return np.flatnonzero(names_mask & ~calcium)


def coarse_grain(structure: Structure, level: str = 'CA') -> Structure:
    """Keep one representative atom per residue: ``'CA'`` (C-alpha) or ``'CA+P'`` (also P of nucleotides)."""
    if level not in COARSE_LEVELS:
        raise InputError(f'unknown coarse-graining {level!r}; choose one of {", ".join(COARSE_LEVELS)}')
    indices = select_atom_names(structure, COARSE_LEVELS[level])
    if len(indices) == 0:
        raise InputError(f'coarse-graining {level!r} selects no atom (no {" or ".join(COARSE_LEVELS[level])} atoms)')
    return structure.subset(indices)


def _build_gemmi(structure: Structure, models: np.ndarray):
    import gemmi
    st = gemmi.Structure()
    st.name = 'deephemnma'
    for model_index, coords in enumerate(models):
        model = gemmi.Model(str(model_index + 1))
        chain, residue, previous = None, None, None
        for i in range(len(structure)):
            if chain is None or chain.name != structure.chain_ids[i]:
                model.add_chain(gemmi.Chain(structure.chain_ids[i]))
                chain = model[len(model) - 1]
                previous = None
            key = (structure.residue_numbers[i], structure.insertion_codes[i], structure.residue_names[i])
            if key != previous:
                new = gemmi.Residue()
                new.name = structure.residue_names[i]
                new.seqid = gemmi.SeqId(int(structure.residue_numbers[i]), structure.insertion_codes[i] or ' ')
                new.het_flag = 'H' if structure.is_hetero[i] else 'A'
                chain.add_residue(new)
                residue = chain[len(chain) - 1]
                previous = key
            atom = gemmi.Atom()
            atom.name = structure.atom_names[i]
            atom.element = gemmi.Element(structure.elements[i] or 'X')
            atom.pos = gemmi.Position(*coords[i])
            atom.b_iso = float(structure.b_factors[i])
            atom.occ = float(structure.occupancies[i])
            atom.serial = i + 1
            residue.add_atom(atom)
        st.add_model(model)
    st.setup_entities()
    return st


PDB_CHAIN_NAMES = [a + b for a in ' ' + string.ascii_uppercase + string.ascii_lowercase + string.digits
                   for b in string.ascii_uppercase + string.ascii_lowercase + string.digits]


def short_chain_names(structure: Structure) -> Structure:
    """A copy whose chain names fit the PDB format (at most 2 characters): longer names are replaced, in order
    of appearance, by unused 1- then 2-character names; a REMARK line records each renaming."""
    chains = structure.chains()
    if all(len(c) <= 2 for c in chains):
        return structure
    free = (name.strip() for name in PDB_CHAIN_NAMES if name.strip() not in chains)
    renamed = {c: (c if len(c) <= 2 else next(free)) for c in chains}
    copy = structure.subset(np.arange(len(structure)))
    copy.chain_ids = np.array([renamed[c] for c in structure.chain_ids], dtype=object)
    copy.remarks += [f'chain {old} written as {new}' for old, new in renamed.items() if old != new]
    return copy


def write_structure(path: str | os.PathLike, structure: Structure, models: Optional[np.ndarray] = None) -> None:
    """Write a PDB (``.pdb``/``.ent``) or mmCIF (``.cif``/``.mmcif``) file, atoms in the structure's order.

    ``models``: optional coordinates (K, N, 3) Angstrom written as K models (a trajectory, e.g. an animation);
    by default the structure's own coordinates as one model. Remarks are written as PDB REMARK lines. Chain
    names longer than the PDB format allows are shortened (see :func:`short_chain_names`); mmCIF keeps them.
    """
    path = Path(path)
    if path.suffix.lower() not in ('.cif', '.mmcif'):
        structure = short_chain_names(structure)
    coords = structure.coords[None] if models is None else np.asarray(models, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[1:] != (len(structure), 3):
        raise ValueError(f'models of shape {coords.shape} for a structure of {len(structure)} atoms')
    st = _build_gemmi(structure, coords)
    suffix = path.suffix.lower()
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix in ('.cif', '.mmcif'):
            st.make_mmcif_document().write_file(tmp)
        else:
            import gemmi
            options = gemmi.PdbWriteOptions()
            options.numbered_ter = False
            text = st.make_pdb_string(options)
            remarks = ''.join(f'REMARK {line}\n' for line in structure.remarks)
            Path(tmp).write_text(remarks + text)
