"""In-plane augmentation of images with exactly consistent labels, for training and test-time averaging.

* Augmentation is an in-plane rotation by ``phi`` and a translation by ``t`` (pixels) of the image content,
  ``p' = R(phi) p + t`` with ``R(phi) = [[cos, -sin], [sin, cos]]`` acting on ``(x = column, y = row)``
  around the centre pixel ``box // 2``. The labels follow exactly: the projection direction does not change,
  the Xmipp matrix becomes ``A' = Rz(-phi) A`` i.e. ``psi' = psi - phi`` (rot and tilt unchanged), and the
  shift (the translation that brings the particle back to the centre) becomes ``s' = R(phi) s - t``.
* Test-time augmentation runs the network on in-plane rotated copies of each image and merges the outputs
  after undoing each rotation on the labels (:func:`unrotate_outputs`, :func:`merge_hypotheses`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from deephemnma.imaging import rotations
from deephemnma.nn import targets as tg


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------
def rotation_2d(phi_deg: torch.Tensor) -> torch.Tensor:
    """``R(phi) = [[cos, -sin], [sin, cos]]`` on ``(x, y)``, batched ``(B, 2, 2)``."""
    phi = torch.deg2rad(phi_deg)
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def transform_images(images: torch.Tensor, phi_deg: torch.Tensor, translation_px: torch.Tensor) -> torch.Tensor:
    """Rotate the content of ``(B, 1, H, W)`` images by ``phi`` around pixel ``box // 2`` and translate it by
    ``t`` (pixels, x = column, y = row): ``p' = R(phi) p + t`` (bilinear, zeros outside)."""
    batch, _, height, width = images.shape
    dtype, device = images.dtype, images.device
    ys = torch.arange(height, device=device, dtype=dtype) - height // 2
    xs = torch.arange(width, device=device, dtype=dtype) - width // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    output_points = torch.stack([grid_x, grid_y], -1).reshape(1, -1, 2) - translation_px.to(dtype)[:, None, :]
    inverse = rotation_2d(phi_deg.double()).transpose(-1, -2).to(dtype)  # R(phi)^-1 (quarter turns exact)
    source = output_points @ inverse.transpose(-1, -2)  # row vectors: p = R^-1 (p' - t)
    source_x = (source[..., 0] + width // 2) * 2.0 / (width - 1) - 1.0
    source_y = (source[..., 1] + height // 2) * 2.0 / (height - 1) - 1.0
    grid = torch.stack([source_x, source_y], -1).reshape(batch, height, width, 2)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=True)


def transform_quaternions(quaternions: torch.Tensor, phi_deg: torch.Tensor) -> torch.Tensor:
    """Orientation labels after an in-plane rotation of the image by ``phi``: ``A' = Rz(-phi) A``."""
    matrices = rotations.quaternion_to_matrix_torch(quaternions)
    rz = rotations.euler_to_matrix_torch(torch.stack([torch.zeros_like(phi_deg), torch.zeros_like(phi_deg),
                                                      -phi_deg], -1).to(matrices.dtype))
    return rotations.matrix_to_quaternion_torch(rz @ matrices)


def transform_shifts(shifts_px: torch.Tensor, phi_deg: torch.Tensor, translation_px: torch.Tensor) -> torch.Tensor:
    """Shift labels after the image transform ``p' = R(phi) p + t``: ``s' = R(phi) s - t``."""
    rotated = (rotation_2d(phi_deg.to(shifts_px.dtype)) @ shifts_px[..., None])[..., 0]
    return rotated - translation_px.to(shifts_px.dtype)


@dataclass
class Augmentation:
    """Random in-plane rotations (uniform in ``[-max_rotation_deg, max_rotation_deg]``) and translations
    (uniform in ``[-max_translation_px, max_translation_px]`` per axis), with consistent labels."""

    max_rotation_deg: float = 180.0
    max_translation_px: float = 0.0

    @property
    def active(self) -> bool:
        return self.max_rotation_deg > 0 or self.max_translation_px > 0

    def draw(self, count: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        phi = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * self.max_rotation_deg
        t = (torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1) * self.max_translation_px
        return phi, t


def unrotate_outputs(outputs: Sequence[Dict[str, torch.Tensor]], angles_deg: Sequence[float],
                     scaling: tg.Scaling) -> Dict[str, torch.Tensor]:
    """The network's outputs for copies of the images rotated in-plane by ``angles_deg`` (``transform_images``
    without translation; outputs as the network gives them: scaled amplitudes and shifts, unit quaternions),
    each with its rotation undone on the labels: one hypothesis per copy, ``(K, B, n)`` float64 per type."""
    first = next(iter(outputs[0].values()))
    count, device = len(first), first.device
    undo = [torch.full((count,), -float(a), dtype=torch.float64, device=device) for a in angles_deg]
    hypotheses: Dict[str, torch.Tensor] = {}
    for kind in outputs[0]:
        stacked = torch.stack([o[kind] for o in outputs]).double()  # (K, B, n)
        if kind == 'orientation':
            hypotheses[kind] = torch.stack([transform_quaternions(q, phi) for q, phi in zip(stacked, undo)])
        elif kind == 'shifts':
            mean, std = (torch.as_tensor(v, dtype=torch.float64, device=device)
                         for v in (scaling.shift_mean, scaling.shift_std))
            zero = torch.zeros(count, 2, dtype=torch.float64, device=device)
            hypotheses[kind] = torch.stack([(transform_shifts(s * std + mean, phi, zero) - mean) / std
                                            for s, phi in zip(stacked, undo)])
        else:
            hypotheses[kind] = stacked
    return hypotheses


def merge_hypotheses(hypotheses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One output per image from :func:`unrotate_outputs`' hypotheses: amplitudes and shifts averaged,
    orientations averaged as rotations (:func:`rotations.mean_quaternion_torch`); float32."""
    return {kind: (rotations.mean_quaternion_torch(values) if kind == 'orientation' else values.mean(0)).float()
            for kind, values in hypotheses.items()}
