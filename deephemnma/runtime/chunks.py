"""Resumable chunked processing: results of finished chunks are kept on disk, a rerun skips them.

Long jobs (simulation, alignment, inference) process their items in fixed chunks. Each finished chunk is
written atomically as ``DIR/chunk_NNNNNN.npz`` (a temporary name, then a rename), so a job killed at any time
resumes from its last finished chunk and produces the same result. With ``torchrun``, chunk ``c`` is processed
by rank ``c % world_size``; rank 0 merges the chunks in order.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from deephemnma.runtime.distributed import Rank, barrier
from deephemnma.runtime.files import atomic_path

ChunkResult = Dict[str, np.ndarray]


class ChunkStore:
    """A folder of per-chunk result files for a job over ``count`` items in chunks of ``chunk_size``.

    ``settings`` (any JSON-serialisable description of the job) is stored; resuming with different settings
    raises an error instead of silently mixing results.
    """

    def __init__(self, folder: str | os.PathLike, count: int, chunk_size: int, settings: Optional[dict] = None):
        self.folder = Path(folder)
        self.count = int(count)
        self.chunk_size = int(chunk_size)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_settings({'count': self.count, 'chunk_size': self.chunk_size, **(settings or {})})

    @property
    def num_chunks(self) -> int:
        return (self.count + self.chunk_size - 1) // self.chunk_size

    def chunk_range(self, chunk: int) -> range:
        """Item indices of ``chunk``."""
        start = chunk * self.chunk_size
        return range(start, min(start + self.chunk_size, self.count))

    def path(self, chunk: int) -> Path:
        return self.folder / f'chunk_{chunk:06d}.npz'

    def is_done(self, chunk: int) -> bool:
        return self.path(chunk).exists()

    def pending(self, rank: Rank = Rank()) -> List[int]:
        """Chunks of this rank that still have to be computed."""
        return [c for c in range(rank.rank, self.num_chunks, rank.world_size) if not self.is_done(c)]

    def save(self, chunk: int, result: ChunkResult) -> None:
        """Write one chunk's arrays atomically."""
        with atomic_path(self.path(chunk), suffix='.npz') as tmp:
            np.savez(tmp, **result)

    def load(self, chunk: int) -> ChunkResult:
        with np.load(self.path(chunk)) as data:
            return {k: data[k] for k in data.files}

    def run(self, compute: Callable[[range], ChunkResult], rank: Rank = Rank(),
            progress: Optional[Callable[[Iterator[int]], Iterator[int]]] = None) -> None:
        """Compute and save this rank's pending chunks; ``progress`` may wrap the iterator (e.g. tqdm)."""
        chunks = self.pending(rank)
        iterator = progress(iter(chunks)) if progress else iter(chunks)
        for chunk in iterator:
            self.save(chunk, compute(self.chunk_range(chunk)))
        barrier(rank)

    def merged(self) -> ChunkResult:
        """All chunks concatenated in item order (every chunk must be done)."""
        missing = [c for c in range(self.num_chunks) if not self.is_done(c)]
        if missing:
            raise RuntimeError(f'{self.folder}: {len(missing)} chunk(s) not computed yet (first: {missing[0]})')
        parts = [self.load(c) for c in range(self.num_chunks)]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _check_settings(self, settings: dict) -> None:
        path = self.folder / 'settings.json'
        text = json.dumps(settings, sort_keys=True, default=str)
        if path.exists():
            if path.read_text() != text:
                raise RuntimeError(f'{self.folder} holds the chunks of a job with other settings; '
                                   'remove the folder or choose another output to start afresh')
            return
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
