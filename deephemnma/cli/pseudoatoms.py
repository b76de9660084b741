"""Convert an EM map into pseudoatoms (3D Gaussians approximating the map to a target error; Jonic 2016).

Writes a pseudoatom PDB (Xmipp layout: atoms DENS, weight in the B-factor column, sigma in a
``REMARK fixedGaussian`` line; coordinates in Angstrom from the map centre) that ``deephemnma nma`` accepts,
and optionally the map of the pseudoatom model.

Examples::

    deephemnma pseudoatoms map.mrc -o pseudoatoms.pdb
    deephemnma pseudoatoms map.mrc -o pseudoatoms.pdb --sigma 2.0 --target-error 0.03 --output-map model.mrc
"""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from deephemnma.cli._common import finite_float, positive_float, positive_int, result_settings
from deephemnma.data.images import read_image, write_map
from deephemnma.molecule.pseudoatoms import (
    DEFAULT_SIGMA_VOXELS,
    DEFAULT_TARGET_ERROR,
    map_correlation,
    map_to_pseudoatoms,
)
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.machine import resolve_device
from deephemnma.runtime.outputs import Outputs, check_apart


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('map', help='cubic 3D map (MRC, or SPIDER .vol)')
    parser.add_argument('-o', '--output', required=True, help='pseudoatom PDB (or .cif) to write')
    parser.add_argument('--sigma', type=positive_float, help=f'Gaussian standard deviation in Angstrom '
                                                    f'(default {DEFAULT_SIGMA_VOXELS} voxel)')
    parser.add_argument('--target-error', type=positive_float, default=DEFAULT_TARGET_ERROR,
                        help='relative L2 approximation error to reach (default 0.05)')
    parser.add_argument('--threshold', type=finite_float, help='map value below which no pseudoatom is seeded '
                                                        '(default 5%% of the maximum)')
    parser.add_argument('--max-atoms', type=positive_int, default=50000)
    parser.add_argument('--pixel-size', type=positive_float,
                        help='voxel size in Angstrom (default: from the map header)')
    parser.add_argument('--output-map', help='also write the map of the pseudoatom model (MRC)')
    parser.add_argument('--accept-above-target', action='store_true',
                        help='write the pseudoatoms even when they stop above the target error')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or auto')


def main(args: argparse.Namespace) -> int:
    volume, header_pixel = read_image(args.map)
    pixel_size = args.pixel_size or header_pixel
    if not pixel_size:
        raise InputError(f'{args.map}: the map header gives no voxel size; give it with --pixel-size')
    check_apart([args.output, args.output_map], [args.map])
    bar = tqdm(desc='pseudoatoms', unit=' rounds')

    def progress(count: int, error: float) -> None:
        bar.set_postfix(atoms=count, error=f'{error:.4f}')
        bar.update(1)

    pseudo = map_to_pseudoatoms(volume, pixel_size, sigma=args.sigma, target_error=args.target_error,
                                threshold=args.threshold, max_atoms=args.max_atoms,
                                device=str(resolve_device(args.device)), progress=progress)
    bar.close()
    if pseudo.relative_error > args.target_error and not args.accept_above_target:
        raise InputError(f'{args.map}: {len(pseudo)} pseudoatoms reach a relative error of '
                         f'{pseudo.relative_error:.4f}, above the target {args.target_error}; raise --max-atoms, '
                         'lower --sigma or --threshold, or pass --accept-above-target to keep them')
    if pseudo.relative_error > args.target_error:
        print(f'warning: {len(pseudo)} pseudoatoms stop at a relative error of {pseudo.relative_error:.4f}, above '
              f'the target {args.target_error}', file=sys.stderr)
    model = pseudo.to_map(volume.shape[0], pixel_size)
    with Outputs(args.output, 'pseudoatoms', [args.map], result_settings(args), single_file=True) as outputs:
        pseudo.write(outputs.path())
        if args.output_map:
            write_map(args.output_map, model, pixel_size)
        outputs.commit()
    print(f'{len(pseudo)} pseudoatoms (sigma {pseudo.sigma:.2f} A), relative error {pseudo.relative_error:.4f}, '
          f'map correlation {map_correlation(volume, model):.4f}: {args.output}')
    return 0
