"""Particle metadata: RELION 3.1 STAR, Xmipp .xmd (ContinuousFlex's HEMNMA ``images.xmd``) and CSV.

One in-memory form, :class:`Particles`, holds per-particle columns: image locations (``'INDEX@stack.mrcs'``,
1-based), Euler angles (Xmipp ZYZ, degrees), shifts (pixels, Xmipp sign: the translation that brings the particle
back to the centre), normal-mode amplitudes, CTF and a score. RELION's ``rlnOriginX/YAngst`` carry the same sign
as Xmipp's ``shiftX/Y`` (both map to the same Scipion Transform) and are stored in Angstrom.

Format chosen by extension: ``.star``, ``.xmd``, ``.csv``. Reading checks required columns and reports the file
and the missing names (image indices beyond the end of their stacks are reported by
:class:`deephemnma.core.stacks.ImageSource`, which reads the images).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .fileio import InputError, atomic_path
from .imageio import image_file

OptionalArray = Optional[np.ndarray]


@dataclass
class Particles:
    """Per-particle metadata; optional columns are ``None`` when unknown.

    Shapes: ``image (n,)`` str; ``angles (n, 3)`` degrees (rot, tilt, psi); ``shifts (n, 2)`` pixels;
    ``amplitudes (n, m)``; ``defocus_u/v (n,)`` Angstrom (positive = underfocus); ``defocus_angle (n,)`` degrees;
    ``score (n,)``; ``extra`` maps a name to an ``(n,)`` or ``(n, k)`` array.
    """

    image: np.ndarray
    pixel_size: float = 1.0
    angles: OptionalArray = None
    shifts: OptionalArray = None
    amplitudes: OptionalArray = None
    defocus_u: OptionalArray = None
    defocus_v: OptionalArray = None
    defocus_angle: OptionalArray = None
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    score: OptionalArray = None
    extra: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=str)
        n = len(self.image)
        for name in _PER_PARTICLE:
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                if len(value) != n:
                    raise ValueError(f'column {name} has {len(value)} rows for {n} particles')
                setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def has_ctf(self) -> bool:
        return self.defocus_u is not None

    @property
    def has_alignment(self) -> bool:
        return self.angles is not None and self.shifts is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> 'Particles':
        """The particles at ``indices`` (integer positions or a boolean mask), in that order."""
        indices = np.asarray(indices)
        changes = {name: getattr(self, name)[indices] for name in _PER_PARTICLE if getattr(self, name) is not None}
        return replace(self, image=self.image[indices], extra={k: v[indices] for k, v in self.extra.items()},
                       **changes)

    def locations(self, base_dir: str | os.PathLike = '.') -> Iterator[Tuple[int, Path]]:
        """``(zero-based index, stack path)`` of each image; relative stack paths are taken from ``base_dir``."""
        for location in self.image:
            yield parse_location(location, base_dir)


_PER_PARTICLE = ('angles', 'shifts', 'amplitudes', 'defocus_u', 'defocus_v', 'defocus_angle', 'score')


def parse_location(location: str, base_dir: str | os.PathLike = '.') -> Tuple[int, Path]:
    """``'12@stack.mrcs'`` -> ``(11, base_dir/stack.mrcs)``; a bare path means its first image; a format hint
    (``'12@stack.mrc:mrcs'``) is dropped."""
    if '@' in location:
        index_text, path_text = location.split('@', 1)
        try:
            index = int(index_text) - 1
        except ValueError as error:
            raise InputError(f"bad image location '{location}': '{index_text}' is not an image number") from error
    else:
        index, path_text = 0, location
    if index < 0:
        raise InputError(f"bad image location '{location}': image numbers start at 1")
    path = image_file(path_text)
    return index, path if path.is_absolute() else Path(base_dir) / path


def stack_locations(stack_name: str, count: int) -> np.ndarray:
    """Locations ``'1@stack' .. 'count@stack'`` (1-based, zero-padded to 6 digits like Xmipp)."""
    return np.array([f'{i + 1:06d}@{stack_name}' for i in range(count)])


# ----------------------------------------------------------------------------------------------
# STAR tables (RELION and Xmipp share the syntax)
# ----------------------------------------------------------------------------------------------
Table = Dict[str, List[str]]
#: First lines of an Xmipp metadata file.
XMIPP_HEADER = '# XMIPP_STAR_1 *\n#'


def read_star_tables(path: Path) -> Dict[str, Table]:
    """All ``data_`` blocks of a STAR file as ``{block: {column: [values]}}`` (loops and key-value pairs)."""
    tables: Dict[str, Table] = {}
    current: Optional[Table] = None
    columns: List[str] = []
    in_loop = False
    for line_number, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith('#'):
            continue
        if line.startswith('data_'):
            current, columns, in_loop = {}, [], False
            tables[line[5:]] = current
        elif current is None:
            raise InputError(f'{path}: line {line_number}: data before any data_ block')
        elif line == 'loop_':
            in_loop, columns = True, []
        elif line.startswith('_'):
            parts = line.split(None, 1)
            name = parts[0][1:]
            if in_loop and len(parts) == 1 or (in_loop and parts[1].startswith('#')):
                columns.append(name)
                current[name] = []
            else:
                current[name] = [_unquote(parts[1]) if len(parts) > 1 else '']
                in_loop = False
        else:
            values = _split_row(line)
            if len(values) != len(columns):
                raise InputError(f'{path}: line {line_number}: {len(values)} values for {len(columns)} columns')
            for name, value in zip(columns, values):
                current[name].append(value)
    if not tables:
        raise InputError(f'{path}: no data_ block: not a STAR/Xmipp metadata file')
    return tables


def write_star_tables(path: Path, tables: Dict[str, Table], header: str = '') -> None:
    """Write ``{block: {column: [values]}}`` as loops, atomically; values containing spaces are quoted."""
    lines = [header] if header else []
    for block, table in tables.items():
        lines += ['', f'data_{block}', '', 'loop_']
        names = list(table)
        lines += [f'_{name} #{i + 1}' if not header.startswith('# XMIPP') else f' _{name}'
                  for i, name in enumerate(names)]
        for row in zip(*(table[name] for name in names)):
            lines.append(' '.join(_quote(value) for value in row))
    with atomic_path(path) as tmp:
        Path(tmp).write_text('\n'.join(lines) + '\n')


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f'{path}: no such metadata file')
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise InputError(f'{path}: not a text metadata file ({error})') from error


#: A STAR value: quoted ('...' or "...", closed by a quote followed by white space, as in CIF) or bare.
_STAR_VALUE = re.compile(r"""'((?:[^']|'(?!\s|$))*)'(?=\s|$)|"((?:[^"]|"(?!\s|$))*)"(?=\s|$)|(\S+)""")


def _split_row(line: str) -> List[str]:
    """The values of a loop row (quotes removed from quoted values; no escapes, as in STAR)."""
    if "'" not in line and '"' not in line:
        return line.split()  # the usual row, about 10 times faster than the pattern
    return [single or double or bare for single, double, bare in _STAR_VALUE.findall(line)]


#: A quote mark followed by white space inside a value: that mark cannot quote it.
_CLOSING = {mark: re.compile(mark + r'\s') for mark in ("'", '"')}


def _quote(value: str) -> str:
    """A value as STAR writes it: bare, or quoted when it is empty, holds white space or starts with a quote."""
    if value.split() == [value] and value[0] not in '\'"':  # non-empty, no white space: 5 times faster than a pattern
        return value
    for mark, closing in _CLOSING.items():
        if not closing.search(value):
            return f'{mark}{value}{mark}'
    raise InputError(f'metadata value {value!r} cannot be written to STAR: both quote marks precede white space')


def _unquote(value: str) -> str:
    return value.strip().strip("'\"")


def _require(table: Table, names: Sequence[str], path: Path, block: str) -> None:
    missing = [name for name in names if name not in table]
    if missing:
        raise InputError(f'{path}: block data_{block} lacks the required column(s) {", ".join(missing)}')


def _floats(values: List[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in values])
    except ValueError as error:
        raise InputError(f'{path}: column {column} holds a non-numeric value ({error})') from error


def _vectors(values: List[str], path: Path, column: str) -> np.ndarray:
    try:
        rows = [[float(x) for x in v.replace(',', ' ').split()] for v in values]
    except ValueError as error:
        raise InputError(f'{path}: column {column} holds a non-numeric value ({error})') from error
    if len({len(r) for r in rows}) > 1:
        raise InputError(f'{path}: column {column} rows have different lengths')
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


def _format(values: np.ndarray) -> List[str]:
    return [f'{float(v):.6f}' for v in values]


def _format_vectors(values: np.ndarray) -> List[str]:
    return [' '.join(f'{float(x):.6f}' for x in row) for row in values]


# ----------------------------------------------------------------------------------------------
# RELION 3.1 STAR
# ----------------------------------------------------------------------------------------------
_AMPLITUDES_STAR = 'deephemnmaAmplitudes'
_SCORE_STAR = 'deephemnmaScore'


def _write_star(path: Path, particles: Particles) -> None:
    optics = {'rlnOpticsGroup': ['1'], 'rlnOpticsGroupName': ['opticsGroup1'],
              'rlnVoltage': [f'{particles.voltage:.6f}'], 'rlnSphericalAberration': [f'{particles.cs:.6f}'],
              'rlnAmplitudeContrast': [f'{particles.amplitude_contrast:.6f}'],
              'rlnImagePixelSize': [f'{particles.pixel_size:.6f}'], 'rlnImageDimensionality': ['2']}
    table: Table = {'rlnImageName': list(particles.image), 'rlnOpticsGroup': ['1'] * len(particles)}
    if particles.angles is not None:
        for i, name in enumerate(('rlnAngleRot', 'rlnAngleTilt', 'rlnAnglePsi')):
            table[name] = _format(particles.angles[:, i])
    if particles.shifts is not None:
        table['rlnOriginXAngst'] = _format(particles.shifts[:, 0] * particles.pixel_size)
        table['rlnOriginYAngst'] = _format(particles.shifts[:, 1] * particles.pixel_size)
    for attr, name in (('defocus_u', 'rlnDefocusU'), ('defocus_v', 'rlnDefocusV'),
                       ('defocus_angle', 'rlnDefocusAngle')):
        if getattr(particles, attr) is not None:
            table[name] = _format(getattr(particles, attr))
    if particles.amplitudes is not None:
        table[_AMPLITUDES_STAR] = [v.replace(' ', ',') for v in _format_vectors(particles.amplitudes)]
    if particles.score is not None:
        table[_SCORE_STAR] = _format(particles.score)
    for name, values in particles.extra.items():
        table[name] = _format(values) if np.ndim(values) == 1 else \
            [v.replace(' ', ',') for v in _format_vectors(values)]
    write_star_tables(path, {'optics': optics, 'particles': table}, header='# version 30001')


def _read_star(path: Path) -> Particles:
    tables = read_star_tables(path)
    block = 'particles' if 'particles' in tables else next(iter(tables))
    table = tables[block]
    _require(table, ['rlnImageName'], path, block)
    optics = _optics_values(tables.get('optics', {}), table, path)
    pixel_size = optics['pixel_size']
    result = Particles(image=np.array(table['rlnImageName']), **optics)
    angle_names = ('rlnAngleRot', 'rlnAngleTilt', 'rlnAnglePsi')
    if any(name in table for name in angle_names):
        _require(table, angle_names, path, block)
        result.angles = np.stack([_floats(table[n], path, n) for n in angle_names], axis=1)
    if 'rlnOriginXAngst' in table or 'rlnOriginYAngst' in table:
        _require(table, ('rlnOriginXAngst', 'rlnOriginYAngst'), path, block)
        result.shifts = np.stack([_floats(table[n], path, n) for n in ('rlnOriginXAngst', 'rlnOriginYAngst')],
                                 axis=1) / pixel_size
    elif 'rlnOriginX' in table:
        _require(table, ('rlnOriginX', 'rlnOriginY'), path, block)
        result.shifts = np.stack([_floats(table[n], path, n) for n in ('rlnOriginX', 'rlnOriginY')], axis=1)
    if 'rlnDefocusU' in table:
        result.defocus_u = _floats(table['rlnDefocusU'], path, 'rlnDefocusU')
        result.defocus_v = _floats(table.get('rlnDefocusV', table['rlnDefocusU']), path, 'rlnDefocusV')
        result.defocus_angle = _floats(table.get('rlnDefocusAngle', ['0'] * len(result)), path, 'rlnDefocusAngle')
    if _AMPLITUDES_STAR in table:
        result.amplitudes = _vectors(table[_AMPLITUDES_STAR], path, _AMPLITUDES_STAR)
    if _SCORE_STAR in table:
        result.score = _floats(table[_SCORE_STAR], path, _SCORE_STAR)
    known = set(angle_names) | {'rlnImageName', 'rlnOpticsGroup', 'rlnOriginXAngst', 'rlnOriginYAngst',
                                'rlnOriginX', 'rlnOriginY', 'rlnDefocusU', 'rlnDefocusV', 'rlnDefocusAngle',
                                _AMPLITUDES_STAR, _SCORE_STAR, 'rlnVoltage', 'rlnSphericalAberration',
                                'rlnAmplitudeContrast', 'rlnImagePixelSize', 'rlnDetectorPixelSize',
                                'rlnMagnification'}
    result.extra = _extra_columns(table, known, path)
    result.__post_init__()
    return result


def _optics_values(optics: Table, particles: Table, path: Path) -> Dict[str, float]:
    source = optics if optics else particles

    def first(names: Sequence[str], default: Optional[float]) -> Optional[float]:
        for name in names:
            if name in source:
                return float(source[name][0])
        return default

    pixel_size = first(('rlnImagePixelSize',), None)
    if pixel_size is None and 'rlnDetectorPixelSize' in source and 'rlnMagnification' in source:
        pixel_size = float(source['rlnDetectorPixelSize'][0]) * 1e4 / float(source['rlnMagnification'][0])
    if pixel_size is None:
        raise InputError(f'{path}: no pixel size (rlnImagePixelSize) in the optics or particles block')
    return {'pixel_size': pixel_size, 'voltage': first(('rlnVoltage',), 300.0),
            'cs': first(('rlnSphericalAberration',), 2.7),
            'amplitude_contrast': first(('rlnAmplitudeContrast',), 0.1)}


def _extra_columns(table: Table, known: set, path: Path) -> Dict[str, np.ndarray]:
    extra = {}
    for name, values in table.items():
        if name in known:
            continue
        try:
            extra[name] = _floats(values, path, name) if all(',' not in v and ' ' not in v for v in values) \
                else _vectors(values, path, name)
        except InputError:
            continue  # non-numeric columns of other programs are not carried
    return extra


# ----------------------------------------------------------------------------------------------
# Xmipp .xmd (ContinuousFlex's images.xmd)
# ----------------------------------------------------------------------------------------------
XMD_COLUMNS = ('image', 'enabled', 'angleRot', 'angleTilt', 'anglePsi', 'shiftX', 'shiftY', 'nmaDisplacements',
               'cost')


def _write_xmd(path: Path, particles: Particles, continuousflex_only: bool = False) -> None:
    """Xmipp metadata; ``continuousflex_only`` writes exactly the 9 columns of ContinuousFlex's images.xmd."""
    n = len(particles)
    zeros = np.zeros(n)
    angles = particles.angles if particles.angles is not None else np.zeros((n, 3))
    shifts = particles.shifts if particles.shifts is not None else np.zeros((n, 2))
    table: Table = {'image': list(particles.image), 'enabled': ['1'] * n,
                    'angleRot': _format(angles[:, 0]), 'angleTilt': _format(angles[:, 1]),
                    'anglePsi': _format(angles[:, 2]), 'shiftX': _format(shifts[:, 0]),
                    'shiftY': _format(shifts[:, 1])}
    if particles.amplitudes is not None:
        table['nmaDisplacements'] = _format_vectors(particles.amplitudes)
    table['cost'] = _format(particles.score if particles.score is not None else zeros)
    if continuousflex_only:
        write_star_tables(path, {'noname': table}, header=XMIPP_HEADER)
        return
    if particles.has_ctf:
        table['ctfDefocusU'] = _format(particles.defocus_u)
        table['ctfDefocusV'] = _format(particles.defocus_v)
        table['ctfDefocusAngle'] = _format(particles.defocus_angle)
        table['ctfVoltage'] = [f'{particles.voltage:.6f}'] * n
        table['ctfSphericalAberration'] = [f'{particles.cs:.6f}'] * n
        table['ctfQ0'] = [f'{particles.amplitude_contrast:.6f}'] * n
        table['ctfSamplingRate'] = [f'{particles.pixel_size:.6f}'] * n
    for name, values in particles.extra.items():
        table[name] = _format(values) if np.ndim(values) == 1 else _format_vectors(values)
    write_star_tables(path, {'noname': table}, header=XMIPP_HEADER)


