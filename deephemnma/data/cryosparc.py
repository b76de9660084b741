"""cryoSPARC particle files (``.cs``): NumPy structured arrays, one row per particle.

Fields read (the names cryoSPARC writes; what is missing is simply not used):

* ``blob/path`` (relative to the cryoSPARC project folder, or absolute), ``blob/idx`` (0-based), ``blob/psize_A``
  and ``blob/shape``: the image's location, pixel size and size;
* ``ctf/df1_A``, ``ctf/df2_A`` (defocus U and V, Angstrom), ``ctf/df_angle_rad``, ``ctf/accel_kv``, ``ctf/cs_mm``,
  ``ctf/amp_contrast`` and ``ctf/phase_shift_rad``;
* ``alignments3D/pose``: the orientation as a rotation vector (radians), whose rotation is the transpose of the
  Xmipp/RELION matrix ``A(rot, tilt, psi)`` (cryoSPARC rotates the volume where RELION rotates the frame; as pyem
  and cryoDRGN convert it); ``alignments3D/shift`` (pixels, the sign of RELION's ``rlnOriginX/Y`` and Xmipp's
  shifts; scaled by ``alignments3D/psize_A / blob/psize_A`` when that field exists); ``alignments3D/split``
  (0 or 1: the half set).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from deephemnma.data.particles import Particles
from deephemnma.imaging.rotations import matrix_to_euler
from deephemnma.runtime.errors import InputError


def read_cs(path: Path) -> Particles:
    """The particles of a cryoSPARC ``.cs`` file (see the module docstring)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f'{path}: not a cryoSPARC .cs file ({error})') from error
    names = set(data.dtype.names or ())
    missing = [name for name in ('blob/path', 'blob/idx', 'blob/psize_A') if name not in names]
    if missing:
        raise InputError(f'{path}: not a cryoSPARC particle file: no {", ".join(missing)} field')
    if len(data) == 0:
        raise InputError(f'{path}: holds no particles')
    stacks = [_text(value).lstrip('>') for value in data['blob/path']]
    image = np.array([f'{int(index) + 1}@{stack}' for index, stack in zip(data['blob/idx'], stacks)])
    result = Particles(image=image, pixel_size=_one(data['blob/psize_A'], path, 'blob/psize_A'))
    if 'blob/shape' in names:
        result.box = int(_one(np.asarray(data['blob/shape'])[:, 0], path, 'blob/shape'))
    _read_ctf(result, data, names, path)
    _read_pose(result, data, names)
    result.__post_init__()
    return result


def _read_ctf(result: Particles, data: np.ndarray, names: set, path: Path) -> None:
    if 'ctf/df1_A' in names:
        result.defocus_u = np.asarray(data['ctf/df1_A'], dtype=np.float64)
        result.defocus_v = np.asarray(data['ctf/df2_A'] if 'ctf/df2_A' in names else data['ctf/df1_A'],
                                      dtype=np.float64)
        result.defocus_angle = np.degrees(np.asarray(data['ctf/df_angle_rad'], dtype=np.float64)) \
            if 'ctf/df_angle_rad' in names else np.zeros(len(data))
    for field, name in (('ctf/accel_kv', 'voltage'), ('ctf/cs_mm', 'cs'), ('ctf/amp_contrast', 'amplitude_contrast')):
        if field in names:
            values = np.asarray(data[field], dtype=np.float64)
            setattr(result, name, float(values[0]) if np.all(values == values[0]) else values)
    if 'ctf/phase_shift_rad' in names:
        result.phase_shift = np.degrees(np.asarray(data['ctf/phase_shift_rad'], dtype=np.float64))


def _read_pose(result: Particles, data: np.ndarray, names: set) -> None:
    if 'alignments3D/pose' in names:
        vectors = np.asarray(data['alignments3D/pose'], dtype=np.float64).reshape(-1, 3)
        matrices = Rotation.from_rotvec(vectors).as_matrix()
        result.angles = matrix_to_euler(np.swapaxes(matrices, -1, -2))
    if 'alignments3D/shift' in names:
        scale = 1.0
        if 'alignments3D/psize_A' in names:
            scale = np.asarray(data['alignments3D/psize_A'], dtype=np.float64)[:, None] / result.pixel_size
        result.shifts = np.asarray(data['alignments3D/shift'], dtype=np.float64) * scale
    if 'alignments3D/split' in names and len(np.unique(data['alignments3D/split'])) > 1:
        result.half = np.asarray(data['alignments3D/split'], dtype=np.float64) + 1


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _one(values: np.ndarray, path: Path, field: str) -> float:
    numbers = np.unique(np.asarray(values, dtype=np.float64))
    if len(numbers) != 1:
        raise InputError(f'{path}: field {field} holds {len(numbers)} different values: particles of different '
                         'pixel or image sizes cannot be processed together; split the file')
    return float(numbers[0])
