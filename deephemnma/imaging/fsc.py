"""Fourier shell correlation (FSC) between two maps, resolution at a threshold, and the FSC area.

Maps are ``(box, box, box)`` arrays indexed ``[z, y, x]``. Shell ``r`` holds the Fourier voxels whose integer
frequency radius ``|k|`` (in units of ``1 / (box * pixel_size)``) rounds to ``r``; shells go from 0 to
``box // 2`` (Nyquist). A resolution "in pixels" is the period ``box / r`` (2 px at Nyquist); in Angstrom it is
``box * pixel_size / r``. The crossing of a threshold is interpolated linearly between the two shells around the
first drop below it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from deephemnma.imaging.filters import rfft_weights


@dataclass(frozen=True)
class FSCCurve:
    """An FSC curve: ``shells`` (0 .. box // 2), ``values`` per shell, and the map geometry."""

    values: np.ndarray
    box: int
    pixel_size: float

    @property
    def shells(self) -> np.ndarray:
        return np.arange(len(self.values))

    @property
    def frequencies(self) -> np.ndarray:
        """Shell frequencies in 1/Angstrom."""
        return self.shells / (self.box * self.pixel_size)

    def crossing_shell(self, threshold: float) -> float:
        """Fractional shell where the curve first falls below ``threshold`` (Nyquist if it never does)."""
        return crossing_shell(self.values, threshold)

    def resolution_px(self, threshold: float) -> float:
        """Resolution (period in pixels) at ``threshold``."""
        shell = self.crossing_shell(threshold)
        return float('inf') if shell <= 0 else self.box / shell

    def resolution_angstrom(self, threshold: float) -> float:
        """Resolution in Angstrom at ``threshold`` (0.5 for map-vs-model, 0.143 for half-maps)."""
        return self.resolution_px(threshold) * self.pixel_size

    def area(self) -> float:
        """Mean FSC over shells 1 .. Nyquist: a single similarity figure in [-1, 1]."""
        return float(np.mean(self.values[1:]))

    def as_dict(self) -> dict:
        return {'shell': self.shells.tolist(), 'frequency': self.frequencies.tolist(),
                'fsc': [float(v) for v in self.values], 'box': self.box, 'pixel_size': self.pixel_size,
                'resolution_05_angstrom': self.resolution_angstrom(0.5),
                'resolution_0143_angstrom': self.resolution_angstrom(0.143), 'area': self.area()}


def shell_index(box: int, device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """Integer shell of every voxel of an rfftn grid ``(box, box, box // 2 + 1)`` (rounded radius)."""
    k = torch.fft.fftfreq(box, d=1.0 / box, device=device)
    kx = torch.fft.rfftfreq(box, d=1.0 / box, device=device)
    radius = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    return torch.round(radius).long()


def fsc(map_a: np.ndarray, map_b: np.ndarray, pixel_size: float = 1.0,
        mask: Optional[np.ndarray] = None) -> FSCCurve:
    """FSC between two maps of equal cubic shape (optionally both multiplied by ``mask`` first)."""
    a = torch.as_tensor(np.asarray(map_a, dtype=np.float64))
    b = torch.as_tensor(np.asarray(map_b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f'FSC needs two cubic maps of the same size, got {tuple(a.shape)} and {tuple(b.shape)}')
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask, dtype=np.float64))
        a, b = a * m, b * m
    box = a.shape[0]
    fa, fb = torch.fft.rfftn(a), torch.fft.rfftn(b)
    shells = shell_index(box)
    # Multiplicity of each rfft column in the full spectrum (the x = 0 and Nyquist planes count once).
    weights = rfft_weights(box, dtype=torch.float64)[0][None, None, :].expand_as(shells)
    keep = shells <= box // 2
    index, w = shells[keep], weights[keep]
    count = box // 2 + 1
    cross = torch.zeros(count, dtype=torch.float64).index_add_(0, index, w * (fa * fb.conj()).real[keep])
    power_a = torch.zeros(count, dtype=torch.float64).index_add_(0, index, w * fa.abs()[keep] ** 2)
    power_b = torch.zeros(count, dtype=torch.float64).index_add_(0, index, w * fb.abs()[keep] ** 2)
    denominator = torch.sqrt(power_a * power_b)
    values = torch.where(denominator > 0, cross / denominator.clamp_min(1e-300), torch.zeros_like(cross))
    return FSCCurve(values.numpy(), box, float(pixel_size))


def crossing_shell(values: np.ndarray, threshold: float) -> float:
    """First fractional shell (>= 1) where ``values`` drop below ``threshold``; the last shell if never."""
    values = np.asarray(values, dtype=np.float64)
    for shell in range(1, len(values)):
        if values[shell] < threshold:
            before, after = values[shell - 1], values[shell]
            if before == after:
                return float(shell - 1)
            return float(shell - 1 + (before - threshold) / (before - after))
    return float(len(values) - 1)


def soft_sphere_mask(box: int, radius_px: float, edge_px: float = 6.0) -> np.ndarray:
    """A spherical mask centred on voxel ``box // 2``, 1 inside ``radius_px``, with a raised-cosine edge."""
    grid = np.arange(box) - box // 2
    radius = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    edge = np.clip((radius - radius_px) / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * edge))).astype(np.float32)
