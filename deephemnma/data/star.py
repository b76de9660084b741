"""The STAR syntax shared by RELION's ``.star`` and Xmipp's ``.xmd`` files: blocks of loops and key-value
pairs, values quoted as CIF does (a quote closes a value only before white space, no escapes), and the helpers
that turn columns into numbers with errors naming the file and the column.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

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
    for line_number, raw in enumerate(read_text(path).splitlines(), start=1):
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


def read_text(path: Path) -> str:
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


def require_columns(table: Table, names: Sequence[str], path: Path, block: str) -> None:
    missing = [name for name in names if name not in table]
    if missing:
        raise InputError(f'{path}: block data_{block} lacks the required column(s) {", ".join(missing)}')


def float_column(values: List[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in values])
    except ValueError as error:
        raise InputError(f'{path}: column {column} holds a non-numeric value ({error})') from error


def vector_column(values: List[str], path: Path, column: str) -> np.ndarray:
    try:
        rows = [[float(x) for x in v.replace(',', ' ').split()] for v in values]
    except ValueError as error:
        raise InputError(f'{path}: column {column} holds a non-numeric value ({error})') from error
    if len({len(r) for r in rows}) > 1:
        raise InputError(f'{path}: column {column} rows have different lengths')
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


def format_floats(values: np.ndarray) -> List[str]:
    return [f'{float(v):.6f}' for v in values]


def format_vectors(values: np.ndarray) -> List[str]:
    return [' '.join(f'{float(x):.6f}' for x in row) for row in values]


def extra_columns(table: Table, known: set, path: Path) -> Dict[str, np.ndarray]:
    extra = {}
    for name, values in table.items():
        if name in known:
            continue
        try:
            extra[name] = float_column(values, path, name) if all(',' not in v and ' ' not in v for v in values) \
                else vector_column(values, path, name)
        except InputError:
            continue  # non-numeric columns of other programs are not carried
    return extra


def single_value(values: List[str], path: Path, column: str, what: str = '') -> float:
    """The one number a column holds for every row (a constant of the file such as the voltage): InputError when
    a value is not a number or the rows disagree (they cannot be processed with one value)."""
    numbers = np.unique(float_column(values, path, column))
    if len(numbers) == 0:
        raise InputError(f'{path}: column {column} holds no value')
    if len(numbers) > 1:
        shown = ', '.join(map(str, numbers[:4])) + (' ...' if len(numbers) > 4 else '')
        raise InputError(f'{path}: column {column} holds {len(numbers)} different values ({shown}){what}: particles '
                         'of different optics cannot be processed together; split the file by optics group')
    return float(numbers[0])
