"""Groups of images in the conformational space: polygons, axis slices, k-means, Gaussian mixtures, density peaks.

Every method returns integer labels, one per point: ``0 .. G-1`` for the groups and ``-1`` for points in no
group. Automatic groups are numbered in the order of their mean first coordinate, so results are reproducible.

* Polygons (the lasso or polygon selections of the viewer, or polygons given in a file, headless): a point
  belongs to the first polygon containing it. Polygon files are JSON, either ``{"name": [[x, y], ...], ...}``
  or a list of vertex lists.
* Axis slices (the paper): the range of one axis, optionally trimmed of a fraction of the points at each end,
  is cut into slices of equal width; slices with fewer than ``min_count`` images are merged with their smaller
  neighbour until every slice has at least ``min_count`` (the paper used about 900). ``equal_counts`` cuts at
  quantiles instead (e.g. equal groups of 899 images).
* k-means and Gaussian mixtures (scikit-learn), and density peaks (Rodriguez & Laio 2014: centres have a high
  local density and a large distance to any denser point; every other point joins its nearest denser
  neighbour's group), computed with k-nearest-neighbour densities so it scales to millions of points.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

PAPER_MIN_COUNT = 900
AUTOMATIC_METHODS = ('slices', 'kmeans', 'gmm', 'density_peaks')


def read_polygons(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Polygons (name -> (v, 2) vertices) from a JSON file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f'{path}: no such polygon file')
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f'{path}: not a JSON polygon file ({error})') from error
    items = content.items() if isinstance(content, dict) else \
        ((f'group{i + 1}', v) for i, v in enumerate(content)) if isinstance(content, list) else None
    if items is None:
        raise InputError(f'{path}: expected a JSON object or list of polygons')
    polygons = {}
    for name, vertices in items:
        try:
            array = np.asarray(vertices, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InputError(f"{path}: polygon '{name}' is not a list of [x, y] vertices") from error
        if array.ndim != 2 or array.shape[1] != 2 or len(array) < 3:
            raise InputError(f"{path}: polygon '{name}' needs at least 3 [x, y] vertices, got shape {array.shape}")
        polygons[str(name)] = array
    if not polygons:
        raise InputError(f'{path}: holds no polygon')
    return polygons


def write_polygons(path: str | os.PathLike, polygons: Mapping[str, np.ndarray]) -> None:
    """Write polygons as JSON ``{"name": [[x, y], ...]}``, atomically."""
    content = {name: np.asarray(v, dtype=float).tolist() for name, v in polygons.items()}
    with atomic_path(path, suffix='.json') as tmp:
        Path(tmp).write_text(json.dumps(content, indent=1))


def polygon_labels(coords: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Label of the first polygon containing each point of ``coords`` (n, >= 2; first two axes), else -1."""
    from matplotlib.path import Path as PolygonPath
    points = _check_points(coords)[:, :2]
    labels = np.full(len(points), -1, dtype=np.int64)
    for label, vertices in enumerate(polygons):
        inside = PolygonPath(np.asarray(vertices, dtype=np.float64)).contains_points(points)
        labels[(labels < 0) & inside] = label
    return labels


