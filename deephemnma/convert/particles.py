"""Conversions between the core's Particles and Scipion's SetOfParticles, and the helpers on particle sets.

A particle's pose is its projection-alignment Transform (Xmipp ZYZ angles in
degrees, shifts in pixels; see :func:`deephemnma.imaging.rotations.transform_from_pose`), its amplitudes the CsvList
attribute ``_xmipp_nmaDisplacements`` (the name ContinuousFlex's HEMNMA uses, so its outputs are read directly and
ours go into its viewers), its score ``_xmipp_cost``, and every extra column ``NAME`` (e.g. the simulator's ground
truth ``true_amplitudes``) the attribute ``_deephemnma_NAME``.
"""
from __future__ import annotations

import os
from itertools import islice
from typing import Optional, Sequence

import numpy as np
from pwem.objects import Acquisition, CTFModel, Particle, SetOfParticles, Transform
from pyworkflow.object import CsvList, Float

from deephemnma.constants import AMPLITUDES_ATTR, EXTRA_PREFIX, SCORE_ATTR
from deephemnma.data.particles import OPTICS_COLUMNS, Particles
from deephemnma.imaging.rotations import pose_from_transform, transform_from_pose
from deephemnma.runtime.errors import InputError


def fill_set_of_particles(output: SetOfParticles, particles: Particles, base_dir: str = '.') -> SetOfParticles:
    """Add one Particle per row of ``particles`` to the (empty) ``output`` set, with pose, CTF and extras.

    Image locations are made relative to ``base_dir`` where they lie inside it (Scipion stores paths relative to
    the project folder).
    """
    output.setSamplingRate(particles.pixel_size)
    microscopes = _microscopes(particles)
    acquisition = output.getAcquisition()
    _set_microscope(acquisition, microscopes[0])
    several = bool(np.any(microscopes != microscopes[0]))
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
            ctf = CTFModel(defocusU=float(particles.defocus_u[row]), defocusV=float(particles.defocus_v[row]),
                           defocusAngle=float(particles.defocus_angle[row]))
            if particles.phase_shift is not None:
                ctf.setPhaseShift(float(particles.phase_shift[row]))
            particle.setCTF(ctf)
        if several:  # particles of several optics groups: each keeps its microscope
            particle.setAcquisition(_item_acquisition(acquisition, microscopes[row]))
        _set_row_attributes(particle, particles, row)
        output.append(particle)
    return output


def _microscopes(particles: Particles) -> np.ndarray:
    """``(n, 3)`` voltage (kV), spherical aberration (mm) and amplitude contrast of each particle."""
    return np.stack([np.broadcast_to(np.asarray(getattr(particles, name), dtype=np.float64), len(particles))
                     for name in OPTICS_COLUMNS], axis=1)


def _set_microscope(acquisition: Acquisition, microscope: np.ndarray) -> None:
    voltage, cs, amplitude_contrast = (float(v) for v in microscope)
    acquisition.setVoltage(voltage)
    acquisition.setSphericalAberration(cs)
    acquisition.setAmplitudeContrast(amplitude_contrast)


def _item_acquisition(set_acquisition: Acquisition, microscope: np.ndarray) -> Acquisition:
    """A particle's own acquisition (Scipion keeps an item's acquisition instead of the set's only when its
    magnification is set: the set's, or a nominal 10,000 that this plugin never uses)."""
    acquisition = Acquisition(magnification=set_acquisition.getMagnification() or 10000.0)
    _set_microscope(acquisition, microscope)
    return acquisition


def _set_row_attributes(particle: Particle, particles: Particles, row: int) -> None:
    if particles.amplitudes is not None:
        setattr(particle, AMPLITUDES_ATTR, _csv(particles.amplitudes[row]))
    if particles.score is not None:
        setattr(particle, SCORE_ATTR, Float(float(particles.score[row])))
    extra = dict(particles.extra, **({'half': particles.half} if particles.half is not None else {}))
    for name, values in extra.items():
        _set_extra(particle, name, values[row])


