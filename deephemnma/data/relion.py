"""RELION 3.1 STAR particle files (``data_optics`` and ``data_particles`` blocks), read and written as RELION does.

* Optics: every particle takes the voltage, Cs, amplitude contrast, pixel size, image size and (optional) phase
  shift of the optics row its ``rlnOpticsGroup`` names; groups of different microscopes are kept per particle,
  groups of different pixel sizes are refused with a clear message (the images would need resampling).
* ``rlnOriginX/YAngst`` carry the same sign as Xmipp's ``shiftX/Y`` (both map to the same Scipion Transform) and
  are stored in Angstrom; ``rlnRandomSubset`` gives the half sets of the FSC; amplitudes and scores go in this
  plugin's own columns (``deephemnmaAmplitudes``, comma-separated, and ``deephemnmaScore``).
* Lossless: every particle column and optics row of the file read is written back (columns of other programs
  passed through as they were, values this project did not change in their original text), so a subset can go
  back into RELION for a refinement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from deephemnma.data.particles import Particles
from deephemnma.data.star import (
    Table,
    extra_columns,
    float_column,
    format_floats,
    format_vectors,
    read_star_tables,
    require_columns,
    single_value,
    vector_column,
    write_star_tables,
)
from deephemnma.runtime.errors import InputError

#: This project's own columns.
_AMPLITUDES_STAR = 'deephemnmaAmplitudes'
_SCORE_STAR = 'deephemnmaScore'
ANGLE_COLUMNS = ('rlnAngleRot', 'rlnAngleTilt', 'rlnAnglePsi')
ORIGIN_COLUMNS = ('rlnOriginXAngst', 'rlnOriginYAngst')
#: RELION 3.0 origins in pixels (read; replaced by the Angstrom columns when written).
PIXEL_ORIGIN_COLUMNS = ('rlnOriginX', 'rlnOriginY')
#: Optics columns of the microscope, this project's names and RELION's defaults.
_OPTICS = (('rlnVoltage', 'voltage', 300.0), ('rlnSphericalAberration', 'cs', 2.7),
           ('rlnAmplitudeContrast', 'amplitude_contrast', 0.1))


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def read_star(path: Path) -> Particles:
    tables = read_star_tables(path)
    block = 'particles' if 'particles' in tables else next(iter(tables))
    table = tables[block]
    require_columns(table, ['rlnImageName'], path, block)
    if not table['rlnImageName']:
        raise InputError(f'{path}: holds no particles (the data_{block} loop is empty)')
    optics_table = tables.get('optics')
    optics = _Optics(optics_table, table, path) if optics_table else _Optics(table, table, path)
    result = Particles(image=np.array(table['rlnImageName']), pixel_size=optics.pixel_size(),
                       text=dict(table), optics_table=optics_table)
    for column, name, default in _OPTICS:
        values = optics.values(column, default)
        setattr(result, name, float(values[0]) if np.all(values == values[0]) else values)
    if optics.has('rlnImageSize'):
        result.box = int(optics.single('rlnImageSize'))
    _read_pose(result, table, path, block)
    _read_ctf(result, table, optics, path)
    if 'rlnRandomSubset' in table:
        result.half = float_column(table['rlnRandomSubset'], path, 'rlnRandomSubset')
    if _AMPLITUDES_STAR in table:
        result.amplitudes = vector_column(table[_AMPLITUDES_STAR], path, _AMPLITUDES_STAR)
    if _SCORE_STAR in table:
        result.score = float_column(table[_SCORE_STAR], path, _SCORE_STAR)
    # RELION's other columns pass through as text; columns of other programs are read as numbers where they are
    known = {name for name in table if name.startswith('rln')} | {_AMPLITUDES_STAR, _SCORE_STAR}
    result.extra = extra_columns(table, known, path)
    result.__post_init__()
    return result


class _Optics:
    """The optics values of each particle: the row of the optics table its ``rlnOpticsGroup`` names (all particles
    take the one row when they carry no group), or the particle table itself for files without optics."""

    def __init__(self, optics: Table, particles: Table, path: Path):
        self.table, self.path = optics, path
        count = len(particles['rlnImageName'])
        if optics is particles:
            self.rows = np.arange(count)
            return
        groups = optics.get('rlnOpticsGroup', ['1'] * len(next(iter(optics.values()), [])))
        wanted = particles.get('rlnOpticsGroup')
        if wanted is None:
            if len(groups) > 1:
                raise InputError(f'{path}: {len(groups)} optics groups but the particles have no rlnOpticsGroup')
            self.rows = np.zeros(count, dtype=np.int64)
            return
        names, inverse = np.unique(np.asarray(wanted, dtype=object), return_inverse=True)
        row_of = {group: row for row, group in enumerate(groups)}
        missing = [str(name) for name in names if name not in row_of]
        if missing:
            raise InputError(f'{path}: particles refer to optics group(s) {", ".join(missing)} that data_optics '
                             'lacks')
        self.rows = np.array([row_of[name] for name in names], dtype=np.int64)[inverse.reshape(-1)]

    def has(self, column: str) -> bool:
        return column in self.table

    def values(self, column: str, default: Optional[float] = None) -> np.ndarray:
        """The column's value of each particle (``default`` where the file has no such column)."""
        if column not in self.table:
            return np.full(len(self.rows), default, dtype=np.float64)
        return float_column(self.table[column], self.path, column)[self.rows]

    def single(self, column: str) -> float:
        """The one value every particle has (InputError naming the file when the groups used disagree)."""
        used = np.unique(self.rows)
        return single_value([self.table[column][row] for row in used], self.path, column, ' across optics groups')

    def pixel_size(self) -> float:
        """The one pixel size of the particles (Angstrom)."""
        if self.has('rlnImagePixelSize'):
            sizes = np.unique(self.values('rlnImagePixelSize'))
            if len(sizes) > 1:
                raise InputError(f'{self.path}: the particles have {len(sizes)} pixel sizes ('
                                 f'{", ".join(f"{v:g}" for v in sizes)} A) in their optics groups; they cannot be '
                                 'processed together: rescale them to one pixel size (relion_image_handler '
                                 '--rescale_angpix) or split the file by rlnOpticsGroup')
            size = float(sizes[0])
        elif self.has('rlnDetectorPixelSize') and self.has('rlnMagnification'):
            size = self.single('rlnDetectorPixelSize') * 1e4 / self.single('rlnMagnification')
        else:
            raise InputError(f'{self.path}: no pixel size (rlnImagePixelSize) in the optics or particles block')
        if not (np.isfinite(size) and size > 0):
            raise InputError(f'{self.path}: the pixel size must be a positive number of Angstrom, not {size}')
        return size


