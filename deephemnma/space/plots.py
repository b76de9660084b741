"""Plots of the conformational space, FSC curves and map slices (matplotlib, no display needed).

Spaces of millions of points are drawn as 2D histograms (one ``imshow`` of binned counts), never as one
marker per point, so drawing and saving stays within seconds for 1,000,000 points. The number of bins per axis
follows the number of points (:func:`auto_bins`), so that a few thousand points stay visible. Colour by:

* ``density``: the number of points per bin (log scale);
* ``source``: each source (e.g. 'predicted', 'hemnma') in its own colour, its log density as intensity;
* ``score`` (or any per-point value): the mean value of the points in each bin.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import save_figure

COLOUR_MODES = ('density', 'source', 'score')
_SOURCE_COLOURS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                   (0.58, 0.4, 0.74), (0.55, 0.34, 0.29))


def auto_bins(count: int) -> int:
    """Bins per axis for ``count`` points: about ``2 sqrt(count)``, between 50 and 400."""
    return int(np.clip(round(2.0 * np.sqrt(max(count, 1))), 50, 400))


def _extent(points: np.ndarray) -> Tuple[float, float, float, float]:
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    low, high = low - 0.02 * span, high + 0.02 * span
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def _bin_index(points: np.ndarray, extent, bins: int) -> np.ndarray:
    x = ((points[:, 0] - extent[0]) / (extent[1] - extent[0]) * bins).astype(np.int64).clip(0, bins - 1)
    y = ((points[:, 1] - extent[2]) / (extent[3] - extent[2]) * bins).astype(np.int64).clip(0, bins - 1)
    return y * bins + x


def binned_image(points: np.ndarray, extent, bins: int, values: Optional[np.ndarray] = None) -> np.ndarray:
    """``(bins, bins)`` counts (or mean ``values``, NaN where empty) of 2D points; row = y bin."""
    index = _bin_index(points, extent, bins)
    counts = np.bincount(index, minlength=bins * bins).astype(np.float64)
    if values is None:
        return counts.reshape(bins, bins)
    sums = np.bincount(index, weights=np.asarray(values, dtype=np.float64), minlength=bins * bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(counts > 0, sums / counts, np.nan).reshape(bins, bins)


def draw_space(ax, coords: np.ndarray, colour_by: str = 'density', values: Optional[np.ndarray] = None,
               sources: Optional[np.ndarray] = None, axes: Sequence[int] = (0, 1), bins: int = 0,
               labels: Sequence[str] = ('axis 1', 'axis 2')):
    """Draw the space on a matplotlib ``ax`` with ``bins`` per axis (0: :func:`auto_bins`); returns the image
    artist."""
    from matplotlib import colors
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2 or len(coords) == 0:
        raise InputError(f'a space plot needs (points, >= 2) coordinates, got shape {coords.shape}')
    points = coords[:, list(axes)]
    extent = _extent(points)
    bins = bins or auto_bins(len(points))
    if colour_by == 'density':
        counts = binned_image(points, extent, bins)
        artist = ax.imshow(np.where(counts > 0, counts, np.nan), origin='lower', extent=extent, aspect='auto',
                           cmap='viridis', norm=colors.LogNorm(vmin=1, vmax=max(counts.max(), 1)),
                           interpolation='nearest')
        ax.figure.colorbar(artist, ax=ax, label='images per bin')
    elif colour_by == 'score':
        if values is None or len(values) != len(points):
            raise InputError('colouring by score needs one score per point')
        artist = ax.imshow(binned_image(points, extent, bins, values), origin='lower', extent=extent,
                           aspect='auto', cmap='plasma', interpolation='nearest')
        ax.figure.colorbar(artist, ax=ax, label='mean score per bin')
    elif colour_by == 'source':
        if sources is None or len(sources) != len(points):
            raise InputError('colouring by source needs one source name per point')
        names = list(dict.fromkeys(np.asarray(sources).tolist()))
        # Subtractive blending on white: each source darkens towards its own colour with its log density.
        absorbed = np.zeros((bins, bins, 3))
        for number, name in enumerate(names):
            counts = binned_image(points[np.asarray(sources) == name], extent, bins)
            intensity = np.log1p(counts) / max(np.log1p(counts).max(), 1e-12)
            colour = np.asarray(_SOURCE_COLOURS[number % len(_SOURCE_COLOURS)])
            absorbed += intensity[..., None] * (1.0 - colour)
        artist = ax.imshow(np.clip(1.0 - absorbed, 0, 1), origin='lower', extent=extent, aspect='auto',
                           interpolation='nearest')
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(color=_SOURCE_COLOURS[i % len(_SOURCE_COLOURS)], label=n)
                           for i, n in enumerate(names)], loc='best')
    else:
        raise InputError(f"unknown colouring '{colour_by}' (choose one of {', '.join(COLOUR_MODES)})")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    return artist


def save_space_plot(path: str | os.PathLike, coords: np.ndarray, colour_by: str = 'density',
                    values: Optional[np.ndarray] = None, sources: Optional[np.ndarray] = None,
                    axes: Sequence[int] = (0, 1), bins: int = 0, title: str = '',
                    polygons: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Draw the space (optionally with selection polygons) and save it as an image, atomically."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    from matplotlib.figure import Figure
    figure = Figure(figsize=(7, 6), dpi=100)
    ax = figure.add_subplot(111)
    draw_space(ax, coords, colour_by, values, sources, axes, bins,
               labels=(f'axis {axes[0] + 1}', f'axis {axes[1] + 1}'))
    for name, vertices in (polygons or {}).items():
        closed = np.vstack([vertices, vertices[:1]])
        ax.plot(closed[:, 0], closed[:, 1], '-', lw=1.5, color='red')
        ax.annotate(name, closed[0], color='red')
    ax.set_title(title or f'{len(coords):,} images, coloured by {colour_by}')
    save_figure(figure, path, tight=True)


def save_fsc_plot(path: str | os.PathLike, curves: Mapping[str, object], thresholds=(0.5, 0.143)) -> None:
    """Plot FSC curves (``name -> FSCCurve``) against frequency (1/A), with threshold lines."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(7, 4.5), dpi=100)
    ax = figure.add_subplot(111)
    for name, curve in curves.items():
        ax.plot(curve.frequencies, curve.values,
                label=f'{name} ({curve.resolution_angstrom(0.5):.2f} A at 0.5, '
                      f'{curve.resolution_angstrom(0.143):.2f} A at 0.143)')
    for threshold in thresholds:
        ax.axhline(threshold, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('spatial frequency (1/A)')
    ax.set_ylabel('FSC')
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7, loc='lower left')
    save_figure(figure, path, tight=True)


def save_map_slices(path: str | os.PathLike, volume: np.ndarray, title: str = '') -> None:
    """The three central orthogonal slices of a map ``[z, y, x]``."""
    from matplotlib.figure import Figure
    volume = np.asarray(volume)
    centre = volume.shape[0] // 2
    figure = Figure(figsize=(10, 3.6), dpi=100)
    for number, (name, image) in enumerate((('z = centre (x-y)', volume[centre]),
                                            ('y = centre (x-z)', volume[:, centre]),
                                            ('x = centre (y-z)', volume[:, :, centre]))):
        ax = figure.add_subplot(1, 3, number + 1)
        ax.imshow(image, origin='lower', cmap='gray')
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    save_figure(figure, path, tight=True)
