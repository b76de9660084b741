"""Aligning whole particle sets: streamed in chunks from the stacks, resumable, sharded over torchrun ranks.

Images are read from their (memory-mapped) stacks chunk by chunk, so sets larger than memory are processed;
each finished chunk's results are stored by :class:`~deephemnma.runtime.chunks.ChunkStore` (a rerun after a kill
skips them and gives the same result); with ``torchrun`` chunk ``c`` goes to rank ``c % world_size`` and rank 0
merges the results in order. A chunk is also the batch of the aligner, so the result of an image depends only
on the chunk it belongs to, never on the number of processes.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, Optional

import numpy as np
import torch

from deephemnma.data.particles import Particles
from deephemnma.data.stacks import ImageSource
from deephemnma.hemnma.aligner import Aligner, AlignSettings
from deephemnma.hemnma.reference import AlignReference
from deephemnma.runtime.chunks import ChunkStore
from deephemnma.runtime.distributed import Rank
from deephemnma.runtime.errors import InputError


def align_particles(particles: Particles, reference: AlignReference, settings: AlignSettings,
                    work_folder: str | os.PathLike, base_dir: str | os.PathLike = '.', local: bool = False,
                    chunk_size: int = 64, device: torch.device = torch.device('cpu'), rank: Rank = Rank(),
                    progress: Optional[Callable[[Iterator[int]], Iterator[int]]] = None,
                    invert: bool = False) -> Optional[Particles]:
    """Align every particle; returns (on rank 0) a copy of ``particles`` with angles, shifts, amplitudes, score.

    ``local``: refine from the particles' own angles/shifts (and amplitudes when present) instead of a global
    search. ``work_folder`` keeps the finished chunks (resumable; the settings are checked on resume). ``invert``:
    multiply the images by -1 (inverted contrast).
    """
    if local and not particles.has_alignment:
        raise InputError('local alignment needs particles with angles and shifts (none in the input metadata)')
    reader = ImageSource(particles.image, base_dir, invert=invert)
    aligner = Aligner(reference, reader.box, particles.pixel_size, settings, device)
    ctf = particles.ctf()
    store = ChunkStore(work_folder, len(particles), chunk_size,
                       {'settings': settings.__dict__, 'local': local, 'box': reader.box,
                        'modes': reference.mode_numbers, 'pixel_size': particles.pixel_size,
                        'atoms': int(reference.coords.shape[0]), 'deformation': reference.deformation})

    def compute(positions: range) -> Dict[str, np.ndarray]:
        index = np.asarray(positions)
        images = torch.as_tensor(reader.read(index))
        initial = None
        if local:
            initial = {'angles': particles.angles[index], 'shifts': particles.shifts[index]}
            if particles.amplitudes is not None and particles.amplitudes.shape[1] == reference.num_modes:
                initial['amplitudes'] = particles.amplitudes[index]
        return aligner.align(images, None if ctf is None else ctf.rows(index), initial)

    store.run(compute, rank, progress)
    if not rank.is_main:
        return None
    merged = store.merged()
    result = particles.subset(np.arange(len(particles)))
    result.angles, result.shifts = merged['angles'], merged['shifts']
    result.amplitudes, result.score = merged['amplitudes'], merged['score']
    return result
