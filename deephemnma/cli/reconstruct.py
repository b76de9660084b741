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
from typing import List

import numpy as np

from deephemnma.data.formats import read_particles
from deephemnma.data.images import read_image
from deephemnma.runtime.distributed import cleanup, start_process
from deephemnma.runtime.errors import InputError
from deephemnma.space.groups import group_members, read_labels
from deephemnma.space.maps import check_particles, reconstruct_particles, write_reconstruction
from deephemnma.space.reconstruct import CTF_MODES


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-i', '--particles', required=True, help='particle file with poses (.star, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--groups', help='group labels, one per particle (deephemnma groups labels.txt)')
    parser.add_argument('--name', default='map', help="base name of the output files without --groups (default "
                                                      "'map': map.mrc, map_half1.mrc, map_fsc.json ...)")
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


def main(args: argparse.Namespace) -> int:
    source = Path(args.particles)
    particles = read_particles(source, args.pixel_size)
    check_particles(particles, str(source))
    base_dir = Path(args.base_dir) if args.base_dir else source.parent
    device, rank = start_process(args.threads, args.device)
    reference = read_image(args.reference)[0] if args.reference else None
    folder = Path(args.output)
    jobs: List[tuple] = [(args.name, np.arange(len(particles)))]
    if args.groups:
        labels = read_labels(args.groups)
        if len(labels) != len(particles):
            raise InputError(f'{args.groups}: {len(labels)} labels for {len(particles)} particles in {source}')
        jobs = [(f'group_{g + 1:03d}', members) for g, members in enumerate(group_members(labels))]
    summaries = {}
    try:
        for name, members in jobs:
            result = reconstruct_particles(particles.subset(members), base_dir, args.ctf, args.pad, args.wiener,
                                           args.pose_box, args.pixel_size, args.batch_size, device, rank, name)
            if rank.is_main:
                summary = write_reconstruction(folder, name, result, reference)
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
