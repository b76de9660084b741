"""Reading and writing particle files, the format chosen by the extension: RELION ``.star``
(:mod:`deephemnma.data.relion`), Xmipp ``.xmd`` (:mod:`deephemnma.data.xmipp`) and ``.csv``
(:mod:`deephemnma.data.csvfile`). Reading checks required columns and reports the file and the missing names
(image indices beyond the end of their stacks are reported by :class:`deephemnma.data.stacks.ImageSource`, which
reads the images).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from deephemnma.data.csvfile import read_csv, write_csv
from deephemnma.data.particles import Particles
from deephemnma.data.relion import read_star, write_star
from deephemnma.data.xmipp import read_xmd, write_xmd
from deephemnma.runtime.errors import InputError


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
        return read_star(path)
    if kind == '.xmd':
        return read_xmd(path, pixel_size)
    return read_csv(path)


def write_particles(path: str | os.PathLike, particles: Particles, continuousflex_only: bool = False) -> Path:
    """Write particle metadata atomically (format from the extension); returns the path.

    ``continuousflex_only``: an .xmd holds exactly the columns of ContinuousFlex's HEMNMA ``images.xmd``
    (image, enabled, angles, shifts, nmaDisplacements, cost), without CTF or extra columns.
    """
    path = Path(path)
    kind = _format_of(path)
    if kind == '.xmd':
        write_xmd(path, particles, continuousflex_only)
    else:
        {'.star': write_star, '.csv': write_csv}[kind](path, particles)
    return path
