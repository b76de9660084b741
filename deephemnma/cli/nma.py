"""Normal modes of a structure (elastic network, ANM or RTB): writes a ContinuousFlex-compatible modes folder.

Output folder: ``reference.pdb`` (the atoms the modes are defined on, in the order of the vector lines),
``modes.xmd`` and ``modes/vec.N`` (Xmipp/ContinuousFlex layout, rigid modes 1-6 included and disabled),
``modes.npz`` (everything, for ``deephemnma.nma.modes.NormalModes.load``) and, with ``--animate`` or
``--animate-enabled``, ``animations/mode_NNN.pdb`` (multi-model PDB). Mode vectors have unit norm over the 3N
coordinates of the reference written there (amplitude convention: see ``deephemnma.nma.modes``).

Examples::

    deephemnma nma 4ake.pdb -o modes_ca --chains A --coarse CA --cutoff 10 --modes 10
    deephemnma nma ribosome.cif -o modes_rib --coarse CA+P --rtb-block 20 --cutoff 20 --modes 20
    deephemnma nma pseudoatoms.pdb -o modes_pa --percentile 95 --animate 7 8 --amplitude 100
"""
from __future__ import annotations

import argparse
import time

from deephemnma.cli._common import finite_float, non_negative_int, positive_float, positive_int, result_settings
from deephemnma.molecule.structure import COARSE_LEVELS, coarse_grain, read_structure, write_structure
from deephemnma.nma.deform import mode_sweep, write_animation
from deephemnma.nma.elastic import compute_modes
from deephemnma.nma.files import write_modes
from deephemnma.nma.modes import DEFAULT_COLLECTIVITY_THRESHOLD
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.machine import resolve_device
from deephemnma.runtime.outputs import Outputs


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('structure', help='PDB or mmCIF file (atoms or pseudoatoms)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--chains', nargs='+', help='chains to keep (default: all)')
    parser.add_argument('--coarse', choices=['none', *COARSE_LEVELS], default='none',
                        help='coarse-graining: none (all heavy atoms), CA, or CA+P (also nucleotide P atoms)')
    parser.add_argument('--keep-hydrogens', action='store_true', help='keep hydrogen atoms')
    cutoff = parser.add_mutually_exclusive_group()
    cutoff.add_argument('--cutoff', type=positive_float, default=10.0, help='network radius in Angstrom (default 10)')
    cutoff.add_argument('--percentile', type=positive_float,
                        help='radius as this percentile of nearest-neighbour distances (ContinuousFlex: 95)')
    parser.add_argument('--rtb-block', type=non_negative_int, default=0,
                        help='residues per RTB block (0: full ANM; the paper used 20 for the ribosome)')
    parser.add_argument('--modes', type=positive_int, default=10, help='non-rigid modes to compute (numbers 7, 8, ...)')
    parser.add_argument('--collectivity-threshold', type=finite_float, default=DEFAULT_COLLECTIVITY_THRESHOLD,
                        help='modes below this collectivity are disabled in modes.xmd (default 0.15)')
    parser.add_argument('--solver', choices=['auto', 'dense', 'sparse'], default='auto')
    parser.add_argument('--device', default='cpu', help="eigensolver device: cpu, cuda or auto")
    parser.add_argument('--animate', type=int, nargs='+', metavar='MODE', help='mode numbers to animate')
    parser.add_argument('--animate-enabled', action='store_true',
                        help='animate every mode enabled by the collectivity threshold')
    parser.add_argument('--amplitude', type=positive_float, default=100.0, help='animation amplitude (mode units)')
    parser.add_argument('--frames', type=positive_int, default=11, help='frames per animation')


def main(args: argparse.Namespace) -> int:
    requested = sorted(set(args.animate or []))
    first, last = 7, 6 + args.modes
    outside = [number for number in requested if not first <= number <= last]
    if outside:
        raise InputError(f'--animate {" ".join(map(str, outside))}: only modes {first}-{last} are computed')
    structure = read_structure(args.structure, chains=args.chains, remove_hydrogens=not args.keep_hydrogens)
    if args.coarse != 'none':
        structure = coarse_grain(structure, args.coarse)
    device = str(resolve_device(args.device))
    with Outputs(args.output, 'nma', [args.structure], result_settings(args)) as outputs:
        start = time.perf_counter()
        modes = compute_modes(structure, n_modes=args.modes, cutoff=args.cutoff, percentile=args.percentile,
                              rtb_block_size=args.rtb_block, solver=args.solver, device=device)
        seconds = time.perf_counter() - start
        write_structure(outputs.path('reference.pdb'), structure)
        write_modes(outputs.path(), modes, threshold=args.collectivity_threshold)
        modes.save(outputs.path('modes.npz'))
        animated = requested + ([int(n) for n in modes.numbers[modes.enabled(args.collectivity_threshold)]
                                 if n not in requested] if args.animate_enabled else [])
        for number in animated:
            write_animation(outputs.path(f'animations/mode_{number:03d}.pdb'), modes,
                            mode_sweep(modes, number, args.amplitude, args.frames))
        outputs.commit()
    print(f'{len(structure)} atoms, cutoff {modes.cutoff:.2f} A, {modes.method}'
          f'{f" ({modes.block_size} residues per block)" if modes.block_size else ""}: {len(modes)} modes '
          f'in {seconds:.1f} s')
    print(f'rigid-body eigenvalues (skipped): {", ".join(f"{v:.2e}" for v in modes.rigid_eigenvalues)}')
    for number, value, kappa, on in zip(modes.numbers, modes.eigenvalues, modes.collectivity,
                                        modes.enabled(args.collectivity_threshold)):
        print(f'mode {number:3d}  eigenvalue {value:.6e}  collectivity {kappa:.3f}{"" if on else "  (disabled)"}')
    print(f'modes written to {args.output}' + (f' (animations of modes {animated})' if animated else ''))
    return 0
