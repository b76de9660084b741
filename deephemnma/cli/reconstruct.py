"""Reconstruct maps (whole set or each group) by direct Fourier inversion with CTF correction, with FSC.

Reads the images of a particle file (.star, .cs, .xmd, .csv) with their poses (Xmipp angles, shifts in pixels),
streams them in batches and writes, per reconstruction, ``NAME.mrc`` (the map, with its pixel size),
``NAME_half1.mrc``/``NAME_half2.mrc`` (the half sets of ``rlnRandomSubset`` or cryoSPARC's split when the file has
them, else even/odd images), ``NAME_fsc.json`` (half-map FSC, and the FSC
against ``--reference`` when given) and ``NAME_fsc.png``. With ``--groups LABELS`` (one label per particle,
-1 for none; from ``deephemnma groups``) one map is made per group (``group_001`` ...). When the images have
another size than the images the poses were estimated on, give ``--pose-box``: shifts are scaled by
``image box / pose box``. With torchrun, each process inserts its share of the batches and the sums are
reduced before the inversion.

Examples::

    deephemnma reconstruct -i aligned.star -o maps/ --ctf phase_flipped
    deephemnma reconstruct -i relion_export.star -o maps/ --ctf full           # contrast detected from the data
    deephemnma reconstruct -i predicted.star -o maps/ --groups groups/labels.txt --reference ref.mrc
    deephemnma reconstruct -i full_size.star -o maps/ --pose-box 128 --device cuda
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

import numpy as np

from deephemnma.cli._common import add_contrast_args, contrast_decision, positive_float, positive_int, result_settings
from deephemnma.data.formats import read_particles
from deephemnma.data.images import read_image, stack_info
from deephemnma.data.stacks import ImageSource
from deephemnma.imaging.ctf import CTF_STATES
from deephemnma.runtime.distributed import cleanup, start_process
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.outputs import Outputs, check_apart
from deephemnma.space.groups import group_members, read_labels
from deephemnma.space.maps import MAP_SUFFIXES, reconstruct_particles, write_reconstruction


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-i', '--particles', required=True, help='particle file with poses (.star, .cs, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--groups', help='group labels, one per particle (deephemnma groups labels.txt)')
    parser.add_argument('--name', default='map', help="base name of the output files without --groups (default "
                                                      "'map': map.mrc, map_half1.mrc, map_fsc.json ...)")
    parser.add_argument('--ctf', choices=CTF_STATES, default='none',
                        help="'full': images carry the CTF; 'phase_flipped': images were phase-flipped; "
                             "'none': no CTF correction")
    parser.add_argument('--pad', type=positive_float, default=1.0, help='padding factor of the Fourier grid (1 or 2)')
    parser.add_argument('--wiener', type=positive_float, default=0.01,
                        help='regularisation: fraction of the mean CTF^2 weight of each shell')
    parser.add_argument('--pose-box', type=positive_int,
                        help='box (pixels) of the images the poses were estimated on')
    parser.add_argument('--reference', help='reference map (.mrc) for an FSC against it')
    parser.add_argument('--base-dir', help="folder relative image paths start from (default: the particle "
                                           "file's folder)")
    parser.add_argument('--pixel-size', type=positive_float,
                        help='pixel size (A) of the images (default: the particle file, then the stack header)')
    parser.add_argument('--batch-size', type=positive_int, default=256, help='images per batch')
    add_contrast_args(parser)
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--threads', type=positive_int, help='torch CPU threads')


def load_inputs(args: argparse.Namespace):
    """The particles (pixel size from --pixel-size, the file or the first stack's header; poses and, with a CTF
    mode, the CTF checked), the jobs ``(name, members)`` and the reference map, all checked before any work."""
    particles = read_particles(args.particles, args.pixel_size)
    particles = particles.resolved(args.base_dir or Path(args.particles).resolve().parent)
    source = ImageSource(particles.image) if len(particles) else None
    if particles.pixel_size is None and source is not None:
        particles.pixel_size = stack_info(source.paths[0]).pixel_size or None
    particles.check(args.particles, ('angles', 'shifts') + (('ctf',) if args.ctf != 'none' else ()), images=True)
    jobs: List[tuple] = [(args.name, np.arange(len(particles)))]
    if args.groups:
        labels = read_labels(args.groups)
        if len(labels) != len(particles):
            raise InputError(f'{args.groups}: {len(labels)} labels for {len(particles)} particles in '
                             f'{args.particles}')
        jobs = [(f'group_{g + 1:03d}', members) for g, members in enumerate(group_members(labels))]
    reference = None
    if args.reference:
        reference = read_image(args.reference)[0]
        if reference.shape != (source.box,) * 3:
            raise InputError(f'{args.reference}: the reference map is {reference.shape} but the images are '
                             f'{source.box} px wide')
    return particles, jobs, reference


def main(args: argparse.Namespace) -> int:
    particles, jobs, reference = load_inputs(args)
    device, rank = start_process(args.threads, args.device)
    inputs = [args.particles, args.groups, args.reference]
    summaries = {}
    try:
        with Outputs(args.output, 'reconstruct', inputs, result_settings(args), rank=rank) as outputs:
            check_apart([outputs.final(f'{name}{suffix}') for name, _ in jobs for suffix in MAP_SUFFIXES], inputs)
            contrast = contrast_decision(particles, args.invert_data, args.ctf)
            for name, members in jobs:
                result = reconstruct_particles(particles.subset(members), '.', args.ctf, args.pad, args.wiener,
                                               args.pose_box, particles.pixel_size, args.batch_size, device, rank,
                                               name, contrast['inverted'])
                if rank.is_main:
                    summary = write_reconstruction(outputs.path(), name, result, reference)
                    summaries[name] = {'images': summary['images'], 'halfmap_fsc0143_angstrom':
                                       summary['half_maps']['resolution_0143_angstrom']}
                    if reference is not None:
                        summaries[name]['reference_fsc05_angstrom'] = \
                            summary['vs_reference']['resolution_05_angstrom']
            outputs.commit()
    finally:
        cleanup()
    if rank.is_main:
        print(json.dumps(summaries))
    return 0
