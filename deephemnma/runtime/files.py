"""Safe writing: every output is written under a temporary name in its folder, then renamed into place with
the user's permissions (a replaced file keeps its mode; a new file gets ``0666 & ~umask``, as ``open`` would
give it). Whole commands group their outputs in one transaction: :mod:`deephemnma.runtime.outputs`."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Optional

_UMASK: Optional[int] = None


def user_umask() -> int:
    """The process's umask (read once: reading it means setting it)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def apply_user_mode(path: str | os.PathLike, final_path: str | os.PathLike) -> None:
    """Give ``path`` (about to replace ``final_path``) the mode of the file it replaces, or the mode a new file
    gets under the user's umask (temporary files are created 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(final_path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~user_umask()
    os.chmod(path, mode)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str = '') -> Iterator[str]:
    """Yield a temporary path next to ``final_path``; rename it to ``final_path`` only on success.

    On an exception the temporary file is removed and an existing ``final_path`` is left untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f'.{final_path.name}.', suffix=f'.tmp{suffix}', dir=final_path.parent)
    os.close(handle)
    try:
        yield tmp
        apply_user_mode(tmp, final_path)
        os.replace(tmp, final_path)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if error.filename is None:  # a failed write (disk full, file too large): name the file being written
            raise OSError(error.errno, error.strerror or str(error), str(final_path)) from error
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_figure(figure, path: str | os.PathLike, dpi: Optional[int] = None, tight: bool = False) -> None:
    """Save a matplotlib ``figure`` atomically, in the format of ``path``'s extension (PNG by default), and close
    it."""
    import matplotlib.pyplot as plt
    suffix = Path(path).suffix or '.png'
    with atomic_path(path, suffix=suffix) as tmp:
        figure.savefig(tmp, format=suffix.lstrip('.'), dpi=dpi, bbox_inches='tight' if tight else None)
    plt.close(figure)
