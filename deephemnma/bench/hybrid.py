"""Predict then refine against HEMNMA's global search, on the demo's images, in one run.

The demo's data (``deephemnma simulate``'s path: all-atom 4AKE chain A on the paper's helix over modes 7-9, uniform
orientations, shifts <= 2.5 px, CTF 200 kV / Cs 2 mm / 0.5 um phase-flipped, SNR 0.1 on images of 256 px of 0.325 A
Fourier-cropped to 64 px of 1.3 A) are split in halves. HEMNMA's global search (the two-beads-per-residue reference)
labels the first half; the network (the demo's: ResNet-18 on 32 px, 128 per batch), first trained on 10,000 images
simulated the same way with another seed and their true labels (``--pretrain``; 60 epochs), learns those labels
(fine-tuning: ``deephemnma train --init-weights --preset finetune``, 60 epochs; without pretraining, 120 epochs of the
fast preset as in the demo); the second
half is (1) aligned by the global search, (2) predicted by the network alone, (3) predicted then refined
(``deephemnma infer --refine``: the network's 8 orientation hypotheses and its orientation - after a pretraining,
of the image alone, with :data:`~deephemnma.hemnma.stack.PRETRAINED_NETWORK_REFINE`'s stages, steps, calibration
sample and nearest start conformation; else of 8 in-plane rotated copies and their average, with the defaults -,
the global search for a calibration sample and the outliers of the refined scores included), each scored against
the ground truth. CPU times (process time, all threads) per particle leave out the engine's library, built
once before (1) and shared by (1) and (3).

Figures: ``hemnma_*``, ``network_*``, ``refined_*`` (``amp_mae``, ``angle_median_deg``, ``shift_mae_px``,
``frac_within_15``; the network's are for its orientation, not its hypotheses, averaged over ``--rotations``
copies), ``refine_start_*`` (the same for the prediction the refinement starts from, of ``--refine-rotations``
copies), ``refined_*_over_hemnma``,
``refine_cpu_time_over_global``, ``network_coverage`` (fraction of particles with a hypothesis within the search
radius of the truth), ``moved_far``, ``fallback`` (particles aligned again by the global search: outlier refined
scores), times of each stage.

Examples::

    deephemnma bench hybrid
    deephemnma bench hybrid --count 1600 --epochs 60 --workdir hybrid_work   # smaller; kept to resume
    deephemnma bench hybrid --count 1600 --epochs 60 --workdir hybrid_work --radius 30 --top-k 1
    deephemnma bench hybrid --count 1600 --epochs 60 --hypotheses 0 --workdir no_hypotheses   # the copies alone
    deephemnma bench hybrid --pretrain 0                                    # the HEMNMA labels alone
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from deephemnma.bench import work_folder
from deephemnma.data.formats import load_particles
from deephemnma.data.particles import Particles
from deephemnma.data.stacks import ImageSource
from deephemnma.hemnma.aligner import Aligner, AlignSettings
from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.hemnma.stack import PRETRAINED_NETWORK_REFINE, RefineSettings, align_particles, refine_predictions
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg
from deephemnma.nma.files import load_modes
from deephemnma.nn.config import TrainConfig, preset_config
from deephemnma.nn.evaluate import parameter_errors
from deephemnma.nn.infer import (
    REFINE_ROTATIONS,
    Predictor,
    hypothesis_angles,
    labels_to_particles,
    own_hypotheses,
    predict_source,
)
from deephemnma.nn.modelfile import MODEL_FILE, TrainedModel, load_model
from deephemnma.nn.targets import decode, labels_from_particles, true_labels_from_particles
from deephemnma.nn.trainer import run_training
from deephemnma.simulate.config import SimulationConfig
from deephemnma.simulate.dataset import TRUTH_NAME, simulate_to_disk, truth_columns

#: The demo's simulation (the synthetic_ak template's defaults).
DEMO_SIMULATION = dict(box=64, pixel_size=1.3, max_shift=2.5, ctf=True, voltage=200.0, cs=2.0, defocus_min=5000.0,
                       defocus_max=5000.0, snr=0.1, snr_grid='simulation', phase_flip=True, oversampling=4)
#: Epochs of the fast preset on the HEMNMA labels from random weights (the demo's); after a pretraining, the
#: finetune preset's.
SCRATCH_EPOCHS = 120


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--count', type=int, default=3000, help='particles (half labelled, half held out)')
    parser.add_argument('--epochs', type=int, help='epochs on the HEMNMA labels (default: 60 of the finetune '
                                                   'preset after a pretraining; 120 of the fast preset without, '
                                                   'as the demo)')
    parser.add_argument('--arch', default='resnet18', help='feature extractor (the demo: resnet18)')
    parser.add_argument('--network-box', type=int, default=32, help='network input size (px; the demo: 32)')
    parser.add_argument('--pretrain', type=int, default=10000,
                        help='images simulated like the data (another seed) that the network learns first, with '
                             'their true labels, before the HEMNMA labels (fine-tuning; 0: none)')
    parser.add_argument('--pretrain-epochs', type=int, default=60, help='epochs of the pretraining')
    defaults = RefineSettings()
    parser.add_argument('--hypotheses', type=int, help='orientation hypotheses the network learns (the fast '
                                                          "preset's 8; 0: none)")
    parser.add_argument('--rotations', type=int, default=REFINE_ROTATIONS,
                        help='in-plane copies whose predictions the network alone averages (network_* figures)')
    parser.add_argument('--refine-rotations', type=int,
                        help='in-plane copies predicted for the refinement, each a hypothesis (their average '
                             'another; refine_start_* figures); default: 1 after a pretraining (the pretrained '
                             'network needs no copies there), else --rotations')
    parser.add_argument('--radius', type=float, default=defaults.radius, help='search radius (deg)')
    parser.add_argument('--resolutions', type=float, nargs='+',
                        help='refinement stages (A; default: after a pretraining '
                             f'{list(PRETRAINED_NETWORK_REFINE.resolutions)}, else {list(defaults.resolutions)})')
    parser.add_argument('--steps', type=int, nargs='+',
                        help='optimisation steps of each refinement stage (default: after a pretraining '
                             f'{list(PRETRAINED_NETWORK_REFINE.steps)}, else {list(defaults.steps)})')
    parser.add_argument('--calibration', type=int,
                        help='particles aligned by the global search to calibrate the scores (default: after a '
                             f'pretraining {PRETRAINED_NETWORK_REFINE.calibration}, else {defaults.calibration})')
    parser.add_argument('--nearest-start', action=argparse.BooleanOptionalAction,
                        help="search only the library's start conformation nearest to the predicted amplitudes "
                             f'(default: after a pretraining {PRETRAINED_NETWORK_REFINE.nearest_start}, else '
                             f'{defaults.nearest_start})')
    parser.add_argument('--shift-radius', type=float, default=defaults.shift_radius,
                        help='search shifts within this many pixels of the predicted shift')
    parser.add_argument('--top-k', type=int, default=defaults.top_k,
                        help='candidates per image refined at the first stage (its best goes on)')
    parser.add_argument('--fallback-sigma', type=float, default=defaults.fallback_sigma,
                        help='global search below the median refined score minus this many robust sigmas (0: never)')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: all usable cores)')
    parser.add_argument('--workdir', help='keep the data, the labels and the model here (a rerun reuses them and '
                                          'measures the held-out stages afresh)')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    with work_folder(args.workdir, 'hybrid') as folder:
        return _measure(args, folder)


def _errors(particles: Particles) -> Dict[str, float]:
    """The paper's errors against the simulator's truth, and the fraction of poses within 15 degrees."""
    truth = true_labels_from_particles(particles)
    figures = parameter_errors(labels_from_particles(particles), truth)
    angles = geodesic_angle_deg(euler_to_matrix(particles.angles), euler_to_matrix(truth.angles))
    return {'amp_mae': figures['amp_mae'], 'angle_median_deg': figures['angle_median_deg'],
            'shift_mae_px': figures['shift_mae_px'], 'frac_within_15': float((angles < 15).mean())}


def _coverage(hypotheses: np.ndarray, particles: Particles, radius: float) -> float:
    """Fraction of particles with a hypothesis (n, H, 3) within ``radius`` degrees of the true orientation."""
    truth = euler_to_matrix(particles.extra['true_angles'])[:, None]
    return float((geodesic_angle_deg(euler_to_matrix(hypotheses), truth).min(axis=1) < radius).mean())


def _predict(model: TrainedModel, particles: Particles, rotations: int,
             device: torch.device) -> Tuple[Particles, np.ndarray]:
    """The network's predictions for ``particles`` (averaged over ``rotations`` in-plane copies) and its
    orientation hypotheses (n, H, 3) Euler angles (deg)."""
    predictor = Predictor(model, device, rotations=rotations, keep_hypotheses=True)
    raw = predict_source(predictor, ImageSource(particles.image), 256, progress=False)
    predicted = labels_to_particles(particles, decode(raw, model.scaling))
    return predicted, hypothesis_angles(raw, labels_from_particles(predicted))


def _measure(args: argparse.Namespace, folder: Path) -> dict:
    """The benchmark's figures, with its data and outputs in ``folder``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device('cpu')
    times: Dict[str, float] = {}
    clock = time.time()
    simulate_to_disk(SimulationConfig(count=args.count, seed=args.seed, **DEMO_SIMULATION), folder / 'simulation')
    particles = load_particles(folder / 'simulation' / 'particles.star', ('ctf',))
    particles.extra.update(truth_columns(np.load(folder / 'simulation' / TRUTH_NAME)))
    times['simulate_s'] = time.time() - clock
    half = len(particles) // 2
    labelled, heldout = particles.subset(np.arange(half)), particles.subset(np.arange(half, len(particles)))
    reference = reference_from_modes(load_modes(folder / 'simulation' / 'modes.npz'), 'residues2')

    clock = time.time()
    labelled = align_particles(labelled, reference, AlignSettings(), folder / 'align_labelled')
    times['hemnma_labels_s'] = time.time() - clock

    Aligner(reference, ImageSource(heldout.image).box, heldout.pixel_size, AlignSettings()).library()  # untimed
    for measured in ('align_heldout', 'refine'):  # timed stages never resume
        shutil.rmtree(folder / measured, ignore_errors=True)
    clock, cpu = time.time(), time.process_time()
    global_result = align_particles(heldout, reference, AlignSettings(), folder / 'align_heldout')
    global_cpu = time.process_time() - cpu
    times['hemnma_heldout_s'] = time.time() - clock

    def training(epochs: Optional[int], init_weights: str = '') -> TrainConfig:
        return preset_config('finetune' if init_weights else 'fast', arch=args.arch, epochs=epochs, batch_size=128,
                             network_box=args.network_box, dropout=0.1, patience=0, test=0.1, seed=args.seed,
                             hypotheses=args.hypotheses, init_weights=init_weights)

    init_weights, model_folder = '', folder / 'model'
    if args.pretrain:
        clock = time.time()
        simulate_to_disk(SimulationConfig(count=args.pretrain, seed=args.seed + 1, **DEMO_SIMULATION),
                         folder / 'pretrain_simulation')
        simulated = load_particles(folder / 'pretrain_simulation' / 'particles.star', ('ctf',))
        run_training(simulated, training(args.pretrain_epochs), folder / 'pretrain', device, progress=False)
        init_weights, model_folder = str(folder / 'pretrain' / MODEL_FILE), folder / 'model_pretrained'
        times['pretrain_s'] = time.time() - clock
    clock = time.time()
    labels_training = training(args.epochs or (None if init_weights else SCRATCH_EPOCHS), init_weights)
    run_training(labelled, labels_training, model_folder, device, progress=False)
    times['train_s'] = time.time() - clock

    chosen = PRETRAINED_NETWORK_REFINE if args.pretrain else RefineSettings()
    refine = RefineSettings(radius=args.radius, shift_radius=args.shift_radius,
                            resolutions=tuple(args.resolutions or chosen.resolutions),
                            steps=tuple(args.steps or chosen.steps), top_k=args.top_k,
                            fallback_sigma=args.fallback_sigma,
                            calibration=chosen.calibration if args.calibration is None else args.calibration,
                            nearest_start=chosen.nearest_start if args.nearest_start is None else args.nearest_start)
    refine_rotations = args.refine_rotations or (1 if args.pretrain else args.rotations)
    clock, cpu = time.time(), time.process_time()
    model = load_model(model_folder / MODEL_FILE, device)
    predicted, hypotheses = _predict(model, heldout, refine_rotations, device)
    predict_cpu = time.process_time() - cpu
    times['predict_s'] = time.time() - clock
    network_alone = (predicted if refine_rotations == args.rotations
                     else _predict(model, heldout, args.rotations, device)[0])
    clock, cpu = time.time(), time.process_time()
    refined = refine_predictions(predicted, hypotheses, reference, refine, AlignSettings(), folder / 'refine')
    refine_cpu = time.process_time() - cpu
    times['refine_s'] = time.time() - clock

    hemnma, network, after = _errors(global_result), _errors(network_alone), _errors(refined)
    figures = {'particles': len(particles), 'labelled': half, 'heldout': len(heldout), 'epochs': labels_training.epochs,
               'pretrain': args.pretrain, 'pretrain_epochs': args.pretrain_epochs if args.pretrain else 0,
               'arch': args.arch, 'network_box': args.network_box, 'hypotheses': own_hypotheses(model),
               'rotations': args.rotations, 'refine_rotations': refine_rotations, 'refine_settings': refine.__dict__,
               **{f'hemnma_{k}': v for k, v in hemnma.items()},
               **{f'network_{k}': v for k, v in network.items()},
               **{f'refine_start_{k}': v for k, v in _errors(predicted).items()},
               **{f'refined_{k}': v for k, v in after.items()}}
    for ratio, name in (('amp_mae', 'amp_mae'), ('angle_median', 'angle_median_deg'), ('shift_mae', 'shift_mae_px')):
        figures[f'refined_{ratio}_over_hemnma'] = after[name] / hemnma[name]
    figures.update(refine_cpu_time_over_global=(predict_cpu + refine_cpu) / global_cpu,
                   cpu_seconds_per_particle={'global': global_cpu / len(heldout),
                                             'predict': predict_cpu / len(heldout),
                                             'refine': refine_cpu / len(heldout)},
                   network_coverage=_coverage(hypotheses, heldout, refine.radius),
                   moved_far=int(refined.extra['refine_moved_far'].sum()),
                   fallback=int(refined.extra['refine_fallback'].sum()), seconds=times)
    return figures
