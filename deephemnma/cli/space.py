"""Build the conformational space: reduce amplitudes to 2 or 3 dimensions (PCA by default) and plot it.

Each ``-i`` gives one amplitude set as ``NAME=FILE`` (or just ``FILE``, named after the file): a particle
file with amplitudes (.star, .xmd, .csv) or a plain array (.txt, .npy; one row per image). Sets can be
combined (e.g. predicted and HEMNMA amplitudes); ``--fit-on`` chooses which sets fit the space, the others are
placed in it (PCA, kernel PCA, Isomap, UMAP). Writes to the output folder: ``space.pkl`` (the fitted space,
reloadable, with each point's source), ``coordinates.csv`` (source, index, c1..ck) and plots coloured by
density, source and (for particle files with one) score. ``--transform FILE`` places new amplitudes in an
existing space instead.

Examples::

    deephemnma space -i predicted=predicted.star -o space/
    deephemnma space -i predicted=predicted.star -i hemnma=hemnma.xmd --fit-on hemnma -o space/
    deephemnma space -i amplitudes.txt --method isomap --components 3 -o space_iso/
    deephemnma space --load space/space.pkl --transform new.star -o new_points/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import numpy as np

from deephemnma.cli._common import positive_float, positive_int, result_settings
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.outputs import Outputs
from deephemnma.space.plots import save_space_plot
from deephemnma.space.reduction import METHODS, Space, fit_space, read_amplitude_set


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-i', '--input', action='append', default=[], metavar='[NAME=]FILE',
                        help='amplitude set: particle file (.star/.cs/.xmd/.csv) or array (.txt/.npy); repeatable')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--method', choices=METHODS, default='pca', help='reduction method (default: PCA)')
    parser.add_argument('--components', type=positive_int, default=2, help='dimensions of the space (2 or 3)')
    parser.add_argument('--fit-on', nargs='+', help='names of the sets that fit the space (default: all)')
    parser.add_argument('--standardise', action='store_true', help='scale each mode to unit variance first')
    parser.add_argument('--neighbours', type=positive_int, default=15, help='neighbours (Isomap, spectral, LTSA, UMAP)')
    parser.add_argument('--perplexity', type=positive_float, default=30.0, help='t-SNE perplexity')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--load', help='an existing space.pkl (with --transform)')
    parser.add_argument('--transform', help='amplitudes to place in the loaded space')
    parser.add_argument('--no-plot', action='store_true', help='skip the plots')


def write_plots(folder: Path, space: Space, scores: Dict[str, np.ndarray]) -> None:
    """Density and source plots, and a score plot when every point has a score."""
    save_space_plot(folder / 'space_density.png', space.coords, 'density')
    if len(space.source_names()) > 1:
        save_space_plot(folder / 'space_source.png', space.coords, 'source', sources=space.sources)
    if scores and all(name in scores for name in space.source_names()):
        values = np.array([scores[s][i] for s, i in zip(space.sources, space.source_index)])
        save_space_plot(folder / 'space_score.png', space.coords, 'score', values=values)


def _transform(args: argparse.Namespace) -> int:
    """Place the amplitudes of --transform in the space of --load: ``coordinates.txt``."""
    if not args.transform:
        raise InputError('--load needs --transform FILE (the amplitudes to place in the space)')
    space = Space.load(args.load)
    _, amplitudes, _ = read_amplitude_set(args.transform)
    coords = space.transform(amplitudes)
    with Outputs(args.output, 'space-transform', [args.load, args.transform], result_settings(args)) as outputs:
        np.savetxt(outputs.path('coordinates.txt'), coords, fmt='%.8g')
        outputs.commit()
    print(json.dumps({'points': len(coords), 'method': space.method}))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.load:
        return _transform(args)
    if not args.input:
        raise InputError('give at least one amplitude set with -i [NAME=]FILE')
    sets, scores, files = {}, {}, []
    for spec in args.input:
        name, amplitudes, score = read_amplitude_set(spec)
        if name in sets:
            raise InputError(f"two amplitude sets are named '{name}': name them with NAME=FILE")
        sets[name] = amplitudes
        files.append(spec.rpartition('=')[2])
        if score is not None:
            scores[name] = score
    with Outputs(args.output, 'space', files, result_settings(args)) as outputs:
        space = fit_space(sets, args.method, args.components, args.fit_on, args.standardise, args.neighbours,
                          args.perplexity, args.seed)
        space.save(outputs.path('space.pkl'))
        space.write_coordinates(outputs.path('coordinates.csv'))
        if not args.no_plot:
            write_plots(outputs.path(), space, scores)
        outputs.commit()
    summary = {'points': len(space), 'method': space.method, 'components': space.n_components,
               'sources': {name: int((space.sources == name).sum()) for name in space.source_names()}}
    ratio = getattr(space.estimator, 'explained_variance_ratio_', None)
    if ratio is not None:
        summary['explained_variance_ratio'] = [round(float(v), 4) for v in ratio]
    print(json.dumps(summary))
    return 0
