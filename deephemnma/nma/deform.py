"""Deformation along normal modes, batched and differentiable (torch): two models, one function.

* ``'linear'`` (the default; Xmipp's and ContinuousFlex's model): ``x_i(q) = x0_i + d_i`` with
  ``d_i = sum_k q_k v_ki``.
* ``'screw'`` (for large motions): each atom follows the screw motion of its neighbourhood,
  ``x_i(q) = x0_i + J(theta_i) d_i`` with ``theta_i = sum_k q_k w_ki``, where ``w_ki`` (radians per unit
  amplitude) is the angular velocity of the rigid motion that best fits mode k's displacements of the atoms
  within :data:`SCREW_RADIUS` of atom i (:func:`local_rotations`), and ``J`` is the left Jacobian of SO(3)
  (``J(theta) = I + (1 - cos t) / t^2 [theta]x + (t - sin t) / t^3 [theta]x^2``, t = |theta|). A domain that
  a mode rotates about a hinge is then turned by the true rotation at every amplitude, where the linear model
  moves its atoms along tangents (it stretches the domain, by about ``r t^2 / 2`` at radius r from the axis).
  Both models are the identity at q = 0 and agree to first order in q; the amplitudes keep their meaning for
  small motions (the linear model's amplitudes are what mode files exchange with Xmipp).

Shapes: reference coordinates x0 (N, 3) Angstrom, mode vectors (M, N, 3) (unit norm over 3N on the model
they are defined on: see ``deephemnma.nma.elastic``), amplitudes (B, M) -> coordinates (B, N, 3).
This is the one deformation of the project: the simulator, the aligner, the centroids and the animations all
call :func:`deform` (with the rotations of :func:`local_rotations` for the screw model). Animations sample
amplitudes along a mode (:func:`mode_sweep`), a direction of amplitude
space (:func:`amplitude_path`) or an axis of the conformational space, and are written as multi-model PDB files
(one model per frame) by :func:`write_animation`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy.spatial import cKDTree

from deephemnma.molecule.structure import write_structure
from deephemnma.nma.modes import NormalModes, check_amplitude_table
from deephemnma.runtime.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]

#: Deformation models (see the module docstring); the first is the default. The screw model orders adenylate
#: kinase's open -> closed transition better (``deephemnma bench transition``) but fits images made with linear
#: modes worse (``deephemnma bench align``: amplitude error 32 against 5.5), so the linear model stays the default.
DEFORMATIONS = ('linear', 'screw')
DEFAULT_DEFORMATION = DEFORMATIONS[0]
#: Radius (Angstrom) of the neighbourhood whose rigid motion an atom follows in the screw model (Gaussian
#: weights of standard deviation half this radius, cut at the radius).
SCREW_RADIUS = 10.0
#: Below this squared rotation angle (radian^2) the screw Jacobian uses its Taylor series (float32 safe).
_SMALL_ANGLE2 = 1e-4


def _tensor(value: ArrayLike, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if like is None else value.to(device=like.device, dtype=like.dtype)
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)


def deform(coords: ArrayLike, vectors: ArrayLike, amplitudes: ArrayLike,
           rotations: Optional[ArrayLike] = None) -> torch.Tensor:
    """Displaced coordinates (B, N, 3) for amplitudes (B, M) (or (M,) -> (N, 3)).

    ``rotations`` None: the linear model ``x0 + sum_k q_k v_k``; ``rotations`` (M, N, 3) from
    :func:`local_rotations`: the screw model (module docstring). Differentiable in every input; numpy inputs
    are converted (to the dtype/device of ``amplitudes`` when it is a tensor, else float64 on CPU).
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
    displacement = torch.einsum('bm,mnk->bnk', q, v)
    if rotations is not None:
        w = _tensor(rotations, q)
        if w.shape != v.shape:
            raise ValueError(f'rotations {tuple(w.shape)} must have the shape of the vectors {tuple(v.shape)}')
        displacement = screw_jacobian_apply(torch.einsum('bm,mnk->bnk', q, w), displacement)
    out = x0.unsqueeze(0) + displacement
    return out[0] if single else out


