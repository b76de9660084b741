"""Exchange of normal modes with Xmipp/ContinuousFlex: ``modes.xmd`` and one vector file per mode.

Layout written by ContinuousFlex's NMA protocol, reproduced here without Xmipp:

* ``modes/vec.N`` for N = 1, 2, ... (1-6: rigid-body modes): one line ``vx vy vz`` per atom, in the order
  of the ATOM/HETATM records of the reference PDB. Xmipp applies amplitudes to these vectors as they are,
  so they are written with the unit norm of our convention (see ``deephemnma.nma.elastic``).
* ``modes.xmd``: an Xmipp STAR metadata block ``data_noname`` whose loop has the columns ``_enabled``
  (1, or -1 for rigid modes and modes below the collectivity threshold), ``_nmaCollectivity``,
  ``_nmaModefile``, ``_nmaScore`` (ContinuousFlex's rank-based score, lower is better), ``_nmaEigenval``
  and ``_order_`` (the mode number).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from deephemnma.data.star import XMIPP_HEADER, Table, read_star_tables, write_star_tables
from deephemnma.molecule.structure import Structure, read_structure
from deephemnma.nma.modes import DEFAULT_COLLECTIVITY_THRESHOLD, RIGID_MODES, NormalModes, collectivity
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

MODES_XMD = 'modes.xmd'
MODES_FOLDER = 'modes'
#: Reference file names looked for next to a modes.xmd (ContinuousFlex's and ours).
REFERENCE_NAMES = ('reference.pdb', 'atoms.pdb', 'pseudoatoms.pdb')


@dataclass
class ModeRow:
    """One row of modes.xmd."""

    number: int
    mode_file: str
    enabled: bool
    collectivity: float
    score: float
    eigenvalue: float


def continuousflex_scores(collectivities: np.ndarray) -> np.ndarray:
    """ContinuousFlex's mode score: (mode position + rank by decreasing collectivity + 2) / (2 L)."""
    count = len(collectivities)
    ranking = np.argsort(-np.asarray(collectivities), kind='stable')
    scores = np.empty(count)
    for rank, position in enumerate(ranking):
        scores[position] = position + rank + 2
    return scores / (2.0 * count)


