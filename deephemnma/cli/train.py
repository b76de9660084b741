"""Train the DeepHEMNMA network (ResNet + MLP) on particle images with amplitudes, angles and shifts.

The labels come from any particle file (.star, .xmd such as ContinuousFlex's images.xmd, or .csv): this
plugin's HEMNMA alignment, ContinuousFlex's, or the simulator's ground truth. Outliers (Mahalanobis distance of
the amplitudes above --outlier-threshold) are removed, the rest is split by particle into training, validation
and test sets. The output folder receives model.pt (best weights + settings + scaling: all inference needs),
checkpoint_last.pt (resume: run the same command again), loss_history.csv, loss_curves.png, split.npz,
particles_{train,validation,test}.star, test_predictions.star, test_metrics.json and training_summary.json.

Examples::

    deephemnma train -i hemnma/images.xmd -o train_out                      # fast preset, combined network
    deephemnma train -i particles.star -o paper --preset paper --layout separate   # the paper's settings
    deephemnma train -i particles.star -o out --types amplitudes --epochs 100 --batch-size 256
    deephemnma train -i particles.star -o cpu_out --arch resnet18 --network-box 32 --batch-size 64 --epochs 200
    deephemnma simulate ... -o sim && deephemnma train -i sim/particles.star -o pre --epochs 60   # pretraining,
    deephemnma train -i hemnma/images.xmd -o tuned --init-weights pre/model.pt --preset finetune  # then fine-tuning
    torchrun --nproc_per_node=4 -m deephemnma.cli.main train -i particles.star -o out --device cuda
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deephemnma.cli._common import (
    add_contrast_args,
    contrast_decision,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from deephemnma.data.formats import load_particles, write_particles
from deephemnma.data.stacks import ImageSource
from deephemnma.nn import targets as tg
from deephemnma.nn.config import PRESETS, SCHEDULES, TrainConfig, preset_config, result_settings
from deephemnma.nn.evaluate import parameter_errors
from deephemnma.nn.infer import Predictor, labels_to_particles, predict_source
from deephemnma.nn.model import ARCHITECTURES, LAYOUTS, NORMS
from deephemnma.nn.modelfile import MODEL_FILE, load_model
from deephemnma.nn.targets import labels_from_particles
from deephemnma.nn.trainer import run_training
from deephemnma.runtime.distributed import cleanup, start_process
from deephemnma.runtime.files import atomic_path
from deephemnma.runtime.outputs import Outputs


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-i', '--particles', required=True, help='particle file (.star, .cs, .xmd, .csv) with labels')
    parser.add_argument('-o', '--output', required=True, help='output folder (a rerun resumes there)')
    parser.add_argument('--base-dir', help='folder relative image paths start from (default: the particle '
                                           'file\'s folder, then the current folder)')
    parser.add_argument('--pixel-size', type=positive_float, help='pixel size (A) for .xmd files without one')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='fast',
                        help='paper: batch 2, lr 1e-5 /10 every 80 epochs, 400 epochs; fast: batch 128, '
                             'one-cycle, mixed precision on GPU, early stopping (default); finetune: fast, but lr '
                             '1e-4 decaying (cosine), 60 epochs, for --init-weights')
    parser.add_argument('--types', nargs='+', choices=tg.TYPES, default=list(tg.TYPES),
                        help='parameter types to learn (default: all)')
    parser.add_argument('--layout', choices=LAYOUTS, default='combined',
                        help='combined: one trunk, one head per type; separate: one network per type (paper)')
    parser.add_argument('--arch', choices=sorted(ARCHITECTURES), default='resnet34')
    parser.add_argument('--norm', choices=NORMS, default='batch', help='normalisation layers of the ResNet')
    group = parser.add_argument_group('overrides of the preset')
    group.add_argument('--epochs', type=positive_int)
    group.add_argument('--batch-size', type=positive_int, help='global batch size (split among torchrun processes)')
    group.add_argument('--lr', type=positive_float, help='(maximum) learning rate')
    group.add_argument('--schedule', choices=sorted(SCHEDULES))
    group.add_argument('--step-epochs', type=positive_int, help='step schedule: epochs between divisions')
    group.add_argument('--weight-decay', type=finite_float)
    group.add_argument('--dropout', type=finite_float)
    group.add_argument('--patience', type=int, help='early stopping after N epochs without improvement (0: off)')
    group.add_argument('--no-amp', action='store_true',
                       help='no bfloat16 mixed precision (the default on GPUs and on CPUs with bfloat16 units)')
    group.add_argument('--max-rotation', type=finite_float, dest='max_rotation_deg',
                       help='in-plane rotation augmentation (deg; labels rotated consistently; 0: off)')
    group.add_argument('--hypotheses', type=non_negative_int,
                       help='orientation hypotheses learnt beside the orientation (winner-takes-all), the starting '
                            'points of infer --refine (fast preset: 8; paper preset: 0)')
    group.add_argument('--max-translation', type=finite_float, dest='max_translation_px',
                       help='translation augmentation (px; shift labels moved consistently; 0: off)')
    parser.add_argument('--init-weights', metavar='MODEL_PT',
                        help='start from the weights of this model.pt (same network) and train on these labels '
                             '(fine-tuning): e.g. a network trained on images simulated from the same reference, '
                             'modes, CTF, noise and pixel size (deephemnma simulate, then deephemnma train)')
    parser.add_argument('--network-box', type=non_negative_int, default=0,
                        help='image size (px) the network sees: images are Fourier-cropped to it (faster training '
                             'and prediction; shifts stay in the original pixels); 0: the images\' size')
    parser.add_argument('--outlier-threshold', type=finite_float, default=3.2,
                        help='Mahalanobis distance of the amplitudes above which images are removed (0: keep all)')
    parser.add_argument('--validation', type=finite_float, default=0.1, help='validation particles (fraction or count)')
    parser.add_argument('--test', type=finite_float, default=0.1, help='test particles (fraction or count)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--readers', type=non_negative_int, default=2,
                        help='threads reading images ahead when they are streamed from disk (above --ram-limit-gb)')
    parser.add_argument('--ram-limit-gb', type=positive_float, default=8.0, help='copy the images to RAM when they fit')
    add_contrast_args(parser, ctf_option=True)
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda')
    parser.add_argument('--threads', type=positive_int, help='torch CPU threads')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training settings of the command-line arguments."""
    return preset_config(
        args.preset, types=tuple(args.types), arch=args.arch, layout=args.layout, norm=args.norm,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        step_epochs=args.step_epochs, weight_decay=args.weight_decay, dropout=args.dropout,
        patience=args.patience, amp=False if args.no_amp else None, max_rotation_deg=args.max_rotation_deg,
        max_translation_px=args.max_translation_px, hypotheses=args.hypotheses,
        outlier_threshold=args.outlier_threshold,
        network_box=args.network_box, init_weights=args.init_weights,
        validation=args.validation, test=args.test, seed=args.seed, readers=args.readers,
        ram_limit_gb=args.ram_limit_gb)


