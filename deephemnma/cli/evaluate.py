"""Compare estimated parameters (network or HEMNMA) with true or reference ones: the paper's metrics.

Amplitude and shift mean absolute errors (also relative to predicting the mean), the mean angle between the
rotated coordinate axes, the median geodesic angle, and, given the normal modes (a modes .npz of
"deephemnma nma", which holds the reference structure), the RMSD of the reference atoms displaced with
estimated vs true parameters for each parameter type alone. Particles are matched by image location.

Examples::

    deephemnma evaluate -e predicted.star -t simulated/particles.star
    deephemnma evaluate -e predicted.star -t truth.star --modes modes.npz --model train_out/model.pt -o eval.json
    deephemnma evaluate -e predicted.xmd -t hemnma/images.xmd      # network against HEMNMA estimates
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from deephemnma.cli._common import positive_float
from deephemnma.data.formats import read_particles
from deephemnma.nn.evaluate import parameter_errors, rmsd_errors
from deephemnma.nn.modelfile import load_model
from deephemnma.nn.targets import labels_from_particles
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.runtime.outputs import check_apart


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-e', '--estimated', required=True, help='particle file with estimated parameters')
    parser.add_argument('-t', '--truth', required=True, help='particle file with true (or reference) parameters')
    parser.add_argument('--modes', help='normal modes .npz (with its reference structure) for the RMSD metrics')
    parser.add_argument('--model', help='model.pt: relative errors against its training means')
    parser.add_argument('--pixel-size', type=positive_float, help='pixel size (A) when the files carry none')
    parser.add_argument('-o', '--output', help='write the figures to this JSON file')


def matched(estimated, truth, estimated_path: str):
    """``truth`` reordered to the images of ``estimated`` (every estimated image must be in ``truth``)."""
    position = {name: i for i, name in enumerate(truth.image)}
    missing = [name for name in estimated.image if name not in position]
    if missing:
        raise InputError(f'{estimated_path}: {len(missing)} image(s) absent from the truth file, e.g. {missing[0]}')
    return truth.subset(np.array([position[name] for name in estimated.image], dtype=np.int64))


def main(args: argparse.Namespace) -> int:
    if args.output:
        check_apart([args.output], [args.estimated, args.truth, args.modes, args.model])
    estimated = read_particles(args.estimated, args.pixel_size)
    truth = matched(estimated, read_particles(args.truth, args.pixel_size), args.estimated)
    columns = [name for name in ('angles', 'shifts', 'amplitudes') if getattr(estimated, name) is not None]
    estimated.check(args.estimated, columns)
    truth.check(args.truth, columns)
    amplitude_mean = shift_mean = None
    if args.model:
        scaling = load_model(args.model).scaling
        amplitude_mean, shift_mean = scaling.amplitude_mean, scaling.shift_mean
    est_labels, true_labels = labels_from_particles(estimated), labels_from_particles(truth)
    figures = parameter_errors(est_labels, true_labels, amplitude_mean, shift_mean)
    if args.modes:
        from deephemnma.nma.modes import NormalModes
        modes = NormalModes.load(args.modes)
        vectors = modes.vectors
        if true_labels.amplitudes is not None and true_labels.amplitudes.shape[1] != len(modes):
            raise InputError(f'{args.modes}: {len(modes)} modes but the particles carry '
                             f'{true_labels.amplitudes.shape[1]} amplitudes')
        figures.update(rmsd_errors(est_labels, true_labels, modes.structure.coords, vectors,
                                   args.pixel_size or truth.pixel_size))
    if args.output:
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    return 0