def write_vector_file(path: Union[str, os.PathLike], vector: np.ndarray) -> None:
    """One mode (N, 3) as N lines ``vx vy vz``."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(vector).reshape(-1, 3), fmt='%.10e')


def read_vector_file(path: Union[str, os.PathLike], num_atoms: Optional[int] = None) -> np.ndarray:
    """A mode file as (N, 3); InputError for a missing file, bad numbers or a wrong atom count."""
    try:
        vector = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as error:
        raise InputError(f'{path}: cannot read a mode file ({error})') from error
    if vector.shape[1] != 3:
        raise InputError(f'{path}: expected 3 numbers per line, found {vector.shape[1]}')
    if num_atoms is not None and len(vector) != num_atoms:
        raise InputError(f'{path}: {len(vector)} lines for a reference of {num_atoms} atoms')
    return vector


def write_modes_xmd(path: Union[str, os.PathLike], rows: List[ModeRow]) -> None:
    """The metadata file as Xmipp writes it (one ``data_noname`` loop)."""
    table: Table = {'enabled': [str(1 if row.enabled else -1) for row in rows],
                    'nmaCollectivity': [f'{row.collectivity:.6f}' for row in rows],
                    'nmaModefile': [row.mode_file for row in rows],
                    'nmaScore': [f'{row.score:.6f}' for row in rows],
                    'nmaEigenval': [f'{row.eigenvalue:.8e}' for row in rows],
                    'order_': [str(row.number) for row in rows]}
    write_star_tables(Path(path), {'noname': table}, header=XMIPP_HEADER)


def read_modes_xmd(path: Union[str, os.PathLike]) -> List[ModeRow]:
    """Rows of a modes.xmd (columns found by name, any order; score and eigenvalue optional)."""
    path = Path(path)
    table = next(iter(read_star_tables(path).values()))
    missing = [f'_{name}' for name in ('nmaModefile', 'order_') if name not in table]
    if missing:
        raise InputError(f'{path}: not a modes metadata file (missing {", ".join(missing)})')
    count = len(table['order_'])
    if not count:
        raise InputError(f'{path}: no modes listed')

    def column(name: str, default: str) -> List[str]:
        return table.get(name, [default] * count)

    rows = []
    for fields in zip(table['order_'], table['nmaModefile'], column('enabled', '1'),
                      column('nmaCollectivity', 'nan'), column('nmaScore', 'nan'), column('nmaEigenval', 'nan')):
        number, mode_file, enabled, kappa, score, eigenvalue = fields
        try:
            rows.append(ModeRow(number=int(number), mode_file=mode_file, enabled=int(float(enabled)) == 1,
                                collectivity=float(kappa), score=float(score), eigenvalue=float(eigenvalue)))
        except ValueError as error:
            raise InputError(f'{path}: bad value in the row of mode {number} ({error})') from error
    return rows


def write_modes(folder: Union[str, os.PathLike], modes: NormalModes,
                threshold: float = DEFAULT_COLLECTIVITY_THRESHOLD, path_prefix: Optional[str] = None) -> Path:
    """Write ``folder/modes.xmd`` and ``folder/modes/vec.N`` (rigid modes 1-6 included, disabled).

    ``path_prefix``: how the mode files are named inside modes.xmd (default: ``folder`` as given; Xmipp
    opens them relative to its working directory, which in Scipion is the project folder).
    """
    folder = Path(folder)
    prefix = str(folder) if path_prefix is None else path_prefix
    vectors = np.concatenate([modes.rigid_vectors, modes.vectors])
    numbers = np.concatenate([np.arange(1, len(modes.rigid_vectors) + 1), modes.numbers])
    eigenvalues = np.concatenate([modes.rigid_eigenvalues, modes.eigenvalues])
    collectivities = np.concatenate([collectivity(modes.rigid_vectors) if len(modes.rigid_vectors) else [],
                                     modes.collectivity])
    scores = continuousflex_scores(collectivities)
    rows = []
    for vector, number, value, kappa, score in zip(vectors, numbers, eigenvalues, collectivities, scores):
        name = f'vec.{int(number)}'
        write_vector_file(folder / MODES_FOLDER / name, vector)
        rows.append(ModeRow(number=int(number), mode_file=os.path.join(prefix, MODES_FOLDER, name),
                            enabled=bool(number > RIGID_MODES and kappa >= threshold),
                            collectivity=float(kappa), score=float(score), eigenvalue=float(value)))
    xmd = folder / MODES_XMD
    write_modes_xmd(xmd, rows)
    return xmd


def resolve_mode_file(xmd: Path, name: str) -> Path:
    """A mode file named in ``xmd``: as given (Xmipp opens it from its working folder), else next to ``xmd``."""
    candidates = [Path(name), xmd.parent / name, xmd.parent / MODES_FOLDER / Path(name).name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise InputError(f'{xmd}: mode file {name} not found (looked in the working folder and next to {xmd.name})')


def find_reference(xmd: Path) -> Path:
    """The reference PDB next to a modes.xmd (reference.pdb, atoms.pdb or pseudoatoms.pdb)."""
    for name in REFERENCE_NAMES:
        if (xmd.parent / name).exists():
            return xmd.parent / name
    raise InputError(f'{xmd}: no reference structure given and none of {", ".join(REFERENCE_NAMES)} next to it')


def read_modes(xmd: Union[str, os.PathLike], reference: Union[Structure, str, os.PathLike, None] = None
               ) -> NormalModes:
    """Read a modes.xmd and its vector files into NormalModes defined on ``reference``.

    ``reference``: the structure (or its file) whose atoms the vector lines follow; by default a reference
    PDB next to the metadata. Modes 1-6 become the rigid modes; collectivity is recomputed where the file
    lacks it. The vectors are kept as written (no renormalisation).
    """
    xmd = Path(xmd)
    rows = sorted(read_modes_xmd(xmd), key=lambda r: r.number)
    if reference is None:
        reference = find_reference(xmd)
    structure = reference if isinstance(reference, Structure) else read_structure(reference,
                                                                                   remove_hydrogens=False,
                                                                                   remove_waters=False)
    vectors = np.stack([read_vector_file(resolve_mode_file(xmd, r.mode_file), len(structure)) for r in rows])
    numbers = np.array([r.number for r in rows])
    rigid = numbers <= RIGID_MODES
    kappa = np.array([r.collectivity for r in rows])
    kappa = np.where(np.isnan(kappa), collectivity(vectors), kappa)
    eigenvalues = np.array([r.eigenvalue for r in rows])
    return NormalModes(vectors=vectors[~rigid], eigenvalues=eigenvalues[~rigid], numbers=numbers[~rigid],
                       collectivity=kappa[~rigid], rigid_eigenvalues=eigenvalues[rigid],
                       rigid_vectors=vectors[rigid], structure=structure, cutoff=float('nan'), method='file')


def load_modes(path: Union[str, os.PathLike], reference: Union[Structure, str, os.PathLike, None] = None,
               select: Optional[Sequence[int]] = None) -> NormalModes:
    """Modes from a DeepHEMNMA ``.npz`` (:meth:`NormalModes.save`) or an Xmipp/ContinuousFlex ``modes.xmd``.

    ``reference``: the structure (or its file) the vectors belong to: needed for a modes.xmd without a reference
    PDB beside it, and checked against the modes' atom count when given as a Structure. ``select``: Xmipp mode
    numbers to keep, in that order (default: every non-rigid mode).
    """
    path = Path(path)
    if path.suffix == '.npz':
        modes = NormalModes.load(path)
    elif path.suffix == '.xmd':
        modes = read_modes(path, reference)
    else:
        raise InputError(f'{path}: modes must be a DeepHEMNMA .npz or an Xmipp modes.xmd')
    if isinstance(reference, Structure) and modes.num_atoms != len(reference):
        raise InputError(f'{path}: the modes are defined on {modes.num_atoms} atoms but the reference has '
                         f'{len(reference)} atoms: they do not belong to this reference')
    return modes.select(select) if select else modes


def enabled_numbers(xmd: Union[str, os.PathLike]) -> List[int]:
    """Numbers of the modes marked enabled in a modes.xmd."""
    return [r.number for r in read_modes_xmd(xmd) if r.enabled]
