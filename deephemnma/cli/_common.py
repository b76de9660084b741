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


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    return _number(text, float, math.isfinite, 'is not a finite number')


def result_settings(args: argparse.Namespace, also_ignore: Iterable[str] = ()) -> dict:
    """The options of a command that change its results (its resume fingerprint)."""
    ignored = set(RUN_OPTIONS) | set(also_ignore)
    return {name: value for name, value in sorted(vars(args).items()) if name not in ignored}
