"""Particles as other programs export them, made with this project's simulator: test data in outside conventions.

:func:`simulate_relion_export` writes what a RELION 3.1 refinement leaves for a user: images with inverted
contrast (protein white) that carry the full CTF (not phase-flipped), one stack per micrograph under
``Extract/job007/Movies/``, and ``particles.star`` with one optics row per group (voltage, Cs, amplitude
contrast, pixel size, image size), per-particle astigmatic defocus, ``rlnPhaseShift`` (phase plate),
``rlnRandomSubset``, poses, and the text and bookkeeping columns RELION writes (micrograph names, coordinates,
figures of merit). Beside it, ``own/`` holds the same particles (same conformations, poses, CTF and noise) in
this project's convention (phase-flipped, protein positive, one stack), and ``truth.npz`` the ground truth.
:func:`write_cryosparc_particles` writes particles as a cryoSPARC ``.cs`` file (its field names and types, the
orientation as cryoSPARC stores it: the rotation vector of the transpose of the Xmipp matrix).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from deephemnma.data.formats import write_particles
from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.data.star import Table, format_floats, write_star_tables
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.rotations import euler_to_matrix
from deephemnma.runtime.files import atomic_path
from deephemnma.simulate.conformations import helix
from deephemnma.simulate.parameters import sample_angles, sample_defocus, sample_shifts, stream
from deephemnma.simulate.physics import CALIBRATION_COUNT, noise_std_for_snr, simulate_particles
from deephemnma.simulate.setup import SimulationSetup

EXPORT_STAR = 'particles.star'
OWN_STAR = os.path.join('own', 'particles.star')
TRUTH = 'truth.npz'
MODES = 'modes.npz'
STACK_FOLDER = os.path.join('Extract', 'job007', 'Movies')


@dataclass(frozen=True)
class OpticsGroup:
    """One microscope setting: voltage (kV), Cs (mm), amplitude contrast, phase shift (degrees; a phase plate)."""

    name: str
    voltage: float
    cs: float
    amplitude_contrast: float
    phase_shift: float = 0.0


#: Three groups differing in voltage, Cs, amplitude contrast and phase shift.
THREE_MICROSCOPES = (OpticsGroup('krios_300kV', 300.0, 2.7, 0.1),
                     OpticsGroup('talos_200kV', 200.0, 2.0, 0.07),
                     OpticsGroup('krios_phase_plate', 300.0, 2.7, 0.1, 90.0))


@dataclass
class ExportTruth:
    """Ground truth of an export, in particle order: amplitudes (n, M), Euler angles (n, 3) deg (Xmipp ZYZ),
    shifts (n, 2) px (Xmipp sign), optics group (n,) 0-based, micrograph (n,) 0-based."""

    amplitudes: np.ndarray
    angles: np.ndarray
    shifts: np.ndarray
    group: np.ndarray
    micrograph: np.ndarray

    def save(self, path: Path) -> None:
        with atomic_path(path, suffix='.npz') as tmp:
            np.savez(tmp, amplitudes=self.amplitudes, angles=self.angles, shifts=self.shifts, group=self.group,
                     micrograph=self.micrograph)

    @classmethod
    def load(cls, path: Path) -> 'ExportTruth':
        with np.load(path) as data:
            return cls(*(data[name] for name in ('amplitudes', 'angles', 'shifts', 'group', 'micrograph')))


def simulate_relion_export(folder: str | os.PathLike, setup: SimulationSetup, micrographs: int, box: int,
                           pixel_size: float, snr: float, seed: int = 0, per_micrograph: int = 1,
                           groups: Sequence[OpticsGroup] = THREE_MICROSCOPES, defocus: tuple = (8000.0, 20000.0),
                           astigmatism: float = 600.0, max_shift: float = 3.0) -> ExportTruth:
    """Write a RELION-style export of ``micrographs * per_micrograph`` particles of ``setup`` (helix amplitudes,
    uniform orientations) into ``folder`` (see the module docstring); micrographs are dealt to ``groups`` in turn.
    ``box`` pixels of ``pixel_size`` Angstrom, noise of SNR ``snr`` on the first group's images (one dose for
    all), defocus uniform in ``defocus`` (Angstrom) per micrograph with ``astigmatism`` Angstrom, shifts up to
    ``max_shift`` pixels."""
    folder = Path(folder)
    count = micrographs * per_micrograph
    micrograph = np.arange(count) // per_micrograph
    truth = ExportTruth(helix(count, stream(seed, 'conformations')).amplitudes,
                        sample_angles(count, stream(seed, 'angles')),
                        sample_shifts(count, stream(seed, 'shifts'), max_shift),
                        micrograph % len(groups), micrograph)
    defocus_u, defocus_v, angle = sample_defocus(count, stream(seed, 'defocus'), defocus[0], defocus[1],
                                                 astigmatism, per_micrograph)
    phase = np.array([groups[g].phase_shift for g in truth.group])
    exported = np.empty((count, box, box), dtype=np.float32)
    own = np.empty_like(exported)
    group_ctfs = [CTFParams(defocus_u=defocus_u[rows], defocus_v=defocus_v[rows], defocus_angle=angle[rows],
                            voltage=optics.voltage, cs=optics.cs, amplitude_contrast=optics.amplitude_contrast,
                            phase_shift=optics.phase_shift)
                  for rows, optics in ((np.flatnonzero(truth.group == number), optics)
                                       for number, optics in enumerate(groups))]
    calibration = np.flatnonzero(truth.group == 0)[:CALIBRATION_COUNT]
    noise_std = noise_std_for_snr(setup, truth.amplitudes[calibration], truth.angles[calibration],
                                  truth.shifts[calibration], box, pixel_size, snr,
                                  group_ctfs[0].rows(slice(0, len(calibration))))
    for number, ctf in enumerate(group_ctfs):  # one dose: the noise level of the first group's SNR for all
        rows = np.flatnonzero(truth.group == number)
        for flipped, target in ((False, exported), (True, own)):  # same seed: the same noise
            target[rows] = simulate_particles(setup, truth.amplitudes[rows], truth.angles[rows], truth.shifts[rows],
                                              box, pixel_size, ctf, snr, seed=seed + number, noise_std=noise_std,
                                              phase_flip=flipped, invert_contrast=not flipped).images
    _write_micrograph_stacks(folder, exported, micrograph, pixel_size)
    write_star_tables(folder / EXPORT_STAR, _relion_tables(truth, groups, box, pixel_size, defocus_u, defocus_v,
                                                          angle, phase, seed), header='# version 30001')
    own_folder = folder / 'own'
    own_folder.mkdir(parents=True, exist_ok=True)
    write_stack(own_folder / 'particles.mrcs', own, pixel_size)
    microscope = {name: np.array([getattr(groups[g], name) for g in truth.group])
                  for name in ('voltage', 'cs', 'amplitude_contrast')}
    write_particles(folder / OWN_STAR, Particles(
        image=stack_locations('particles.mrcs', count), pixel_size=pixel_size, box=box, defocus_u=defocus_u,
        defocus_v=defocus_v, defocus_angle=angle, phase_shift=phase, **microscope))
    setup.modes.save(folder / MODES)
    truth.save(folder / TRUTH)
    return truth


def _write_micrograph_stacks(folder: Path, images: np.ndarray, micrograph: np.ndarray, pixel_size: float) -> None:
    stacks = folder / STACK_FOLDER
    stacks.mkdir(parents=True, exist_ok=True)
    for number in np.unique(micrograph):
        write_stack(stacks / _stack_name(number), images[micrograph == number], pixel_size)


def _stack_name(micrograph: int) -> str:
    return f'mic_{int(micrograph) + 1:05d}.mrcs'


def _relion_tables(truth: ExportTruth, groups: Sequence[OpticsGroup], box: int, pixel_size: float,
                   defocus_u: np.ndarray, defocus_v: np.ndarray, angle: np.ndarray, phase: np.ndarray,
                   seed: int) -> Dict[str, Table]:
    """``data_optics`` and ``data_particles`` with the columns (and number formats) of a RELION 3.1 refinement."""
    count = len(truth.group)
    rng = stream(seed, 'shifts', 1)
    optics: Table = {
        'rlnOpticsGroupName': [g.name for g in groups],
        'rlnOpticsGroup': [str(i + 1) for i in range(len(groups))],
        'rlnMtfFileName': [f'mtf_{g.name}.star' for g in groups],
        'rlnMicrographOriginalPixelSize': [f'{pixel_size / 2:.6f}'] * len(groups),
        'rlnVoltage': [f'{g.voltage:.6f}' for g in groups],
        'rlnSphericalAberration': [f'{g.cs:.6f}' for g in groups],
        'rlnAmplitudeContrast': [f'{g.amplitude_contrast:.6f}' for g in groups],
        'rlnImagePixelSize': [f'{pixel_size:.6f}'] * len(groups),
        'rlnImageSize': [str(box)] * len(groups),
        'rlnImageDimensionality': ['2'] * len(groups)}
    per_stack: Dict[int, int] = {}
    names: List[str] = []
    for number in truth.micrograph:
        per_stack[number] = per_stack.get(number, 0) + 1
        names.append(f'{per_stack[number]:06d}@{STACK_FOLDER}/{_stack_name(number)}')
    particles: Table = {
        'rlnCoordinateX': [f'{v:.6f}' for v in rng.uniform(100, 3900, count).round()],
        'rlnCoordinateY': [f'{v:.6f}' for v in rng.uniform(100, 3900, count).round()],
        'rlnAutopickFigureOfMerit': [f'{v:.6f}' for v in rng.uniform(0.5, 3.0, count)],
        'rlnClassNumber': ['1'] * count,
        'rlnAnglePsi': format_floats(truth.angles[:, 2]),
        'rlnImageName': names,
        'rlnMicrographName': [f'MotionCorr/job002/Movies/mic_{int(m) + 1:05d}.mrc' for m in truth.micrograph],
        'rlnOpticsGroup': [str(int(g) + 1) for g in truth.group],
        'rlnCtfMaxResolution': [f'{v:.6f}' for v in rng.uniform(3.0, 6.0, count)],
        'rlnCtfFigureOfMerit': [f'{v:.6f}' for v in rng.uniform(0.05, 0.3, count)],
        'rlnDefocusU': [f'{v:.6f}' for v in defocus_u],
        'rlnDefocusV': [f'{v:.6f}' for v in defocus_v],
        'rlnDefocusAngle': [f'{v:.6f}' for v in angle],
        'rlnCtfBfactor': ['0.000000'] * count,
        'rlnCtfScalefactor': ['1.000000'] * count,
        'rlnPhaseShift': [f'{v:.6f}' for v in phase],
        'rlnGroupNumber': [str(int(g) + 1) for g in truth.group],
        'rlnAngleRot': format_floats(truth.angles[:, 0]),
        'rlnAngleTilt': format_floats(truth.angles[:, 1]),
        'rlnOriginXAngst': format_floats(truth.shifts[:, 0] * pixel_size),
        'rlnOriginYAngst': format_floats(truth.shifts[:, 1] * pixel_size),
        'rlnNormCorrection': [f'{v:.6f}' for v in rng.normal(1.0, 0.05, count)],
        'rlnLogLikeliContribution': [f'{v:.6e}' for v in rng.normal(1.2e5, 1e3, count)],
        'rlnMaxValueProbDistribution': [f'{v:.6f}' for v in rng.uniform(0.1, 1.0, count)],
        'rlnNrOfSignificantSamples': [str(int(v)) for v in rng.integers(1, 20, count)],
        'rlnRandomSubset': [str(1 + i % 2) for i in range(count)]}
    return {'optics': optics, 'particles': particles}


def write_cryosparc_particles(path: str | os.PathLike, particles: Particles, stack_root: str | os.PathLike) -> None:
    """``particles`` as a cryoSPARC ``.cs`` file (stack paths relative to ``stack_root``, as cryoSPARC stores them
    relative to its project folder): blob, CTF (radians), and ``alignments3D`` (pose: rotation vector of the
    transpose of the Xmipp/RELION matrix; shift in pixels; split 0/1 from the half sets)."""
    count = len(particles)
    indices, stacks = zip(*particles.locations(stack_root))
    paths = [os.path.relpath(stack, stack_root) for stack in stacks]
    fields = [('uid', '<u8'), ('blob/path', f'S{max(len(p) for p in paths)}'), ('blob/idx', '<u4'),
              ('blob/shape', '<u4', (2,)), ('blob/psize_A', '<f4'), ('ctf/type', 'S8'), ('ctf/accel_kv', '<f4'),
              ('ctf/cs_mm', '<f4'), ('ctf/amp_contrast', '<f4'), ('ctf/df1_A', '<f4'), ('ctf/df2_A', '<f4'),
              ('ctf/df_angle_rad', '<f4'), ('ctf/phase_shift_rad', '<f4'), ('alignments3D/split', '<u4'),
              ('alignments3D/shift', '<f4', (2,)), ('alignments3D/pose', '<f4', (3,)),
              ('alignments3D/psize_A', '<f4')]
    data = np.zeros(count, dtype=fields)
    data['uid'] = np.arange(count, dtype=np.uint64) * 7919 + 10 ** 12
    data['blob/path'] = paths
    data['blob/idx'] = indices
    data['blob/shape'] = particles.box
    data['blob/psize_A'] = particles.pixel_size
    data['ctf/type'] = 'spline'
    data['ctf/accel_kv'], data['ctf/cs_mm'] = particles.voltage, particles.cs
    data['ctf/amp_contrast'] = particles.amplitude_contrast
    data['ctf/df1_A'], data['ctf/df2_A'] = particles.defocus_u, particles.defocus_v
    data['ctf/df_angle_rad'] = np.radians(particles.defocus_angle)
    data['ctf/phase_shift_rad'] = np.radians(particles.phase_shift if particles.phase_shift is not None else 0.0)
    data['alignments3D/split'] = (particles.half - 1) if particles.half is not None else np.arange(count) % 2
    data['alignments3D/shift'] = particles.shifts
    data['alignments3D/pose'] = Rotation.from_matrix(
        np.swapaxes(euler_to_matrix(particles.angles), -1, -2)).as_rotvec()
    data['alignments3D/psize_A'] = particles.pixel_size
    with atomic_path(path, suffix='.cs') as tmp:
        with open(tmp, 'wb') as handle:
            np.save(handle, data)
