"""The conformational space: reductions against references, sources, transform/inverse, save/reload, plots, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from deephemnma.cli import main as cli
from deephemnma.data.formats import write_particles
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.runtime.errors import InputError
from deephemnma.space.plots import auto_bins, binned_image, save_fsc_plot, save_map_slices, save_space_plot
from deephemnma.space.reduction import METHODS, Space, axis_points, fit_space


def helix_amplitudes(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    r = rng.uniform(0, 1, count)
    return 200 * np.stack([r, np.sin(np.pi * r), np.cos(np.pi * r)], axis=1), r


def test_pca_matches_svd_and_orders_the_helix():
    amplitudes, r = helix_amplitudes(2000)
    space = fit_space({'true': amplitudes}, 'pca', 2)
    centred = amplitudes - amplitudes.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    for axis in range(2):
        assert np.allclose(np.abs(space.coords[:, axis]), np.abs(expected[:, axis]), atol=1e-8)
    assert abs(spearmanr(space.coords[:, 0], r).correlation) > 0.99


def test_sources_transform_and_inverse():
    hemnma, _ = helix_amplitudes(300, 1)
    predicted = hemnma + np.random.default_rng(2).normal(0, 5, hemnma.shape)
    space = fit_space({'hemnma': hemnma, 'predicted': predicted}, 'pca', 2, fit_on=['hemnma'])
    assert space.source_names() == ['hemnma', 'predicted']
    assert np.allclose(space.of_source('predicted'), space.transform(predicted))
    assert np.array_equal(space.source_index[space.sources == 'predicted'], np.arange(300))
    # PCA inverse: back-projection onto the fitted plane, exact for points in the plane.
    plane = space.inverse_transform(space.coords[:5])
    assert np.allclose(space.transform(plane), space.coords[:5], atol=1e-8)
    full = fit_space({'hemnma': hemnma}, 'pca', 3)
    assert np.allclose(full.inverse_transform(full.coords[:5]), hemnma[:5], atol=1e-8)


def test_every_method_runs_and_isomap_unrolls_the_helix():
    amplitudes, r = helix_amplitudes(250, 3)
    for method in METHODS:
        if method == 'umap':
            try:
                space = fit_space({'a': amplitudes}, method, 2)
            except InputError as error:
                assert 'umap-learn' in str(error)
                continue
        else:
            space = fit_space({'a': amplitudes}, method, 2, neighbours=12, perplexity=20)
        assert space.coords.shape == (250, 2) and np.all(np.isfinite(space.coords))
    isomap = fit_space({'a': amplitudes}, 'isomap', 1, neighbours=10)
    assert abs(spearmanr(isomap.coords[:, 0], r).correlation) > 0.99
    # The local inverse of non-linear spaces returns amplitudes near the fitted ones.
    back = isomap.inverse_transform(isomap.coords[:20])
    assert np.abs(back - amplitudes[:20]).max() < 20.0
    with pytest.raises(InputError, match='cannot place new points'):
        fit_space({'a': amplitudes}, 'tsne', 2, perplexity=20).transform(amplitudes[:3])
    with pytest.raises(InputError, match='fit it on all sets'):
        fit_space({'a': amplitudes, 'b': amplitudes}, 'spectral', 2, fit_on=['a'])


def test_save_reload_and_bad_inputs(tmp_path):
    amplitudes, _ = helix_amplitudes(200, 4)
    space = fit_space({'a': amplitudes}, 'kernel_pca', 2)
    space.save(tmp_path / 'space.pkl')
    loaded = Space.load(tmp_path / 'space.pkl')
    assert np.allclose(loaded.coords, space.coords)
    assert np.allclose(loaded.transform(amplitudes[:7]), space.transform(amplitudes[:7]))
    points = axis_points(loaded, 0, 5, 2.0)
    assert np.allclose(points[:, 0] - points[2, 0], np.linspace(-2, 2, 5) * loaded.coords[:, 0].std())
    (tmp_path / 'junk.pkl').write_text('not a pickle')
    with pytest.raises(InputError, match='junk.pkl'):
        Space.load(tmp_path / 'junk.pkl')
    with pytest.raises(InputError, match='different numbers of modes'):
        fit_space({'a': amplitudes, 'b': amplitudes[:, :2]})
    with pytest.raises(InputError, match='NaN'):
        fit_space({'a': np.full((5, 3), np.nan)})
    with pytest.raises(InputError, match='unknown reduction'):
        fit_space({'a': amplitudes}, 'magic')
    with pytest.raises(InputError, match='modes'):
        space.transform(amplitudes[:, :2])


def test_plots_bin_every_point(tmp_path):
    rng = np.random.default_rng(5)
    coords = rng.normal(size=(200_000, 2))
    counts = binned_image(coords, (-6, 6, -6, 6), 100)
    inside = np.all(np.abs(coords) < 6, axis=1).sum()
    assert counts.sum() == 200_000 and counts.sum() >= inside
    sources = np.where(rng.random(200_000) < 0.3, 'predicted', 'hemnma')
    for colour in ('density', 'source', 'score'):
        save_space_plot(tmp_path / f'{colour}.png', coords, colour, values=coords[:, 0], sources=sources)
        assert (tmp_path / f'{colour}.png').stat().st_size > 5000
    with pytest.raises(InputError, match='one score per point'):
        save_space_plot(tmp_path / 'x.png', coords, 'score')
    # bins follow the number of points: small spaces get large bins, a million points the finest
    assert (auto_bins(120), auto_bins(3000), auto_bins(1_000_000)) == (50, 110, 400)
    from deephemnma.imaging.fsc import fsc
    volume = rng.normal(size=(16, 16, 16))
    save_fsc_plot(tmp_path / 'fsc.png', {'self': fsc(volume, volume, 2.0)})
    save_map_slices(tmp_path / 'slices.png', volume)
    assert (tmp_path / 'fsc.png').exists() and (tmp_path / 'slices.png').exists()


def test_cli_space_with_two_sources_and_transform(tmp_path, capsys):
    hemnma, _ = helix_amplitudes(120, 6)
    predicted = hemnma + 3.0
    particles = Particles(image=stack_locations('s.mrcs', 120), amplitudes=predicted, score=np.linspace(0, 1, 120))
    write_particles(tmp_path / 'predicted.star', particles)
    np.savetxt(tmp_path / 'hemnma.txt', hemnma)
    assert cli.main(['space', '-i', f'predicted={tmp_path / "predicted.star"}', '-i', str(tmp_path / 'hemnma.txt'),
                     '--fit-on', 'hemnma', '-o', str(tmp_path / 'space')]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['sources'] == {'hemnma': 120, 'predicted': 120}
    assert sum(summary['explained_variance_ratio']) > 0.99
    for name in ('space.pkl', 'coordinates.csv', 'space_density.png', 'space_source.png'):
        assert (tmp_path / 'space' / name).exists()
    space = Space.load(tmp_path / 'space' / 'space.pkl')
    assert np.allclose(space.of_source('predicted'), space.transform(predicted))
    assert cli.main(['space', '--load', str(tmp_path / 'space' / 'space.pkl'), '--transform',
                     str(tmp_path / 'hemnma.txt'), '-o', str(tmp_path / 'new')]) == 0
    assert np.allclose(np.loadtxt(tmp_path / 'new' / 'coordinates.txt'), space.of_source('hemnma'), atol=1e-6)
    no_amplitudes = Particles(image=stack_locations('s.mrcs', 4))
    write_particles(tmp_path / 'bare.star', no_amplitudes)
    with pytest.raises(InputError, match='no normal-mode amplitudes'):
        cli.main(['space', '-i', str(tmp_path / 'bare.star'), '-o', str(tmp_path / 'bad')])
