"""Safe writing: every output is written under a temporary name in its folder, then renamed into place."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional


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
        os.replace(tmp, final_path)
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
