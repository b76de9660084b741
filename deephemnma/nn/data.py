"""Training data: outlier removal, the split by particle, image statistics and the prepared data set.

* Outliers: images whose amplitudes lie farther than a threshold (3.2 by default, as in the paper) in
  Mahalanobis distance from the mean of all amplitudes are removed before the split.
* Split: by particle (the image location ``index@stack``), so that no particle can be in two sets.
* :func:`prepare_data` fits the scaling on the training set, encodes the targets and copies the images used
  to RAM when they fit in the allowed memory (otherwise they are streamed from their stacks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from deephemnma.data.stacks import ImageSource
from deephemnma.nn import targets as tg
from deephemnma.nn.config import TrainConfig
from deephemnma.runtime.errors import InputError


# ----------------------------------------------------------------------------------------------
# the prepared data set
# ----------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Images, encoded targets, split and scaling of a training run (identical on every rank)."""

    source: ImageSource
    labels: tg.Labels
    split: Dict[str, np.ndarray]
    scaling: tg.Scaling
    outliers_removed: int
    in_memory: Optional[torch.Tensor] = None
    memory_index: Optional[np.ndarray] = None
    targets: Dict[str, torch.Tensor] = field(default_factory=dict)

    def held_images(self, indices: np.ndarray) -> torch.Tensor:
        """Raw images ``(k, box, box)`` float32 of dataset items ``indices`` from those held in memory (on their
        device)."""
        return self.in_memory[torch.as_tensor(self.memory_index[indices], device=self.in_memory.device)]

    def hold_on_gpu(self, device: torch.device, max_fraction: float = 0.25) -> None:
        """Move the images held in memory to the GPU ``device`` when they take at most ``max_fraction`` of its
        free memory (batches are then gathered there, with no host-to-device copy per step)."""
        if self.in_memory is None or device.type != 'cuda':
            return
        free, _ = torch.cuda.mem_get_info(device)
        if self.in_memory.numel() * self.in_memory.element_size() <= max_fraction * free:
            self.in_memory = self.in_memory.to(device)


def prepare_data(source: ImageSource, labels: tg.Labels, keys: np.ndarray, config: TrainConfig) -> PreparedData:
    """Outlier removal (on amplitudes), split by particle, scaling fitted on the training set, targets."""
    missing = [t for t in config.types if t not in labels.available_types()]
    if missing:
        raise InputError(f'the particles carry no labels for {missing}; train only on {labels.available_types()}')
    if len(labels) != len(source):
        raise InputError(f'{len(labels)} labels for {len(source)} images')
    kept = np.arange(len(labels))
    removed = 0
    if 'amplitudes' in config.types:
        mask = inlier_mask(labels.amplitudes, config.outlier_threshold)
        kept, removed = kept[mask], int((~mask).sum())
    parts = split_by_particle(np.asarray(keys)[kept], config.validation, config.test, config.seed)
    split = {name: kept[idx] for name, idx in parts.items()}
    mean, std = image_statistics(source, split['train'])
    scaling = tg.Scaling.fit(labels.subset(split['train']), mean, std)
    prepared = PreparedData(source, labels, split, scaling, removed)
    encoded = tg.encode(labels, config.types, scaling)
    if 'shifts' in config.types:  # shifts stay in pixels until augmentation has been applied
        encoded['shifts'] = np.asarray(labels.shifts, dtype=np.float32)
    prepared.targets = {t: torch.from_numpy(v) for t, v in encoded.items()}
    used = np.concatenate([split['train'], split['validation'], split['test']])
    if source.nbytes(len(used)) <= config.ram_limit_gb * 2 ** 30:
        prepared.memory_index = np.full(len(source), -1, dtype=np.int64)
        prepared.memory_index[used] = np.arange(len(used))
        prepared.in_memory = torch.from_numpy(source.read(used))
    return prepared


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def image_statistics(source: ImageSource, indices: np.ndarray, sample: int = 2000) -> Tuple[float, float]:
    """Mean and standard deviation of the pixels of (a fixed, evenly spaced sample of) the given images."""
    pick = indices[np.linspace(0, len(indices) - 1, min(sample, len(indices))).astype(np.int64)]
    images = source.read(np.unique(pick)).astype(np.float64)
    return float(images.mean()), float(images.std())


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
