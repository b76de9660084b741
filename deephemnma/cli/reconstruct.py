"""Reconstruct maps (whole set or each group) by direct Fourier inversion with CTF correction, with FSC.

Reads the images of a particle file (.star, .xmd, .csv) with their poses (Xmipp angles, shifts in pixels),
streams them in batches and writes, per reconstruction, ``NAME.mrc`` (the map, with its pixel size),
``NAME_half1.mrc``/``NAME_half2.mrc`` (even/odd images), ``NAME_fsc.json`` (half-map FSC, and the FSC
against ``--reference`` when given) and ``NAME_fsc.png``. With ``--groups LABELS`` (one label per particle,
-1 for none; from ``deephemnma groups``) one map is made per group (``group_001`` ...). When the images have
another size than the images the poses were estimated on, give ``--pose-box``: shifts are scaled by
``image box / pose box``. With torchrun, each process inserts its share of the batches and the sums are
reduced before the inversion.

Examples::

    deephemnma reconstruct -i aligned.star -o maps/ --ctf phase_flipped
    deephemnma reconstruct -i predicted.star -o maps/ --groups groups/labels.txt --reference ref.mrc
    deephemnma reconstruct -i full_size.star -o maps/ --pose-box 128 --device cuda
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from tqdm import tqdm

from deephemnma.runtime.distributed import Rank, cleanup, start_process
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.imaging.fsc import fsc
from deephemnma.space.groups import group_members, read_labels
from deephemnma.data.images import read_image, stack_info, write_map
from deephemnma.data.particles import Particles
from deephemnma.data.formats import read_particles
from deephemnma.space.reconstruct import CTF_MODES, Reconstruction, reconstruct
from deephemnma.imaging.ctf import ctf_table
from deephemnma.data.stacks import particle_batches
from deephemnma.runtime.distributed import rank_positions
from deephemnma.space.plots import save_fsc_plot
from deephemnma.data.stacks import ImageSource


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-i', '--particles', required=True, help='particle file with poses (.star, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--groups', help='group labels, one per particle (deephemnma groups labels.txt)')
    parser.add_argument('--ctf', choices=CTF_MODES, default='none',
                        help="'full': images carry the CTF; 'phase_flipped': images were phase-flipped; "
                             "'none': no CTF correction")
    parser.add_argument('--pad', type=float, default=1.0, help='padding factor of the Fourier grid (1 or 2)')
    parser.add_argument('--wiener', type=float, default=0.01,
                        help='regularisation: fraction of the mean CTF^2 weight of each shell')
    parser.add_argument('--pose-box', type=int, help='box (pixels) of the images the poses were estimated on')
    parser.add_argument('--reference', help='reference map (.mrc) for an FSC against it')
    parser.add_argument('--base-dir', help="folder relative image paths start from (default: the particle "
                                           "file's folder)")
    parser.add_argument('--pixel-size', type=float, help='pixel size (A) of the images (default: the stack header)')
    parser.add_argument('--batch-size', type=int, default=256, help='images per batch')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--threads', type=int, help='torch CPU threads')


def _check_particles(particles: Particles, source: str) -> None:
    if len(particles) == 0:
        raise InputError(f'{source}: holds no particle')
    if not particles.has_alignment:
        raise InputError(f'{source}: the particles have no poses (angles and shifts); align them first')


def run_reconstruction(particles: Particles, base_dir: Path, ctf_mode: str, pad: float, wiener: float,
                       pose_box: Optional[int], pixel_size: Optional[float], batch_size: int,
                       device: torch.device, rank: Rank, label: str = '') -> Reconstruction:
    """Reconstruct the given particles (this rank's share of the batches when run under torchrun)."""
    source = ImageSource(particles.image, base_dir)
    size = pixel_size or stack_info(source.paths[0]).pixel_size
    if not size:
        raise InputError(f'{source.paths[0]}: the stack header gives no pixel size; give it with --pixel-size')
    scale = source.box / pose_box if pose_box else 1.0
    ctf = ctf_table(particles) if ctf_mode != 'none' else None
    if ctf_mode != 'none' and ctf is None:
        raise InputError(f"CTF mode '{ctf_mode}' needs defocus values in the particle file")
    positions = rank_positions(len(source), batch_size, rank.rank, rank.world_size)
    progress = tqdm(particle_batches(source, batch_size, positions),
                    total=(len(positions) + batch_size - 1) // batch_size, desc=f'reconstruct {label}'.strip(),
                    unit='batch', disable=not rank.is_main)
    return reconstruct(progress, particles.angles, particles.shifts, source.box, size, ctf, ctf_mode, pad, wiener,
                       scale, device, reduce=rank.world_size > 1)


def write_outputs(folder: Path, name: str, result: Reconstruction, reference: Optional[np.ndarray]) -> dict:
    """Maps, half maps, FSC JSON and plot of one reconstruction; returns the FSC summary."""
    write_map(folder / f'{name}.mrc', result.volume, result.pixel_size)
    for half, volume in enumerate(result.half_maps, start=1):
        write_map(folder / f'{name}_half{half}.mrc', volume, result.pixel_size)
    curves = {'half maps': result.half_map_fsc()}
    if reference is not None:
        if reference.shape != result.volume.shape:
            raise InputError(f'the reference map has shape {reference.shape} but the reconstruction '
                             f'{result.volume.shape}')
        curves['vs reference'] = fsc(result.volume, reference, result.pixel_size)
    summary = {'images': result.count, 'pixel_size': result.pixel_size,
               **{key.replace(' ', '_'): curve.as_dict() for key, curve in curves.items()}}
    with atomic_path(folder / f'{name}_fsc.json', suffix='.json') as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    save_fsc_plot(folder / f'{name}_fsc.png', curves)
    return summary


def main(args: argparse.Namespace) -> int:
    source = Path(args.particles)
    particles = read_particles(source, args.pixel_size)
    _check_particles(particles, str(source))
    base_dir = Path(args.base_dir) if args.base_dir else source.parent
    device, rank = start_process(args.threads, args.device)
    reference = read_image(args.reference)[0] if args.reference else None
    folder = Path(args.output)
    jobs: List[tuple] = [('map', np.arange(len(particles)))]
    if args.groups:
        labels = read_labels(args.groups)
        if len(labels) != len(particles):
            raise InputError(f'{args.groups}: {len(labels)} labels for {len(particles)} particles in {source}')
        jobs = [(f'group_{g + 1:03d}', members) for g, members in enumerate(group_members(labels))]
    summaries = {}
    try:
        for name, members in jobs:
            result = run_reconstruction(particles.subset(members), base_dir, args.ctf, args.pad, args.wiener,
                                        args.pose_box, args.pixel_size, args.batch_size, device, rank, name)
            if rank.is_main:
                summary = write_outputs(folder, name, result, reference)
                summaries[name] = {'images': summary['images'],
                                   'halfmap_fsc0143_angstrom': summary['half_maps']['resolution_0143_angstrom']}
                if reference is not None:
                    summaries[name]['reference_fsc05_angstrom'] = \
                        summary['vs_reference']['resolution_05_angstrom']
    finally:
        cleanup()
    if rank.is_main:
        print(json.dumps(summaries))
    return 0