def _read_pose(result: Particles, table: Table, path: Path, block: str) -> None:
    if any(name in table for name in ANGLE_COLUMNS):
        require_columns(table, ANGLE_COLUMNS, path, block)
        result.angles = np.stack([float_column(table[n], path, n) for n in ANGLE_COLUMNS], axis=1)
    if any(name in table for name in ORIGIN_COLUMNS):
        require_columns(table, ORIGIN_COLUMNS, path, block)
        result.shifts = np.stack([float_column(table[n], path, n) for n in ORIGIN_COLUMNS], axis=1) / \
            result.pixel_size
    elif PIXEL_ORIGIN_COLUMNS[0] in table:
        require_columns(table, PIXEL_ORIGIN_COLUMNS, path, block)
        result.shifts = np.stack([float_column(table[n], path, n) for n in PIXEL_ORIGIN_COLUMNS], axis=1)


def _read_ctf(result: Particles, table: Table, optics: _Optics, path: Path) -> None:
    if 'rlnDefocusU' in table:
        count = len(result)
        result.defocus_u = float_column(table['rlnDefocusU'], path, 'rlnDefocusU')
        result.defocus_v = float_column(table.get('rlnDefocusV', table['rlnDefocusU']), path, 'rlnDefocusV')
        result.defocus_angle = float_column(table.get('rlnDefocusAngle', ['0'] * count), path, 'rlnDefocusAngle')
    if 'rlnPhaseShift' in table:
        result.phase_shift = float_column(table['rlnPhaseShift'], path, 'rlnPhaseShift')
    elif optics.has('rlnPhaseShift'):
        result.phase_shift = optics.values('rlnPhaseShift')


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def write_star(path: Path, particles: Particles) -> None:
    if particles.optics_table is not None:
        optics, groups = particles.optics_table, None
    else:
        optics, groups = _optics_from_values(particles)
    table: Table = {name: list(values) for name, values in particles.text.items()}
    table['rlnImageName'] = list(particles.image)
    if groups is not None:
        table['rlnOpticsGroup'] = groups
    for attr, columns in _COLUMNS_OF.items():  # a column the particles no longer carry is not passed through
        if getattr(particles, attr) is None:
            for name in columns:
                table.pop(name, None)
    for name in PIXEL_ORIGIN_COLUMNS:  # RELION 3.0 origins: replaced by the Angstrom columns, or gone
        table.pop(name, None)
    owned = _owned_columns(particles)
    for name, (values, formatted) in owned.items():
        table[name] = _unchanged_or(particles.text.get(name), values, formatted)
    write_star_tables(path, {'optics': optics, 'particles': table}, header='# version 30001')


