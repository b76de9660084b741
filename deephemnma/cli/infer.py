"""Predict amplitudes, angles and shifts of particle images with a trained DeepHEMNMA model.

Streams over stacks of any size (memory-mapped, batched, bfloat16 mixed precision on GPU); finished chunks
are kept in OUTPUT.chunks/ so that a killed run resumes; with torchrun each process predicts its share of
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
import shutil
from pathlib import Path

from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.stacks import ImageSource
from deephemnma.nn import targets as tg
from deephemnma.nn.infer import Predictor, labels_to_particles, predict_source
from deephemnma.nn.modelfile import load_model
from deephemnma.runtime.distributed import cleanup, start_process


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-m', '--model', required=True, help='model.pt written by "deephemnma train"')
    parser.add_argument('-i', '--particles', required=True, help='particle file (.star, .xmd, .csv)')
    parser.add_argument('-o', '--output', required=True, help='output particle file (.star, .xmd, .csv)')
    parser.add_argument('--base-dir', help="folder relative image paths start from (default: the particle "
                                           "file's folder, then the current folder)")
    parser.add_argument('--pixel-size', type=float, help='pixel size (A) for .xmd files without one')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--rotations', type=int, default=1,
                        help='average the predictions over this many in-plane rotations of each image '
                             '(test-time augmentation; that many times the cost; default 1: off)')
    parser.add_argument('--chunk-size', type=int, default=16384, help='images per resumable chunk')
    parser.add_argument('--readers', type=int, default=2, help='threads reading images ahead of the network')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--no-amp', action='store_true', help='full precision on GPU')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--keep-chunks', action='store_true', help='keep OUTPUT.chunks/ after success')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def main(args: argparse.Namespace) -> int:
    device, rank = start_process(args.threads, args.device)
    try:
        particles = read_particles(args.particles, args.pixel_size)
        base_dir = args.base_dir or str(Path(args.particles).resolve().parent)
        model = load_model(args.model)
        predictor = Predictor(model, device, amp=not args.no_amp, rotations=args.rotations)
        work_dir = Path(str(args.output) + '.chunks')
        model_file = Path(args.model).resolve()
        raw = predict_source(predictor, ImageSource(particles.image, base_dir), args.batch_size,
                             args.readers, work_dir, args.chunk_size, rank, not args.quiet,
                             settings={'model': str(model_file), 'model_mtime': model_file.stat().st_mtime,
                                       'particles': str(Path(args.particles).resolve())})
        if rank.is_main:
            estimated = tg.decode(raw, model.scaling)
            write_particles(args.output, labels_to_particles(particles, estimated), continuousflex_only=True)
            if not args.keep_chunks:
                shutil.rmtree(work_dir, ignore_errors=True)
            print(json.dumps({'output': str(args.output), 'images': len(particles), 'types': list(model.types)}))
    finally:
        cleanup()
    return 0
