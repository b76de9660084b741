"""RELION 3.1 STAR particle files (``data_optics`` and ``data_particles`` blocks).

RELION's ``rlnOriginX/YAngst`` carry the same sign as Xmipp's ``shiftX/Y`` (both map to the same Scipion
Transform) and are stored in Angstrom; amplitudes and scores go in this plugin's own columns
(``deephemnmaAmplitudes``, comma-separated, and ``deephemnmaScore``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

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

# ----------------------------------------------------------------------------------------------
# RELION 3.1 STAR
# ----------------------------------------------------------------------------------------------
_AMPLITUDES_STAR = 'deephemnmaAmplitudes'
_SCORE_STAR = 'deephemnmaScore'


def write_star(path: Path, particles: Particles) -> None:
    optics = {'rlnOpticsGroup': ['1'], 'rlnOpticsGroupName': ['opticsGroup1'],
              'rlnVoltage': [f'{particles.voltage:.6f}'], 'rlnSphericalAberration': [f'{particles.cs:.6f}'],
              'rlnAmplitudeContrast': [f'{particles.amplitude_contrast:.6f}'],
              'rlnImagePixelSize': [f'{particles.pixel_size:.6f}'], 'rlnImageDimensionality': ['2']}
    table: Table = {'rlnImageName': list(particles.image), 'rlnOpticsGroup': ['1'] * len(particles)}
    if particles.angles is not None:
        for i, name in enumerate(('rlnAngleRot', 'rlnAngleTilt', 'rlnAnglePsi')):
            table[name] = format_floats(particles.angles[:, i])
    if particles.shifts is not None:
        table['rlnOriginXAngst'] = format_floats(particles.shifts[:, 0] * particles.pixel_size)
        table['rlnOriginYAngst'] = format_floats(particles.shifts[:, 1] * particles.pixel_size)
    for attr, name in (('defocus_u', 'rlnDefocusU'), ('defocus_v', 'rlnDefocusV'),
                       ('defocus_angle', 'rlnDefocusAngle')):
        if getattr(particles, attr) is not None:
            table[name] = format_floats(getattr(particles, attr))
    if particles.amplitudes is not None:
        table[_AMPLITUDES_STAR] = [v.replace(' ', ',') for v in format_vectors(particles.amplitudes)]
    if particles.score is not None:
        table[_SCORE_STAR] = format_floats(particles.score)
    for name, values in particles.extra.items():
        table[name] = format_floats(values) if np.ndim(values) == 1 else \
            [v.replace(' ', ',') for v in format_vectors(values)]
    write_star_tables(path, {'optics': optics, 'particles': table}, header='# version 30001')


def read_star(path: Path) -> Particles:
    tables = read_star_tables(path)
    block = 'particles' if 'particles' in tables else next(iter(tables))
    table = tables[block]
    require_columns(table, ['rlnImageName'], path, block)
    if not table['rlnImageName']:
        raise InputError(f'{path}: holds no particles (the data_{block} loop is empty)')
    optics = _optics_values(tables.get('optics', {}), table, path)
    pixel_size = optics['pixel_size']
    result = Particles(image=np.array(table['rlnImageName']), **optics)
    angle_names = ('rlnAngleRot', 'rlnAngleTilt', 'rlnAnglePsi')
    if any(name in table for name in angle_names):
        require_columns(table, angle_names, path, block)
        result.angles = np.stack([float_column(table[n], path, n) for n in angle_names], axis=1)
    if 'rlnOriginXAngst' in table or 'rlnOriginYAngst' in table:
        require_columns(table, ('rlnOriginXAngst', 'rlnOriginYAngst'), path, block)
        result.shifts = np.stack([float_column(table[n], path, n) for n in ('rlnOriginXAngst', 'rlnOriginYAngst')],
                                 axis=1) / pixel_size
    elif 'rlnOriginX' in table:
        require_columns(table, ('rlnOriginX', 'rlnOriginY'), path, block)
        result.shifts = np.stack([float_column(table[n], path, n) for n in ('rlnOriginX', 'rlnOriginY')], axis=1)
    if 'rlnDefocusU' in table:
        result.defocus_u = float_column(table['rlnDefocusU'], path, 'rlnDefocusU')
        result.defocus_v = float_column(table.get('rlnDefocusV', table['rlnDefocusU']), path, 'rlnDefocusV')
        result.defocus_angle = float_column(table.get('rlnDefocusAngle', ['0'] * len(result)), path, 'rlnDefocusAngle')
    if _AMPLITUDES_STAR in table:
        result.amplitudes = vector_column(table[_AMPLITUDES_STAR], path, _AMPLITUDES_STAR)
    if _SCORE_STAR in table:
        result.score = float_column(table[_SCORE_STAR], path, _SCORE_STAR)
    known = set(angle_names) | {'rlnImageName', 'rlnOpticsGroup', 'rlnOriginXAngst', 'rlnOriginYAngst',
                                'rlnOriginX', 'rlnOriginY', 'rlnDefocusU', 'rlnDefocusV', 'rlnDefocusAngle',
                                _AMPLITUDES_STAR, _SCORE_STAR, 'rlnVoltage', 'rlnSphericalAberration',
                                'rlnAmplitudeContrast', 'rlnImagePixelSize', 'rlnDetectorPixelSize',
                                'rlnMagnification'}
    result.extra = extra_columns(table, known, path)
    result.__post_init__()
    return result


#: Optics values of RELION and this project's names, with the defaults where a file gives none.
_OPTICS = (('rlnVoltage', 'voltage', 300.0), ('rlnSphericalAberration', 'cs', 2.7),
           ('rlnAmplitudeContrast', 'amplitude_contrast', 0.1))


def _optics_values(optics: Table, particles: Table, path: Path) -> Dict[str, float]:
    """Pixel size and microscope of the particles: from the optics rows their ``rlnOpticsGroup`` points to (or
    the particle rows themselves in older files). Particles of different optics are refused (one value each)."""
    source = _optics_rows_of_particles(optics, particles, path) if optics else particles
    if 'rlnImagePixelSize' in source:
        pixel_size = single_value(source['rlnImagePixelSize'], path, 'rlnImagePixelSize', ' across optics groups')
    elif 'rlnDetectorPixelSize' in source and 'rlnMagnification' in source:
        pixel_size = single_value(source['rlnDetectorPixelSize'], path, 'rlnDetectorPixelSize') * 1e4 / \
            single_value(source['rlnMagnification'], path, 'rlnMagnification')
    else:
        raise InputError(f'{path}: no pixel size (rlnImagePixelSize) in the optics or particles block')
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(f'{path}: the pixel size must be a positive number of Angstrom, not {pixel_size}')
    values = {'pixel_size': pixel_size}
    for column, name, default in _OPTICS:
        values[name] = single_value(source[column], path, column, ' across optics groups') if column in source \
            else default
    return values


def _optics_rows_of_particles(optics: Table, particles: Table, path: Path) -> Table:
    """The optics table expanded to one row per particle through ``rlnOpticsGroup`` (all particles take the one
    group when the particles carry no group)."""
    groups = optics.get('rlnOpticsGroup', ['1'] * len(next(iter(optics.values()), [])))
    row_of = {group: row for row, group in enumerate(groups)}
    wanted = particles.get('rlnOpticsGroup')
    if wanted is None:
        if len(groups) > 1:
            raise InputError(f'{path}: {len(groups)} optics groups but the particles have no rlnOpticsGroup')
        wanted = [groups[0]] * len(particles.get('rlnImageName', []))
    missing = sorted(set(wanted) - set(row_of))
    if missing:
        raise InputError(f'{path}: particles refer to optics group(s) {", ".join(missing)} that data_optics lacks')
    rows = [row_of[group] for group in wanted]
    return {column: [values[row] for row in rows] for column, values in optics.items()}
