"""Ground-truth conformations: normal-mode amplitudes (n, M) for simulated particles.

Amplitudes have the meaning of :mod:`deephemnma.nma.elastic` (unit-norm mode vectors on the model they are
defined on; ``x = x0 + sum_k q_k v_k``). Distributions:

* ``helix`` (the paper's): 3 modes, ``q = scale * (r, sin(pi r), cos(pi r))`` with ``r`` uniform in [0, 1]
  (scale 200: ``q7 = 200 r``, ``q8 = 200 sin(pi r)``, ``q9 = 200 cos(pi r)``); ``r`` is returned as the label.
* ``uniform``: every amplitude uniform in ``[-scale, scale]``.
* ``gaussian``: every amplitude normal with mean 0 and standard deviation ``scale``.
* ``discrete``: one of K given states (rows of ``states``) per image, with probabilities ``weights``
  (default equal), plus optional Gaussian ``jitter``; the state index is returned as the label.
* ``file``: rows of a text/CSV (whitespace or comma separated, ``#`` comments) or ``.npy`` file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from deephemnma.nma.modes import check_amplitude_table
from deephemnma.runtime.errors import InputError

KINDS = ('helix', 'uniform', 'gaussian', 'discrete', 'file')


@dataclass
class Conformations:
    """Amplitudes ``(n, M)`` and a per-image label ``(n,)`` (helix parameter r, state index, or row index)."""

    amplitudes: np.ndarray
    labels: np.ndarray


def helix(count: int, rng: np.random.Generator, num_modes: int = 3, scale: float = 200.0) -> Conformations:
    """The paper's helix path in the space of 3 modes (see the module docstring)."""
    if num_modes != 3:
        raise InputError(f'the helix distribution needs exactly 3 modes, not {num_modes}')
    r = rng.uniform(0.0, 1.0, count)
    amplitudes = scale * np.stack([r, np.sin(np.pi * r), np.cos(np.pi * r)], axis=1)
    return Conformations(amplitudes, r)


def uniform(count: int, rng: np.random.Generator, num_modes: int, scale: float = 200.0) -> Conformations:
    """Independent amplitudes uniform in ``[-scale, scale]``."""
    return Conformations(rng.uniform(-scale, scale, (count, num_modes)), np.zeros(count))


def gaussian(count: int, rng: np.random.Generator, num_modes: int, scale: float = 100.0) -> Conformations:
    """Independent amplitudes normal with mean 0 and standard deviation ``scale``."""
    return Conformations(rng.normal(0.0, scale, (count, num_modes)), np.zeros(count))


def discrete(count: int, rng: np.random.Generator, states: np.ndarray, weights: Optional[Sequence[float]] = None,
             jitter: float = 0.0) -> Conformations:
    """Each image takes one of the ``states`` (K, M) with probabilities ``weights``, plus N(0, jitter^2)."""
    states = np.atleast_2d(np.asarray(states, dtype=np.float64))
    if weights is None:
        probabilities = np.full(len(states), 1.0 / len(states))
    else:
        probabilities = np.asarray(weights, dtype=np.float64)
        if probabilities.shape != (len(states),) or np.any(probabilities < 0) or probabilities.sum() <= 0:
            raise InputError(f'{len(probabilities)} state weights for {len(states)} states (need one '
                             'non-negative weight per state, not all zero)')
        probabilities = probabilities / probabilities.sum()
    labels = rng.choice(len(states), size=count, p=probabilities)
    amplitudes = states[labels] + (rng.normal(0.0, jitter, (count, states.shape[1])) if jitter > 0 else 0.0)
    return Conformations(amplitudes, labels.astype(np.float64))


def read_amplitudes(path: str | os.PathLike, num_modes: Optional[int] = None) -> np.ndarray:
    """Amplitudes (n, M) from a ``.npy`` or text/CSV file; checks the number of columns against ``num_modes``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f'{path}: no such amplitude file')
    try:
        if path.suffix == '.npy':
            values = np.load(path, allow_pickle=False)
        else:
            text = path.read_text().replace(',', ' ')
            rows = [line.split('#')[0].split() for line in text.splitlines()]
            values = np.array([[float(v) for v in row] for row in rows if row])
    except ValueError as error:
        raise InputError(f'{path}: not a table of numbers ({error})') from error
    return check_amplitude_table(values, str(path), num_modes)


def sample(kind: str, count: int, num_modes: int, rng: np.random.Generator, scale: Optional[float] = None,
           states: Optional[np.ndarray] = None, weights: Optional[Sequence[float]] = None, jitter: float = 0.0,
           path: Optional[str] = None) -> Conformations:
    """Amplitudes of ``count`` images from the distribution ``kind`` (one of :data:`KINDS`)."""
    if kind == 'helix':
        return helix(count, rng, num_modes, 200.0 if scale is None else scale)
    if kind == 'uniform':
        return uniform(count, rng, num_modes, 200.0 if scale is None else scale)
    if kind == 'gaussian':
        return gaussian(count, rng, num_modes, 100.0 if scale is None else scale)
    if kind == 'discrete':
        if states is None:
            raise InputError('the discrete distribution needs the states (one amplitude vector per state)')
        states = np.atleast_2d(np.asarray(states, dtype=np.float64))
        if states.shape[1] != num_modes:
            raise InputError(f'states have {states.shape[1]} amplitudes for {num_modes} modes')
        return discrete(count, rng, states, weights, jitter)
    if kind == 'file':
        if path is None:
            raise InputError('the file distribution needs an amplitude file')
        values = read_amplitudes(path, num_modes)
        if len(values) != count:
            raise InputError(f'{path}: {len(values)} rows of amplitudes for {count} images')
        return Conformations(values, np.arange(count, dtype=np.float64))
    raise InputError(f"unknown conformation distribution '{kind}'; choose one of {', '.join(KINDS)}")
