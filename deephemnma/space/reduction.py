"""The conformational space: normal-mode amplitudes reduced to 2 or 3 dimensions.

Each point is one image; near points are similar conformations. Methods: PCA (the default, as in the paper),
kernel PCA, Isomap, spectral embedding, LTSA (local tangent space alignment) and t-SNE from scikit-learn, and
UMAP when the ``umap-learn`` package is installed. Amplitudes are used as they are (no units; their scale is
set by the unit-norm mode vectors, see :mod:`deephemnma.nma.elastic`); ``standardise`` scales each mode to unit
variance first.

The space can be fitted on several amplitude sets at once (e.g. ``'predicted'`` by the network and
``'hemnma'`` estimated by alignment); every point keeps its source name and its index within its source.
PCA, kernel PCA, Isomap and UMAP can place new points (:meth:`Space.transform`); spectral embedding, LTSA and
t-SNE cannot, which is said clearly. :meth:`Space.inverse_transform` maps space coordinates back to amplitudes:
exactly for PCA, by kernel PCA's learned pre-image, and otherwise as the distance-weighted mean amplitudes of
the nearest fitted points (a local, data-driven inverse). Neighbour-graph methods cost O(n^2) memory or time;
fit them on a subset (``fit_on``) or a sample and transform the rest where the method allows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from deephemnma.data.formats import read_particles
from deephemnma.nma.modes import check_amplitude_table
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

METHODS = ('pca', 'kernel_pca', 'isomap', 'spectral', 'ltsa', 'tsne', 'umap')
TRANSFORMABLE = ('pca', 'kernel_pca', 'isomap', 'umap')
_INVERSE_NEIGHBOURS = 10


def _estimator(method: str, n_components: int, seed: int, neighbours: int, perplexity: float):
    """A scikit-learn (or umap-learn) estimator for ``method``."""
    from sklearn import decomposition, manifold
    if method == 'pca':
        return decomposition.PCA(n_components=n_components, random_state=seed)
    if method == 'kernel_pca':
        return decomposition.KernelPCA(n_components=n_components, kernel='rbf', fit_inverse_transform=True,
                                       random_state=seed)
    if method == 'isomap':
        return manifold.Isomap(n_components=n_components, n_neighbors=neighbours)
    if method == 'spectral':
        return manifold.SpectralEmbedding(n_components=n_components, n_neighbors=neighbours, random_state=seed)
    if method == 'ltsa':
        return manifold.LocallyLinearEmbedding(n_components=n_components, n_neighbors=neighbours, method='ltsa',
                                               eigen_solver='dense', random_state=seed)
    if method == 'tsne':
        return manifold.TSNE(n_components=n_components, perplexity=perplexity, random_state=seed, init='pca')
    if method == 'umap':
        try:
            import umap
        except ImportError as error:
            raise InputError("the 'umap' reduction needs the umap-learn package: pip install umap-learn") from error
        return umap.UMAP(n_components=n_components, n_neighbors=neighbours, random_state=seed)
    raise InputError(f"unknown reduction method '{method}' (choose one of {', '.join(METHODS)})")


@dataclass
class Space:
    """A fitted space: the points' coordinates, their source and index within it, and the fitted model."""

    method: str
    coords: np.ndarray
    sources: np.ndarray
    source_index: np.ndarray
    amplitudes: np.ndarray
    estimator: object
    mean: np.ndarray
    scale: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.coords.shape[1])

    def __len__(self) -> int:
        return len(self.coords)

    def source_names(self) -> list:
        return list(dict.fromkeys(self.sources.tolist()))

    def of_source(self, name: str) -> np.ndarray:
        """Coordinates of the points of one source, in their original order."""
        mask = self.sources == name
        if not mask.any():
            raise InputError(f"the space has no points from '{name}' (it has: {', '.join(self.source_names())})")
        order = np.argsort(self.source_index[mask], kind='stable')
        return self.coords[mask][order]

    def transform(self, amplitudes: np.ndarray) -> np.ndarray:
        """Space coordinates of new amplitude vectors ``(n, m)`` (PCA, kernel PCA, Isomap, UMAP only)."""
        amplitudes = check_amplitude_table(amplitudes, 'new amplitudes', self.mean.shape[0])
        if self.method not in TRANSFORMABLE:
            raise InputError(f"the '{self.method}' reduction cannot place new points; refit the space with them "
                             f"or use one of {', '.join(TRANSFORMABLE)}")
        return np.asarray(self.estimator.transform((amplitudes - self.mean) / self.scale), dtype=np.float64)

    def inverse_transform(self, coords: np.ndarray) -> np.ndarray:
        """Amplitudes ``(n, m)`` of space points ``(n, k)`` (see the module docstring for each method)."""
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        if coords.shape[1] != self.n_components:
            raise InputError(f'points of {coords.shape[1]} coordinates given to a {self.n_components}-D space')
        if self.method in ('pca', 'kernel_pca'):
            standard = self.estimator.inverse_transform(coords)
            return standard * self.scale + self.mean
        return neighbour_average(self.coords, self.amplitudes, coords, _INVERSE_NEIGHBOURS)

    def save(self, path: str | os.PathLike) -> None:
        """Save the whole fitted space (joblib pickle), atomically."""
        import joblib
        with atomic_path(path, suffix='.pkl') as tmp:
            joblib.dump(self, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'Space':
        import joblib
        if not os.path.exists(path):
            raise InputError(f'{path}: no such space file')
        try:
            space = joblib.load(path)
        except Exception as error:  # a corrupt or foreign pickle: say which file
            raise InputError(f'{path}: not a saved space ({error})') from error
        if not isinstance(space, cls):
            raise InputError(f'{path}: holds a {type(space).__name__}, not a saved space')
        return space

    def write_coordinates(self, path: str | os.PathLike) -> None:
        """CSV of ``source, index, c1 .. ck`` (one row per point), atomically."""
        header = 'source,index,' + ','.join(f'c{i + 1}' for i in range(self.n_components))
        with atomic_path(path, suffix='.csv') as tmp, open(tmp, 'w') as handle:
            handle.write(header + '\n')
            for source, index, row in zip(self.sources, self.source_index, self.coords):
                handle.write(f'{source},{int(index)},' + ','.join(f'{v:.8g}' for v in row) + '\n')


def fit_space(amplitude_sets: Mapping[str, np.ndarray], method: str = 'pca', n_components: int = 2,
              fit_on: Optional[Sequence[str]] = None, standardise: bool = False, neighbours: int = 15,
              perplexity: float = 30.0, seed: int = 0) -> Space:
    """Fit a space on the sets named in ``fit_on`` (default all) and place every set's points in it.

    ``amplitude_sets`` maps a source name (e.g. 'predicted', 'hemnma') to ``(n_i, m)`` amplitudes. Sets not
    fitted on are transformed (only with PCA, kernel PCA, Isomap, UMAP).
    """
    if method not in METHODS:
        raise InputError(f"unknown reduction method '{method}' (choose one of {', '.join(METHODS)})")
    if not amplitude_sets:
        raise InputError('no amplitudes given to build a space from')
    sets = {name: check_amplitude_table(values, f"amplitudes '{name}'") for name, values in amplitude_sets.items()}
    modes = {values.shape[1] for values in sets.values()}
    if len(modes) != 1:
        raise InputError(f'amplitude sets have different numbers of modes: '
                         f'{ {name: v.shape[1] for name, v in sets.items()} }')
    fit_on = list(fit_on) if fit_on else list(sets)
    unknown = [name for name in fit_on if name not in sets]
    if unknown:
        raise InputError(f"cannot fit on unknown source(s) {', '.join(unknown)} (given: {', '.join(sets)})")
    if method not in TRANSFORMABLE and len(fit_on) != len(sets):
        raise InputError(f"the '{method}' reduction cannot place points it was not fitted on: fit it on all sets")
    fitted = np.concatenate([sets[name] for name in fit_on])
    num_modes = fitted.shape[1]
    if n_components < 1 or (method == 'pca' and n_components > num_modes):
        raise InputError(f'{n_components} component(s) asked of a {method} space of {num_modes} mode(s)')
    if len(fitted) <= n_components:
        raise InputError(f'{len(fitted)} point(s) are too few for a {n_components}-D space')
    mean = fitted.mean(axis=0)
    scale = fitted.std(axis=0) if standardise else np.ones(num_modes)
    scale = np.where(scale > 0, scale, 1.0)
    estimator = _estimator(method, n_components, seed, min(neighbours, len(fitted) - 1), perplexity)
    fitted_coords = np.asarray(estimator.fit_transform((fitted - mean) / scale), dtype=np.float64)
    space_coords, sources, indices, amplitudes = [], [], [], []
    offset = 0
    for name in fit_on:
        count = len(sets[name])
        space_coords.append(fitted_coords[offset:offset + count])
        offset += count
    for name in [n for n in sets if n not in fit_on]:
        space_coords.append(np.asarray(estimator.transform((sets[name] - mean) / scale), dtype=np.float64))
    for name in fit_on + [n for n in sets if n not in fit_on]:
        sources.append(np.full(len(sets[name]), name, dtype=object))
        indices.append(np.arange(len(sets[name])))
        amplitudes.append(sets[name])
    return Space(method, np.concatenate(space_coords), np.concatenate(sources).astype(str),
                 np.concatenate(indices), np.concatenate(amplitudes), estimator, mean, scale)


def neighbour_average(points: np.ndarray, values: np.ndarray, queries: np.ndarray, neighbours: int) -> np.ndarray:
    """Inverse-distance weighted mean of ``values`` at the ``neighbours`` nearest ``points`` of each query."""
    from sklearn.neighbors import NearestNeighbors
    k = min(neighbours, len(points))
    distances, index = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(queries)
    weights = 1.0 / np.maximum(distances, 1e-12)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum('qk,qkm->qm', weights, values[index])


def axis_points(space: Space, axis: int, frames: int, spread: float = 2.0) -> np.ndarray:
    """``frames`` points along ``axis`` (0-based) through the space's mean, covering +-``spread`` std.

    The other coordinates are those of the mean of the fitted points (0 for PCA).
    """
    if not 0 <= axis < space.n_components:
        raise InputError(f'axis {axis + 1} does not exist in a {space.n_components}-D space')
    if frames < 2:
        raise InputError(f'an animation needs at least 2 frames, not {frames}')
    centre = space.coords.mean(axis=0)
    std = space.coords[:, axis].std()
    points = np.repeat(centre[None, :], frames, axis=0)
    points[:, axis] = centre[axis] + np.linspace(-spread * std, spread * std, frames)
    return points


#: Particle metadata formats whose amplitudes an amplitude set may come from.
_METADATA = ('.star', '.xmd', '.csv')


def read_amplitude_set(spec: str) -> Tuple[str, np.ndarray, Optional[np.ndarray]]:
    """``NAME=FILE`` or ``FILE`` -> (name, amplitudes (n, m), score (n,) or None)."""
    name, _, path_text = spec.rpartition('=')
    path = Path(path_text)
    name = name or path.stem
    if path.suffix.lower() in _METADATA:
        particles = read_particles(path)
        if particles.amplitudes is None:
            raise InputError(f'{path}: the particles have no normal-mode amplitudes')
        return name, np.asarray(particles.amplitudes).reshape(len(particles), -1), particles.score
    if not path.exists():
        raise InputError(f'{path}: no such amplitude file')
    try:
        values = np.load(path) if path.suffix.lower() == '.npy' else np.loadtxt(path, ndmin=2)
    except ValueError as error:
        raise InputError(f'{path}: not a numeric amplitude table ({error})') from error
    return name, np.asarray(values, dtype=np.float64).reshape(len(values), -1), None
