"""Predict amplitudes, angles and shifts of particle images with a trained DeepHEMNMA model (and refine them).

Streams over stacks of any size (memory-mapped, batched, bfloat16 mixed precision on GPU); finished chunks
are kept beside the output (in its staging folder) so that a killed run, started again with the same inputs and
settings, resumes; with torchrun each process predicts its share of
the chunks and rank 0 writes the output in input order (.star, .xmd or .csv, from the extension).

``--refine`` (predict then refine): the network's own orientation hypotheses (``deephemnma train --hypotheses``),
the orientations of ``--rotations`` in-plane rotated copies of each image (8 by default) and their average are
hypotheses; the HEMNMA engine (the modes given with ``--modes``) searches
the library orientations within ``--search-radius`` degrees of them around the predicted shift, and refines the best
candidates jointly (amplitudes, angles, shifts) at ``--resolutions``; HEMNMA's global search aligns
``--calibration`` particles (evenly spread) to learn what a found pose scores on these images, and every particle
whose refined score lies more than ``--fallback-sigma`` robust deviations below their median (none of the network's
hypotheses led to the pose), or no higher than the refined score of a calibration particle whose pose the guided
search missed (wrong poses scoring as well as right ones elsewhere), is aligned again by it. The output carries the
refined values, the score (NCC), the network's own values (``predicted_angles``, ``predicted_shifts``,
``predicted_amplitudes``), the angle the refinement moved (``refine_change_deg``), ``refine_moved_far`` (1 beyond
``--far-angle``) and ``refine_fallback`` (1 where the global search ran). With ``--other-modes`` (the network
trained on labels of ``deephemnma align --other-modes``), every particle is refined against every reference and keeps
the best score (column ``reference``). Resumable and sharded over torchrun ranks like ``deephemnma align``.

Examples::

    deephemnma infer -m train_out/model.pt -i particles.star -o predicted.star
    deephemnma infer -m model.pt -i images.xmd -o predicted.xmd --batch-size 1024 --device cuda
    deephemnma infer -m model.pt -i particles.star -o predicted.star --rotations 8   # test-time augmentation
    deephemnma infer -m model.pt -i particles.star -o refined.star --refine --modes nma_out/modes.npz --select 7 8 9
    deephemnma infer -m model.pt -i particles.star -o refined.star --refine --modes nma_out/modes.npz \
        --rotations 1 --resolutions 7 7 3.5 --steps 5 10 20 --calibration 32 --nearest-start
        # a pretrained network: faster (PRETRAINED_NETWORK_REFINE)
    deephemnma infer -m model.pt -i particles.star -o refined.star --refine --modes open/modes.npz \
        --other-modes closed/modes.npz --select 7 8 9 --deformation screw
    torchrun --nproc_per_node=8 -m deephemnma.cli.main infer -m model.pt -i big.star -o big_pred.star
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List

import numpy as np
import torch
from tqdm import tqdm

from deephemnma.cli._common import (
    add_contrast_args,
    add_deformation_arg,
    add_global_search_args,
    add_other_modes_args,
    contrast_decision,
    global_search_grid,
    load_other_modes,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    reference_counts,
    result_settings,
)
from deephemnma.data.formats import check_format, load_particles, write_particles
from deephemnma.data.particles import Particles
from deephemnma.data.stacks import ImageSource
from deephemnma.hemnma.aligner import AlignSettings
from deephemnma.hemnma.reference import COARSE_MODELS, reference_from_modes
from deephemnma.hemnma.references import refine_with_references
from deephemnma.hemnma.stack import REFINE_CHUNK, RefineSettings, refine_predictions
from deephemnma.nma.files import load_modes
from deephemnma.nma.modes import NormalModes
from deephemnma.nn import targets as tg
from deephemnma.nn.infer import REFINE_ROTATIONS, Predictor, hypothesis_angles, labels_to_particles, predict_source
from deephemnma.nn.modelfile import TrainedModel, load_model
from deephemnma.nn.targets import labels_from_particles
from deephemnma.runtime.distributed import Rank, cleanup, start_process
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.outputs import Outputs

#: The defaults of --refine.
DEFAULTS = RefineSettings()


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-m', '--model', required=True, help='model.pt written by "deephemnma train"')
    parser.add_argument('-i', '--particles', required=True, help='particle file (.star, .cs, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output particle file (.star, .cs, .xmd, .csv)')
    parser.add_argument('--base-dir', help="folder relative image paths start from (default: the particle "
                                           "file's folder, then the current folder)")
    parser.add_argument('--pixel-size', type=positive_float, help='pixel size (A) for .xmd files without one')
    parser.add_argument('--batch-size', type=positive_int, default=256)
    parser.add_argument('--rotations', type=positive_int,
                        help='average the predictions over this many in-plane rotations of each image '
                             '(test-time augmentation; that many times the network\'s cost; default 1: off, '
                             f'{REFINE_ROTATIONS} with --refine, where each copy is also a hypothesis)')
    parser.add_argument('--chunk-size', type=positive_int, default=16384, help='images per resumable chunk')
    parser.add_argument('--readers', type=non_negative_int, default=2,
                        help='threads reading images ahead of the network')
    add_contrast_args(parser, ctf_option=True)
    refine = parser.add_argument_group('predict then refine')
    refine.add_argument('--refine', action='store_true',
                        help="refine every prediction with the HEMNMA engine, starting from the network's "
                             'hypotheses (needs --modes)')
    refine.add_argument('--modes', help='modes.npz (deephemnma nma) or Xmipp modes.xmd: the modes the network '
                                        'was trained on')
    refine.add_argument('--reference', help='reference structure of a modes.xmd (default: the PDB next to it)')
    refine.add_argument('--select', type=int, nargs='+', help='mode numbers (default: all in the file, 7+)')
    add_other_modes_args(refine, 'refines')
    refine.add_argument('--reference-model', choices=COARSE_MODELS, default='residues2',
                        help='reference as two beads per residue (default), one bead per residue, or all atoms')
    add_deformation_arg(refine)
    refine.add_argument('--search-radius', type=positive_float, default=DEFAULTS.radius,
                        help='search the library orientations within this angle (deg) of each hypothesis')
    refine.add_argument('--shift-radius', type=non_negative_float, default=DEFAULTS.shift_radius,
                        help='search shifts within this many pixels (steps of 1 px) of the predicted shift')
    refine.add_argument('--resolutions', type=positive_float, nargs='+', default=list(DEFAULTS.resolutions),
                        help='refinement stages (Angstrom, coarse to fine)')
    refine.add_argument('--steps', type=positive_int, nargs='+', default=list(DEFAULTS.steps),
                        help='optimisation steps of each refinement stage (the last value for further stages)')
    refine.add_argument('--top-k', type=positive_int, default=DEFAULTS.top_k,
                        help='candidates per image refined at the first stage (its best goes on)')
    refine.add_argument('--far-angle', type=positive_float, default=DEFAULTS.far_angle,
                        help='flag particles whose refined orientation is further than this (deg) from the '
                             "network's (refine_moved_far)")
    refine.add_argument('--fallback-sigma', type=non_negative_float, default=DEFAULTS.fallback_sigma,
                        help='align again by the global search the particles whose refined score lies more than '
                             "this many robust standard deviations below the calibration sample's median score "
                             '(refine_fallback); 0: no global search')
    refine.add_argument('--calibration', type=non_negative_int, default=DEFAULTS.calibration,
                        help='particles aligned by the global search to calibrate the scores of found poses')
    refine.add_argument('--nearest-start', action='store_true',
                        help="search only the library's start conformation nearest to the predicted amplitudes "
                             '(1/8 of the search; for a network whose amplitudes are good, e.g. pretrained)')
    add_global_search_args(refine)
    refine.add_argument('--refine-chunk-size', type=positive_int, default=REFINE_CHUNK,
                        help='images per refinement batch and resumable chunk')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--no-amp', action='store_true', help='full precision on GPU')
    parser.add_argument('--threads', type=positive_int, help='torch CPU threads')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def refine_modes(args: argparse.Namespace, model: TrainedModel) -> List[NormalModes]:
    """The modes of --refine (empty without it; the first: --modes, then each --other-modes), refused with one
    clear error when absent or not as many as the network's amplitudes."""
    if not args.refine:
        if args.other_modes:
            raise InputError('--other-modes are references of the refinement: add --refine (and --modes)')
        return []
    if not args.modes:
        raise InputError('--refine needs the modes the network was trained on (--modes modes.npz)')
    modes = load_modes(args.modes, args.reference, args.select)
    amplitudes = len(model.scaling.amplitude_mean) if 'amplitudes' in model.types else len(modes.numbers)
    if amplitudes != len(modes.numbers):
        raise InputError(f'{args.modes}: {len(modes.numbers)} modes ({list(modes.numbers)}) but the network '
                         f'predicts {amplitudes} amplitudes; choose its modes with --select')
    return [modes] + load_other_modes(args)