def _set_extra(particle: Particle, name: str, value) -> None:
    """Attribute ``_deephemnma_NAME`` of a particle: a float, or comma-separated values for a vector."""
    setattr(particle, EXTRA_PREFIX + name, _csv(value) if np.ndim(value) else Float(float(value)))


def ctf_state_of(particle_set: SetOfParticles) -> str:
    """What the images of a set carry of the CTF, in :data:`deephemnma.imaging.ctf.CTF_STATES`' words."""
    if particle_set.isPhaseFlipped():
        return 'phase_flipped'
    return 'full' if particle_set.hasCTF() else 'none'


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
    result = Particles(image=np.array([r['image'] for r in rows]), pixel_size=particle_set.getSamplingRate(),
                       **_microscope_fields(particle_set.getAcquisition(), rows))
    if all(r['transform'] is not None for r in rows):
        result.angles, result.shifts = pose_from_transform(np.array([r['transform'] for r in rows]))
    elif require_alignment:
        raise ValueError(f'{name}: particles have no 3D projection alignment (angles and shifts)')
    if all(r['ctf'] is not None for r in rows):
        result.defocus_u, result.defocus_v, result.defocus_angle, phase = np.array([r['ctf'] for r in rows]).T
        result.phase_shift = phase if np.any(phase != 0) else None
    if all(r['amplitudes'] is not None for r in rows):
        result.amplitudes = np.array([r['amplitudes'] for r in rows])
    elif require_amplitudes:
        raise ValueError(f'{name}: particles lack normal-mode amplitudes ({AMPLITUDES_ATTR}); '
                         'use the output of an alignment or inference protocol')
    if all(r['score'] is not None for r in rows):
        result.score = np.array([r['score'] for r in rows])
    result.extra = {key: np.array([r['extra'][key] for r in rows]) for key in rows[0]['extra']
                    if all(key in r['extra'] for r in rows)}
    result.half = result.extra.pop('half', None)
    result.__post_init__()
    return result


