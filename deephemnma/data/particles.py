"""The in-memory particle set: :class:`Particles` and image locations.

One form holds per-particle columns whatever file they came from: image locations (``'INDEX@stack.mrcs'``,
1-based), Euler angles (Xmipp ZYZ, degrees), shifts (pixels, Xmipp sign: the translation that brings the particle
back to the centre), normal-mode amplitudes, CTF and a score, plus extra columns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Sequence, Tuple

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
        for name in PER_PARTICLE_COLUMNS:
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

    def ctf(self) -> Optional[CTFParams]:
        """The particles' CTF parameters, one row per particle (None without defocus)."""
        from deephemnma.imaging.ctf import CTFParams  # torch: imported only where the CTF is used
        if self.defocus_u is None:
            return None
        defocus_v = self.defocus_v if self.defocus_v is not None else self.defocus_u
        angle = self.defocus_angle if self.defocus_angle is not None else np.zeros(len(self))
        return CTFParams(defocus_u=self.defocus_u, defocus_v=defocus_v, defocus_angle=angle,
                         voltage=float(self.voltage), cs=float(self.cs),
                         amplitude_contrast=float(self.amplitude_contrast))

    @property
    def has_alignment(self) -> bool:
        return self.angles is not None and self.shifts is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> 'Particles':
        """The particles at ``indices`` (integer positions or a boolean mask), in that order."""
        indices = np.asarray(indices)
        changes = {name: getattr(self, name)[indices] for name in PER_PARTICLE_COLUMNS
                   if getattr(self, name) is not None}
        return replace(self, image=self.image[indices], extra={k: v[indices] for k, v in self.extra.items()},
                       **changes)

    def locations(self, base_dir: str | os.PathLike = '.') -> Iterator[Tuple[int, Path]]:
        """``(zero-based index, stack path)`` of each image; relative stack paths are taken from ``base_dir``."""
        for location in self.image:
            yield parse_location(location, base_dir)


PER_PARTICLE_COLUMNS = ('angles', 'shifts', 'amplitudes', 'defocus_u', 'defocus_v', 'defocus_angle', 'score')


def concatenate(parts: Sequence[Particles]) -> Particles:
    """One particle set of ``parts`` in order. Optics (pixel size, voltage, Cs, amplitude contrast) must agree
    (InputError otherwise); a per-particle or extra column is kept when every part has it."""
    if not parts:
        raise InputError('no particle sets to join')
    first = parts[0]
    optics = ('pixel_size', 'voltage', 'cs', 'amplitude_contrast')
    for number, part in enumerate(parts[1:], start=2):
        different = [name for name in optics if not np.isclose(getattr(part, name), getattr(first, name))]
        if different:
            raise InputError(f'particle set {number} differs from the first in {", ".join(different)}: sets of '
                             'different optics cannot be joined')

    def joined(values):
        return None if any(v is None for v in values) else np.concatenate(values)

    columns = {name: joined([getattr(part, name) for part in parts]) for name in PER_PARTICLE_COLUMNS}
    extra = {name: np.concatenate([part.extra[name] for part in parts]) for name in first.extra
             if all(name in part.extra for part in parts)}
    return Particles(image=np.concatenate([part.image for part in parts]),
                     **{name: getattr(first, name) for name in optics}, extra=extra, **columns)


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
