"""MRC image stacks (.mrcs/.mrc) and 3D maps with mrcfile: memory-mapped reading, safe streaming writing.

Stacks are ``(n, box, box)`` arrays (image index, row y, column x); maps are ``(box, box, box)`` arrays
indexed ``[z, y, x]``. Pixel sizes are in Angstrom. Reading never loads a whole stack: the data block is
memory-mapped, so stacks larger than RAM are read image by image. Writing goes to a temporary name first
(``NAME.partial`` for streamed stacks, which a resumed job reopens) and is renamed only when complete.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import mrcfile
import numpy as np

from .fileio import InputError, atomic_path

_HEADER_BYTES = 1024


@dataclass(frozen=True)
class StackInfo:
    """What the header of a stack says: number of images, image size (pixels) and pixel size (Angstrom)."""

    count: int
    box: int
    pixel_size: float
    dtype: np.dtype


def _open_header(path: Path):
    if not path.exists():
        raise InputError(f'{path}: no such image file')
    try:
        return mrcfile.open(path, mode='r', header_only=True, permissive=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f'{path}: not a valid MRC file ({error})') from error


def _header_layout(path: Path) -> Tuple[StackInfo, int, Tuple[int, int, int]]:
    """Stack description, data offset in bytes and ``(nz, ny, nx)``; checks the file is not truncated."""
    with _open_header(path) as mrc:
        header = mrc.header
        nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
        try:
            dtype = mrcfile.utils.data_dtype_from_header(header)
        except ValueError as error:
            raise InputError(f'{path}: unsupported MRC data mode {int(header.mode)} ({error})') from error
        pixel_size = float(mrc.voxel_size.x)
        offset = _HEADER_BYTES + int(header.nsymbt)
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise InputError(f'{path}: header gives an empty data block ({nx} x {ny} x {nz})')
    expected = offset + nx * ny * nz * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(f'{path}: truncated file: the header announces {nz} images of {ny} x {nx} '
                         f'({expected} bytes) but the file has {actual} bytes')
    if nx != ny:
        raise InputError(f'{path}: images are not square ({ny} x {nx} pixels)')
    return StackInfo(nz, nx, pixel_size, dtype), offset, (nz, ny, nx)


def stack_info(path: str | os.PathLike) -> StackInfo:
    """Header facts of an image stack, after checking that the file holds all the data it announces."""
    return _header_layout(Path(path))[0]


def read_stack(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """The images of a stack as ``(n, box, box)``: a read-only memory map (``mmap``) or an in-memory copy.

    The array has the stored dtype (float32 for MRC mode 2); convert batches with ``np.asarray(x, np.float32)``.
    """
    path = Path(path)
    info, offset, shape = _header_layout(path)
    data = np.memmap(path, dtype=info.dtype, mode='r', offset=offset, shape=shape)
    return data if mmap else np.array(data)


def read_image(path: str | os.PathLike) -> Tuple[np.ndarray, float]:
    """A 3D map (or 2D image) and its pixel size (Angstrom); a stack of one image gives that image."""
    path = Path(path)
    _header_layout(path)
    try:
        with mrcfile.open(path, mode='r', permissive=False) as mrc:
            return np.array(mrc.data, dtype=np.float32), float(mrc.voxel_size.x)
    except (ValueError, OSError) as error:
        raise InputError(f'{path}: cannot read the map ({error})') from error


def write_map(path: str | os.PathLike, volume: np.ndarray, pixel_size: float) -> None:
    """Write a 3D map ``[z, y, x]`` (float32) with its voxel size, atomically."""
    _write_mrc(Path(path), np.asarray(volume, dtype=np.float32), pixel_size, is_stack=False)


def write_stack(path: str | os.PathLike, images: np.ndarray, pixel_size: float) -> None:
    """Write ``(n, box, box)`` images as an MRC stack (float32) with pixel size, atomically."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f'{path}: a stack must be (n, box, box), got shape {images.shape}')
    _write_mrc(Path(path), images, pixel_size, is_stack=True)


def _write_mrc(path: Path, data: np.ndarray, pixel_size: float, is_stack: bool) -> None:
    with atomic_path(path, suffix='.mrc') as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if is_stack:
                mrc.set_image_stack()
            mrc.voxel_size = pixel_size
            mrc.update_header_stats()


class StackWriter:
    """Stream ``count`` images of ``box x box`` into ``path`` without holding them in memory.

    Data goes to ``path.partial`` (preallocated, written with plain file writes so that resident memory stays
    at one block); :meth:`close` renames it to ``path``. If the job dies, the partial file stays: a new writer
    with ``resume=True`` reopens it so that finished blocks are kept (the caller knows which blocks it finished,
    e.g. with :class:`deephemnma.core.chunks.ChunkStore`). An existing ``path`` is never touched until the new
    stack is complete.
    """

    def __init__(self, path: str | os.PathLike, count: int, box: int, pixel_size: float, resume: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + '.partial')
        self.count, self.box, self.pixel_size = int(count), int(box), float(pixel_size)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.partial.exists():
            info, self._offset, _ = _header_layout(self.partial)
            if (info.count, info.box) != (self.count, self.box):
                raise InputError(f'{self.partial}: partial stack of {info.count} images of {info.box} x {info.box} '
                                 f'cannot be resumed as {self.count} images of {self.box} x {self.box}')
        else:
            self._preallocate()
            self._offset = _header_layout(self.partial)[1]
        self._file = open(self.partial, 'r+b')

    def _preallocate(self) -> None:
        with mrcfile.new_mmap(self.partial, shape=(self.count, self.box, self.box), mrc_mode=2,
                              overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = self.pixel_size
            mrc.header.rms = -1  # statistics unknown without a full pass; -1 is the MRC convention

    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``images`` (k, box, box) at positions ``start .. start + k - 1``."""
        images = np.asarray(images, dtype=np.float32)
        if images.shape[1:] != (self.box, self.box) or start < 0 or start + len(images) > self.count:
            raise ValueError(f'{self.path}: cannot write {images.shape} at {start} into a stack of '
                             f'{self.count} x {self.box} x {self.box}')
        self._file.seek(self._offset + start * self.box * self.box * 4)
        self._file.write(images.astype('<f4', copy=False).tobytes())

    def flush(self) -> None:
        """Push written images to disk (call before recording a block as finished)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> Path:
        """Close and rename the partial file to its final name."""
        self.flush()
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def abandon(self) -> None:
        """Close without renaming; the partial file stays for a resumed run."""
        self.flush()
        self._file.close()

    def __enter__(self) -> 'StackWriter':
        return self

    def __exit__(self, exc_type, exc, tb) -> Optional[bool]:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
        return None
