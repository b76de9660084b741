"""TODO docstring"""
from __future__ import annotations

import os
import numpy as np
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple
from deephemnma.runtime.errors import InputError
from deephemnma.data.images import image_file

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

    @property
    def has_alignment(self) -> bool:
        return self.angles is not None and self.shifts is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> 'Particles':
        """The particles at ``indices`` (integer positions or a boolean mask), in that order."""
        indices = np.asarray(indices)
        changes = {name: getattr(self, name)[indices] for name in PER_PARTICLE_COLUMNS if getattr(self, name) is not None}
        return replace(self, image=self.image[indices], extra={k: v[indices] for k, v in self.extra.items()},
                       **changes)

    def locations(self, base_dir: str | os.PathLike = '.') -> Iterator[Tuple[int, Path]]:
        """``(zero-based index, stack path)`` of each image; relative stack paths are taken from ``base_dir``."""
        for location in self.image:
            yield parse_location(location, base_dir)


PER_PARTICLE_COLUMNS = ('angles', 'shifts', 'amplitudes', 'defocus_u', 'defocus_v', 'defocus_angle', 'score')


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