def _microscope_fields(set_acquisition: Acquisition, rows: list) -> dict:
    """Voltage, Cs and amplitude contrast: each particle's where the particles carry several, else the set's."""
    default = (optional_float(set_acquisition.getVoltage(), 300.0),
               optional_float(set_acquisition.getSphericalAberration(), 2.7),
               optional_float(set_acquisition.getAmplitudeContrast(), 0.1))
    microscopes = np.array([r['microscope'] or default for r in rows], dtype=np.float64)
    if np.all(microscopes == microscopes[0]):
        return dict(zip(OPTICS_COLUMNS, (float(v) for v in microscopes[0])))
    return dict(zip(OPTICS_COLUMNS, microscopes.T))


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
    acquisition = particle.getAcquisition() if particle.hasAcquisition() else None
    return {'image': f'{index}@{filename}',
            'microscope': None if acquisition is None or acquisition.getVoltage() is None else
            (acquisition.getVoltage(), optional_float(acquisition.getSphericalAberration(), 2.7),
             optional_float(acquisition.getAmplitudeContrast(), 0.1)),
            'transform': np.array(particle.getTransform().getMatrix()) if particle.hasTransform() else None,
            'ctf': (ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle(), ctf.getPhaseShift() or 0.0)
            if ctf is not None else None,
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


def optional_float(value, default: float) -> float:
    """``value`` as a float, ``default`` when it is None (an unset Scipion attribute)."""
    return float(value) if value is not None else default



def copy_with_estimates(output: SetOfParticles, input_set: SetOfParticles, estimates: Particles,
                        extra_names: Sequence[str] = ()) -> SetOfParticles:
    """Copy ``input_set`` into ``output`` (every attribute kept: CTF, ground truth, ...), with the poses,
    amplitudes and scores of ``estimates`` (one row per input particle, in id order) and those of its extra
    columns named in ``extra_names`` that it has (attributes ``_deephemnma_NAME``)."""
    extras = {name: estimates.extra[name] for name in extra_names if name in estimates.extra}
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
        for name, values in extras.items():
            _set_extra(particle, name, values[row])

    output.copyItems(input_set, updateItemCallback=update, itemDataIterator=iter(range(len(estimates))),
                     copyDisabled=True, orderBy='id')
    return output


# ----------------------------------------------------------------------------------------------
# Helpers on particle sets shared by protocols and viewers
# ----------------------------------------------------------------------------------------------
def first_item_has(particle_set: SetOfParticles, attribute: str) -> bool:
    """Whether the first particle of a set carries ``attribute`` (a cheap check for ``_validate``)."""
    first = particle_set.getFirstItem() if particle_set.getSize() else None
    return first is not None and getattr(first, attribute, None) is not None


def labelled_particles(particle_set: SetOfParticles, ground_truth: bool) -> Particles:
    """The core's particles of ``particle_set`` with the labels to learn in angles, shifts and amplitudes (the
    set's own alignment and amplitudes, or with ``ground_truth`` the simulator's), image paths made absolute;
    InputError when the chosen labels are missing."""
    from deephemnma.nn.targets import true_labels_from_particles
    particles = particles_from_set(particle_set)
    if ground_truth:
        missing = [k for k in ('true_angles', 'true_shifts', 'true_amplitudes') if k not in particles.extra]
        if missing:
            raise InputError(f'the particles carry no ground truth ({", ".join(EXTRA_PREFIX + m for m in missing)});'
                             ' choose the alignment and amplitudes as labels')
        truth = true_labels_from_particles(particles)
        particles.angles, particles.shifts, particles.amplitudes = truth.angles, truth.shifts, truth.amplitudes
    return particles.resolved()


def space_coordinates(particle_set: SetOfParticles) -> np.ndarray:
    """The space coordinates ``(n, k)`` of the particles (attribute written by the space protocol)."""
    particles = particles_from_set(particle_set)
    if 'space' not in particles.extra:
        raise InputError(f'{particle_set.getObjLabel() or particle_set.getFileName()}: the particles have no '
                         'space coordinates; use the output of the conformational space protocol')
    return np.asarray(particles.extra['space'], dtype=np.float64).reshape(len(particles), -1)


def subset_of(output: SetOfParticles, source: SetOfParticles, members: np.ndarray) -> SetOfParticles:
    """Fill the empty ``output`` with the particles of ``source`` at positions ``members`` (id order)."""
    output.copyInfo(source)
    wanted = np.zeros(source.getSize(), dtype=bool)
    wanted[members] = True
    position = iter(range(len(wanted)))

    def keep(item, _row=None):
        item._appendItem = bool(wanted[next(position)])

    output.copyItems(source, updateItemCallback=keep, copyDisabled=True, orderBy='id')
    return output


def copy_with_vectors(output: SetOfParticles, source: SetOfParticles, rows: np.ndarray,
                      attribute: str) -> SetOfParticles:
    """Fill the empty ``output`` with a copy of ``source`` where particle ``i`` (in id order) gets the vector
    ``rows[i]`` as ``attribute``."""
    output.copyInfo(source)
    position = iter(range(len(rows)))

    def attach(item, _row=None):
        setattr(item, attribute, _csv(rows[next(position)]))

    output.copyItems(source, updateItemCallback=attach, copyDisabled=True, orderBy='id')
    return output


def max_shift(particle_set: SetOfParticles, limit: int = 2000) -> float:
    """Largest |shift| (pixels) among the first ``limit`` particles (0 without alignment)."""
    matrices = [np.array(p.getTransform().getMatrix()) for p in islice(particle_set.iterItems(), limit)
                if p.hasTransform()]
    if not matrices:
        return 0.0
    return float(np.abs(pose_from_transform(np.array(matrices))[1]).max())
