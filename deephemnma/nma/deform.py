"""Deformation along normal modes, x(q) = x0 + sum_k q_k v_k, batched and differentiable (torch).

Shapes: reference coordinates x0 (N, 3) Angstrom, mode vectors (M, N, 3) (unit norm over 3N on the model
they are defined on: see ``deephemnma.nma.elastic``), amplitudes (B, M) -> coordinates (B, N, 3).
This is the one deformation of the project: the simulator, the aligner, the centroids and the animations all
call :func:`deform`. Animations sample amplitudes along a mode (:func:`mode_sweep`), a direction of amplitude
space (:func:`amplitude_path`) or an axis of the conformational space, and are written as multi-model PDB files
(one model per frame) by :func:`write_animation`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from deephemnma.molecule.structure import write_structure
from deephemnma.nma.modes import NormalModes, check_amplitude_table
from deephemnma.runtime.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


def _tensor(value: ArrayLike, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if like is None else value.to(device=like.device, dtype=like.dtype)
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)


def deform(coords: ArrayLike, vectors: ArrayLike, amplitudes: ArrayLike) -> torch.Tensor:
    """Displaced coordinates (B, N, 3) of ``x0 (N, 3) + sum_k q_k v_k`` for amplitudes (B, M) (or (M,) -> (N, 3)).

    Differentiable in all three inputs; numpy inputs are converted (to the dtype/device of ``amplitudes``
    when it is a tensor, else float64 on CPU).
    """
    like = amplitudes if isinstance(amplitudes, torch.Tensor) else None
    q = _tensor(amplitudes, like)
    x0 = _tensor(coords, q)
    v = _tensor(vectors, q)
    if v.ndim != 3 or v.shape[1:] != x0.shape or x0.ndim != 2 or x0.shape[1] != 3:
        raise ValueError(f'shapes: coords {tuple(x0.shape)} must be (N, 3) and vectors {tuple(v.shape)} (M, N, 3)')
    if q.shape[-1] != v.shape[0]:
        raise ValueError(f'{q.shape[-1]} amplitudes per conformation for {v.shape[0]} modes')
    single = q.ndim == 1
    q = q.reshape(-1, v.shape[0])
    out = x0.unsqueeze(0) + torch.einsum('bm,mnk->bnk', q, v)
    return out[0] if single else out


def amplitude_path(direction: ArrayLike, amplitude: float, frames: int) -> np.ndarray:
    """Amplitudes (frames, M) sweeping from ``-amplitude`` to ``+amplitude`` along ``direction`` (normalised);
    with an odd number of frames the middle frame is the reference."""
    d = np.asarray(direction, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(d)
    if norm == 0:
        raise InputError('the animation direction is zero')
    if frames < 2:
        raise InputError(f'an animation needs at least 2 frames, not {frames}')
    steps = np.linspace(-amplitude, amplitude, frames)
    return steps[:, None] * (d / norm)[None, :]


def mode_direction(num_modes: int, index: int) -> np.ndarray:
    """The unit direction of mode ``index`` (0-based position) in an amplitude space of ``num_modes``."""
    direction = np.zeros(num_modes)
    direction[index] = 1.0
    return direction


def mode_sweep(modes: NormalModes, number: int, amplitude: float, frames: int = 11) -> np.ndarray:
    """Amplitudes (frames, M) sweeping mode ``number`` (Xmipp numbering) of ``modes`` from ``-amplitude`` to
    ``+amplitude`` (InputError for a mode that was not computed)."""
    numbers = [int(n) for n in modes.numbers]
    if int(number) not in numbers:
        raise InputError(f'mode {number} was not computed (available: {", ".join(map(str, numbers))})')
    return amplitude_path(mode_direction(len(numbers), numbers.index(int(number))), amplitude, frames)


def deformed_coordinates(modes: NormalModes, amplitudes: ArrayLike) -> np.ndarray:
    """Coordinates ``(n, N, 3)`` Angstrom of ``modes.structure`` deformed by each amplitude row (:func:`deform`)."""
    with torch.no_grad():
        table = check_amplitude_table(np.atleast_2d(np.asarray(amplitudes, dtype=np.float64)),
                                      'amplitudes (select the modes they were estimated with)', len(modes))
        return deform(modes.structure.coords, modes.vectors, table).numpy()


def write_animation(path: str | os.PathLike, modes: NormalModes, amplitudes: ArrayLike) -> np.ndarray:
    """A multi-model PDB/mmCIF of ``modes.structure`` deformed by each amplitude row (one model per frame);
    returns the coordinates ``(frames, N, 3)``."""
    coordinates = deformed_coordinates(modes, amplitudes)
    write_structure(path, modes.structure, models=coordinates)
    return coordinates
