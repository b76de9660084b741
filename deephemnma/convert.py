"""Conversions between the core's objects and Scipion's: Particles and SetOfParticles, modes and SetOfNormalModes.

Scipion side only (imports pwem). A particle's pose is its projection-alignment Transform (Xmipp ZYZ angles in
degrees, shifts in pixels; see :func:`deephemnma.imaging.rotations.transform_from_pose`), its amplitudes the CsvList
attribute ``_xmipp_nmaDisplacements`` (the name ContinuousFlex's HEMNMA uses, so its outputs are read directly and
ours go into its viewers), its score ``_xmipp_cost``, and every extra column ``NAME`` (e.g. the simulator's ground
truth ``true_amplitudes``) the attribute ``_deephemnma_NAME``.

A SetOfNormalModes holds one NormalMode per mode, its object id being the mode number (1-6: rigid-body modes), its
file one ``vx vy vz`` line per atom of the set's reference (``getPdb()``), as ContinuousFlex's NMA writes them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
from pwem.objects import AtomStruct, CTFModel, NormalMode, Particle, SetOfNormalModes, SetOfParticles, Transform
from pyworkflow.object import CsvList, Float

from deephemnma.constants import AMPLITUDES_ATTR, EXTRA_PREFIX, SCORE_ATTR
from deephemnma.data.particles import Particles
from deephemnma.nma.modes import RIGID_MODES, NormalModes, collectivity
from deephemnma.imaging.rotations import pose_from_transform, transform_from_pose


def fill_set_of_particles(output: SetOfParticles, particles: Particles, base_dir: str = '.') -> SetOfParticles:
    """Add one Particle per row of ``particles`` to the (empty) ``output`` set, with pose, CTF and extras.

    Image locations are made relative to ``base_dir`` where they lie inside it (Scipion stores paths relative to
    the project folder).
    """
    output.setSamplingRate(particles.pixel_size)
    acquisition = output.getAcquisition()
    acquisition.setVoltage(particles.voltage)
    acquisition.setSphericalAberration(particles.cs)
    acquisition.setAmplitudeContrast(particles.amplitude_contrast)
    if particles.has_alignment:
        output.setAlignmentProj()
    output.setHasCTF(particles.has_ctf)
    transforms = transform_from_pose(particles.angles, particles.shifts) if particles.has_alignment else None
    for row, (index, path) in enumerate(particles.locations(base_dir)):
        particle = Particle()
        particle.setLocation(index + 1, _relative(path, base_dir))
        if transforms is not None:
            particle.setTransform(Transform(transforms[row]))
        if particles.has_ctf:
            particle.setCTF(CTFModel(defocusU=float(particles.defocus_u[row]), defocusV=float(particles.defocus_v[row]),
                                     defocusAngle=float(particles.defocus_angle[row])))
        _set_row_attributes(particle, particles, row)
        output.append(particle)
    return output


def _set_row_attributes(particle: Particle, particles: Particles, row: int) -> None:
    if particles.amplitudes is not None:
        setattr(particle, AMPLITUDES_ATTR, _csv(particles.amplitudes[row]))
    if particles.score is not None:
        setattr(particle, SCORE_ATTR, Float(float(particles.score[row])))
    for name, values in particles.extra.items():
        value = values[row]
        setattr(particle, EXTRA_PREFIX + name, _csv(value) if np.ndim(value) else Float(float(value)))


def _csv(values: np.ndarray) -> CsvList:
    csv = CsvList(pType=float)
    csv.set([float(v) for v in np.atleast_1d(values)])
    return csv


def _relative(path: str | os.PathLike, base_dir: str) -> str:
    absolute, base = os.path.abspath(path), os.path.abspath(base_dir)
    return os.path.relpath(absolute, base) if absolute.startswith(base + os.sep) else str(path)


def particles_from_set(particle_set: SetOfParticles, require_alignment: bool = False,
                       require_amplitudes: bool = False) -> Particles:
    """The core's view of a SetOfParticles (any plugin's, ContinuousFlex's HEMNMA output included).

    Raises ``ValueError`` with the set's name when a required pose or amplitude attribute is missing.
    """
    name = particle_set.getObjLabel() or particle_set.getFileName()
    # Scipion reuses one item object while iterating: copy every value out of it at once.
    rows = [_row_values(p) for p in particle_set.iterItems(orderBy='id')]
    if not rows:
        raise ValueError(f'{name}: the set of particles is empty')
    acquisition = particle_set.getAcquisition()
    result = Particles(image=np.array([r['image'] for r in rows]), pixel_size=particle_set.getSamplingRate(),
                       voltage=_float(acquisition.getVoltage(), 300.0),
                       cs=_float(acquisition.getSphericalAberration(), 2.7),
                       amplitude_contrast=_float(acquisition.getAmplitudeContrast(), 0.1))
    if all(r['transform'] is not None for r in rows):
        result.angles, result.shifts = pose_from_transform(np.array([r['transform'] for r in rows]))
    elif require_alignment:
        raise ValueError(f'{name}: particles have no 3D projection alignment (angles and shifts)')
    if all(r['ctf'] is not None for r in rows):
        result.defocus_u, result.defocus_v, result.defocus_angle = np.array([r['ctf'] for r in rows]).T
    if all(r['amplitudes'] is not None for r in rows):
        result.amplitudes = np.array([r['amplitudes'] for r in rows])
    elif require_amplitudes:
        raise ValueError(f'{name}: particles lack normal-mode amplitudes ({AMPLITUDES_ATTR}); '
                         'use the output of an alignment or inference protocol')
    if all(r['score'] is not None for r in rows):
        result.score = np.array([r['score'] for r in rows])
    result.extra = {key: np.array([r['extra'][key] for r in rows]) for key in rows[0]['extra']
                    if all(key in r['extra'] for r in rows)}
    result.__post_init__()
    return result


def absolute_image_paths(particles: Particles) -> Particles:
    """``particles`` with every image location ``index@path`` given an absolute path (changed in place)."""
    particles.image = np.array([f'{index}@{os.path.abspath(path)}'
                                for index, path in (location.split('@', 1) for location in particles.image)])
    return particles


def _row_values(particle: Particle) -> dict:
    index, filename = particle.getLocation()
    ctf = particle.getCTF() if particle.hasCTF() else None
    score = getattr(particle, SCORE_ATTR, None)
    extra = {}
    for attr, value in particle.getAttributes():
        if attr.startswith(EXTRA_PREFIX):
            vector = _vector(particle, attr)
            if vector is not None:
                extra[attr[len(EXTRA_PREFIX):]] = vector[0] if isinstance(value, Float) else vector
    return {'image': f'{index}@{filename}',
            'transform': np.array(particle.getTransform().getMatrix()) if particle.hasTransform() else None,
            'ctf': (ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle()) if ctf is not None else None,
            'amplitudes': _vector(particle, AMPLITUDES_ATTR),
            'score': score.get() if score is not None and score.hasValue() else None, 'extra': extra}


def _vector(particle: Particle, attr: str) -> Optional[np.ndarray]:
    value = getattr(particle, attr, None)
    if value is None:
        return None
    if isinstance(value, Float):
        return np.array([value.get()], dtype=float) if value.hasValue() else None
    items = value.get() if hasattr(value, 'get') else value
    if isinstance(items, str):
        items = [v for v in items.replace(',', ' ').split()]
    return np.array([float(v) for v in items], dtype=float) if len(items) else None


def _float(value, default: float) -> float:
    return float(value) if value is not None else default



def copy_with_estimates(output: SetOfParticles, input_set: SetOfParticles, estimates: Particles) -> SetOfParticles:
    """Copy ``input_set`` into ``output`` (every attribute kept: CTF, ground truth, ...), with the poses,
    amplitudes and scores of ``estimates`` (one row per input particle, in id order)."""
    output.copyInfo(input_set)
    if estimates.has_alignment:
        output.setAlignmentProj()
    transforms = transform_from_pose(estimates.angles, estimates.shifts) if estimates.has_alignment else None

    def update(particle: Particle, row: int) -> None:
        if transforms is not None:
            particle.setTransform(Transform(transforms[row]))
        if estimates.amplitudes is not None:
            setattr(particle, AMPLITUDES_ATTR, _csv(estimates.amplitudes[row]))
        if estimates.score is not None:
            setattr(particle, SCORE_ATTR, Float(float(estimates.score[row])))

    output.copyItems(input_set, updateItemCallback=update, itemDataIterator=iter(range(len(estimates))),
                     copyDisabled=True, orderBy='id')
    return output


# ----------------------------------------------------------------------------------------------
# Normal modes
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
                    collectivity=_float(mode.getCollectivity(), np.nan), score=_float(mode.getScore(), np.nan),
                    eigenvalue=np.nan)
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
    from deephemnma.runtime.errors import InputError
    from deephemnma.nma.files import read_vector_file
    from deephemnma.molecule.structure import read_structure
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
