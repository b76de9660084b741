"""The in-memory particle set: :class:`Particles` and image locations.

One form holds per-particle columns whatever file they came from: image locations (``'INDEX@stack.mrcs'``,
1-based), Euler angles (Xmipp ZYZ, degrees), shifts (pixels, Xmipp sign: the translation that brings the particle
back to the centre), normal-mode amplitudes, CTF and a score, plus extra columns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from deephemnma.data.images import image_file
from deephemnma.runtime.errors import InputError

if TYPE_CHECKING:
    from deephemnma.imaging.ctf import CTFParams

OptionalArray = Optional[np.ndarray]


@dataclass
class Particles:
    """Per-particle metadata; optional columns are ``None`` when unknown.

    Shapes: ``image (n,)`` str; ``angles (n, 3)`` degrees (rot, tilt, psi); ``shifts (n, 2)`` pixels;
    ``amplitudes (n, m)``; ``defocus_u/v (n,)`` Angstrom (positive = underfocus); ``defocus_angle (n,)`` and
    ``phase_shift (n,)`` degrees; ``half (n,)`` the half set (1 or 2, RELION's ``rlnRandomSubset``) for FSC;
    ``score (n,)``; ``extra`` maps a name to an ``(n,)`` or ``(n, k)`` array. The microscope (``voltage`` kV,
    ``cs`` mm, ``amplitude_contrast``) is one float, or one value per particle for several optics groups; the
    pixel size (Angstrom; None: unknown) is one for all. ``box`` is the image size (pixels) when known.
    Pass-through for lossless RELION round trips: ``text`` holds every column of the source file's particle
    table as read (strings, by the file's column name) and ``optics_table`` its optics table.
    """

    image: np.ndarray
    pixel_size: Optional[float] = 1.0
    angles: OptionalArray = None
    shifts: OptionalArray = None
    amplitudes: OptionalArray = None
    defocus_u: OptionalArray = None
    defocus_v: OptionalArray = None
    defocus_angle: OptionalArray = None
    voltage: Union[float, np.ndarray] = 300.0
    cs: Union[float, np.ndarray] = 2.7
    amplitude_contrast: Union[float, np.ndarray] = 0.1
    phase_shift: OptionalArray = None
    half: OptionalArray = None
    score: OptionalArray = None
    box: Optional[int] = None
    extra: Dict[str, np.ndarray] = field(default_factory=dict)
    text: Dict[str, np.ndarray] = field(default_factory=dict)
    optics_table: Optional[Dict[str, List[str]]] = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=str)
        n = len(self.image)
        for name in PER_PARTICLE_COLUMNS + OPTICS_COLUMNS:
            value = getattr(self, name)
            if value is None or (name in OPTICS_COLUMNS and np.ndim(value) == 0):
                continue
            value = np.asarray(value, dtype=np.float64)
            if len(value) != n:
                raise ValueError(f'column {name} has {len(value)} rows for {n} particles')
            setattr(self, name, value)
        for name, values in self.text.items():
            if len(values) != n:
                raise ValueError(f'column {name} has {len(values)} rows for {n} particles')
            self.text[name] = np.asarray(values, dtype=object)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def has_ctf(self) -> bool:
        return self.defocus_u is not None

    def ctf(self) -> Optional[CTFParams]:
        """The particles' CTF parameters, one row per particle (None without defocus)."""
        from deephemnma.imaging.ctf import CTFParams  # torch: imported only where the CTF is used
        if self.defocus_u is None:
            return None
        defocus_v = self.defocus_v if self.defocus_v is not None else self.defocus_u
        angle = self.defocus_angle if self.defocus_angle is not None else np.zeros(len(self))
        return CTFParams(defocus_u=self.defocus_u, defocus_v=defocus_v, defocus_angle=angle,
                         voltage=self.voltage, cs=self.cs, amplitude_contrast=self.amplitude_contrast,
                         phase_shift=self.phase_shift if self.phase_shift is not None else 0.0)

    @property
    def has_alignment(self) -> bool:
        return self.angles is not None and self.shifts is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> 'Particles':
        """The particles at ``indices`` (integer positions or a boolean mask), in that order."""
        indices = np.asarray(indices)
        changes = {name: getattr(self, name)[indices] for name in PER_PARTICLE_COLUMNS + OPTICS_COLUMNS
                   if getattr(self, name) is not None and np.ndim(getattr(self, name)) > 0}
        return replace(self, image=self.image[indices], extra={k: v[indices] for k, v in self.extra.items()},
                       text={k: v[indices] for k, v in self.text.items()}, **changes)

    def locations(self, base_dir: str | os.PathLike = '.') -> Iterator[Tuple[int, Path]]:
        """``(zero-based index, stack path)`` of each image; relative stack paths are taken from ``base_dir``."""
        for location in self.image:
            yield parse_location(location, base_dir)

    def resolved(self, base_dir: Optional[str | os.PathLike] = None) -> 'Particles':
        """A copy whose image locations name their stacks by absolute paths (:func:`resolve_stack`), so that they
        stay valid in metadata written anywhere."""
        return replace(self, image=absolute_locations(self.image, base_dir))

    def check(self, source: str, columns: Sequence[str] = (), images: bool = False) -> 'Particles':
        """Refuse (InputError naming ``source``) what would give silently wrong results: no particles, an unknown or
        impossible pixel size, a missing column of ``columns`` (``PER_PARTICLE_COLUMNS``, ``'ctf'`` for defocus
        and microscope, or an extra column's name), a value in them that is not a finite number and, with
        ``images``, the same image listed twice. Returns the particles."""
        if len(self) == 0:
            raise InputError(f'{source}: holds no particles')
        if self.pixel_size is None:
            raise InputError(f'{source}: the file gives no pixel size; give it with --pixel-size')
        if not (np.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise InputError(f'{source}: the pixel size must be a positive number of Angstrom, not {self.pixel_size}')
        for name in columns:
            for label, values in self._column(name, source).items():
                _check_finite(np.asarray(values, dtype=np.float64), label, source)
        if images:
            _check_unique(self.image, source)
        return self

    def _column(self, name: str, source: str) -> Dict[str, np.ndarray]:
        """The arrays of column ``name`` by label (InputError when missing)."""
        if name == 'ctf':
            if self.defocus_u is None:
                raise InputError(f'{source}: the particles have no CTF (defocus) but the CTF is used')
            values = {'defocus': self.defocus_u, 'voltage': self.voltage, 'spherical aberration': self.cs,
                      'amplitude contrast': self.amplitude_contrast}
            values.update({label: value for label, value in (('defocus V', self.defocus_v),
                                                             ('defocus angle', self.defocus_angle))
                           if value is not None})
            if not np.all(np.asarray(self.voltage) > 0):
                raise InputError(f'{source}: the voltage must be positive, not {self.voltage}')
            return values
        value = getattr(self, name, None) if name in PER_PARTICLE_COLUMNS else self.extra.get(name)
        label = _COLUMN_LABELS.get(name, name.replace('_', ' '))
        if value is None:
            raise InputError(f'{source}: the particles have no {label}, which this command uses')
        return {label: value}


PER_PARTICLE_COLUMNS = ('angles', 'shifts', 'amplitudes', 'defocus_u', 'defocus_v', 'defocus_angle', 'phase_shift',
                        'half', 'score')
#: The microscope: one value for all particles, or one per particle.
OPTICS_COLUMNS = ('voltage', 'cs', 'amplitude_contrast')


_COLUMN_LABELS = {'angles': 'poses (Euler angles)', 'shifts': 'poses (shifts)',
                  'amplitudes': 'normal-mode amplitudes'}


def _check_finite(values: np.ndarray, label: str, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)) if values.ndim else \
        (np.array([0]) if not np.isfinite(values) else np.array([], dtype=int))
    if bad.size:
        row = values[bad[0]] if values.ndim else values
        raise InputError(f'{source}: the {label} of particle {bad[0] + 1} is {row}: not a finite number'
                         + (f' ({bad.size} particles)' if bad.size > 1 else ''))


def _check_unique(images: np.ndarray, source: str) -> None:
    names, first, counts = np.unique(images, return_index=True, return_counts=True)
    if np.any(counts > 1):
        twice = names[counts > 1][0]
        rows = np.flatnonzero(images == twice)[:2] + 1
        raise InputError(f'{source}: particles {rows[0]} and {rows[1]} are the same image ({twice}); '
                         f'{int((counts - 1).sum())} duplicated row(s): remove them')


def concatenate(parts: Sequence[Particles]) -> Particles:
    """One particle set of ``parts`` in order. Optics (pixel size, voltage, Cs, amplitude contrast) must agree
    (InputError otherwise); a per-particle or extra column is kept when every part has it."""
    if not parts:
        raise InputError('no particle sets to join')
    first = parts[0]
    for number, part in enumerate(parts[1:], start=2):
        if part.pixel_size != first.pixel_size:
            raise InputError(f'particle set {number} has a pixel size of {part.pixel_size} A, the first '
                             f'{first.pixel_size} A: sets of different pixel sizes cannot be joined')

    def joined(values):
        return None if any(v is None for v in values) else np.concatenate(values)

    columns = {name: joined([getattr(part, name) for part in parts]) for name in PER_PARTICLE_COLUMNS}
    optics = {}
    for name in OPTICS_COLUMNS:
        per_particle = np.concatenate([np.broadcast_to(getattr(part, name), len(part)) for part in parts])
        optics[name] = float(per_particle[0]) if np.all(per_particle == per_particle[0]) else per_particle
    extra = {name: np.concatenate([part.extra[name] for part in parts]) for name in first.extra
             if all(name in part.extra for part in parts)}
    text = {name: np.concatenate([part.text[name] for part in parts]) for name in first.text
            if all(name in part.text for part in parts)}
    same_optics = all(part.optics_table == first.optics_table for part in parts)
    return Particles(image=np.concatenate([part.image for part in parts]), pixel_size=first.pixel_size,
                     box=first.box, extra=extra, text=text, optics_table=first.optics_table if same_optics else None,
                     **optics, **columns)


def resolve_stack(name: str, base_dir: Optional[str | os.PathLike] = None) -> str:
    """The absolute path of the stack ``name``: a relative name is taken relative to ``base_dir`` (e.g. the
    folder of the metadata file) when it exists there, else to the current folder (Scipion's project folder),
    else to ``base_dir``."""
    path = Path(name) if os.path.isabs(name) else Path(base_dir or '.') / name
    if not path.exists() and Path(name).exists():
        path = Path(name)
    return os.path.abspath(path)


def absolute_locations(images: Sequence[str], base_dir: Optional[str | os.PathLike] = None) -> np.ndarray:
    """Image locations ``index@stack`` with absolute stack paths (each stack resolved once)."""
    resolved: Dict[str, str] = {}
    out = []
    for location in images:
        index, _, name = str(location).rpartition('@') if '@' in str(location) else ('', '', str(location))
        if name not in resolved:
            resolved[name] = resolve_stack(name, base_dir)
        out.append(f'{index}@{resolved[name]}' if index else resolved[name])
    return np.array(out)


def relative_locations(images: Sequence[str], folder: str | os.PathLike) -> np.ndarray:
    """Image locations as metadata in ``folder`` should name them: stacks inside ``folder`` (or below it)
    relative to it, others absolute (relative names are kept as they are)."""
    folder = os.path.abspath(folder)
    out = []
    for location in images:
        index, _, name = str(location).rpartition('@') if '@' in str(location) else ('', '', str(location))
        if os.path.isabs(name) and (name == folder or name.startswith(folder + os.sep)):
            name = os.path.relpath(name, folder)
        out.append(f'{index}@{name}' if index else name)
    return np.array(out)


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
