"""Electron atomic scattering factors (Peng et al. 1996; International Tables C, table 4.3.2.2) from gemmi.

``f(s) = sum_i a_i exp(-b_i s^2)`` with ``s = sin(theta)/lambda = 1/(2d)`` (Angstrom^-1), ``a`` in Angstrom and
``b`` in Angstrom^2. In real space one atom's potential is ``sum_i a_i (4 pi / b_i)^(3/2) exp(-4 pi^2 r^2 / b_i)``,
i.e. isotropic Gaussians of variance ``b_i / (8 pi^2)`` (Angstrom^2) per axis and integral ``a_i``; an isotropic
B-factor ``B`` (Debye-Waller factor ``exp(-B s^2)``) adds ``B`` to every ``b_i``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Tuple

import gemmi
import numpy as np

from deephemnma.runtime.errors import InputError

#: Peng's fits cover 0 < s < 2 Angstrom^-1.
S_MAX = 2.0


@lru_cache(maxsize=None)
def _element_parameters(symbol: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    element = gemmi.Element(symbol)
    if element.atomic_number == 0:
        raise InputError(f"unknown chemical element '{symbol}': no electron scattering factor for it")
    return tuple(element.c4322.a), tuple(element.c4322.b)


def gaussian_parameters(elements: Iterable[str], bfactor: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Per-atom Peng coefficients ``(a (N, 5) Angstrom, b (N, 5) Angstrom^2)``; ``bfactor`` (A^2) blurs all."""
    pairs = [_element_parameters(str(e).strip().capitalize()) for e in elements]
    a = np.array([p[0] for p in pairs], dtype=np.float64).reshape(-1, 5)
    b = np.array([p[1] for p in pairs], dtype=np.float64).reshape(-1, 5) + bfactor
    return a, b


def scattering_amplitude(elements: Iterable[str], s: np.ndarray) -> np.ndarray:
    """``f(s)`` (Angstrom) for each element ``(N,)`` at ``s`` (Angstrom^-1): shape ``(N,) + s.shape``."""
    a, b = gaussian_parameters(elements)
    s2 = np.asarray(s, dtype=np.float64)[..., None] ** 2
    return np.stack([np.sum(a_row * np.exp(-b_row * s2), axis=-1) for a_row, b_row in zip(a, b)])


def gaussian_variances(b: np.ndarray) -> np.ndarray:
    """Real-space per-axis variances (Angstrom^2) of the Gaussians with Peng ``b`` coefficients."""
    return np.asarray(b) / (8.0 * np.pi ** 2)
