"""What the network predicts, and the conversions between labels and network outputs.

Parameter types (names used everywhere: model outputs, checkpoints, command line):

* ``amplitudes``: the M normal-mode amplitudes, standardised with the training set's mean and standard
  deviation of each mode (stored with the model);
* ``orientation``: the rotation as a unit quaternion ``(w, x, y, z)`` of the Xmipp ZYZ Euler angles
  (:mod:`deephemnma.imaging.rotations`). The raw output (4 numbers) is normalised to unit length; the loss is the
  mean absolute difference of the 9 elements of the rotation matrices of the predicted and true quaternions,
  which is the same for ``q`` and ``-q`` (the same rotation) and, unlike an L1 loss on the quaternions, smooth
  across the sign flip (trains faster: median held-out angle 64 vs 98 deg after 60 epochs of the quick check);
* ``shifts``: Xmipp's shiftX, shiftY in pixels, standardised like the amplitudes.

Beside the orientation, the network may give ``K`` orientation hypotheses (output :data:`HYPOTHESIS_OUTPUT`,
``4 K`` numbers: K quaternions), trained with a relaxed winner-takes-all loss (Rupprecht et al. 2017): only the
hypothesis closest to the label learns fully, so ambiguous views get several answers instead of their average.
They are the starting points of predict-then-refine (adenylate kinase demo data, 800 labels, 60 epochs: 92 % of
held-out particles have one of the 8 hypotheses or the orientation within 45 degrees of the truth, 42 % for the
orientation alone).

The loss of each type is a mean absolute error (L1), as in the paper; the training loss is their sum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from deephemnma.imaging import rotations

TYPES = ('amplitudes', 'orientation', 'shifts')
#: Output key of the orientation hypotheses (not a parameter type: it learns from the orientation labels).
HYPOTHESIS_OUTPUT = 'hypotheses'
#: Weight of the mean error of all hypotheses in their loss (the rest: the error of the best one), which keeps
#: every hypothesis near the data.
HYPOTHESIS_SPREAD = 0.05
QUATERNION_SIZE = 4
SHIFT_SIZE = 2
_MIN_STD = 1e-6


@dataclass
class Labels:
    """Per-image parameters: Euler angles ``(n, 3)`` deg, shifts ``(n, 2)`` px, amplitudes ``(n, M)``."""

    angles: Optional[np.ndarray] = None
    shifts: Optional[np.ndarray] = None
    amplitudes: Optional[np.ndarray] = None

    def __len__(self) -> int:
        for value in (self.angles, self.shifts, self.amplitudes):
            if value is not None:
                return len(value)
        return 0

    def subset(self, indices: np.ndarray) -> 'Labels':
        pick = (lambda a: None if a is None else np.asarray(a)[indices])
        return Labels(pick(self.angles), pick(self.shifts), pick(self.amplitudes))

    def available_types(self) -> list:
        present = {'amplitudes': self.amplitudes, 'orientation': self.angles, 'shifts': self.shifts}
        return [t for t in TYPES if present[t] is not None]


@dataclass
class Scaling:
    """Standardisation of the targets and of the images, computed on the training set, saved with the model."""

    image_mean: float
    image_std: float
    amplitude_mean: Optional[np.ndarray] = None
    amplitude_std: Optional[np.ndarray] = None
    shift_mean: Optional[np.ndarray] = None
    shift_std: Optional[np.ndarray] = None

    @classmethod
    def fit(cls, labels: Labels, image_mean: float, image_std: float) -> 'Scaling':
        def stats(values: Optional[np.ndarray]):
            if values is None:
                return None, None
            values = np.asarray(values, dtype=np.float64)
            return values.mean(axis=0), np.maximum(values.std(axis=0), _MIN_STD)
        amp_mean, amp_std = stats(labels.amplitudes)
        shift_mean, shift_std = stats(labels.shifts)
        return cls(float(image_mean), max(float(image_std), _MIN_STD), amp_mean, amp_std, shift_mean, shift_std)

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> 'Scaling':
        arrays = {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in data.items()
                  if k not in ('image_mean', 'image_std')}
        return cls(float(data['image_mean']), float(data['image_std']), **arrays)


def output_sizes(types, amplitude_count: int, hypotheses: int = 0) -> Dict[str, int]:
    """Number of raw network outputs of each parameter type, and of the ``hypotheses`` orientation hypotheses
    (when the orientation is learnt)."""
    sizes = {'amplitudes': amplitude_count, 'orientation': QUATERNION_SIZE, 'shifts': SHIFT_SIZE}
    result = {t: sizes[t] for t in types}
    if hypotheses > 0 and 'orientation' in types:
        result[HYPOTHESIS_OUTPUT] = QUATERNION_SIZE * int(hypotheses)
    return result


def encode(labels: Labels, types, scaling: Scaling) -> Dict[str, np.ndarray]:
    """Labels -> float32 training targets per type (standardised amplitudes/shifts, canonical quaternions)."""
    targets: Dict[str, np.ndarray] = {}
    for t in types:
        if t == 'amplitudes':
            value = (labels.amplitudes - scaling.amplitude_mean) / scaling.amplitude_std
        elif t == 'shifts':
            value = (labels.shifts - scaling.shift_mean) / scaling.shift_std
        elif t == 'orientation':
            value = rotations.euler_to_quaternion(labels.angles)
        else:
            raise ValueError(f'unknown parameter type {t!r}; choose from {TYPES}')
        targets[t] = np.asarray(value, dtype=np.float32)
    return targets


def normalise_quaternions(raw: torch.Tensor) -> torch.Tensor:
    """Raw 4-vectors -> unit quaternions (a tiny floor avoids dividing by zero)."""
    return raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def hypothesis_count(outputs: Dict[str, int]) -> int:
    """Orientation hypotheses of a network with these raw output sizes (:func:`output_sizes`; 0: none)."""
    return outputs.get(HYPOTHESIS_OUTPUT, 0) // QUATERNION_SIZE


def hypothesis_quaternions(raw: torch.Tensor) -> torch.Tensor:
    """Raw hypothesis outputs ``(B, 4 K)`` -> unit quaternions ``(B, K, 4)``."""
    return normalise_quaternions(raw.reshape(len(raw), -1, QUATERNION_SIZE))


def _rotation_error(quaternions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the rotation matrices of unit ``quaternions`` (..., 4) and ``target`` (B, 4)
    broadcast over the middle axes: (...)."""
    target = rotations.quaternion_to_matrix_torch(target).reshape(target.shape[:1] + (1,) * (quaternions.ndim - 2)
                                                                   + (3, 3))
    return (rotations.quaternion_to_matrix_torch(quaternions) - target).abs().mean(dim=(-2, -1))


