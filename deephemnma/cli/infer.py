"""Predict amplitudes, angles and shifts of particle images with a trained DeepHEMNMA model.

Streams over stacks of any size (memory-mapped, batched, bfloat16 mixed precision on GPU); finished chunks
are kept beside the output (in its staging folder) so that a killed run, started again with the same inputs and
settings, resumes; with torchrun each process predicts its share of
the chunks and rank 0 writes the output in input order (.star, .xmd or .csv, from the extension).

Examples::

    deephemnma infer -m train_out/model.pt -i particles.star -o predicted.star
    deephemnma infer -m model.pt -i images.xmd -o predicted.xmd --batch-size 1024 --device cuda
    deephemnma infer -m model.pt -i particles.star -o predicted.star --rotations 8   # test-time augmentation
    torchrun --nproc_per_node=8 -m deephemnma.cli.main infer -m model.pt -i big.star -o big_pred.star
"""
from __future__ import annotations

import argparse
import json

from deephemnma.cli._common import (
    add_contrast_args,
    contrast_decision,
    non_negative_int,
    positive_float,
    positive_int,
    result_settings,
)
from deephemnma.data.formats import check_format, load_particles, write_particles
from deephemnma.data.stacks import ImageSource
from deephemnma.nn import targets as tg
from deephemnma.nn.infer import Predictor, labels_to_particles, predict_source
from deephemnma.nn.modelfile import load_model
from deephemnma.runtime.distributed import cleanup, start_process
from deephemnma.runtime.outputs import Outputs


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-m', '--model', required=True, help='model.pt written by "deephemnma train"')
    parser.add_argument('-i', '--particles', required=True, help='particle file (.star, .cs, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output particle file (.star, .cs, .xmd, .csv)')
    parser.add_argument('--base-dir', help="folder relative image paths start from (default: the particle "
                                           "file's folder, then the current folder)")
    parser.add_argument('--pixel-size', type=positive_float, help='pixel size (A) for .xmd files without one')
    parser.add_argument('--batch-size', type=positive_int, default=256)
    parser.add_argument('--rotations', type=positive_int, default=1,
                        help='average the predictions over this many in-plane rotations of each image '
                             '(test-time augmentation; that many times the cost; default 1: off)')
    parser.add_argument('--chunk-size', type=positive_int, default=16384, help='images per resumable chunk')
    parser.add_argument('--readers', type=non_negative_int, default=2,
                        help='threads reading images ahead of the network')
    add_contrast_args(parser, ctf_option=True)
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--no-amp', action='store_true', help='full precision on GPU')
    parser.add_argument('--threads', type=positive_int, help='torch CPU threads')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def main(args: argparse.Namespace) -> int:
    check_format(args.output)
    device, rank = start_process(args.threads, args.device)
    try:
        particles = load_particles(args.particles, pixel_size=args.pixel_size, base_dir=args.base_dir)
        model = load_model(args.model)
        predictor = Predictor(model, device, amp=not args.no_amp, rotations=args.rotations)
        inputs = [args.particles, args.model]
        with Outputs(args.output, 'infer', inputs, result_settings(args), single_file=True, resumable=True,
                     rank=rank) as outputs:
            contrast = contrast_decision(particles, args.invert_data, args.ctf)
            raw = predict_source(predictor, ImageSource(particles.image, invert=contrast['inverted']),
                                 args.batch_size, args.readers,
                                 outputs.work('chunks'), args.chunk_size, rank, not args.quiet)
            if rank.is_main:
                estimated = tg.decode(raw, model.scaling)
                write_particles(outputs.path(), labels_to_particles(particles, estimated), continuousflex_only=True,
                                located_in=outputs.final().parent)
            outputs.commit()
        if rank.is_main:
            print(json.dumps({'output': str(args.output), 'images': len(particles), 'types': list(model.types),
                              'contrast': contrast}))
    finally:
        cleanup()
    return 0
