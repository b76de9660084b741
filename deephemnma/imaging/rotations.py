"""Rotations in Xmipp/Scipion's convention, in numpy and (batched, differentiable) torch.

Conventions (checked against Xmipp's ``Euler_angles2matrix`` in the tests):

* Euler angles ``(rot, tilt, psi)`` in degrees, ZYZ, applied as ``A = Rz(psi) Ry(tilt) Rz(rot)`` with
  ``Rz(x) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and ``Ry(x) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
* An atom at ``r`` (Angstrom, relative to the centre of the box) projects to the image point
  ``((A r)_x, (A r)_y)``: image x is the column, y the row, origin at the centre pixel.
* Unit quaternions are ``(w, x, y, z)`` with the canonical sign ``w >= 0`` (ties broken by the first
  non-zero component): ``q`` and ``-q`` are the same rotation and map to the same canonical quaternion.
* A 4x4 Scipion ``Transform`` matrix for projection alignment (``ALIGN_PROJ``) is the inverse of the
  homogeneous matrix ``[[A, s], [0, 1]]`` with ``s = (shiftX, shiftY, 0)`` in pixels, as
  ``xmipp3.convert.matrixFromGeometry(shifts, angles, inverseTransform=True)`` builds it.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

ArrayLike = np.ndarray


# ----------------------------------------------------------------------------------------------
# numpy
# ----------------------------------------------------------------------------------------------
def euler_to_matrix(angles_deg: ArrayLike) -> np.ndarray:
    """ZYZ Euler angles ``(..., 3)`` (rot, tilt, psi; degrees) -> rotation matrices ``(..., 3, 3)``."""
    return euler_to_matrix_torch(torch.as_tensor(np.asarray(angles_deg, dtype=np.float64))).numpy()


def matrix_to_euler(matrices: ArrayLike) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> ZYZ Euler angles ``(..., 3)`` in degrees.

    ``rot`` and ``psi`` in ``(-180, 180]``, ``tilt`` in ``[0, 180]``. At gimbal lock (tilt 0 or 180) the
    whole in-plane angle is put in ``psi`` and ``rot`` is 0.
    """
    return matrix_to_euler_torch(torch.as_tensor(np.asarray(matrices, dtype=np.float64))).numpy()


def matrix_to_quaternion(matrices: ArrayLike) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> canonical unit quaternions ``(..., 4)`` (w, x, y, z)."""
    return matrix_to_quaternion_torch(torch.as_tensor(np.asarray(matrices, dtype=np.float64))).numpy()


def quaternion_to_matrix(quaternions: ArrayLike) -> np.ndarray:
    """Quaternions ``(..., 4)`` (w, x, y, z; normalised here) -> rotation matrices ``(..., 3, 3)``."""
    return quaternion_to_matrix_torch(torch.as_tensor(np.asarray(quaternions, dtype=np.float64))).numpy()


def euler_to_quaternion(angles_deg: ArrayLike) -> np.ndarray:
    """ZYZ Euler angles (degrees) -> canonical unit quaternions (w, x, y, z)."""
    return matrix_to_quaternion(euler_to_matrix(angles_deg))


def quaternion_to_euler(quaternions: ArrayLike) -> np.ndarray:
    """Quaternions (w, x, y, z) -> ZYZ Euler angles (degrees)."""
    return matrix_to_euler(quaternion_to_matrix(quaternions))


def geodesic_angle_deg(matrices_a: ArrayLike, matrices_b: ArrayLike) -> np.ndarray:
    """Angle (degrees, in [0, 180]) of the rotation taking ``a`` to ``b``, for ``(..., 3, 3)`` stacks."""
    return geodesic_angle_deg_torch(torch.as_tensor(np.asarray(matrices_a, dtype=np.float64)),
                                    torch.as_tensor(np.asarray(matrices_b, dtype=np.float64))).numpy()


def quaternion_angle_deg(quaternions_a: ArrayLike, quaternions_b: ArrayLike) -> np.ndarray:
    """Geodesic angle (degrees) between rotations given as quaternions; ``q`` and ``-q`` are equal."""
    qa = _normalise_np(np.asarray(quaternions_a, dtype=np.float64))
    qb = _normalise_np(np.asarray(quaternions_b, dtype=np.float64))
    dot = np.clip(np.abs(np.sum(qa * qb, axis=-1)), 0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dot))


def mean_axis_angle_deg(matrices_a: ArrayLike, matrices_b: ArrayLike) -> np.ndarray:
    """The paper's orientation error: mean angle (degrees) between the rotated x, y and z axes.

    For each pair of rotations, the three coordinate axes are rotated by both matrices and the three
    angles between corresponding rotated axes are averaged; returns one value per pair.
    """
    a = np.asarray(matrices_a, dtype=np.float64)
    b = np.asarray(matrices_b, dtype=np.float64)
    # The molecule seen in the projection frame is A r: the rotated axes are the columns A e_i.
    cosines = np.clip(np.sum(a * b, axis=-2), -1.0, 1.0)
    return np.degrees(np.arccos(cosines)).mean(axis=-1)


def random_rotations(count: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """``count`` rotation matrices drawn uniformly on SO(3) (Haar measure), reproducible with ``seed``."""
    rng = np.random.default_rng(seed)
    quaternions = rng.normal(size=(count, 4))
    return quaternion_to_matrix(quaternions)


def random_euler_uniform_angles(count: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """The paper's sampling: rot and psi uniform in [0, 360), tilt uniform in [0, 180] (not uniform on SO(3))."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 360, count), rng.uniform(0, 180, count), rng.uniform(0, 360, count)], axis=1)