def screw_jacobian_apply(theta: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``J(theta) d`` for rotation vectors theta (..., 3) (radians) and vectors d (..., 3): the left Jacobian
    of SO(3), so that ``J(theta) (theta x y) = (R(theta) - I) y`` (a rotation about a point, exactly)."""
    angle2 = (theta * theta).sum(-1, keepdim=True)
    small = angle2 < _SMALL_ANGLE2
    safe2 = torch.where(small, torch.ones_like(angle2), angle2)
    angle = torch.sqrt(safe2)
    first = torch.where(small, 0.5 - angle2 / 24.0, (1.0 - torch.cos(angle)) / safe2)
    second = torch.where(small, 1.0 / 6.0 - angle2 / 120.0, (angle - torch.sin(angle)) / (safe2 * angle))
    once = torch.cross(theta, vectors, dim=-1)
    return vectors + first * once + second * torch.cross(theta, once, dim=-1)


def local_rotations(coords: np.ndarray, vectors: np.ndarray, radius: float = SCREW_RADIUS) -> np.ndarray:
    """Angular velocities (M, N, 3), radians per unit amplitude, of the rigid motion that best fits each mode's
    displacements of the atoms within ``radius`` Angstrom of each atom (Gaussian weights, sigma = radius / 2;
    weighted least squares of ``u_j = v + w x (x_j - c)``). An atom without neighbours gets 0 (linear motion)."""
    x = np.asarray(coords, dtype=np.float64)
    u = np.asarray(vectors, dtype=np.float64)
    neighbours = cKDTree(x).query_ball_point(x, r=float(radius))
    rows = np.repeat(np.arange(len(x)), [len(n) for n in neighbours])
    cols = np.concatenate([np.asarray(n, dtype=np.int64) for n in neighbours])
    sigma = 0.5 * float(radius)
    weights = np.exp(-((x[rows] - x[cols]) ** 2).sum(1) / (2 * sigma ** 2))
    total = np.bincount(rows, weights=weights, minlength=len(x))

    def weighted_sum(values: np.ndarray) -> np.ndarray:
        flat = values.reshape(len(rows), -1)
        return np.stack([np.bincount(rows, weights=weights * flat[:, k], minlength=len(x))
                         for k in range(flat.shape[1])], axis=1).reshape((len(x),) + values.shape[1:])

    centre = weighted_sum(x[cols]) / total[:, None]
    arm = x[cols] - centre[rows]
    inertia = weighted_sum((arm ** 2).sum(1)[:, None, None] * np.eye(3) - arm[:, :, None] * arm[:, None, :])
    inertia += np.eye(3) * (1e-6 * np.trace(inertia, axis1=1, axis2=2)[:, None, None] + 1e-12)
    out = np.empty_like(u)
    for m in range(u.shape[0]):
        mean = weighted_sum(u[m][cols]) / total[:, None]
        torque = weighted_sum(np.cross(arm, u[m][cols] - mean[rows]))
        out[m] = np.linalg.solve(inertia, torque[:, :, None])[:, :, 0]
    return out


def check_deformation(name: str) -> str:
    """``name`` if it is a known deformation model, else InputError listing them."""
    if name not in DEFORMATIONS:
        raise InputError(f"unknown deformation model '{name}'; choose one of {', '.join(DEFORMATIONS)}")
    return name


def model_rotations(coords: np.ndarray, vectors: np.ndarray, deformation: str) -> Optional[np.ndarray]:
    """The ``rotations`` argument of :func:`deform` for a deformation model (None for the linear model)."""
    return local_rotations(coords, vectors) if check_deformation(deformation) == 'screw' else None


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


def deformed_coordinates(modes: NormalModes, amplitudes: ArrayLike,
                         deformation: str = DEFAULT_DEFORMATION) -> np.ndarray:
    """Coordinates ``(n, N, 3)`` Angstrom of ``modes.structure`` deformed by each amplitude row (:func:`deform`
    with the ``deformation`` model)."""
    with torch.no_grad():
        table = check_amplitude_table(np.atleast_2d(np.asarray(amplitudes, dtype=np.float64)),
                                      'amplitudes (select the modes they were estimated with)', len(modes))
        rotations = model_rotations(modes.structure.coords, modes.vectors, deformation)
        return deform(modes.structure.coords, modes.vectors, table, rotations).numpy()


def write_animation(path: str | os.PathLike, modes: NormalModes, amplitudes: ArrayLike,
                    deformation: str = DEFAULT_DEFORMATION) -> np.ndarray:
    """A multi-model PDB/mmCIF of ``modes.structure`` deformed by each amplitude row (one model per frame, the
    ``deformation`` model); returns the coordinates ``(frames, N, 3)``."""
    coordinates = deformed_coordinates(modes, amplitudes, deformation)
    write_structure(path, modes.structure, models=coordinates)
    return coordinates
