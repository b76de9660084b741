"""The paper's accuracy metrics of estimated parameters against true (or reference) ones.

* amplitudes: mean absolute error (over images and modes), per mode, and relative to the error of
  predicting the training mean (``*_rel_mae``: < 1 means better than knowing only the mean);
* shifts: mean absolute error in pixels (over images and both axes) and relative, as for amplitudes;
* orientation: the paper's mean angle between the rotated x, y and z axes (degrees), and the median and
  mean geodesic angle between the rotations;
* RMSD (Angstrom) of the reference atoms displaced with estimated vs true parameters, for each type alone:
  amplitudes ``sqrt(mean_atoms |sum_k (q_est - q_true)_k v_k|^2)``; orientation
  ``sqrt(mean_atoms |(A_est - A_true)(x0 - centre)|^2)``; shifts ``|s_est - s_true| * pixel size``
  (a translation moves every atom alike).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from deephemnma.imaging import rotations
from deephemnma.nma.deform import deform
from deephemnma.nn.targets import Labels

_CHUNK = 1000  # images per block of the amplitude RMSD


def _relative(mae: float, truth: np.ndarray, reference_mean: Optional[np.ndarray]) -> float:
    """``mae`` divided by the MAE of always predicting ``reference_mean`` (the training mean)."""
    mean = truth.mean(axis=0) if reference_mean is None else np.asarray(reference_mean, dtype=np.float64)
    baseline = float(np.abs(truth - mean).mean())
    return mae / baseline if baseline > 0 else float('nan')


def parameter_errors(estimated: Labels, truth: Labels, amplitude_mean: Optional[np.ndarray] = None,
                     shift_mean: Optional[np.ndarray] = None) -> Dict[str, object]:
    """Errors of every parameter type present in both label sets (see the module docstring)."""
    figures: Dict[str, object] = {'images': len(truth)}
    if estimated.amplitudes is not None and truth.amplitudes is not None:
        error = np.abs(np.asarray(estimated.amplitudes, float) - np.asarray(truth.amplitudes, float))
        figures['amp_mae'] = float(error.mean())
        figures['amp_mae_per_mode'] = error.mean(axis=0).tolist()
        figures['amp_rel_mae'] = _relative(figures['amp_mae'], np.asarray(truth.amplitudes, float), amplitude_mean)
    if estimated.shifts is not None and truth.shifts is not None:
        error = np.abs(np.asarray(estimated.shifts, float) - np.asarray(truth.shifts, float))
        figures['shift_mae_px'] = float(error.mean())
        figures['shift_rel_mae'] = _relative(figures['shift_mae_px'], np.asarray(truth.shifts, float), shift_mean)
    if estimated.angles is not None and truth.angles is not None:
        a, b = rotations.euler_to_matrix(estimated.angles), rotations.euler_to_matrix(truth.angles)
        geodesic = rotations.geodesic_angle_deg(a, b)
        figures['angle_mean_axis_deg'] = float(rotations.mean_axis_angle_deg(a, b).mean())
        figures['angle_median_deg'] = float(np.median(geodesic))
        figures['angle_mean_geodesic_deg'] = float(geodesic.mean())
    return figures


def rmsd_errors(estimated: Labels, truth: Labels, coords: np.ndarray, vectors: Optional[np.ndarray],
                pixel_size: float) -> Dict[str, float]:
    """Mean over images of the RMSD (Angstrom) between the reference atoms displaced with estimated and
    true parameters, for each parameter type alone. ``coords (N, 3)`` Angstrom, ``vectors (M, N, 3)``."""
    coords = np.asarray(coords, dtype=np.float64)
    figures: Dict[str, float] = {}
    if vectors is not None and estimated.amplitudes is not None and truth.amplitudes is not None:
        difference = np.asarray(estimated.amplitudes, float) - np.asarray(truth.amplitudes, float)
        per_image = [np.sqrt((deform(np.zeros_like(coords), vectors, part).numpy() ** 2).sum(-1).mean(-1))
                     for part in np.array_split(difference, max(1, len(difference) // _CHUNK))]
        figures['rmsd_amplitudes_A'] = float(np.concatenate(per_image).mean())
    if estimated.angles is not None and truth.angles is not None:
        centred = coords - coords.mean(axis=0)
        delta = rotations.euler_to_matrix(estimated.angles) - rotations.euler_to_matrix(truth.angles)
        # mean_n |D x_n|^2 = trace(D C D^T) with C = mean_n x_n x_n^T: no (images, atoms, 3) array needed.
        second_moment = centred.T @ centred / len(centred)
        squared = np.einsum('bij,jk,bik->b', delta, second_moment, delta)
        figures['rmsd_orientation_A'] = float(np.sqrt(np.maximum(squared, 0.0)).mean())
    if estimated.shifts is not None and truth.shifts is not None:
        difference = np.asarray(estimated.shifts, float) - np.asarray(truth.shifts, float)
        figures['rmsd_shifts_A'] = float((np.linalg.norm(difference, axis=-1) * pixel_size).mean())
    return figures
