"""Training and inference data: images from stacks, labels, outlier removal, splits and augmentation.

* Images are read from stacks through :func:`deephemnma.core.imageio.read_stack` (memory-mapped); a
  training set that fits in the allowed memory is copied to RAM once.
* Outliers: images whose amplitudes lie farther than a threshold (3.2 by default, as in the paper) in
  Mahalanobis distance from the mean of all amplitudes are removed before the split.
* Split: by particle (the image location ``index@stack``), so that no particle can be in two sets.
* Augmentation is an in-plane rotation by ``phi`` and a translation by ``t`` (pixels) of the image content,
  ``p' = R(phi) p + t`` with ``R(phi) = [[cos, -sin], [sin, cos]]`` acting on ``(x = column, y = row)``
  around the centre pixel ``box // 2``. The labels follow exactly: the projection direction does not change,
  the Xmipp matrix becomes ``A' = Rz(-phi) A`` i.e. ``psi' = psi - phi`` (rot and tilt unchanged), and the
  shift (the translation that brings the particle back to the centre) becomes ``s' = R(phi) s - t``.
* Test-time augmentation runs the network on in-plane rotated copies of each image and merges the outputs
  after undoing each rotation on the labels (:func:`merge_rotated_outputs`).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Deque, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from deephemnma.core import rotations
from deephemnma.core.fileio import InputError
from deephemnma.core.stacks import ImageSource
from deephemnma.nn import targets as tg


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def image_statistics(source: ImageSource, indices: np.ndarray, sample: int = 2000) -> Tuple[float, float]:
    """Mean and standard deviation of the pixels of (a fixed, evenly spaced sample of) the given images."""
    pick = indices[np.linspace(0, len(indices) - 1, min(sample, len(indices))).astype(np.int64)]
    images = source.read(np.unique(pick)).astype(np.float64)
    return float(images.mean()), float(images.std())


def read_ahead(source: ImageSource, batches: Sequence[np.ndarray], threads: int,
               pin: bool = False) -> Iterator[Tuple[torch.Tensor, np.ndarray]]:
    """``(images, indices)`` of each batch in order, read by ``threads`` background threads at most
    ``2 * threads`` batches ahead (0: read when asked); ``pin``: page-locked for fast copies to a GPU. Threads,
    not processes: copying out of a memory map releases the GIL, and images need not travel between processes
    (on 2 cores, 128 px images from a cached stack: 8,000 to 30,000 images/s through DataLoader worker
    processes, 46,000 to 186,000 through threads)."""
    def read(indices: np.ndarray) -> Tuple[torch.Tensor, np.ndarray]:
        images = torch.from_numpy(source.read(indices))
        return (images.pin_memory() if pin else images), indices

    if threads <= 0:
        yield from map(read, batches)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix='image-reader') as pool:
        pending: Deque[Future] = deque()
        for indices in batches:
            pending.append(pool.submit(read, indices))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ----------------------------------------------------------------------------------------------
# outliers and splits
# ----------------------------------------------------------------------------------------------
def mahalanobis_distances(values: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row from the mean (sample covariance; pseudo-inverse if singular)."""
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean(axis=0)
    covariance = np.atleast_2d(np.cov(values, rowvar=False))
    precision = np.linalg.pinv(covariance)
    return np.sqrt(np.maximum(np.einsum('ij,jk,ik->i', centred, precision, centred), 0.0))


def inlier_mask(amplitudes: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    """True for the images kept: Mahalanobis distance of the amplitudes <= ``threshold`` (None or <= 0 keeps
    all; fewer than 3 images are all kept since no covariance can be estimated)."""
    if threshold is None or threshold <= 0 or len(amplitudes) < 3:
        return np.ones(len(amplitudes), dtype=bool)
    return mahalanobis_distances(amplitudes) <= threshold


def _count(size: float, total: int, name: str) -> int:
    count = int(round(size * total)) if 0 < size < 1 else int(size)
    if count < 0 or count > total:
        raise InputError(f'the {name} set asks for {size} images but only {total} are available')
    return count


def split_by_particle(keys: Sequence[str], validation: float, test: float, seed: int) -> Dict[str, np.ndarray]:
    """Indices of the training, validation and test sets, drawn at random by particle (``keys``: one key per
    image, e.g. its location; equal keys always go to the same set). Sizes < 1 are fractions, else counts
    (of particles). Sorted index arrays; they are disjoint and cover every image."""
    unique, inverse = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    n_val = _count(validation, len(unique), 'validation')
    n_test = _count(test, len(unique), 'test')
    if n_val + n_test >= len(unique):
        raise InputError(f'{len(unique)} particles leave none for training with {n_val} validation and '
                         f'{n_test} test particles')
    order = np.random.default_rng(seed).permutation(len(unique))
    role = np.empty(len(unique), dtype=np.int64)
    role[order[:n_val]] = 1
    role[order[n_val:n_val + n_test]] = 2
    role[order[n_val + n_test:]] = 0
    per_image = role[inverse]
    return {name: np.nonzero(per_image == code)[0] for code, name in ((0, 'train'), (1, 'validation'),
                                                                      (2, 'test'))}


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


def merge_rotated_outputs(outputs: Sequence[Dict[str, torch.Tensor]], angles_deg: Sequence[float],
                          scaling: tg.Scaling) -> Dict[str, torch.Tensor]:
    """One output per image from the network's outputs for copies of the images rotated in-plane by
    ``angles_deg`` (``transform_images`` without translation; outputs as the network gives them: scaled
    amplitudes and shifts, unit quaternions). Each rotation is undone on the labels, then amplitudes and
    shifts are averaged and orientations averaged as rotations (:func:`rotations.mean_quaternion_torch`)."""
    first = next(iter(outputs[0].values()))
    count, device = len(first), first.device
    undo = [torch.full((count,), -float(a), dtype=torch.float64, device=device) for a in angles_deg]
    merged: Dict[str, torch.Tensor] = {}
    for kind in outputs[0]:
        stacked = torch.stack([o[kind] for o in outputs]).double()  # (K, B, n)
        if kind == 'orientation':
            back = torch.stack([transform_quaternions(q, phi) for q, phi in zip(stacked, undo)])
            merged[kind] = rotations.mean_quaternion_torch(back)
        elif kind == 'shifts':
            mean, std = (torch.as_tensor(v, dtype=torch.float64, device=device)
                         for v in (scaling.shift_mean, scaling.shift_std))
            zero = torch.zeros(count, 2, dtype=torch.float64, device=device)
            back = torch.stack([transform_shifts(s * std + mean, phi, zero) for s, phi in zip(stacked, undo)])
            merged[kind] = (back.mean(0) - mean) / std
        else:
            merged[kind] = stacked.mean(0)
        merged[kind] = merged[kind].float()
    return merged
