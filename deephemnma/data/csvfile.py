"""Particles as CSV (one column per value: ``rot``, ``shift_x``, ``amplitude_1`` ...), for spreadsheets and
scripts.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from deephemnma.data.particles import Particles
from deephemnma.data.star import float_column, format_floats, read_text, require_columns, single_value
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------
def _csv_columns(particles: Particles) -> Dict[str, List[str]]:
    n = len(particles)
    columns: Dict[str, List[str]] = {'image': list(particles.image),
                                     'pixel_size': [f'{particles.pixel_size:.6f}'] * n,
                                     'voltage': [f'{particles.voltage:.6f}'] * n, 'cs': [f'{particles.cs:.6f}'] * n,
                                     'amplitude_contrast': [f'{particles.amplitude_contrast:.6f}'] * n}
    if particles.angles is not None:
        for i, name in enumerate(('rot', 'tilt', 'psi')):
            columns[name] = format_floats(particles.angles[:, i])
    if particles.shifts is not None:
        columns['shift_x'] = format_floats(particles.shifts[:, 0])
        columns['shift_y'] = format_floats(particles.shifts[:, 1])
    if particles.amplitudes is not None:
        for k in range(particles.amplitudes.shape[1]):
            columns[f'amplitude_{k + 1}'] = format_floats(particles.amplitudes[:, k])
    for name in ('defocus_u', 'defocus_v', 'defocus_angle', 'score'):
        if getattr(particles, name) is not None:
            columns[name] = format_floats(getattr(particles, name))
    for name, values in particles.extra.items():
        if np.ndim(values) == 1:
            columns[name] = format_floats(values)
        else:
            for k in range(values.shape[1]):
                columns[f'{name}[{k}]'] = format_floats(values[:, k])
    return columns


def write_csv(path: Path, particles: Particles) -> None:
    columns = _csv_columns(particles)
    with atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as handle:
            writer = csv.writer(handle)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))


def read_csv(path: Path) -> Particles:
    text = read_text(path)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise InputError(f'{path}: no particle rows')
    table = {name: [row[name] for row in rows] for name in rows[0]}
    require_columns(table, ['image', 'pixel_size'], path, 'csv')
    result = Particles(image=np.array(table['image']),
                       pixel_size=single_value(table['pixel_size'], path, 'pixel_size'),
                       voltage=single_value(table.get('voltage', ['300']), path, 'voltage'),
                       cs=single_value(table.get('cs', ['2.7']), path, 'cs'),
                       amplitude_contrast=single_value(table.get('amplitude_contrast', ['0.1']), path,
                                                       'amplitude_contrast'))
    if any(name in table for name in ('rot', 'tilt', 'psi')):
        require_columns(table, ('rot', 'tilt', 'psi'), path, 'csv')
        result.angles = np.stack([float_column(table[n], path, n) for n in ('rot', 'tilt', 'psi')], axis=1)
    if 'shift_x' in table or 'shift_y' in table:
        require_columns(table, ('shift_x', 'shift_y'), path, 'csv')
        result.shifts = np.stack([float_column(table[n], path, n) for n in ('shift_x', 'shift_y')], axis=1)
    amplitude_names = sorted((n for n in table if n.startswith('amplitude_') and n != 'amplitude_contrast'),
                             key=lambda n: int(n.split('_')[1]))
    if amplitude_names:
        result.amplitudes = np.stack([float_column(table[n], path, n) for n in amplitude_names], axis=1)
    for name in ('defocus_u', 'defocus_v', 'defocus_angle', 'score'):
        if name in table:
            setattr(result, name, float_column(table[name], path, name))
    result.extra = _csv_extra(table, path)
    result.__post_init__()
    return result


def _csv_extra(table: Dict[str, List[str]], path: Path) -> Dict[str, np.ndarray]:
    known = {'image', 'pixel_size', 'voltage', 'cs', 'amplitude_contrast', 'rot', 'tilt', 'psi', 'shift_x',
             'shift_y', 'defocus_u', 'defocus_v', 'defocus_angle', 'score'}
    grouped: Dict[str, List[Tuple[int, np.ndarray]]] = {}
    extra: Dict[str, np.ndarray] = {}
    for name, values in table.items():
        if name in known or (name.startswith('amplitude_') and name.split('_')[1].isdigit()):
            continue
        if name.endswith(']') and '[' in name:
            base, index = name[:-1].split('[')
            grouped.setdefault(base, []).append((int(index), float_column(values, path, name)))
        else:
            extra[name] = float_column(values, path, name)
    for base, parts in grouped.items():
        extra[base] = np.stack([values for _, values in sorted(parts, key=lambda p: p[0])], axis=1)
    return extra