def transform_from_pose(angles_deg: ArrayLike, shifts_px: ArrayLike) -> np.ndarray:
    """Scipion projection-alignment matrices ``(..., 4, 4)`` from Euler angles (deg) and shifts (px).

    Equal to ``xmipp3.convert.matrixFromGeometry(shifts, angles, inverseTransform=True)``.
    """
    angles = np.asarray(angles_deg, dtype=np.float64)
    shifts = np.asarray(shifts_px, dtype=np.float64)
    forward = np.zeros(angles.shape[:-1] + (4, 4))
    forward[..., :3, :3] = euler_to_matrix(angles)
    forward[..., 0, 3] = -shifts[..., 0]
    forward[..., 1, 3] = -shifts[..., 1]
    forward[..., 3, 3] = 1.0
    # Inverse of a rigid motion [R t; 0 1] is [R^T -R^T t; 0 1].
    inverse = np.zeros_like(forward)
    rotation_t = np.swapaxes(forward[..., :3, :3], -1, -2)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -np.einsum('...ij,...j->...i', rotation_t, forward[..., :3, 3])
    inverse[..., 3, 3] = 1.0
    return inverse


def pose_from_transform(matrices: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`transform_from_pose`: ``(angles_deg (..., 3), shifts_px (..., 2))``."""
    inverse = np.asarray(matrices, dtype=np.float64)
    rotation_t = inverse[..., :3, :3]
    rotation = np.swapaxes(rotation_t, -1, -2)
    translation = -np.einsum('...ij,...j->...i', rotation, inverse[..., :3, 3])
    return matrix_to_euler(rotation), -translation[..., :2]


def _normalise_np(quaternions: np.ndarray) -> np.ndarray:
    return quaternions / np.linalg.norm(quaternions, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# torch (batched, differentiable where noted)
# ----------------------------------------------------------------------------------------------
def euler_to_matrix_torch(angles_deg: torch.Tensor) -> torch.Tensor:
    """Differentiable ZYZ Euler (degrees, ``(..., 3)``) -> rotation matrices ``(..., 3, 3)``."""
    radians = torch.deg2rad(angles_deg)
    ca, cb, cg = torch.cos(radians).unbind(-1)
    sa, sb, sg = torch.sin(radians).unbind(-1)
    rows = [
        torch.stack([cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb], dim=-1),
        torch.stack([sb * ca, sb * sa, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_euler_torch(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> ZYZ Euler angles (degrees); see :func:`matrix_to_euler`."""
    m = matrices
    cos_tilt = m[..., 2, 2].clamp(-1.0, 1.0)
    sin_tilt = torch.sqrt(m[..., 2, 0] ** 2 + m[..., 2, 1] ** 2)
    tilt = torch.atan2(sin_tilt, cos_tilt)
    regular = sin_tilt > 1e-6
    rot = torch.where(regular, torch.atan2(m[..., 2, 1], m[..., 2, 0]), torch.zeros_like(tilt))
    psi_regular = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    # Gimbal lock: A = Rz(psi) Ry(0 or pi) Rz(0); A[0,0] = +-cos(psi), A[0,1] = sin(psi).
    psi_locked = torch.atan2(m[..., 0, 1], m[..., 0, 0] * torch.sign(cos_tilt + (cos_tilt == 0).to(m.dtype)))
    psi = torch.where(regular, psi_regular, psi_locked)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))