def _read_xmd(path: Path, pixel_size: Optional[float]) -> Particles:
    tables = read_star_tables(path)
    block, table = next(((b, t) for b, t in tables.items() if 'image' in t), next(iter(tables.items())))
    _require(table, ['image'], path, block)
    if 'enabled' in table:
        keep = np.array([int(float(v)) >= 0 for v in table['enabled']])
        table = {k: [v for v, ok in zip(values, keep) if ok] for k, values in table.items()}
    sampling = pixel_size or (float(table['ctfSamplingRate'][0]) if 'ctfSamplingRate' in table else 1.0)
    result = Particles(image=np.array(table['image']), pixel_size=sampling)
    angle_names = ('angleRot', 'angleTilt', 'anglePsi')
    if any(name in table for name in angle_names):
        _require(table, angle_names, path, block)
        result.angles = np.stack([_floats(table[n], path, n) for n in angle_names], axis=1)
    if 'shiftX' in table or 'shiftY' in table:
        _require(table, ('shiftX', 'shiftY'), path, block)
        result.shifts = np.stack([_floats(table[n], path, n) for n in ('shiftX', 'shiftY')], axis=1)
    if 'nmaDisplacements' in table:
        result.amplitudes = _vectors(table['nmaDisplacements'], path, 'nmaDisplacements')
    if 'cost' in table:
        result.score = _floats(table['cost'], path, 'cost')
    if 'ctfDefocusU' in table:
        result.defocus_u = _floats(table['ctfDefocusU'], path, 'ctfDefocusU')
        result.defocus_v = _floats(table.get('ctfDefocusV', table['ctfDefocusU']), path, 'ctfDefocusV')
        result.defocus_angle = _floats(table.get('ctfDefocusAngle', ['0'] * len(result)), path, 'ctfDefocusAngle')
        result.voltage = float(table.get('ctfVoltage', ['300'])[0])
        result.cs = float(table.get('ctfSphericalAberration', ['2.7'])[0])
        result.amplitude_contrast = float(table.get('ctfQ0', ['0.1'])[0])
    known = set(XMD_COLUMNS) | {'ctfDefocusU', 'ctfDefocusV', 'ctfDefocusAngle', 'ctfVoltage',
                                'ctfSphericalAberration', 'ctfQ0', 'ctfSamplingRate', 'itemId'}
    result.extra = _extra_columns(table, known, path)
    result.__post_init__()
    return result


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
            columns[name] = _format(particles.angles[:, i])
    if particles.shifts is not None:
        columns['shift_x'], columns['shift_y'] = _format(particles.shifts[:, 0]), _format(particles.shifts[:, 1])
    if particles.amplitudes is not None:
        for k in range(particles.amplitudes.shape[1]):
            columns[f'amplitude_{k + 1}'] = _format(particles.amplitudes[:, k])
    for name in ('defocus_u', 'defocus_v', 'defocus_angle', 'score'):
        if getattr(particles, name) is not None:
            columns[name] = _format(getattr(particles, name))
    for name, values in particles.extra.items():
        if np.ndim(values) == 1:
            columns[name] = _format(values)
        else:
            for k in range(values.shape[1]):
                columns[f'{name}[{k}]'] = _format(values[:, k])
    return columns


