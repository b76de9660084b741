"""Benchmarks: ``deephemnma bench NAME`` runs ``deephemnma.bench.NAME`` and prints one JSON line last."""

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator, Optional


@contextlib.contextmanager
def work_folder(workdir: Optional[str], name: str) -> Iterator[Path]:
    """A benchmark's data folder: ``workdir`` when given (kept), else a temporary one (removed afterwards)."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix=f'deephemnma-bench-{name}-') as folder:
        yield Path(folder)
