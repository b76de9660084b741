"""Structures from the space: group centroids (PDB + simulated map) and animations along the space's axes.

``--modes`` is the modes file (``modes.npz`` of ``deephemnma nma``/``simulate``, or an Xmipp ``modes.xmd`` with its
``--reference``; ``--select`` picks the mode numbers the amplitudes belong to). With ``--centroids``
(``centroids.txt`` of ``deephemnma groups``, one row of mean amplitudes per group) writes ``centroid_NNN.pdb``
and, with ``--box``/``--pixel-size``, the map ``centroid_NNN.mrc`` to compare with each group's reconstruction.
With ``--space`` writes, for each ``--axes``, ``axis_N.pdb`` (multi-model: ``--frames`` conformations from
-spread to +spread standard deviations of the axis, mapped back to amplitudes) and ``axis_N.gif`` (projections
at ``--view``). ``--deformation`` must be the model the amplitudes were estimated with (``deephemnma align``'s,
default linear for both).

Examples::

    deephemnma animate --modes modes.npz --space space/space.pkl -o anim/ --axes 1 2
    deephemnma animate --modes modes.npz --centroids groups/centroids.txt --box 128 --pixel-size 0.65 -o anim/
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from deephemnma.cli._common import add_deformation_arg, finite_float, positive_float, positive_int, result_settings
from deephemnma.nma.deform import write_animation
from deephemnma.nma.files import load_modes
from deephemnma.nma.modes import check_amplitude_table
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.outputs import Outputs
from deephemnma.simulate.conformations import read_amplitudes
from deephemnma.space.centroids import (
    axis_amplitudes,
    chimerax_script,
    projection_frames,
    write_centroids,
    write_gif,
    write_map_series,
)
from deephemnma.space.reduction import Space


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--modes', required=True, help='modes.npz (the reference and its modes) or modes.xmd')
    parser.add_argument('--reference', help='reference structure of a modes.xmd (default: the PDB next to it)')
    parser.add_argument('--select', type=int, nargs='+', help='mode numbers of the amplitudes (default: all)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    add_deformation_arg(parser)
    parser.add_argument('--space', help='space.pkl: animate along its axes')
    parser.add_argument('--axes', type=positive_int, nargs='+', default=[1], help='axes to animate (1-based)')
    parser.add_argument('--frames', type=positive_int, default=11, help='conformations per animation')
    parser.add_argument('--spread', type=positive_float, default=2.0, help='animation range in standard deviations')
    parser.add_argument('--centroids', help='centroids.txt of deephemnma groups: one amplitude row per group')
    parser.add_argument('--box', type=positive_int, default=64, help='box (pixels) of the maps and GIF projections')
    parser.add_argument('--pixel-size', type=positive_float, default=1.5, help='pixel size (A) of maps and projections')
    parser.add_argument('--no-maps', action='store_true', help='centroid PDBs only, no simulated maps')
    parser.add_argument('--no-gif', action='store_true', help='no GIF of projections')
    parser.add_argument('--map-series', action='store_true',
                        help='also write the map of every frame of each axis (axis_N_frame_KK.mrc, a series)')
    parser.add_argument('--group-maps', nargs='+', metavar='MAP',
                        help="group maps (e.g. deephemnma reconstruct's group_NNN.mrc) that chimerax.cxc opens with "
                             'their centroids')
    parser.add_argument('--view', type=finite_float, nargs=3, default=[0.0, 90.0, 0.0],
                        help='Euler angles (rot tilt psi, degrees) of the GIF view')


def main(args: argparse.Namespace) -> int:
    modes = load_modes(args.modes, args.reference, args.select).centred()
    if not args.space and not args.centroids:
        raise InputError('nothing to do: give --space (animations) and/or --centroids (group structures)')
    rows = check_amplitude_table(read_amplitudes(args.centroids), args.centroids, len(modes)) \
        if args.centroids else None
    space = Space.load(args.space) if args.space else None
    inputs = [args.modes, args.reference, args.space, args.centroids, *(args.group_maps or [])]
    with Outputs(args.output, 'animate', inputs, result_settings(args)) as outputs:
        if rows is not None:
            box, pixel = (None, None) if args.no_maps else (args.box, args.pixel_size)
            write_centroids(outputs.path(), modes, rows, box, pixel, args.deformation)
        for axis in args.axes if space is not None else []:
            amplitudes = axis_amplitudes(space, axis - 1, args.frames, args.spread)
            coordinates = write_animation(outputs.path(f'axis_{axis}.pdb'), modes, amplitudes, args.deformation)
            if not args.no_gif:
                frames = projection_frames(modes, coordinates, args.box, args.pixel_size, args.view)
                write_gif(outputs.path(f'axis_{axis}.gif'), frames)
            if args.map_series:
                write_map_series(outputs.path(), f'axis_{axis}', modes, amplitudes, args.box, args.pixel_size,
                                 args.deformation)
        names = sorted(str(p.relative_to(outputs.path())) for p in outputs.path().rglob('*')
                       if p.suffix in ('.pdb', '.mrc'))
        names += [os.path.relpath(Path(path).resolve(), outputs.final().resolve()) for path in args.group_maps or []]
        outputs.path('chimerax.cxc').write_text(chimerax_script(names))
        written = outputs.commit()
    print(json.dumps({'written': [str(p) for p in written]}))
    return 0
