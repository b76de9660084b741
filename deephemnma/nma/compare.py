"""Comparisons of normal modes: with other modes (RMSIP) and with a displacement (overlaps, e.g. with the
change between two structures of the same molecule).
"""
from __future__ import annotations

import numpy as np


def rmsip(first: np.ndarray, second: np.ndarray) -> float:
    """Root-mean-square inner product of two sets of modes (M, N, 3) and (K, N, 3): sqrt(sum (a_i.b_j)^2 / M)."""
    a = first.reshape(len(first), -1)
    b = second.reshape(len(second), -1)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.sqrt(np.sum((a @ b.T) ** 2) / len(a)))


def overlaps(vectors: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """|cos| between each mode (M, N, 3) and a displacement (N, 3)."""
    d = displacement.reshape(-1) / np.linalg.norm(displacement)
    v = vectors.reshape(len(vectors), -1)
    return np.abs(v @ d) / np.linalg.norm(v, axis=1)


def cumulative_overlap(vectors: np.ndarray, displacement: np.ndarray) -> float:
    """sqrt(sum of squared overlaps): the fraction of a displacement (N, 3) that orthonormal modes span."""
    return float(np.sqrt(np.sum(overlaps(vectors, displacement) ** 2)))
