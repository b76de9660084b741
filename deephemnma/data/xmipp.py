"""Xmipp metadata (``.xmd``), e.g. ContinuousFlex's HEMNMA ``images.xmd``: columns ``image, enabled,
angleRot, angleTilt, anglePsi, shiftX, shiftY, nmaDisplacements, cost`` and Xmipp's CTF labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from deephemnma.data.particles import Particles
from deephemnma.data.star import (
    XMIPP_HEADER,
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

# ----------------------------------------------------------------------------------------------
# Xmipp .xmd (ContinuousFlex's images.xmd)
# ----------------------------------------------------------------------------------------------
XMD_COLUMNS = ('image', 'enabled', 'angleRot', 'angleTilt', 'anglePsi', 'shiftX', 'shiftY', 'nmaDisplacements',
               'cost')


def write_xmd(path: Path, particles: Particles, continuousflex_only: bool = False) -> None:
    """Xmipp metadata; ``continuousflex_only`` writes exactly the 9 columns of ContinuousFlex's images.xmd."""
    n = len(particles)
    zeros = np.zeros(n)
    angles = particles.angles if particles.angles is not None else np.zeros((n, 3))
    shifts = particles.shifts if particles.shifts is not None else np.zeros((n, 2))
    table: Table = {'image': list(particles.image), 'enabled': ['1'] * n,
                    'angleRot': format_floats(angles[:, 0]), 'angleTilt': format_floats(angles[:, 1]),
                    'anglePsi': format_floats(angles[:, 2]), 'shiftX': format_floats(shifts[:, 0]),
                    'shiftY': format_floats(shifts[:, 1])}
    if particles.amplitudes is not None:
        table['nmaDisplacements'] = format_vectors(particles.amplitudes)
    table['cost'] = format_floats(particles.score if particles.score is not None else zeros)
    if continuousflex_only:
        write_star_tables(path, {'noname': table}, header=XMIPP_HEADER)
        return
    if particles.has_ctf:
        table['ctfDefocusU'] = format_floats(particles.defocus_u)
        table['ctfDefocusV'] = format_floats(particles.defocus_v)
        table['ctfDefocusAngle'] = format_floats(particles.defocus_angle)
        table['ctfVoltage'] = [f'{particles.voltage:.6f}'] * n
        table['ctfSphericalAberration'] = [f'{particles.cs:.6f}'] * n
        table['ctfQ0'] = [f'{particles.amplitude_contrast:.6f}'] * n
        if particles.pixel_size is not None:
            table['ctfSamplingRate'] = [f'{particles.pixel_size:.6f}'] * n
    for name, values in particles.extra.items():
        table[name] = format_floats(values) if np.ndim(values) == 1 else format_vectors(values)
    write_star_tables(path, {'noname': table}, header=XMIPP_HEADER)


def read_xmd(path: Path, pixel_size: Optional[float]) -> Particles:
    tables = read_star_tables(path)
    block, table = next(((b, t) for b, t in tables.items() if 'image' in t), next(iter(tables.items())))
    require_columns(table, ['image'], path, block)
    if 'enabled' in table:
        keep = float_column(table['enabled'], path, 'enabled') >= 0
        table = {k: [v for v, ok in zip(values, keep) if ok] for k, values in table.items()}
    sampling = pixel_size or (single_value(table['ctfSamplingRate'], path, 'ctfSamplingRate')
                              if 'ctfSamplingRate' in table and table['ctfSamplingRate'] else None)
    result = Particles(image=np.array(table['image']), pixel_size=sampling)
    angle_names = ('angleRot', 'angleTilt', 'anglePsi')
    if any(name in table for name in angle_names):
        require_columns(table, angle_names, path, block)
        result.angles = np.stack([float_column(table[n], path, n) for n in angle_names], axis=1)
    if 'shiftX' in table or 'shiftY' in table:
        require_columns(table, ('shiftX', 'shiftY'), path, block)
        result.shifts = np.stack([float_column(table[n], path, n) for n in ('shiftX', 'shiftY')], axis=1)
    if 'nmaDisplacements' in table:
        result.amplitudes = vector_column(table['nmaDisplacements'], path, 'nmaDisplacements')
    if 'cost' in table:
        result.score = float_column(table['cost'], path, 'cost')
    if 'ctfDefocusU' in table:
        result.defocus_u = float_column(table['ctfDefocusU'], path, 'ctfDefocusU')
        result.defocus_v = float_column(table.get('ctfDefocusV', table['ctfDefocusU']), path, 'ctfDefocusV')
        result.defocus_angle = float_column(table.get('ctfDefocusAngle', ['0'] * len(result)), path, 'ctfDefocusAngle')
        result.voltage = single_value(table.get('ctfVoltage', ['300']), path, 'ctfVoltage')
        result.cs = single_value(table.get('ctfSphericalAberration', ['2.7']), path, 'ctfSphericalAberration')
        result.amplitude_contrast = single_value(table.get('ctfQ0', ['0.1']), path, 'ctfQ0')
    known = set(XMD_COLUMNS) | {'ctfDefocusU', 'ctfDefocusV', 'ctfDefocusAngle', 'ctfVoltage',
                                'ctfSphericalAberration', 'ctfQ0', 'ctfSamplingRate', 'itemId'}
    result.extra = extra_columns(table, known, path)
    result.__post_init__()
    return result
