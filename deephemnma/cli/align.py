"""HEMNMA alignment: amplitudes, Euler angles, shifts and a score for every particle image.

The reference is the structure the modes are defined on (a ``modes.npz`` of ``deephemnma nma``, or an Xmipp
``modes.xmd`` with its reference PDB), as residue beads (default) or all atoms. Without prior poses a global
search runs first; ``--local-refine`` refines from the poses in the input file. Images are read in chunks (stacks of any
size); finished chunks are kept beside the output (in its staging folder) so that a killed or interrupted run,
started again with the same inputs and settings, resumes with identical results; with torchrun each process aligns
its share of the chunks and rank 0 writes the output in input order. For motions beyond one structure's modes
(a domain closing by tens of degrees), ``--other-modes`` adds references (the other end of the motion, with its
own modes): each image keeps the best of the alignments, amplitudes in the first one's modes
(:mod:`deephemnma.hemnma.references`). ``--walk`` adds references made from the data: after a first alignment,
each reference that a tenth of the images or more took, deformed to the mean fit of the third of those images
farthest from it, with its modes recomputed there (written as ``OUTPUT_walked_K_modes.npz``, K the reference walked
from, for ``deephemnma infer --refine --other-modes``).

Examples::

    deephemnma align -i particles.star --modes nma_out/modes.npz --select 7 8 9 -o aligned.star
    deephemnma align -i images.xmd --modes modes.xmd --reference atoms.pdb -o images_out.xmd --device cuda
    deephemnma align -i aligned.star --modes modes.npz --local-refine -o refined.star
    deephemnma align -i particles.star --modes open/modes.npz --other-modes closed/modes.npz --select 7 8 9 \
        --deformation screw -o aligned.star
    deephemnma align -i particles.star --modes open/modes.npz --walk --deformation screw -o aligned.star
    torchrun --nproc_per_node=4 -m deephemnma.cli.main align -i big.star --modes modes.npz -o big_aligned.star
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from deephemnma.cli._common import (
    add_contrast_args,
    add_deformation_arg,
    add_global_search_args,
    add_other_modes_args,
    contrast_decision,
    finite_float,
    global_search_grid,
    load_other_modes,
    positive_float,
    positive_int,
    reference_counts,
    result_settings,
)
from deephemnma.data.formats import check_format, load_particles, write_particles
from deephemnma.hemnma.aligner import AlignSettings
from deephemnma.hemnma.reference import COARSE_MODELS, reference_from_modes
from deephemnma.hemnma.references import align_walking, align_with_references
from deephemnma.hemnma.stack import align_particles
from deephemnma.imaging.ctf import CTF_STATES
from deephemnma.nma.files import load_modes
from deephemnma.runtime.distributed import cleanup, start_process
from deephemnma.runtime.outputs import Outputs


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-i', '--particles', required=True, help='particle file (.star, .cs, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output particle file (.star, .cs, .xmd, .csv)')
    parser.add_argument('--modes', required=True, help='modes.npz (deephemnma nma) or Xmipp modes.xmd')
    parser.add_argument('--reference', help='reference structure of a modes.xmd (default: the PDB next to it)')
    parser.add_argument('--select', type=int, nargs='+', help='mode numbers to use (default: all in the file, 7+)')
    add_other_modes_args(parser, 'aligns')
    parser.add_argument('--walk', action='store_true',
                        help='align again with references walked from the given ones: each reference that a tenth '
                             'of the images or more took, deformed to the mean fit of the third of those images '
                             'farthest from it, its modes recomputed there (motions beyond the reach of the modes; '
                             'one more alignment per walked reference)')
    parser.add_argument('--walk-cutoff', type=positive_float,
                        help="network radius (A) of the walked references' modes (default: that of the modes walked "
                             'from; needed for Xmipp modes files, which do not record it)')
    parser.add_argument('--model', choices=COARSE_MODELS, default='residues2',
                        help='reference as two beads per residue (main chain, side chain; default), one bead '
                             'per residue, or all atoms with Peng form factors')
    add_deformation_arg(parser)
    parser.add_argument('--base-dir', help="folder relative image paths start from (default: the particle "
                                           "file's folder)")
    parser.add_argument('--pixel-size', type=positive_float, help='pixel size (A) for .xmd files without one')
    parser.add_argument('--local-refine', dest='local', action='store_true',
                        help='refine from the input poses (no global search)')
    parser.add_argument('--ctf', choices=CTF_STATES, default='phase_flipped',
                        help='images are phase-flipped (model x |CTF|), raw (model x CTF) or CTF-free')
    add_contrast_args(parser)
    add_global_search_args(parser)
    parser.add_argument('--start-amplitudes', type=finite_float, nargs='+',
                        help='starting amplitudes of each mode for the global search (all combinations; default '
                             '+- the amplitude of a 2.5 A RMS displacement)')
    parser.add_argument('--top-k', type=positive_int, default=AlignSettings.top_k, help='candidates refined per image')
    parser.add_argument('--resolutions', type=positive_float, nargs='+', default=list(AlignSettings.refine_resolutions),
                        help='refinement stages (Angstrom, coarse to fine)')
    parser.add_argument('--chunk-size', type=positive_int, default=64, help='images per batch and resumable chunk')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--threads', type=positive_int, help='torch CPU threads')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def settings_from_args(args: argparse.Namespace) -> AlignSettings:
    """AlignSettings from the command-line options (refinement steps follow the number of stages)."""
    return AlignSettings(**global_search_grid(args),
                         search_resolution=max(args.resolutions[0], AlignSettings.search_resolution),
                         start_amplitudes=tuple(args.start_amplitudes) if args.start_amplitudes else None,
                         top_k=args.top_k, ctf_mode=args.ctf, **AlignSettings.stages(args.resolutions, args.top_k))


def walked_modes_path(output: str, walked_from: int) -> Path:
    """Where ``--walk`` writes the modes of the reference walked from reference ``walked_from`` (0: --modes, k: the
    k-th --other-modes): ``OUTPUT_walked_K_modes.npz`` beside the output."""
    output = Path(output)
    return output.with_name(f'{output.stem}_walked_{walked_from}_modes.npz')


def main(args: argparse.Namespace) -> int:
    check_format(args.output)
    device, rank = start_process(args.threads, args.device)
    try:
        columns = (('angles', 'shifts') if args.local else ()) + (('ctf',) if args.ctf != 'none' else ())
        particles = load_particles(args.particles, columns, pixel_size=args.pixel_size, base_dir=args.base_dir)
        modes = load_modes(args.modes, args.reference, args.select)
        others = load_other_modes(args)
        inputs = [args.particles, args.modes, args.reference, *args.other_modes, *args.other_reference]
        with Outputs(args.output, 'align', inputs, result_settings(args), single_file=True, resumable=True,
                     rank=rank) as outputs:
            contrast = contrast_decision(particles, args.invert_data, args.ctf)
            progress = None if args.quiet or not rank.is_main else \
                (lambda chunks: tqdm(chunks, desc='align (chunks)', unit='chunk'))
            align = dict(base_dir='.', local=args.local, chunk_size=args.chunk_size, device=device, rank=rank,
                         progress=progress, invert=contrast['inverted'])
            walked = []
            if args.walk:
                result, walked = align_walking(particles, [modes, *others], args.model, args.deformation,
                                               settings_from_args(args), outputs.work('chunks'),
                                               cutoff=args.walk_cutoff, **align)
                if rank.is_main:
                    for walked_from, modes_walked in walked:
                        modes_walked.save(walked_modes_path(args.output, walked_from))
            elif not others:
                reference = reference_from_modes(modes, args.model, deformation=args.deformation)
                result = align_particles(particles, reference, settings_from_args(args), outputs.work('chunks'),
                                         **align)
            else:
                result = align_with_references(particles, [modes, *others], args.model, args.deformation,
                                               settings_from_args(args), outputs.work('chunks'), **align)
            if rank.is_main:
                write_particles(outputs.path(), result, continuousflex_only=True,
                                located_in=outputs.final().parent)
            outputs.commit()
        if rank.is_main:
            print(json.dumps({'output': str(args.output), 'images': len(result),
                              'modes': [int(n) for n in modes.numbers], 'mean_score': float(result.score.mean()),
                              'contrast': contrast, **reference_counts(result, 1 + len(others) + len(walked))}))
    finally:
        cleanup()
    return 0