def losses(outputs: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Mean absolute error of each type (per sample and component; of the rotation matrices for orientations);
    for the hypotheses, the relaxed winner-takes-all error against the orientation labels."""
    result = {}
    for t, output in outputs.items():
        output = output.float()
        if t == HYPOTHESIS_OUTPUT:
            errors = _rotation_error(hypothesis_quaternions(output), targets['orientation'].float())  # (B, K)
            result[t] = (1.0 - HYPOTHESIS_SPREAD) * errors.min(dim=1).values.mean() \
                + HYPOTHESIS_SPREAD * errors.mean()
        elif t == 'orientation':
            result[t] = _rotation_error(normalise_quaternions(output), targets[t].float()).mean()
        else:
            result[t] = (output - targets[t].float()).abs().mean()
    return result


def decode(outputs: Dict[str, np.ndarray], scaling: Scaling) -> Labels:
    """Raw outputs (numpy) -> amplitudes, Euler angles (deg, ZYZ) and shifts (px) in the labels' units."""
    labels = Labels()
    if 'amplitudes' in outputs:
        labels.amplitudes = np.asarray(outputs['amplitudes'], np.float64) * scaling.amplitude_std \
            + scaling.amplitude_mean
    if 'shifts' in outputs:
        labels.shifts = np.asarray(outputs['shifts'], np.float64) * scaling.shift_std + scaling.shift_mean
    if 'orientation' in outputs:
        labels.angles = rotations.quaternion_to_euler(np.asarray(outputs['orientation'], np.float64))
    return labels


def labels_from_particles(particles) -> Labels:
    """The training labels carried by a :class:`deephemnma.data.particles.Particles`."""
    return Labels(angles=particles.angles, shifts=particles.shifts, amplitudes=particles.amplitudes)


def true_labels_from_particles(particles) -> Labels:
    """The simulator's ground truth carried by a Particles (extra columns ``true_amplitudes``, as one row per
    particle even for one mode, and ``true_angles`` and ``true_shifts`` where present)."""
    extra = particles.extra
    return Labels(angles=extra.get('true_angles'), shifts=extra.get('true_shifts'),
                     amplitudes=np.atleast_2d(extra['true_amplitudes'].T).T)