def refine(args: argparse.Namespace, modes: List[NormalModes], predicted: Particles, raw: Dict[str, np.ndarray],
           inverted: bool, work_folder, device: torch.device, rank: Rank) -> Particles:
    """Predict then refine: the guided HEMNMA alignment from the network's hypotheses, then the global search for
    the calibration sample and for the particles scoring below what it finds; against every reference of
    ``modes`` (each image keeps the best) when there are several."""
    settings = RefineSettings(radius=args.search_radius, shift_radius=args.shift_radius,
                              resolutions=tuple(args.resolutions), steps=tuple(args.steps), top_k=args.top_k,
                              far_angle=args.far_angle, fallback_sigma=args.fallback_sigma,
                              calibration=args.calibration, nearest_start=args.nearest_start)
    progress = None if args.quiet or not rank.is_main else \
        (lambda chunks: tqdm(chunks, desc='refine (chunks)', unit='chunk'))
    hypotheses = hypothesis_angles(raw, labels_from_particles(predicted))
    search = AlignSettings(**global_search_grid(args), ctf_mode=args.ctf)
    run = dict(chunk_size=args.refine_chunk_size, device=device, rank=rank, progress=progress, invert=inverted)
    if len(modes) > 1:
        return refine_with_references(predicted, hypotheses, modes, args.reference_model, args.deformation,
                                      settings, search, work_folder, **run)
    reference = reference_from_modes(modes[0], args.reference_model, deformation=args.deformation)
    return refine_predictions(predicted, hypotheses, reference, settings, search, work_folder, **run)


