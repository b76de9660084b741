"""Data in outside conventions: a RELION-style export, a cryoSPARC .cs file and ChimeraX's frame.

Data (fixed seed): the project's simulator writes a RELION 3.1-style export of all-atom adenylate kinase (4AKE
chain A, modes 7-9, helix amplitudes, uniform orientations): inverted contrast, not phase-flipped, three optics
groups (300 kV / Cs 2.7 / AC 0.1; 200 kV / Cs 2.0 / AC 0.07; 300 kV with a 90 degree phase plate), astigmatic
defocus 0.8-2 um per micrograph, one stack per micrograph (``--micrographs``, 2,100 by default), 64 px of 2.2 A,
SNR 0.1, and the same particles in the project's own convention (phase-flipped, protein positive).

Figures:

* ``export_within_15_over_own`` and ``export_amp_mae_over_own``: HEMNMA (``deephemnma align`` as the README says
  for RELION/cryoSPARC particles: ``--ctf full``, contrast detected) on ``--hemnma-count`` particles of the export
  (a subset written as the parent's rows) against the same particles in the project's convention (the defaults);
  fractions of orientations within 15 degrees of the truth and amplitude errors, their ratios.
* ``contrast_detected_correctly``: ``--invert-data auto``'s decision on 512 images, right for both signs of raw
  and of phase-flipped images (the t statistics are reported).
* ``star_roundtrip_lossless``: the export read and written back keeps every column, optics row and value (text
  compared), and a subset is the parent's rows. On 100,000 rows of the export (best of 3):
  ``star_parse_100k_seconds`` the STAR parser (text tables), ``star_read_100k_seconds`` the whole reading into
  particles (numbers, optics per particle, every column kept for writing), ``emtable_parse_100k_seconds`` Scipion's
  STAR parser (emtable) on the same file.
* ``cs_roundtrip_ok``: the export's particles written as a cryoSPARC ``.cs`` file (orientation as cryoSPARC
  stores it) read back to the same poses (within 0.01 degree), shifts, CTF and half sets.
* ``chimerax_overlay_cc``: the 3 group maps of ``deephemnma reconstruct`` (export images with their STAR poses,
  grouped by ``deephemnma groups`` on the true amplitudes) against the map of each group's centroid PDB from
  ``deephemnma animate``: the PDB read by gemmi, the map by mrcfile, both placed by the origin and voxel size in
  the files and compared after a 6 A Gaussian low-pass (smallest of the 3 correlations).

Examples::

    deephemnma bench realdata
    deephemnma bench realdata --hemnma-count 100 --micrographs 2000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.star import read_star_tables, write_star_tables
from deephemnma.imaging.contrast import contrast_evidence, is_inverted
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg
from deephemnma.simulate.export import (
    EXPORT_STAR,
    MODES,
    OWN_STAR,
    ExportTruth,
    simulate_relion_export,
    write_cryosparc_particles,
)
from deephemnma.simulate.setup import paper_ak_setup

BOX, PIXEL, SNR = 64, 2.2, 0.1


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--micrographs', type=int, default=2100, help='stacks of the export (one particle each)')
    parser.add_argument('--hemnma-count', type=int, default=300, help='particles aligned in each convention')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads of the commands')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--keep', help='folder to keep the data and results in (default: a temporary one)')


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix='bench-realdata-') as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        truth = simulate_relion_export(folder, paper_ak_setup((7, 8, 9)), args.micrographs, BOX, PIXEL, SNR,
                                       args.seed)
        figures: Dict[str, object] = {'particles': len(truth.group), 'stacks': int(truth.micrograph.max() + 1),
                                      'optics_groups': 3, 'box': BOX, 'pixel_size': PIXEL, 'snr': SNR,
                                      'simulation_seconds': time.perf_counter() - start}
        figures.update(hemnma_comparison(folder, truth, args))
        figures.update(contrast_decisions(folder))
        figures.update(star_round_trip(folder))
        figures.update(cs_round_trip(folder))
        figures.update(chimerax_overlay(folder, truth, args.threads))
    return figures


# ----------------------------------------------------------------------------------------------
# HEMNMA on the export against the project's convention
# ----------------------------------------------------------------------------------------------
def hemnma_comparison(folder: Path, truth: ExportTruth, args: argparse.Namespace) -> dict:
    rows = np.sort(np.random.default_rng(args.seed).choice(len(truth.group), args.hemnma_count, replace=False))
    scores = {}
    for name, star, options in (('export', EXPORT_STAR, ['--ctf', 'full']), ('own', OWN_STAR, [])):
        subset = folder / f'hemnma_{name}_input.star'
        write_particles(subset, read_particles(folder / star).resolved((folder / star).parent).subset(rows))
        output = folder / f'hemnma_{name}.star'
        summary = command(['align', '-i', subset, '--modes', folder / MODES, '-o', output, '--quiet',
                           '--threads', args.threads, *options])
        aligned = read_particles(output)
        angle = geodesic_angle_deg(euler_to_matrix(aligned.angles), euler_to_matrix(truth.angles[rows]))
        scores[name] = {'within_15': float(np.mean(angle <= 15.0)), 'angle_median_deg': float(np.median(angle)),
                        'amp_mae': float(np.abs(aligned.amplitudes - truth.amplitudes[rows]).mean()),
                        'shift_mae_px': float(np.abs(aligned.shifts - truth.shifts[rows]).mean()),
                        'contrast': summary.get('contrast'),
                        'within_15_by_optics_group': [float(np.mean(angle[truth.group[rows] == g] <= 15.0))
                                                      for g in range(3)]}
    return {'hemnma_images': int(args.hemnma_count), 'hemnma_export': scores['export'], 'hemnma_own': scores['own'],
            'export_within_15_over_own': scores['export']['within_15'] / scores['own']['within_15'],
            'export_amp_mae_over_own': scores['export']['amp_mae'] / scores['own']['amp_mae']}


def command(arguments: Sequence) -> dict:
    """Run ``deephemnma ARGUMENTS`` as a user would; its JSON summary (the last line printed)."""
    finished = subprocess.run([sys.executable, '-m', 'deephemnma.cli.main', *map(str, arguments)],
                              capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f'deephemnma {arguments[0]} failed ({finished.returncode}): {finished.stderr[-2000:]}')
    return json.loads(finished.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Contrast
# ----------------------------------------------------------------------------------------------
def contrast_decisions(folder: Path, sample: int = 512) -> dict:
    """--invert-data auto on raw (export) and phase-flipped (own) images, each as written and negated."""
    from deephemnma.data.stacks import ImageSource
    evidence, correct = {}, True
    for name, star, state, inverted in (('raw', EXPORT_STAR, 'full', True), ('flipped', OWN_STAR, 'phase_flipped',
                                                                             False)):
        particles = read_particles(folder / star).resolved((folder / star).parent)
        rows = np.unique(np.linspace(0, len(particles) - 1, sample).astype(np.int64))
        images = ImageSource(particles.image[rows]).read(np.arange(len(rows)))
        for sign, expected in ((1.0, inverted), (-1.0, not inverted)):
            t = contrast_evidence(sign * images, particles.ctf().rows(rows), state, particles.pixel_size)
            evidence[f'{name}_{"inverted" if expected else "expected"}'] = t
            correct &= is_inverted('auto', t) == expected
    return {'contrast_detected_correctly': bool(correct), 'contrast_t': evidence}


# ----------------------------------------------------------------------------------------------
# STAR and .cs round trips
# ----------------------------------------------------------------------------------------------
def star_round_trip(folder: Path) -> dict:
    source = folder / EXPORT_STAR
    original = read_star_tables(source)
    particles = read_particles(source)
    copy, subset_path = folder / 'roundtrip.star', folder / 'roundtrip_subset.star'
    write_particles(copy, particles, located_in=folder)
    rows = np.arange(0, len(particles), 7)
    write_particles(subset_path, particles.subset(rows), located_in=folder)
    written, subset = read_star_tables(copy), read_star_tables(subset_path)
    lossless = tables_equal(original, written) and tables_equal(
        {'optics': original['optics'], 'particles': {k: [v[i] for i in rows] for k, v in
                                                     original['particles'].items()}}, subset)
    big = {'optics': original['optics'], 'particles': {k: (v * (100_000 // len(v) + 1))[:100_000]
                                                       for k, v in original['particles'].items()}}
    big_path = folder / 'rows_100k.star'
    write_star_tables(big_path, big, header='# version 30001')
    return {'star_roundtrip_lossless': bool(lossless), 'star_parse_100k_seconds': _seconds(read_star_tables, big_path),
            'star_read_100k_seconds': _seconds(read_particles, big_path),
            'emtable_parse_100k_seconds': _emtable_seconds(big_path)}


def _seconds(function, *args) -> float:
    """The best of three wall times of ``function(*args)`` (s)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def _emtable_seconds(path: Path) -> Optional[float]:
    """Scipion's STAR reader (emtable) on the same file, the baseline of the same run (None where not installed)."""
    try:
        from emtable import Table
    except ImportError:
        return None
    return _seconds(lambda: Table(fileName=str(path), tableName='particles'))


