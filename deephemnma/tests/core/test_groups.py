"""Groups: polygons, axis slices, clustering, density peaks, centroids, and the groups/animate commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from deephemnma.cli import main as cli
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.runtime.errors import InputError
from deephemnma.space.groups import (
    automatic_labels,
    axis_slices,
    centroids,
    group_members,
    polygon_labels,
    read_labels,
    read_polygons,
    write_polygons,
)
from deephemnma.space.reduction import fit_space


def blobs(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    truth = np.repeat([0, 1, 2], [400, 300, 500])
    return centres[truth] + rng.normal(0, 1, (len(truth), 2)), truth


def test_polygons_select_exactly_the_points_inside(tmp_path):
    points = np.random.default_rng(1).uniform(-5, 5, (50_000, 2))
    square = np.array([[-1, -1], [2, -1], [2, 3], [-1, 3]], dtype=float)
    triangle = np.array([[0, 0], [4, 0], [0, 4]], dtype=float)
    write_polygons(tmp_path / 'sel.json', {'square': square, 'triangle': triangle})
    polygons = read_polygons(tmp_path / 'sel.json')
    assert list(polygons) == ['square', 'triangle']
    labels = polygon_labels(points, list(polygons.values()))
    in_square = (points[:, 0] > -1) & (points[:, 0] < 2) & (points[:, 1] > -1) & (points[:, 1] < 3)
    in_triangle = (points[:, 0] > 0) & (points[:, 1] > 0) & (points.sum(axis=1) < 4)
    assert np.array_equal(labels == 0, in_square)
    assert np.array_equal(labels == 1, in_triangle & ~in_square)
    assert np.array_equal(labels == -1, ~in_square & ~in_triangle)
    (tmp_path / 'bad.json').write_text('{"a": [[0, 0], [1, 1]]}')
    with pytest.raises(InputError, match='at least 3'):
        read_polygons(tmp_path / 'bad.json')
    (tmp_path / 'broken.json').write_text('{"a": ')
    with pytest.raises(InputError, match='broken.json'):
        read_polygons(tmp_path / 'broken.json')


def test_axis_slices_respect_the_minimum_and_the_order():
    values = np.random.default_rng(2).normal(size=10_000)
    labels = axis_slices(values, min_count=900, trim=0.01)
    sizes = np.bincount(labels[labels >= 0])
    assert sizes.min() >= 900 and len(sizes) >= 4
    assert (labels < 0).sum() == pytest.approx(200, abs=2)
    for group in range(len(sizes) - 1):
        assert values[labels == group].max() <= values[labels == group + 1].min()
    equal = axis_slices(np.random.default_rng(3).uniform(size=8990), min_count=899, equal_counts=True)
    assert np.all(np.abs(np.bincount(equal) - 899) <= 1)
    with pytest.raises(InputError, match='fewer than the minimum'):
        axis_slices(values[:100], min_count=900)


def test_clustering_recovers_separated_groups():
    points, truth = blobs()
    for method in ('kmeans', 'gmm', 'density_peaks'):
        labels = automatic_labels(points, method, 3)
        assert adjusted_rand_score(truth, labels) > 0.97, method
        # Groups are numbered by their mean first coordinate.
        means = [points[labels == g, 0].mean() for g in range(3)]
        assert means == sorted(means)
    with pytest.raises(InputError, match='number of groups'):
        automatic_labels(points, 'kmeans')


def test_centroids_and_empty_groups():
    amplitudes = np.arange(12, dtype=float).reshape(6, 2)
    labels = np.array([0, 0, 1, 1, 1, -1])
    assert np.allclose(centroids(amplitudes, labels), [[1, 2], [6, 7]])
    with pytest.raises(InputError, match='empty group'):
        group_members(np.array([0, 0, 2]))
    with pytest.raises(InputError, match='empty selection'):
        group_members(np.array([-1, -1]))


def test_cli_groups_polygons_and_subsets(tmp_path, capsys):
    points, truth = blobs(4)
    amplitudes = np.column_stack([points, np.zeros(len(points))])
    particles = Particles(image=stack_locations('stack.mrcs', len(points)), amplitudes=amplitudes,
                          angles=np.zeros((len(points), 3)), shifts=np.zeros((len(points), 2)))
    write_particles(tmp_path / 'particles.star', particles)
    assert cli.main(['space', '-i', f'pred={tmp_path / "particles.star"}', '-o', str(tmp_path / 'space'),
                     '--no-plot']) == 0
    space = fit_space({'pred': amplitudes}, 'pca', 2)
    # A polygon around the blob of the largest group, in space coordinates.
    centre = space.coords[truth == 2].mean(axis=0)
    write_polygons(tmp_path / 'pick.json', {'blob': centre + 3.5 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])})
    assert cli.main(['groups', '--space', str(tmp_path / 'space' / 'space.pkl'), '--method', 'polygons',
                     '--polygons', str(tmp_path / 'pick.json'), '-o', str(tmp_path / 'picked'), '--particles',
                     str(tmp_path / 'particles.star')]) == 0
    labels = read_labels(tmp_path / 'picked' / 'labels.txt')
    assert adjusted_rand_score(truth == 2, labels == 0) > 0.95
    subset = read_particles(tmp_path / 'picked' / 'group_001.star')
    assert len(subset) == (labels == 0).sum()
    assert np.allclose(subset.amplitudes, amplitudes[labels == 0], atol=1e-5)
    capsys.readouterr()
    assert cli.main(['groups', '--space', str(tmp_path / 'space' / 'space.pkl'), '--method', 'kmeans',
                     '--groups', '3', '-o', str(tmp_path / 'km')]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.abs(np.sort(summary['groups']) - [300, 400, 500]).max() <= 3
    rows = np.loadtxt(tmp_path / 'km' / 'centroids.txt', ndmin=2)
    labels = read_labels(tmp_path / 'km' / 'labels.txt')
    assert np.allclose(rows, centroids(amplitudes, labels), atol=1e-5)
    with pytest.raises(InputError, match='do not match'):
        write_particles(tmp_path / 'short.star', particles.subset(np.arange(10)))
        cli.main(['groups', '--space', str(tmp_path / 'space' / 'space.pkl'), '--method', 'kmeans', '--groups',
                  '2', '-o', str(tmp_path / 'x'), '--particles', str(tmp_path / 'short.star')])


def test_cli_animate_centroids_and_axes(tmp_path, capsys):
    from PIL import Image

    from deephemnma.molecule.structure import read_structure
    from deephemnma.simulate.setup import paper_ak_setup
    setup = paper_ak_setup(coarse='CA')
    setup.modes.save(tmp_path / 'modes.npz')
    rng = np.random.default_rng(7)
    r = rng.uniform(0, 1, 300)
    amplitudes = 100 * np.stack([r, np.sin(np.pi * r), np.cos(np.pi * r)], axis=1)
    np.savetxt(tmp_path / 'amplitudes.txt', amplitudes)
    assert cli.main(['space', '-i', str(tmp_path / 'amplitudes.txt'), '-o', str(tmp_path / 'space'),
                     '--no-plot']) == 0
    assert cli.main(['groups', '--space', str(tmp_path / 'space' / 'space.pkl'), '--min-count', '100',
                     '-o', str(tmp_path / 'groups')]) == 0
    assert cli.main(['animate', '--modes', str(tmp_path / 'modes.npz'), '--space',
                     str(tmp_path / 'space' / 'space.pkl'), '--centroids', str(tmp_path / 'groups' / 'centroids.txt'),
                     '--axes', '1', '2', '--frames', '5', '--box', '32', '--pixel-size', '3.0',
                     '-o', str(tmp_path / 'anim')]) == 0
    rows = np.loadtxt(tmp_path / 'groups' / 'centroids.txt', ndmin=2)
    centroid = read_structure(tmp_path / 'anim' / 'centroid_001.pdb')
    expected = setup.structure.coords + np.tensordot(rows[0], setup.modes.vectors, axes=1)
    assert np.abs(centroid.coords - expected).max() < 2e-3
    assert (tmp_path / 'anim' / 'centroid_001.mrc').exists()
    text = (tmp_path / 'anim' / 'axis_1.pdb').read_text()
    assert text.count('MODEL') == 5
    # The middle frame of a PCA axis is the mean conformation.
    models = text.split('ENDMDL')
    middle = np.array([[float(line[30:38]), float(line[38:46]), float(line[46:54])]
                       for line in models[2].splitlines() if line.startswith('ATOM')])
    mean_shape = setup.structure.coords + np.tensordot(amplitudes.mean(axis=0), setup.modes.vectors, axes=1)
    assert np.abs(middle - mean_shape).max() < 2e-3
    gif = Image.open(tmp_path / 'anim' / 'axis_2.gif')
    assert gif.n_frames == 8 and gif.size == (32, 32)
    with pytest.raises(InputError, match='modes'):
        cli.main(['animate', '--modes', str(tmp_path / 'modes.npz'), '--select', '7', '8', '--centroids',
                  str(tmp_path / 'groups' / 'centroids.txt'), '--no-maps', '-o', str(tmp_path / 'bad')])
