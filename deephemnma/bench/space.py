"""The conformational space: PCA ordering of the helix, distinct group maps, and plotting 1,000,000 points.

* ``pc1_spearman``: |Spearman correlation| between the first principal component of the paper's helix
  amplitudes (q7 = 200 r, q8 = 200 sin(pi r), q9 = 200 cos(pi r), r uniform in [0, 1]; ground truth) and r.
  ``pc1_spearman_estimated``: the same for estimated amplitudes given with ``--estimated FILE`` (a particle
  file with amplitudes, or a table) and their true r in ``--truth-r FILE``; null otherwise.
* ``groups_distinct``: images of all-atom 4AKE chain A on the helix are simulated (64 x 64 at 1.5 A/px,
  CTF at 200 kV / Cs 2 mm / defocus 0.5-1.5 um, total SNR 0.1, true poses and amplitudes); the space is the
  PCA of the true amplitudes; the first axis is sliced automatically (quasi-uniform slices of at least
  ``--min-count`` images); each group is reconstructed with its true poses (CTF-corrected) and compared (FSC
  area inside a soft spherical mask) with the map simulated from every group's centroid conformation. True
  when every group's map agrees best with its own centroid's map. The FSC-area matrix is reported.
* ``viewer_1m_seconds``: seconds to draw and save the space of 1,000,000 points coloured by density (and by
  source, the slower mode; the larger time is reported).

Examples::

    deephemnma bench space
    deephemnma bench space --images 2400 --min-count 600
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from scipy.stats import spearmanr

from deephemnma.data.stacks import array_batches
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.fsc import fsc, soft_sphere_mask
from deephemnma.imaging.rotations import matrix_to_euler, random_rotations
from deephemnma.simulate.conformations import helix
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup
from deephemnma.space.centroids import conformation_maps
from deephemnma.space.groups import axis_slices, centroids, group_members
from deephemnma.space.plots import save_space_plot
from deephemnma.space.reconstruct import reconstruct
from deephemnma.space.reduction import fit_space


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--helix-count', type=int, default=20000, help='helix points for pc1_spearman')
    parser.add_argument('--estimated', help='estimated amplitudes (particle file or table) for the same figure')
    parser.add_argument('--truth-r', help='true helix parameter r of each estimated row (text, one per line)')
    parser.add_argument('--images', type=int, default=3600, help='simulated images for groups_distinct')
    parser.add_argument('--min-count', type=int, default=900, help='minimum images per group (the paper: 900)')
    parser.add_argument('--box', type=int, default=64)
    parser.add_argument('--pixel-size', type=float, default=1.5)
    parser.add_argument('--snr', type=float, default=0.1)
    parser.add_argument('--points', type=int, default=1_000_000, help='points of the plotting test')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)


def pc1_spearman(amplitudes: np.ndarray, r: np.ndarray) -> float:
    """|Spearman rho| between the first PCA coordinate of ``amplitudes`` and ``r``."""
    space = fit_space({'amplitudes': amplitudes}, 'pca', 1 if amplitudes.shape[1] == 1 else 2)
    return float(abs(spearmanr(space.coords[:, 0], r).correlation))


def _estimated_figure(args: argparse.Namespace) -> Optional[float]:
    if not args.estimated or not args.truth_r:
        return None
    from deephemnma.space.reduction import read_amplitude_set
    _, amplitudes, _ = read_amplitude_set(args.estimated)
    return round(pc1_spearman(amplitudes, np.loadtxt(args.truth_r).reshape(-1)), 4)


def groups_distinct(images: int, min_count: int, box: int, pixel_size: float, snr: float,
                    seed: int) -> Dict[str, object]:
    """Simulate helix images, slice PC1, reconstruct groups and compare with the centroid maps."""
    setup = paper_ak_setup()
    rng = np.random.default_rng(seed)
    conformations = helix(images, rng)
    angles = matrix_to_euler(random_rotations(images, rng))
    shifts = rng.uniform(-3.0, 3.0, (images, 2))
    defocus = rng.uniform(5000.0, 15000.0, images)
    ctf = CTFParams(defocus_u=torch.as_tensor(defocus), defocus_v=torch.as_tensor(defocus), voltage=200.0,
                    cs=2.0, amplitude_contrast=0.1)
    stack = simulate_particles(setup, conformations.amplitudes, angles, shifts, box, pixel_size, ctf=ctf, snr=snr,
                               seed=seed).images
    space = fit_space({'true': conformations.amplitudes}, 'pca', 2)
    labels = axis_slices(space.coords[:, 0], min_count)
    members = group_members(labels)
    centre_amplitudes = centroids(conformations.amplitudes, labels)
    centroid_maps = conformation_maps(setup.modes, centre_amplitudes, box, pixel_size)
    table = CTFParams(defocus, defocus, np.zeros(images), 200.0, 2.0, 0.1)
    mask = soft_sphere_mask(box, 0.42 * box, 4.0)
    areas = np.zeros((len(members), len(members)))
    for group, indices in enumerate(members):
        result = reconstruct(array_batches(stack[indices], 256), angles[indices], shifts[indices], box, pixel_size,
                             ctf=table.rows(indices), ctf_mode='full')
        for other, reference in enumerate(centroid_maps):
            areas[group, other] = fsc(result.volume, reference, pixel_size, mask).area()
    distinct = bool(all(areas[g, g] > np.delete(areas[g], g).max() for g in range(len(members))))
    return {'groups_distinct': distinct, 'group_sizes': [int(len(m)) for m in members],
            'fsc_area_matrix': np.round(areas, 4).tolist()}


def viewer_seconds(points: int, seed: int) -> float:
    """Seconds to draw and save a space of ``points`` points (density and source colouring; the larger)."""
    rng = np.random.default_rng(seed)
    coords = np.concatenate([rng.normal(0, 1, (points // 2, 2)), rng.normal(3, 0.7, (points - points // 2, 2))])
    sources = np.where(rng.random(points) < 0.5, 'predicted', 'hemnma')
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for colour in ('density', 'source'):
            started = time.perf_counter()
            save_space_plot(Path(folder) / f'space_{colour}.png', coords, colour, sources=sources)
            times.append(time.perf_counter() - started)
    return max(times)


def run(args: argparse.Namespace) -> Dict[str, object]:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    conformations = helix(args.helix_count, rng)
    figures: Dict[str, object] = {
        'pc1_spearman': round(pc1_spearman(conformations.amplitudes, conformations.labels), 4),
        'pc1_spearman_estimated': _estimated_figure(args)}
    figures['viewer_1m_seconds'] = round(viewer_seconds(args.points, args.seed), 3)
    started = time.perf_counter()
    figures.update(groups_distinct(args.images, args.min_count, args.box, args.pixel_size, args.snr, args.seed))
    figures['groups_seconds'] = round(time.perf_counter() - started, 1)
    figures['images'] = args.images
    return figures
