"""Make groups of images in a conformational space: polygons from a file, axis slices, k-means, GMM, density peaks.

Groups are made on the points of the space (``--space``, written by ``deephemnma space``), then reported for the
points of one source (``--source``, default: the first) in that source's order; or on the points of a particle
file whose ``space`` column holds each particle's coordinates (``--points``, as the Scipion protocols write
them). Outputs: ``labels.txt`` (one label per image, 1-based group
numbers written 0-based with -1 for no group), ``centroids.txt`` (mean amplitudes of each group: its centroid
conformation), ``groups.json`` (sizes) and ``groups.png``. With ``--particles`` (the particle file of that
source) each group is also written as a particle subset ``group_001.star`` ...

Examples::

    deephemnma groups --space space/space.pkl --method slices --min-count 900 -o groups/ --particles pred.star
    deephemnma groups --space space/space.pkl --method kmeans --groups 5 -o groups_km/
    deephemnma groups --space space/space.pkl --method polygons --polygons selection.json -o picked/
    deephemnma groups --points particles_in_space.star --method slices --groups 3 --equal-counts -o groups/
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from deephemnma.cli._common import finite_float, positive_int, result_settings
from deephemnma.data.formats import load_particles, read_particles, write_particles
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.outputs import Outputs
from deephemnma.space.groups import (
    AUTOMATIC_METHODS,
    PAPER_MIN_COUNT,
    automatic_labels,
    centroids,
    group_members,
    polygon_labels,
    read_polygons,
    write_labels,
)
from deephemnma.space.plots import save_space_plot
from deephemnma.space.reduction import Space

METHODS = AUTOMATIC_METHODS + ('polygons',)


def add_args(parser: argparse.ArgumentParser) -> None:
    points = parser.add_mutually_exclusive_group(required=True)
    points.add_argument('--space', help='space.pkl written by deephemnma space')
    points.add_argument('--points', help="particle file with a 'space' column (coordinates) and amplitudes")
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--method', choices=METHODS, default='slices', help='how to make the groups')
    parser.add_argument('--polygons', help='JSON polygons (name -> [[x, y], ...]) for --method polygons')
    parser.add_argument('--groups', type=positive_int, help='number of groups (clustering; slices: before merging)')
    parser.add_argument('--axis', type=positive_int, default=1, help='axis to slice (1-based; default: the first)')
    parser.add_argument('--min-count', type=positive_int, default=PAPER_MIN_COUNT,
                        help='minimum images per slice (the paper: about 900)')
    parser.add_argument('--trim', type=finite_float, default=0.0, help='fraction of images left out at each end')
    parser.add_argument('--equal-counts', action='store_true', help='slices of equal counts (quantiles)')
    parser.add_argument('--source', help='source whose images the labels are for (default: the first)')
    parser.add_argument('--particles', help='particle file of that source: write each group as a subset')
    parser.add_argument('--subset-format', choices=('star', 'xmd', 'csv'), default='star')
    parser.add_argument('--seed', type=int, default=0)


def _read_polygons(args: argparse.Namespace) -> Dict[str, np.ndarray]:
    if not args.polygons:
        raise InputError('--method polygons needs --polygons FILE')
    return read_polygons(args.polygons)


@dataclasses.dataclass
class Points:
    """The points groups are made on (``coords``, all of them) and those reported (rows ``mine``, with their
    ``amplitudes``), ``name`` being their source."""

    coords: np.ndarray
    mine: np.ndarray
    amplitudes: np.ndarray
    name: str


def read_points(args: argparse.Namespace) -> Points:
    """The points of ``--space`` (reported for ``--source``) or of ``--points``."""
    if args.points:
        particles = read_particles(args.points)
        if 'space' not in particles.extra or particles.amplitudes is None:
            raise InputError(f"{args.points}: the particles need a 'space' column (their coordinates in the space) "
                             'and amplitudes')
        coords = np.asarray(particles.extra['space'], dtype=np.float64).reshape(len(particles), -1)
        return Points(coords, np.arange(len(particles)), particles.amplitudes, Path(args.points).stem)
    space = Space.load(args.space)
    source = args.source or space.source_names()[0]
    mine = np.nonzero(space.sources == source)[0]
    if mine.size == 0:
        raise InputError(f"the space has no points from '{source}' (it has: {', '.join(space.source_names())})")
    mine = mine[np.argsort(space.source_index[mine], kind='stable')]
    return Points(space.coords, mine, space.amplitudes[mine], source)


def compute_labels(coords: np.ndarray, args: argparse.Namespace,
                   polygons: Optional[Dict[str, np.ndarray]]) -> np.ndarray:
    """Group labels of every point (``polygons``: those of ``--polygons`` for that method)."""
    if args.method == 'polygons':
        return polygon_labels(coords, list(polygons.values()))
    return automatic_labels(coords, args.method, args.groups, args.axis - 1, args.min_count, args.trim,
                            args.equal_counts, args.seed)


def main(args: argparse.Namespace) -> int:
    points = read_points(args)
    polygons = _read_polygons(args) if args.method == 'polygons' else None
    subsets = None
    if args.particles:
        subsets = load_particles(args.particles, images=False)
        if len(subsets) != len(points.mine):
            raise InputError(f'{args.particles}: {len(subsets)} particles but the space holds {len(points.mine)} '
                             f"points of '{points.name}' (particles and space do not match)")
    labels_all = compute_labels(points.coords, args, polygons)
    labels = labels_all[points.mine]
    members = group_members(labels)
    inputs = [args.space, args.points, args.polygons, args.particles]
    with Outputs(args.output, 'groups', inputs, result_settings(args)) as outputs:
        write_labels(outputs.path('labels.txt'), labels)
        np.savetxt(outputs.path('centroids.txt'), centroids(points.amplitudes, labels), fmt='%.6f',
                   header='mean amplitudes of each group (one row per group)')
        coloured = np.where(labels_all >= 0, labels_all, np.nan)
        save_space_plot(outputs.path('groups.png'), points.coords, 'score', values=np.nan_to_num(coloured, nan=-1.0),
                        title=f'{len(members)} groups ({args.method})', polygons=polygons)
        for number, indices in enumerate(members, start=1) if subsets is not None else []:
            write_particles(outputs.path(f'group_{number:03d}.{args.subset_format}'), subsets.subset(indices),
                            located_in=outputs.final().resolve())
        summary = {'method': args.method, 'source': points.name, 'groups': [int(len(m)) for m in members],
                   'unassigned': int((labels < 0).sum())}
        outputs.path('groups.json').write_text(json.dumps(summary, indent=1))
        outputs.commit()
    print(json.dumps(summary))
    return 0