def main(args: argparse.Namespace) -> int:
    check_format(args.output)
    device, rank = start_process(args.threads, args.device)
    try:
        model = load_model(args.model)
        rotations = args.rotations or (REFINE_ROTATIONS if args.refine else 1)
        modes = refine_modes(args, model)
        columns = ('ctf',) if args.refine and args.ctf != 'none' else ()
        particles = load_particles(args.particles, columns, pixel_size=args.pixel_size, base_dir=args.base_dir)
        predictor = Predictor(model, device, amp=not args.no_amp, rotations=rotations, keep_hypotheses=args.refine)
        inputs = [args.particles, args.model] + ([args.modes, args.reference, *args.other_modes,
                                                   *args.other_reference] if args.refine else [])
        with Outputs(args.output, 'infer', inputs, result_settings(args), single_file=True, resumable=True,
                     rank=rank) as outputs:
            contrast = contrast_decision(particles, args.invert_data, args.ctf)
            raw = predict_source(predictor, ImageSource(particles.image, invert=contrast['inverted']),
                                 args.batch_size, args.readers,
                                 outputs.work('chunks'), args.chunk_size, rank, not args.quiet)
            result = labels_to_particles(particles, tg.decode(raw, model.scaling))
            if args.refine:
                result = refine(args, modes, result, raw, contrast['inverted'], outputs.work('refine'), device, rank)
            if rank.is_main:
                write_particles(outputs.path(), result, continuousflex_only=True, located_in=outputs.final().parent)
            outputs.commit()
        if rank.is_main:
            summary = {'output': str(args.output), 'images': len(particles), 'types': list(model.types),
                       'contrast': contrast, 'refined': bool(args.refine)}
            if args.refine:
                summary.update(mean_score=float(result.score.mean()),
                               moved_far=int(result.extra['refine_moved_far'].sum()),
                               fallback=int(result.extra['refine_fallback'].sum()),
                               **reference_counts(result, len(modes)))
            print(json.dumps(summary))
    finally:
        cleanup()
    return 0
