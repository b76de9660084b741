"""Image stacks and 3D maps: memory-mapped reading of MRC (with mrcfile) and SPIDER files, safe streaming writing.

Stacks are ``(n, box, box)`` arrays (image index, row y, column x); maps are ``(box, box, box)`` arrays
indexed ``[z, y, x]``. Pixel sizes are in Angstrom (0 where a SPIDER header does not give one). Reading never
loads a whole stack: the data is memory-mapped, so stacks larger than RAM are read image by image.

SPIDER (``.stk``, ``.spi``, ``.xmp``, ``.vol``: Xmipp's and ContinuousFlex's own formats) is read, either byte
order: a header of LABBYT bytes (1-based float words: 1 NZ, 2 NY, 5 IFORM, 12 NX, 22 LABBYT, 24 ISTACK, 26 MAXIM,
38 pixel size), then the data; a stack repeats header + image after its overall header. Written files are MRC:
to a temporary name first (``NAME.partial`` for streamed stacks, which a resumed job reopens), renamed only when
complete.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import mrcfile
import numpy as np

from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

_HEADER_BYTES = 1024


@dataclass(frozen=True)
class StackInfo:
    """What the header of a stack says: number of images, image size (pixels) and pixel size (Angstrom)."""

    count: int
    box: int
    pixel_size: float
    dtype: np.dtype


#: File name endings read as SPIDER; every other name is read as MRC.
SPIDER_SUFFIXES = ('.stk', '.spi', '.xmp', '.vol', '.spider')
_SPIDER_IMAGE_FORMS = (1.0, 3.0)  # IFORM of real 2D images and 3D volumes


#: Format hints that Scipion and Xmipp append to file names (``particles.mrc:mrcs``, ``map.vol:spi``).
_FORMAT_HINT = re.compile(r':(mrc|mrcs|spi|stk|vol|xmp|spider)$', re.IGNORECASE)


def image_file(name: str | os.PathLike) -> Path:
    """The file of an image name, without a trailing Scipion/Xmipp format hint such as ``:mrcs``."""
    return Path(_FORMAT_HINT.sub('', str(name)))


def is_spider(path: str | os.PathLike) -> bool:
    return image_file(path).suffix.lower() in SPIDER_SUFFIXES


@dataclass(frozen=True)
class _SpiderLayout:
    info: StackInfo
    header_floats: int          # LABBYT / 4
    shape: Tuple[int, int, int]  # (nz, ny, nx) of one image or volume
    stacked: bool
    total_floats: int           # the file's words that the header accounts for (trailing bytes ignored)


def _spider_layout(path: Path) -> _SpiderLayout:
    """What a SPIDER header says, in whichever byte order makes it consistent; checks the file size."""
    if not path.exists():
        raise InputError(f'{path}: no such image file')
    with open(path, 'rb') as handle:
        raw = handle.read(1024)
    if len(raw) < 1024:
        raise InputError(f'{path}: not a SPIDER file (shorter than its 1024-byte header)')
    for order in ('<', '>'):
        words = np.frombuffer(raw, dtype=f'{order}f4').astype(np.float64)
        nz, ny, form, nx, labbyt = words[0], words[1], words[4], words[11], words[21]
        if (form in _SPIDER_IMAGE_FORMS and nx >= 1 and ny >= 1 and nz >= 1 and labbyt >= 1024
                and labbyt % 4 == 0 and all(v == int(v) for v in (nx, ny, nz))):
            break
    else:
        raise InputError(f'{path}: not a SPIDER image file of real 2D images or 3D volumes (header not understood)')
    stacked = words[23] > 0
    count = int(words[25]) if stacked else 1
    shape = (int(nz), int(ny), int(nx))
    per_image = shape[0] * shape[1] * shape[2] * 4 + (int(labbyt) if stacked else 0)
    expected = int(labbyt) + count * per_image
    if path.stat().st_size < expected:
        raise InputError(f'{path}: truncated file: the SPIDER header announces {count} image(s) of '
                         f'{shape[1]} x {shape[2]} ({expected} bytes) but the file has {path.stat().st_size} bytes')
    info = StackInfo(count, shape[2], max(float(words[37]), 0.0), np.dtype(f'{order}f4'))
    return _SpiderLayout(info, int(labbyt) // 4, shape, stacked, expected // 4)


def _read_spider(path: Path) -> Tuple[np.ndarray, _SpiderLayout]:
    """A read-only memory map of a SPIDER file's data: ``(n, nz, ny, nx)`` (image headers skipped)."""
    layout = _spider_layout(path)
    nz, ny, nx = layout.shape
    data = np.memmap(path, dtype=layout.info.dtype, mode='r', shape=(layout.total_floats,))
    body = data[layout.header_floats:]
    if layout.stacked:
        per_image = layout.header_floats + nz * ny * nx
        body = body.reshape(layout.info.count, per_image)[:, layout.header_floats:]
    return body.reshape(-1, nz, ny, nx), layout


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
    path = image_file(path)
    return _spider_stack(path)[1] if is_spider(path) else _header_layout(path)[0]