#: The columns of each value this project reads and writes itself.
_COLUMNS_OF = {'angles': ANGLE_COLUMNS, 'shifts': ORIGIN_COLUMNS, 'defocus_u': ('rlnDefocusU',),
               'defocus_v': ('rlnDefocusV',), 'defocus_angle': ('rlnDefocusAngle',), 'half': ('rlnRandomSubset',),
               'phase_shift': ('rlnPhaseShift',), 'amplitudes': (_AMPLITUDES_STAR,), 'score': (_SCORE_STAR,)}


def _optics_from_values(particles: Particles):
    """Optics rows made from the particles' microscope (one row per distinct microscope) and each particle's
    group number."""
    n = len(particles)
    microscope = np.stack([np.broadcast_to(np.asarray(getattr(particles, name), float), n)
                           for _, name, _ in _OPTICS], axis=1)
    rows, group = np.unique(microscope, axis=0, return_inverse=True)
    optics: Table = {'rlnOpticsGroup': [str(g + 1) for g in range(len(rows))],
                     'rlnOpticsGroupName': [f'opticsGroup{g + 1}' for g in range(len(rows))]}
    for column, (star_name, _, _) in enumerate(_OPTICS):
        optics[star_name] = format_floats(rows[:, column])
    optics['rlnImagePixelSize'] = [f'{particles.pixel_size:.6f}'] * len(rows)
    if particles.box:
        optics['rlnImageSize'] = [str(int(particles.box))] * len(rows)
    optics['rlnImageDimensionality'] = ['2'] * len(rows)
    return optics, [str(g + 1) for g in group.reshape(-1)]


def _owned_columns(particles: Particles) -> Dict[str, tuple]:
    """The columns this project writes from its own values: ``{column: (values, formatted text)}``."""
    owned: Dict[str, tuple] = {}
    if particles.angles is not None:
        for i, name in enumerate(ANGLE_COLUMNS):
            owned[name] = (particles.angles[:, i], format_floats(particles.angles[:, i]))
    if particles.shifts is not None:
        for i, name in enumerate(ORIGIN_COLUMNS):
            values = particles.shifts[:, i] * particles.pixel_size
            owned[name] = (values, format_floats(values))
    for attr, name in (('defocus_u', 'rlnDefocusU'), ('defocus_v', 'rlnDefocusV'),
                       ('defocus_angle', 'rlnDefocusAngle'), ('half', 'rlnRandomSubset')):
        values = getattr(particles, attr)
        if values is not None:
            owned[name] = (values, [f'{int(v)}' for v in values] if attr == 'half' else format_floats(values))
    if particles.phase_shift is not None and 'rlnPhaseShift' not in (particles.optics_table or {}):
        owned['rlnPhaseShift'] = (particles.phase_shift, format_floats(particles.phase_shift))
    if particles.amplitudes is not None:
        owned[_AMPLITUDES_STAR] = (None, [v.replace(' ', ',') for v in format_vectors(particles.amplitudes)])
    if particles.score is not None:
        owned[_SCORE_STAR] = (particles.score, format_floats(particles.score))
    for name, values in particles.extra.items():
        owned[name] = (values if np.ndim(values) == 1 else None,
                       format_floats(values) if np.ndim(values) == 1 else
                       [v.replace(' ', ',') for v in format_vectors(values)])
    return owned


def _unchanged_or(original: Optional[np.ndarray], values: Optional[np.ndarray], formatted: List[str]) -> List[str]:
    """Each row's original text where it still says the current value (a value this project did not change keeps
    its digits), else the formatted value."""
    if original is None or values is None:
        return formatted
    try:
        before = np.array([float(v) for v in original])
    except ValueError:
        return formatted
    same = before == np.asarray(values, dtype=np.float64)
    return [o if keep else f for o, f, keep in zip(original, formatted, same)]
