"""Helpers the commands share (not a command: the name starts with an underscore)."""
from __future__ import annotations

import argparse
import math
from typing import Callable, Iterable

#: Options that change how a command runs, not what it computes (left out of its resume fingerprint).
RUN_OPTIONS = ('threads', 'quiet', 'readers', 'device', 'ram_limit_gb', '_command')


def _number(text: str, convert: Callable[[str], float], valid: Callable[[float], bool], requirement: str):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a {"whole number" if convert is int else "number"}') \
            from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f'{text} {requirement}')
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _number(text, int, lambda v: v >= 1, 'must be at least 1')


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    return _number(text, int, lambda v: v >= 0, 'must not be negative')


def positive_float(text: str) -> float:
    """An argparse type: a finite number greater than 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, 'must be a positive number')


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, 'must be a non-negative number')


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    return _number(text, float, math.isfinite, 'is not a finite number')


def result_settings(args: argparse.Namespace, also_ignore: Iterable[str] = ()) -> dict:
    """The options of a command that change its results (its resume fingerprint)."""
    ignored = set(RUN_OPTIONS) | set(also_ignore)
    return {name: value for name, value in sorted(vars(args).items()) if name not in ignored}


def add_global_search_args(parser) -> None:
    """``--angular-step``, ``--shift-range``, ``--shift-step``: the grid of the engine's global search (its library
    of orientations; ``deephemnma align`` and the calibration sample and fallbacks of ``deephemnma infer
    --refine``, whose guided search also picks its orientations from that library)."""
    from deephemnma.hemnma.aligner import AlignSettings
    parser.add_argument('--angular-step', type=positive_float, default=AlignSettings.angular_step,
                        help='global search step (degrees)')
    parser.add_argument('--shift-range', type=finite_float, default=AlignSettings.shift_range,
                        help='global search shifts +- (pixels)')
    parser.add_argument('--shift-step', type=positive_float, default=AlignSettings.shift_step,
                        help='global search shift step (pixels)')


def global_search_grid(args: argparse.Namespace) -> dict:
    """The :class:`~deephemnma.hemnma.aligner.AlignSettings` fields of :func:`add_global_search_args`' options."""
    return dict(angular_step=args.angular_step, shift_range=args.shift_range, shift_step=args.shift_step)


def add_deformation_arg(parser: argparse.ArgumentParser) -> None:
    """``--deformation``: how amplitudes move the reference (:mod:`deephemnma.nma.deform`)."""
    from deephemnma.nma.deform import DEFAULT_DEFORMATION, DEFORMATIONS
    parser.add_argument('--deformation', choices=DEFORMATIONS, default=DEFAULT_DEFORMATION,
                        help="how amplitudes move the reference: 'linear' (default) adds the mode vectors (Xmipp's "
                             "and ContinuousFlex's model; amplitudes exchangeable with them); 'screw' turns each "
                             "neighbourhood by the true rotation its modes start, so large motions (a domain "
                             "closing by tens of degrees) keep their geometry (better on a real open-to-closed "
                             "transition, worse on motions that really are linear; see the README). Both agree for "
                             "small amplitudes; use the same model in align and animate")


def add_other_modes_args(parser, what: str) -> None:
    """``--other-modes`` and ``--other-reference``: more references of the molecule (``what``: the step they
    join, for the help text)."""
    parser.add_argument('--other-modes', nargs='+', default=[],
                        help='modes of other conformations of the molecule (e.g. the closed structure; modes.npz or '
                             f'modes.xmd, the same --select): {what} every image against every reference and keeps '
                             'the best score (column "reference": 0 --modes, k the k-th of these); amplitudes are '
                             "given in --modes' modes (least squares). For motions beyond one structure's modes "
                             '(bench transition)')
    parser.add_argument('--other-reference', nargs='+', default=[],
                        help='reference structures of --other-modes modes.xmd files, in the same order')


def load_other_modes(args: argparse.Namespace) -> list:
    """The modes of each ``--other-modes`` file (``--select``), with its ``--other-reference`` structure (None:
    found beside it or inside it); InputError when there are not as many structures as files."""
    from deephemnma.nma.files import load_modes
    from deephemnma.runtime.errors import InputError
    if args.other_reference and len(args.other_reference) != len(args.other_modes):
        raise InputError(f'{len(args.other_reference)} --other-reference for {len(args.other_modes)} --other-modes: '
                         'give one structure per modes file, in the same order')
    structures = args.other_reference or [None] * len(args.other_modes)
    return [load_modes(path, structure, args.select) for path, structure in zip(args.other_modes, structures)]


def reference_counts(result, references: int) -> dict:
    """``images_per_reference`` (JSON summary) of a result with the column ``reference``; empty without it."""
    import numpy as np
    if 'reference' not in result.extra:
        return {}
    return {'images_per_reference': np.bincount(result.extra['reference'].astype(int), minlength=references).tolist()}


def add_contrast_args(parser: argparse.ArgumentParser, ctf_option: bool = False) -> None:
    """``--invert-data`` (and, for commands without their own, ``--ctf``: what the images carry of the CTF)."""
    from deephemnma.imaging.contrast import INVERT_CHOICES
    from deephemnma.imaging.ctf import CTF_STATES
    parser.add_argument('--invert-data', choices=INVERT_CHOICES, default='auto',
                        help="multiply the images by -1: 'auto' decides from the data (RELION and cryoSPARC extract "
                             "with inverted contrast; this project's images show protein positive once the CTF's "
                             "sign is taken out), 'yes' or 'no' say it")
    if ctf_option:
        parser.add_argument('--ctf', choices=CTF_STATES, default='phase_flipped',
                            help='what the images carry of the CTF (used to judge their contrast)')


def contrast_decision(particles, choice: str, ctf_state: str, sample: int = 512) -> dict:
    """Whether the images of ``particles`` are to be inverted (``choice``: --invert-data), with the evidence, said
    on stderr: ``{'inverted': bool, 'evidence': t or None}``."""
    import sys

    import numpy as np

    from deephemnma.data.stacks import ImageSource
    from deephemnma.imaging.contrast import contrast_evidence, describe, is_inverted
    evidence = None
    if choice == 'auto':
        rows = np.unique(np.linspace(0, len(particles) - 1, min(sample, len(particles))).astype(np.int64))
        ctf = particles.ctf()
        evidence = contrast_evidence(ImageSource(particles.image[rows]).read(np.arange(len(rows))),
                                     None if ctf is None else ctf.rows(rows), ctf_state, particles.pixel_size)
    print(f'deephemnma: {describe(choice, evidence)}', file=sys.stderr)
    return {'inverted': is_inverted(choice, evidence), 'evidence': evidence}