def _spider_stack(path: Path) -> Tuple[np.ndarray, StackInfo]:
    """A SPIDER stack of 2D images (or the slices of one 2D image) as ``(n, box, box)`` and its description."""
    data, layout = _read_spider(path)
    if layout.shape[0] != 1:
        raise InputError(f'{path}: a SPIDER volume, not a stack of 2D images')
    if layout.shape[1] != layout.shape[2]:
        raise InputError(f'{path}: images are not square ({layout.shape[1]} x {layout.shape[2]} pixels)')
    return data[:, 0], layout.info


def read_stack(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """The images of a stack as ``(n, box, box)``: a read-only memory map (``mmap``) or an in-memory copy.

    The array has the stored dtype (float32 for MRC mode 2); convert batches with ``np.asarray(x, np.float32)``.
    """
    path = image_file(path)
    if is_spider(path):
        data = _spider_stack(path)[0]
    else:
        info, offset, shape = _header_layout(path)
        data = np.memmap(path, dtype=info.dtype, mode='r', offset=offset, shape=shape)
    return data if mmap else np.array(data)


def read_image(path: str | os.PathLike) -> Tuple[np.ndarray, float]:
    """A 3D map (or 2D image) and its pixel size (Angstrom); a stack of one image gives that image."""
    path = image_file(path)
    if is_spider(path):
        data, layout = _read_spider(path)
        return np.array(data[0, 0] if layout.shape[0] == 1 else data[0], dtype=np.float32), layout.info.pixel_size
    _header_layout(path)
    try:
        with mrcfile.open(path, mode='r', permissive=False) as mrc:
            return np.array(mrc.data, dtype=np.float32), float(mrc.voxel_size.x)
    except (ValueError, OSError) as error:
        raise InputError(f'{path}: cannot read the map ({error})') from error


def map_origin(box: int, pixel_size: float) -> float:
    """The origin (Angstrom, on each axis) that puts voxel ``box // 2`` at coordinate 0: the project's maps are
    centred there, as its images and the structures it writes from the space (centroids, animations), so that
    ChimeraX overlays them as written."""
    return -(box // 2) * float(pixel_size)


def write_map(path: str | os.PathLike, volume: np.ndarray, pixel_size: float) -> None:
    """Write a 3D map ``[z, y, x]`` (float32) with its voxel size and the origin of :func:`map_origin`, atomically."""
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
            else:
                origin = map_origin(data.shape[-1], pixel_size)
                mrc.header.origin = (origin, origin, origin)
            mrc.voxel_size = pixel_size
            mrc.update_header_stats()


class StackWriter:
    """Stream ``count`` images of ``box x box`` into ``path`` without holding them in memory.

    Data goes to ``path.partial`` (preallocated, written with plain file writes so that resident memory stays
    at one block); :meth:`close` renames it to ``path``. If the job dies, the partial file stays: a new writer
    with ``resume=True`` reopens it so that finished blocks are kept (the caller knows which blocks it finished,
    e.g. with :class:`deephemnma.runtime.chunks.ChunkStore`). An existing ``path`` is never touched until the new
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
