"""Reading and writing particle files, the format chosen by the extension: RELION ``.star``
(:mod:`deephemnma.data.relion`), Xmipp ``.xmd`` (:mod:`deephemnma.data.xmipp`) and ``.csv``
(:mod:`deephemnma.data.csvfile`), and cryoSPARC ``.cs`` read (:mod:`deephemnma.data.cryosparc`). Reading checks
required columns and reports the file and the missing names (image indices beyond the end of their stacks are
reported by :class:`deephemnma.data.stacks.ImageSource`, which reads the images).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from deephemnma.data.cryosparc import read_cs
from deephemnma.data.csvfile import read_csv, write_csv
from deephemnma.data.particles import Particles, relative_locations
from deephemnma.data.relion import read_star, write_star
from deephemnma.data.xmipp import read_xmd, write_xmd
from deephemnma.runtime.errors import InputError


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def check_format(path: str | os.PathLike, writing: bool = True) -> str:
    """The metadata format of ``path`` from its extension (InputError for an unknown one; ``.cs`` is read, not
    written)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == '.cs' and not writing:
        return suffix
    if suffix not in ('.star', '.xmd', '.csv'):
        raise InputError(f'{path}: unknown metadata format "{suffix}" (use .star, .xmd or .csv'
                         + (')' if writing else ', or read a cryoSPARC .cs)'))
    return suffix


def read_particles(path: str | os.PathLike, pixel_size: Optional[float] = None) -> Particles:
    """Read particle metadata (format from the extension). ``pixel_size`` fills in for .xmd without CTF."""
    path = Path(path)
    kind = check_format(path, writing=False)
    if kind == '.cs':
        return read_cs(path)
    if kind == '.star':
        return read_star(path)
    if kind == '.xmd':
        return read_xmd(path, pixel_size)
    return read_csv(path)


def load_particles(path: str | os.PathLike, columns: Sequence[str] = (), images: bool = True,
                   pixel_size: Optional[float] = None, base_dir: Optional[str | os.PathLike] = None) -> Particles:
    """Particles as a command uses them: read (``pixel_size`` fills in where the file gives none), image paths made
    absolute (relative ones start from ``base_dir``, by default the file's folder) and checked
    (:meth:`Particles.check`: the ``columns`` used, finite; with ``images``, no image twice)."""
    particles = read_particles(path, pixel_size)
    return particles.resolved(base_dir or Path(path).resolve().parent).check(str(path), columns, images)


def write_particles(path: str | os.PathLike, particles: Particles, continuousflex_only: bool = False,
                    located_in: Optional[str | os.PathLike] = None) -> Path:
    """Write particle metadata atomically (format from the extension); returns the path.

    Image paths are written as they are valid from ``located_in`` (default: the file's folder; the final folder
    when ``path`` is a staged file): stacks below it relative to it, others absolute.
    ``continuousflex_only``: an .xmd holds exactly the columns of ContinuousFlex's HEMNMA ``images.xmd``
    (image, enabled, angles, shifts, nmaDisplacements, cost), without CTF or extra columns.
    """
    path = Path(path)
    particles = replace(particles, image=relative_locations(particles.image, located_in or path.resolve().parent))
    kind = check_format(path)
    if particles.pixel_size is None and kind != '.xmd':
        raise InputError(f'{path}: the particles have no known pixel size, which a {kind} file records; give it '
                         'with --pixel-size')
    if kind == '.xmd':
        write_xmd(path, particles, continuousflex_only)
    else:
        {'.star': write_star, '.csv': write_csv}[kind](path, particles)
    return path