def _write_csv(path: Path, particles: Particles) -> None:
    columns = _csv_columns(particles)
    with atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as handle:
            writer = csv.writer(handle)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))


def _read_csv(path: Path) -> Particles:
    text = _read_text(path)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise InputError(f'{path}: no particle rows')
    table = {name: [row[name] for row in rows] for name in rows[0]}
    _require(table, ['image', 'pixel_size'], path, 'csv')
    result = Particles(image=np.array(table['image']), pixel_size=float(table['pixel_size'][0]),
                       voltage=float(table.get('voltage', ['300'])[0]), cs=float(table.get('cs', ['2.7'])[0]),
                       amplitude_contrast=float(table.get('amplitude_contrast', ['0.1'])[0]))
    if any(name in table for name in ('rot', 'tilt', 'psi')):
        _require(table, ('rot', 'tilt', 'psi'), path, 'csv')
        result.angles = np.stack([_floats(table[n], path, n) for n in ('rot', 'tilt', 'psi')], axis=1)
    if 'shift_x' in table or 'shift_y' in table:
        _require(table, ('shift_x', 'shift_y'), path, 'csv')
        result.shifts = np.stack([_floats(table[n], path, n) for n in ('shift_x', 'shift_y')], axis=1)
    amplitude_names = sorted((n for n in table if n.startswith('amplitude_') and n != 'amplitude_contrast'),
                             key=lambda n: int(n.split('_')[1]))
    if amplitude_names:
        result.amplitudes = np.stack([_floats(table[n], path, n) for n in amplitude_names], axis=1)
    for name in ('defocus_u', 'defocus_v', 'defocus_angle', 'score'):
        if name in table:
            setattr(result, name, _floats(table[name], path, name))
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
            grouped.setdefault(base, []).append((int(index), _floats(values, path, name)))
        else:
            extra[name] = _floats(values, path, name)
    for base, parts in grouped.items():
        extra[base] = np.stack([values for _, values in sorted(parts, key=lambda p: p[0])], axis=1)
    return extra


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in ('.star', '.xmd', '.csv'):
        raise InputError(f'{path}: unknown metadata format "{suffix}" (use .star, .xmd or .csv)')
    return suffix


def read_particles(path: str | os.PathLike, pixel_size: Optional[float] = None) -> Particles:
    """Read particle metadata (format from the extension). ``pixel_size`` fills in for .xmd without CTF."""
    path = Path(path)
    kind = _format_of(path)
    if kind == '.star':
        return _read_star(path)
    if kind == '.xmd':
        return _read_xmd(path, pixel_size)
    return _read_csv(path)


def write_particles(path: str | os.PathLike, particles: Particles, continuousflex_only: bool = False) -> Path:
    """Write particle metadata atomically (format from the extension); returns the path.

    ``continuousflex_only``: an .xmd holds exactly the columns of ContinuousFlex's HEMNMA ``images.xmd``
    (image, enabled, angles, shifts, nmaDisplacements, cost), without CTF or extra columns.
    """
    path = Path(path)
    kind = _format_of(path)
    if kind == '.xmd':
        _write_xmd(path, particles, continuousflex_only)
    else:
        {'.star': _write_star, '.csv': _write_csv}[kind](path, particles)
    return path

