"""Maps of particle sets: reconstruction streamed from the particles' stacks, and the one writer of its outputs.

:func:`reconstruct_particles` reads the images of a :class:`~deephemnma.data.particles.Particles` batch by batch
(this rank's share under torchrun) and inverts them with their poses (:mod:`deephemnma.space.reconstruct`).
:func:`write_reconstruction` writes, for one reconstruction ``NAME``: ``NAME.mrc`` (the map, with its pixel size),
``NAME_half1.mrc``/``NAME_half2.mrc``, ``NAME_fsc.json`` (``images``, ``pixel_size``, ``half_sets`` ('given': the
particle file's, 'even/odd'), ``half_maps`` and, with a
reference, ``vs_reference``: FSC curves with their resolutions) and ``NAME_fsc.png``. The command line and the
Scipion protocol both go through these.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from deephemnma.data.images import write_map
from deephemnma.data.particles import Particles
from deephemnma.data.stacks import ImageSource, particle_batches
from deephemnma.imaging.fsc import fsc
from deephemnma.runtime.distributed import Rank, rank_positions
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.space.plots import save_fsc_plot
from deephemnma.space.reconstruct import Reconstruction, reconstruct


def reconstruct_particles(particles: Particles, base_dir: Path, ctf_mode: str, pad: float, wiener: float,
                          pose_box: Optional[int], pixel_size: Optional[float], batch_size: int,
                          device: torch.device, rank: Rank, label: str = '', invert: bool = False) -> Reconstruction:
    """Reconstruct the given particles (this rank's share of the batches when run under torchrun)."""
    source = ImageSource(particles.image, base_dir, invert=invert)
    size = pixel_size or particles.pixel_size
    scale = source.box / pose_box if pose_box else 1.0
    ctf = particles.ctf() if ctf_mode != 'none' else None
    if ctf_mode != 'none' and ctf is None:
        raise InputError(f"CTF mode '{ctf_mode}' needs defocus values in the particle file")
    halves = usable_half_sets(particles.half, label)
    positions = rank_positions(len(source), batch_size, rank.rank, rank.world_size)
    progress = tqdm(particle_batches(source, batch_size, positions),
                    total=(len(positions) + batch_size - 1) // batch_size, desc=f'reconstruct {label}'.strip(),
                    unit='batch', disable=not rank.is_main)
    return reconstruct(progress, particles.angles, particles.shifts, source.box, size, ctf, ctf_mode, pad, wiener,
                       scale, device, reduce=rank.world_size > 1, halves=halves)


def usable_half_sets(half: Optional[np.ndarray], label: str = '') -> Optional[np.ndarray]:
    """The particle file's half sets (1 or 2 per image), or None (even/odd images) when the file has none or
    when it puts every image of this set in one half (a small group can: a half-map FSC needs both), said on
    stderr."""
    if half is None or len(half) < 2 or len(np.unique(half)) > 1:
        return half
    print(f'deephemnma: {label or "reconstruction"}: its {len(half)} images all lie in half set {int(half[0])} of '
          'the particle file: half maps from even and odd images instead', file=sys.stderr)
    return None


#: The files of one reconstruction NAME: NAME + each suffix.
MAP_SUFFIXES = ('.mrc', '_half1.mrc', '_half2.mrc', '_fsc.json', '_fsc.png')


def write_reconstruction(folder: Path, name: str, result: Reconstruction, reference: Optional[np.ndarray]) -> dict:
    """Maps, half maps, FSC JSON and plot of one reconstruction; returns the FSC summary."""
    write_map(folder / f'{name}.mrc', result.volume, result.pixel_size)
    for half, volume in enumerate(result.half_maps, start=1):
        write_map(folder / f'{name}_half{half}.mrc', volume, result.pixel_size)
    curves = {'half maps': result.half_map_fsc()}
    if reference is not None:
        curves['vs reference'] = fsc(result.volume, reference, result.pixel_size)
    summary = {'images': result.count, 'pixel_size': result.pixel_size, 'half_sets': result.half_sets,
               **{key.replace(' ', '_'): curve.as_dict() for key, curve in curves.items()}}
    with atomic_path(folder / f'{name}_fsc.json', suffix='.json') as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    save_fsc_plot(folder / f'{name}_fsc.png', curves)
    return summary