def evaluate_test_split(output: Path, particles, device: torch.device, invert: bool = False,
                        batch_size: int = 256) -> dict:
    """Predict the held-out test particles with the best model; write them and their errors."""
    split = np.load(output / 'split.npz')
    for name in ('train', 'validation', 'test'):
        write_particles(output / f'particles_{name}.star', particles.subset(split[name]))
    test = particles.subset(split['test'])
    if len(test) == 0:
        return {}
    model = load_model(output / MODEL_FILE, device)
    raw = predict_source(Predictor(model, device), ImageSource(test.image, invert=invert), batch_size, progress=False)
    estimated = tg.decode(raw, model.scaling)
    write_particles(output / 'test_predictions.star', labels_to_particles(test, estimated))
    metrics = parameter_errors(estimated, labels_from_particles(test), model.scaling.amplitude_mean,
                               model.scaling.shift_mean)
    with atomic_path(output / 'test_metrics.json') as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2))
    return metrics


#: The label column each parameter type is learnt from.
LABEL_COLUMNS = {'amplitudes': 'amplitudes', 'orientation': 'angles', 'shifts': 'shifts'}


def main(args: argparse.Namespace) -> int:
    device, rank = start_process(args.threads, args.device)
    try:
        config = config_from_args(args)
        particles = load_particles(args.particles, [LABEL_COLUMNS[t] for t in config.types],
                                   pixel_size=args.pixel_size, base_dir=args.base_dir)
        settings = {**result_settings(config.to_dict()), 'invert_data': args.invert_data}
        with Outputs(args.output, 'train', [args.particles], settings, resumable=True, rank=rank) as outputs:
            contrast = contrast_decision(particles, args.invert_data, args.ctf)
            _, summary = run_training(particles, config, outputs.path(), device, None, rank, not args.quiet,
                                      invert=contrast['inverted'])
            if rank.is_main:
                summary['test_metrics'] = evaluate_test_split(outputs.path(), particles, device, contrast['inverted'])
            outputs.commit()
        if rank.is_main:
            print(json.dumps({'output': str(Path(args.output) / MODEL_FILE), 'epochs_run': summary['epochs_run'],
                              'outliers_removed': summary['outliers_removed'],
                              'split_sizes': summary['split_sizes'], 'test_metrics': summary['test_metrics']}))
    finally:
        cleanup()
    return 0