def tables_equal(expected: Dict[str, Dict[str, List[str]]], found: Dict[str, Dict[str, List[str]]]) -> bool:
    """Every block, column and row of ``expected`` in ``found``: the same text or the same number."""
    for block, table in expected.items():
        other = found.get(block, {})
        if set(table) != set(other):
            return False
        for column, values in table.items():
            if len(values) != len(other[column]) or any(a != b and not _same_number(a, b)
                                                        for a, b in zip(values, other[column])):
                return False
    return True


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def cs_round_trip(folder: Path) -> dict:
    particles = read_particles(folder / EXPORT_STAR).resolved(folder)
    path = folder / 'particles.cs'
    write_cryosparc_particles(path, particles, folder)
    back = read_particles(path).resolved(folder)
    angle = geodesic_angle_deg(euler_to_matrix(back.angles), euler_to_matrix(particles.angles))
    f32 = np.float32
    ctf_same = all(np.allclose(getattr(back, name), f32(getattr(particles, name)), rtol=1e-6, atol=1e-4)
                   for name in ('defocus_u', 'defocus_v', 'defocus_angle', 'phase_shift', 'voltage', 'cs',
                                'amplitude_contrast'))
    same = bool(angle.max() <= 0.01 and np.abs(back.shifts - particles.shifts).max() <= 1e-4 and ctf_same
                and np.array_equal(back.half, particles.half) and list(back.locations()) == list(particles.locations()))
    return {'cs_roundtrip_ok': same, 'cs_max_angle_error_deg': float(angle.max())}