def axis_slices(values: np.ndarray, min_count: int = PAPER_MIN_COUNT, n_slices: Optional[int] = None,
                trim: float = 0.0, equal_counts: bool = False) -> np.ndarray:
    """Quasi-uniform slices of one axis with at least ``min_count`` points each (see the module docstring).

    ``n_slices`` defaults to as many as ``min_count`` allows; ``trim`` (fraction in [0, 0.5)) leaves that
    fraction of points at each end out of every slice (label -1).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not 0.0 <= trim < 0.5:
        raise InputError(f'trim must be a fraction in [0, 0.5), not {trim}')
    if min_count < 1:
        raise InputError(f'the minimum group size must be at least 1, not {min_count}')
    low, high = np.quantile(values, [trim, 1.0 - trim]) if len(values) else (0.0, 0.0)
    kept = np.nonzero((values >= low) & (values <= high))[0]
    if len(kept) < min_count:
        raise InputError(f'{len(kept)} image(s) after trimming: fewer than the minimum group size {min_count}')
    count = n_slices or max(len(kept) // min_count, 1)
    if equal_counts:
        edges = np.quantile(values[kept], np.linspace(0.0, 1.0, count + 1))
    else:
        edges = np.linspace(low, high, count + 1)
    slot = np.clip(np.searchsorted(edges, values[kept], side='right') - 1, 0, count - 1)
    sizes = list(np.bincount(slot, minlength=count))
    members = [[i] for i in range(count)]  # original slots merged into each slice
    while len(sizes) > 1 and min(sizes) < min_count:
        smallest = int(np.argmin(sizes))
        if smallest == 0:
            partner = 1
        elif smallest == len(sizes) - 1:
            partner = smallest - 1
        else:
            partner = smallest - 1 if sizes[smallest - 1] <= sizes[smallest + 1] else smallest + 1
        first, second = sorted((smallest, partner))
        sizes[first] += sizes.pop(second)
        members[first] += members.pop(second)
    slot_to_slice = np.empty(count, dtype=np.int64)
    for index, slots in enumerate(members):
        slot_to_slice[slots] = index
    labels = np.full(len(values), -1, dtype=np.int64)
    labels[kept] = slot_to_slice[slot]
    return labels


def kmeans_labels(coords: np.ndarray, n_groups: int, seed: int = 0) -> np.ndarray:
    """k-means groups (mini-batch k-means above 100,000 points)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    points = _check_points(coords, n_groups)
    model = (MiniBatchKMeans(n_clusters=n_groups, random_state=seed, n_init=3, batch_size=4096)
             if len(points) > 100_000 else KMeans(n_clusters=n_groups, random_state=seed, n_init=10))
    return _ordered(points, model.fit_predict(points))


def gmm_labels(coords: np.ndarray, n_groups: int, seed: int = 0, covariance: str = 'full') -> np.ndarray:
    """Gaussian-mixture groups (most probable component of each point)."""
    from sklearn.mixture import GaussianMixture
    points = _check_points(coords, n_groups)
    model = GaussianMixture(n_components=n_groups, covariance_type=covariance, random_state=seed)
    return _ordered(points, model.fit(points).predict(points))


def density_peak_labels(coords: np.ndarray, n_groups: int, neighbours: int = 30) -> np.ndarray:
    """Density-peak clustering (Rodriguez & Laio 2014) with k-nearest-neighbour densities."""
    from sklearn.neighbors import NearestNeighbors
    points = _check_points(coords, n_groups)
    k = min(neighbours, len(points) - 1)
    distances, index = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    # Density: inverse mean distance to the k neighbours; ties broken by position in the array.
    density = 1.0 / np.maximum(distances[:, 1:].mean(axis=1), 1e-12)
    rank = np.empty(len(points), dtype=np.int64)
    rank[np.lexsort((np.arange(len(points)), -density))] = np.arange(len(points))  # 0 = densest
    parent, delta = _nearest_denser(points, rank, distances, index)
    densest = int(rank.argmin())
    delta[densest] = delta[np.isfinite(delta)].max() if np.isfinite(delta).any() else 1.0
    # The densest point is always a centre (it has no denser point to join).
    score = density * delta
    score[densest] = np.inf
    centres = np.argsort(-score, kind='stable')[:n_groups]
    labels = np.full(len(points), -1, dtype=np.int64)
    labels[centres] = np.arange(len(centres))
    for point in np.argsort(rank, kind='stable'):  # densest first: parents are labelled before children
        if labels[point] < 0:
            labels[point] = labels[parent[point]]
    return _ordered(points, labels)


