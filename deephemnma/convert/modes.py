"""Conversions between Scipion's SetOfNormalModes and the core's modes (Xmipp/ContinuousFlex layout).

A SetOfNormalModes holds one NormalMode per mode, its object id being the mode number (1-6: rigid-body modes), its
file one ``vx vy vz`` line per atom of the set's reference (``getPdb()``), as ContinuousFlex's NMA writes them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
from pwem.objects import AtomStruct, NormalMode, SetOfNormalModes

from deephemnma.convert.particles import optional_float
from deephemnma.nma.modes import RIGID_MODES, NormalModes, collectivity


# ----------------------------------------------------------------------------------------------
def write_modes_xmd_from_set(modes_set: SetOfNormalModes, path: str,
                             enabled: Optional[Iterable[int]] = None) -> None:
    """``modes_set`` as a modes.xmd that the core and Xmipp read (absolute mode file paths).

    ``enabled``: the mode numbers to mark enabled (default: the set's own enabled flags).
    """
    from deephemnma.nma.files import ModeRow, write_modes_xmd
    chosen = set(enabled) if enabled is not None else None
    rows = [ModeRow(number=int(mode.getObjId()), mode_file=os.path.abspath(mode.getModeFile()),
                    enabled=int(mode.getObjId()) in chosen if chosen is not None else bool(mode.isEnabled()),
                    collectivity=optional_float(mode.getCollectivity(), np.nan),
                    score=optional_float(mode.getScore(), np.nan), eigenvalue=np.nan)
            for mode in modes_set.iterItems(orderBy='id')]
    write_modes_xmd(path, rows)


def set_of_modes_from_xmd(xmd: str, output: SetOfNormalModes, reference: AtomStruct,
                          enabled: Optional[Iterable[int]] = None) -> SetOfNormalModes:
    """Fill the empty ``output`` with the modes of ``xmd`` on ``reference``.

    ``enabled``: the mode numbers to mark enabled (default: the file's own flags).
    """
    from deephemnma.nma.files import read_modes_xmd, resolve_mode_file
    chosen = set(enabled) if enabled is not None else None
    for row in read_modes_xmd(xmd):
        mode = NormalMode(modeFile=str(resolve_mode_file(Path(xmd), row.mode_file)),
                          collectivity=row.collectivity, score=row.score)
        mode.setObjId(row.number)
        mode.setEnabled(row.number in chosen if chosen is not None else row.enabled)
        output.append(mode)
    output.setPdb(reference)
    return output


def mode_files(modes_set: SetOfNormalModes) -> Dict[int, str]:
    """``{mode number: vector file}`` of a SetOfNormalModes."""
    return {int(mode.getObjId()): mode.getModeFile() for mode in modes_set.iterItems(orderBy='id')}


def missing_modes(files: Dict[int, str], numbers: Iterable[int]) -> Optional[str]:
    """Which of mode ``numbers`` are not among ``files`` (:func:`mode_files`), as a sentence, or None."""
    missing = [n for n in numbers if n not in files]
    return f'mode(s) {missing} are not in the set of normal modes (it has {sorted(files)})' if missing else None


def modes_mismatch(modes_set: SetOfNormalModes, numbers: Iterable[int], atom_count: int) -> Optional[str]:
    """Why modes ``numbers`` of ``modes_set`` cannot deform a reference of ``atom_count`` atoms, or None."""
    from deephemnma.nma.files import read_vector_file
    files = mode_files(modes_set)
    numbers = list(numbers)
    missing = missing_modes(files, numbers)
    if missing:
        return missing
    for number in numbers:
        lines = len(read_vector_file(files[number]))
        if lines != atom_count:
            return (f'the modes come from another structure: mode {number} has {lines} atom vectors but the '
                    f'reference has {atom_count} atoms')
    return None


def normal_modes_from_set(modes_set: SetOfNormalModes, numbers: Optional[Iterable[int]] = None) -> NormalModes:
    """The core's modes from a SetOfNormalModes (its reference PDB and one vector file per mode).

    ``numbers`` selects the modes (default: every non-rigid mode of the set); InputError names missing modes
    and mode files whose atom count differs from the reference's.
    """
    from deephemnma.molecule.structure import read_structure
    from deephemnma.nma.files import read_vector_file
    from deephemnma.runtime.errors import InputError
    structure = read_structure(modes_set.getPdb().getFileName(), remove_hydrogens=False, remove_waters=False)
    files = mode_files(modes_set)
    wanted = list(numbers) if numbers else [n for n in sorted(files) if n > RIGID_MODES]
    missing = missing_modes(files, wanted)
    if missing:
        raise InputError(missing)
    vectors = np.stack([read_vector_file(files[n], len(structure)) for n in wanted])
    rigid = [n for n in sorted(files) if n <= RIGID_MODES]
    rigid_vectors = np.stack([read_vector_file(files[n], len(structure)) for n in rigid]) if rigid \
        else np.zeros((0, len(structure), 3))
    return NormalModes(vectors=vectors, eigenvalues=np.zeros(len(wanted)), numbers=np.array(wanted),
                       collectivity=collectivity(vectors), rigid_eigenvalues=np.zeros(len(rigid)),
                       rigid_vectors=rigid_vectors, structure=structure, cutoff=float('nan'), method='file')