# ----------------------------------------------------------------------------------------------
# ChimeraX frame
# ----------------------------------------------------------------------------------------------
def chimerax_overlay(folder: Path, truth: ExportTruth, threads: int) -> dict:
    amplitudes = folder / 'true_amplitudes.txt'
    np.savetxt(amplitudes, truth.amplitudes)
    command(['space', '-i', amplitudes, '-o', folder / 'space', '--no-plot'])
    command(['groups', '--space', folder / 'space' / 'space.pkl', '-o', folder / 'groups', '--method', 'kmeans',
             '--groups', 3])
    command(['reconstruct', '-i', folder / EXPORT_STAR, '-o', folder / 'maps', '--groups',
             folder / 'groups' / 'labels.txt', '--ctf', 'full', '--threads', threads])
    maps = sorted((folder / 'maps').glob('group_[0-9][0-9][0-9].mrc'))
    command(['animate', '--modes', folder / MODES, '--centroids', folder / 'groups' / 'centroids.txt', '--box', BOX,
             '--pixel-size', PIXEL, '-o', folder / 'animate', '--no-gif', '--group-maps', *maps])
    correlations = [placed_correlation(path, folder / 'animate' / path.name.replace('group_', 'centroid_')
                                       .replace('.mrc', '.pdb')) for path in maps]
    return {'chimerax_overlay_cc': min(correlations), 'chimerax_overlay_cc_by_group': correlations,
            'chimerax_script': (folder / 'animate' / 'chimerax.cxc').exists()}


def placed_correlation(map_path: Path, pdb_path: Path, resolution: float = 6.0) -> float:
    """Correlation of the map in ``map_path`` with a Gaussian-atom map of ``pdb_path`` on its grid, both placed
    by the files' own origin and voxel size (mrcfile, gemmi), after a Gaussian low-pass to ``resolution`` A."""
    import gemmi
    import mrcfile
    from scipy.ndimage import gaussian_filter
    with mrcfile.open(map_path, permissive=True) as mrc:
        volume = np.asarray(mrc.data, dtype=np.float64)  # indexed z, y, x
        voxel = float(mrc.voxel_size.x)
        origin = np.array([float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z)])
    structure = gemmi.read_structure(str(pdb_path))
    atoms = np.array([atom.pos.tolist() for chain in structure[0] for residue in chain for atom in residue])
    index = (atoms - origin) / voxel  # fractional voxel index (x, y, z)
    model = np.zeros_like(volume)
    inside = np.all((index >= 0) & (index <= np.array(volume.shape[::-1]) - 1), axis=1)
    nearest = np.rint(index[inside]).astype(int)
    np.add.at(model, (nearest[:, 2], nearest[:, 1], nearest[:, 0]), 1.0)
    sigma = resolution / (2.0 * voxel)
    smooth_map, smooth_model = gaussian_filter(volume, sigma), gaussian_filter(model, sigma)
    return float(np.corrcoef(smooth_map.ravel(), smooth_model.ravel())[0, 1])