def _nearest_denser(points: np.ndarray, rank: np.ndarray, distances: np.ndarray, index: np.ndarray):
    """For each point, its nearest denser point and the distance to it (inf for the densest)."""
    denser = rank[index[:, 1:]] < rank[:, None]
    first = np.where(denser.any(axis=1), denser.argmax(axis=1), -1)
    parent = np.arange(len(points))
    delta = np.full(len(points), np.inf)
    found = first >= 0
    rows = np.nonzero(found)[0]
    parent[rows] = index[rows, 1 + first[rows]]
    delta[rows] = distances[rows, 1 + first[rows]]
    # The few local maxima: search all denser points, in blocks.
    order = np.argsort(rank, kind='stable')
    for point in np.nonzero(~found)[0]:
        candidates = order[:rank[point]]
        if len(candidates):
            gaps = np.linalg.norm(points[candidates] - points[point], axis=1)
            best = int(np.argmin(gaps))
            parent[point], delta[point] = candidates[best], gaps[best]
    return parent, delta


def _check_points(coords: np.ndarray, n_groups: Optional[int] = None) -> np.ndarray:
    points = np.asarray(coords, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2 or len(points) == 0:
        raise InputError(f'expected (points, dimensions) coordinates, got shape {points.shape}')
    if n_groups is not None and not 1 <= n_groups <= len(points):
        raise InputError(f'cannot make {n_groups} group(s) of {len(points)} point(s)')
    return points


def _ordered(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Renumber groups by their mean first coordinate (-1 stays -1)."""
    labels = np.asarray(labels, dtype=np.int64)
    names = [g for g in np.unique(labels) if g >= 0]
    order = sorted(names, key=lambda g: points[labels == g, 0].mean())
    mapping = np.full(labels.max() + 2 if len(labels) else 1, -1, dtype=np.int64)
    for new, old in enumerate(order):
        mapping[old] = new
    return np.where(labels >= 0, mapping[labels], -1)


def automatic_labels(coords: np.ndarray, method: str, n_groups: Optional[int] = None, axis: int = 0,
                     min_count: int = PAPER_MIN_COUNT, trim: float = 0.0, equal_counts: bool = False,
                     seed: int = 0) -> np.ndarray:
    """Dispatch to one automatic grouping method by name (``AUTOMATIC_METHODS``)."""
    points = _check_points(coords)
    if method == 'slices':
        if not 0 <= axis < points.shape[1]:
            raise InputError(f'axis {axis + 1} does not exist in a {points.shape[1]}-D space')
        return axis_slices(points[:, axis], min_count, n_groups, trim, equal_counts)
    if n_groups is None:
        raise InputError(f"the '{method}' grouping needs a number of groups")
    if method == 'kmeans':
        return kmeans_labels(points, n_groups, seed)
    if method == 'gmm':
        return gmm_labels(points, n_groups, seed)
    if method == 'density_peaks':
        return density_peak_labels(points, n_groups)
    raise InputError(f"unknown grouping method '{method}' (choose one of {', '.join(AUTOMATIC_METHODS)})")


def group_members(labels: np.ndarray, allow_empty: bool = False) -> List[np.ndarray]:
    """Indices of the points of each group ``0 .. max``; an empty group raises unless ``allow_empty``."""
    labels = np.asarray(labels, dtype=np.int64)
    count = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    if count == 0:
        raise InputError('no point falls in any group (empty selection)')
    members = [np.nonzero(labels == g)[0] for g in range(count)]
    empty = [g + 1 for g, m in enumerate(members) if len(m) == 0]
    if empty and not allow_empty:
        raise InputError(f'group(s) {", ".join(map(str, empty))} hold no image (empty group)')
    return members


def centroids(amplitudes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean amplitudes ``(G, m)`` of the images of each group (its centroid conformation)."""
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    if len(amplitudes) != len(labels):
        raise InputError(f'{len(amplitudes)} amplitude rows for {len(labels)} group labels')
    return np.stack([amplitudes[m].mean(axis=0) for m in group_members(labels)])


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """One label per line (``-1`` = no group), atomically."""
    with atomic_path(path, suffix='.txt') as tmp:
        np.savetxt(tmp, np.asarray(labels, dtype=np.int64), fmt='%d')


def read_labels(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise InputError(f'{path}: no such group-label file')
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as error:
        raise InputError(f'{path}: not a file of integer group labels ({error})') from error