def quaternion_to_matrix_torch(quaternions: torch.Tensor) -> torch.Tensor:
    """Differentiable quaternions ``(..., 4)`` (w, x, y, z; normalised here) -> matrices ``(..., 3, 3)``.

    The matrix is the passive rotation (frame change) used by Xmipp: ``A = R(q)^T`` where ``R(q)`` is the
    usual active rotation of the quaternion, so that :func:`matrix_to_quaternion_torch` inverts it.
    """
    q = quaternions / quaternions.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], dim=-1),
        torch.stack([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)], dim=-1),
        torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_quaternion_torch(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> canonical unit quaternions ``(..., 4)`` (w >= 0).

    Uses the numerically stable branch (largest diagonal term) for every matrix.
    """
    m = matrices.transpose(-1, -2)  # active rotation R = A^T
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], dim=-1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], dim=-1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                     m[..., 1, 2] + m[..., 2, 1]], dim=-1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m00 - m11 + m22], dim=-1),
    ], dim=-2)
    best = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                        1 - m00 - m11 + m22], dim=-1).argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(candidates, -2, index).squeeze(-2)
    return canonical_quaternion_torch(q / q.norm(dim=-1, keepdim=True))


def canonical_quaternion_torch(quaternions: torch.Tensor) -> torch.Tensor:
    """Flip signs so that the first non-zero component (normally ``w``) is positive."""
    q = quaternions
    eps = 1e-12
    sign = torch.ones_like(q[..., 0])
    decided = torch.zeros_like(q[..., 0], dtype=torch.bool)
    for component in range(4):
        value = q[..., component]
        take = (~decided) & (value.abs() > eps)
        sign = torch.where(take, torch.sign(value), sign)
        decided = decided | take
    return q * sign[..., None]


def mean_quaternion_torch(quaternions: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Average rotation of unit quaternions (w, x, y, z) along ``dim`` (Markley et al. 2007: the eigenvector of
    the largest eigenvalue of ``sum q q^T``; the same for ``q`` and ``-q``), as canonical unit quaternions."""
    q = quaternions.movedim(dim, -2)  # (..., K, 4)
    _, vectors = torch.linalg.eigh(q.transpose(-1, -2) @ q)  # eigenvalues in ascending order
    return canonical_quaternion_torch(vectors[..., -1])


def geodesic_angle_deg_torch(matrices_a: torch.Tensor, matrices_b: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of ``a^T b`` for stacks of rotation matrices; numerically safe near 0 and 180."""
    relative = matrices_a.transpose(-1, -2) @ matrices_b
    trace = relative[..., 0, 0] + relative[..., 1, 1] + relative[..., 2, 2]
    cosine = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    skew = torch.stack([relative[..., 2, 1] - relative[..., 1, 2], relative[..., 0, 2] - relative[..., 2, 0],
                        relative[..., 1, 0] - relative[..., 0, 1]], dim=-1)
    sine = skew.norm(dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sine, cosine))


def rotation_about_z_deg(angle_deg: float) -> np.ndarray:
    """Xmipp's in-plane rotation matrix ``Rz(angle)`` (passive, degrees)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
