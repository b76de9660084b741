"""Data in outside conventions: RELION 3.1 STAR files as RELION writes them, cryoSPARC .cs particles, the contrast
of exported images, HEMNMA on a RELION-style export, maps that overlay their structures in ChimeraX's frame, and
a bounded number of open stacks.

Independent paths: ``relion31_two_optics_groups.star`` is written by hand in the layout of a RELION 3.1
refinement (padded columns, trailing blanks, two optics groups, phase shifts, random subsets) and read by emtable,
Scipion's own STAR reader, as the reference; the ``.cs`` poses are made with scipy's Euler conventions (the
rotation cryoSPARC stores is the transpose of RELION's, as cryoDRGN and pyem convert it); the overlay reads the
PDB with gemmi and the map with mrcfile.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest
from emtable import Table as EmTable
from scipy.spatial.transform import Rotation

from deephemnma.data import stacks
from deephemnma.data.cryosparc import read_cs
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.images import write_map, write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.data.star import read_star_tables
from deephemnma.imaging.contrast import contrast_evidence, is_inverted
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg
from deephemnma.runtime.errors import InputError
from deephemnma.simulate.export import (
    EXPORT_STAR,
    MODES,
    OWN_STAR,
    THREE_MICROSCOPES,
    ExportTruth,
    simulate_relion_export,
    write_cryosparc_particles,
)
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup
from deephemnma.space.centroids import write_centroids
from deephemnma.space.reconstruct import reconstruct
from deephemnma.space.reduction import fit_space
from deephemnma.tests.commands import run

RELION_STAR = Path(__file__).resolve().parents[1] / 'data' / 'relion31_two_optics_groups.star'


# ----------------------------------------------------------------------------------------------
# RELION 3.1 STAR
# ----------------------------------------------------------------------------------------------
class TestRelionStar:
    def test_each_particle_gets_its_optics_group_as_emtable_reads_it(self):
        particles = read_particles(RELION_STAR)
        optics = {row.rlnOpticsGroup: row for row in EmTable(fileName=str(RELION_STAR), tableName='optics')}
        rows = list(EmTable(fileName=str(RELION_STAR), tableName='particles'))
        group = [optics[row.rlnOpticsGroup] for row in rows]
        np.testing.assert_array_equal(particles.voltage, [g.rlnVoltage for g in group])
        np.testing.assert_array_equal(particles.cs, [g.rlnSphericalAberration for g in group])
        np.testing.assert_array_equal(particles.amplitude_contrast, [g.rlnAmplitudeContrast for g in group])
        assert particles.pixel_size == 1.66 and particles.box == 64
        np.testing.assert_array_equal(particles.phase_shift, [r.rlnPhaseShift for r in rows])
        np.testing.assert_array_equal(particles.defocus_v, [r.rlnDefocusV for r in rows])
        np.testing.assert_array_equal(particles.half, [r.rlnRandomSubset for r in rows])
        np.testing.assert_allclose(particles.shifts * 1.66, [[r.rlnOriginXAngst, r.rlnOriginYAngst] for r in rows])
        ctf = particles.ctf()
        assert ctf.phase_shift[2] == 87.5 and ctf.voltage[2] == 200.0

    def test_round_trip_keeps_every_column_optics_row_and_value(self, tmp_path):
        original = read_star_tables(RELION_STAR)
        particles = read_particles(RELION_STAR)
        write_particles(tmp_path / 'copy.star', particles, located_in=RELION_STAR.parent)
        assert read_star_tables(tmp_path / 'copy.star') == original
        rows = np.array([3, 0])
        write_particles(tmp_path / 'subset.star', particles.subset(rows), located_in=RELION_STAR.parent)
        subset = read_star_tables(tmp_path / 'subset.star')
        assert subset['optics'] == original['optics']
        assert subset['particles'] == {name: [values[i] for i in rows]
                                       for name, values in original['particles'].items()}

    def test_changed_values_are_written_and_the_rest_kept(self, tmp_path):
        particles = read_particles(RELION_STAR)
        particles.angles = particles.angles + 1.0
        write_particles(tmp_path / 'moved.star', particles, located_in=RELION_STAR.parent)
        written = read_star_tables(tmp_path / 'moved.star')['particles']
        original = read_star_tables(RELION_STAR)['particles']
        np.testing.assert_allclose(np.array(written['rlnAngleRot'], float),
                                   np.array(original['rlnAngleRot'], float) + 1.0, atol=1e-6)
        assert written['rlnMicrographName'] == original['rlnMicrographName']
        assert written['rlnLogLikeliContribution'] == original['rlnLogLikeliContribution']

    def test_mixed_pixel_sizes_are_refused_naming_the_sizes(self, tmp_path):
        text = RELION_STAR.read_text().replace(' 1.660000           64            2 \n \n',
                                               ' 1.100000           64            2 \n \n', 1)
        mixed = tmp_path / 'mixed.star'
        mixed.write_text(text)
        with pytest.raises(InputError) as error:
            read_particles(mixed)
        message = str(error.value)
        assert str(mixed) in message and '1.1' in message and '1.66' in message and 'rescale' in message

    def test_particles_of_an_unknown_optics_group_are_refused(self, tmp_path):
        text = RELION_STAR.read_text().replace('FoilHole_2_Data_7_fractions.mrc            2',
                                               'FoilHole_2_Data_7_fractions.mrc            3', 1)
        broken = tmp_path / 'broken.star'
        broken.write_text(text)
        with pytest.raises(InputError, match='optics group.*3'):
            read_particles(broken)


# ----------------------------------------------------------------------------------------------
# cryoSPARC
# ----------------------------------------------------------------------------------------------
def cryosparc_array(angles: np.ndarray) -> np.ndarray:
    """A .cs structure as cryoSPARC writes it, poses made with scipy: cryoSPARC's rotation is the transpose of
    RELION's ``A(rot, tilt, psi)``, i.e. scipy's intrinsic ZYZ rotation of (rot, tilt, psi)."""
    count = len(angles)
    dtype = [('uid', '<u8'), ('blob/path', 'S64'), ('blob/idx', '<u4'), ('blob/shape', '<u4', (2,)),
             ('blob/psize_A', '<f4'), ('ctf/accel_kv', '<f4'), ('ctf/cs_mm', '<f4'), ('ctf/amp_contrast', '<f4'),
             ('ctf/df1_A', '<f4'), ('ctf/df2_A', '<f4'), ('ctf/df_angle_rad', '<f4'), ('ctf/phase_shift_rad', '<f4'),
             ('alignments3D/split', '<u4'), ('alignments3D/shift', '<f4', (2,)), ('alignments3D/pose', '<f4', (3,)),
             ('alignments3D/psize_A', '<f4')]
    data = np.zeros(count, dtype=dtype)
    data['uid'] = np.arange(count) + 10**18
    data['blob/path'] = [f'J3/extract/mic_{i // 2:03d}_particles.mrc'.encode() for i in range(count)]
    data['blob/idx'] = np.arange(count) % 2
    data['blob/shape'] = 64
    data['blob/psize_A'] = 1.3
    data['ctf/accel_kv'], data['ctf/cs_mm'], data['ctf/amp_contrast'] = 300.0, 2.7, 0.1
    data['ctf/df1_A'] = 12000.0 + 100 * np.arange(count)
    data['ctf/df2_A'] = data['ctf/df1_A'] - 400.0
    data['ctf/df_angle_rad'] = 0.5
    data['ctf/phase_shift_rad'] = np.pi / 2
    data['alignments3D/split'] = np.arange(count) % 2
    data['alignments3D/shift'] = np.stack([np.linspace(-2, 2, count), np.linspace(1, -1, count)], axis=1)
    data['alignments3D/pose'] = Rotation.from_euler('ZYZ', angles, degrees=True).as_rotvec()
    data['alignments3D/psize_A'] = 2.6  # poses of a binned refinement: shifts in its pixels
    return data


class TestCryosparc:
    def test_poses_ctf_and_halves_as_cryosparc_stores_them(self, tmp_path):
        angles = np.random.default_rng(4).uniform([-180, 0, -180], [180, 180, 180], (12, 3))
        path = tmp_path / 'J5_passthrough_particles.cs'
        with open(path, 'wb') as handle:  # a .cs file is a .npy file under another name
            np.save(handle, cryosparc_array(angles))
        particles = read_cs(path)
        errors = geodesic_angle_deg(euler_to_matrix(particles.angles), euler_to_matrix(angles))
        assert errors.max() < 0.01
        np.testing.assert_allclose(particles.shifts[:, 0], np.linspace(-2, 2, 12) * 2, atol=1e-5)
        assert particles.pixel_size == pytest.approx(1.3) and particles.box == 64
        np.testing.assert_allclose(particles.defocus_u, 12000.0 + 100 * np.arange(12))
        np.testing.assert_allclose(particles.defocus_angle, np.degrees(0.5), rtol=1e-6)
        np.testing.assert_allclose(particles.phase_shift, 90.0, rtol=1e-6)
        assert particles.voltage == 300.0 and particles.cs == pytest.approx(2.7)
        np.testing.assert_array_equal(particles.half, np.arange(12) % 2 + 1)
        assert particles.image[3] == '2@J3/extract/mic_001_particles.mrc'

    def test_written_cs_reads_back_to_the_same_particles(self, tmp_path):
        particles = read_particles(RELION_STAR)
        path = tmp_path / 'particles.cs'
        write_cryosparc_particles(path, particles, RELION_STAR.parent)
        back = read_cs(path)
        assert geodesic_angle_deg(euler_to_matrix(back.angles), euler_to_matrix(particles.angles)).max() < 0.01
        np.testing.assert_allclose(back.shifts, particles.shifts, atol=1e-4)
        for name in ('defocus_u', 'defocus_v', 'defocus_angle', 'phase_shift', 'voltage', 'cs', 'amplitude_contrast'):
            np.testing.assert_allclose(getattr(back, name), getattr(particles, name), rtol=1e-6, atol=1e-4)
        assert [location for location in back.locations(RELION_STAR.parent)] == \
            [location for location in particles.locations(RELION_STAR.parent)]

    def test_not_a_particle_file_is_refused(self, tmp_path):
        path = tmp_path / 'passthrough.cs'
        with open(path, 'wb') as handle:
            np.save(handle, np.zeros(3, dtype=[('uid', '<u8')]))
        with pytest.raises(InputError, match='blob/path'):
            read_cs(path)


# ----------------------------------------------------------------------------------------------
# Contrast
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('phase_flipped', [False, True])
@pytest.mark.parametrize('inverted', [False, True])
def test_contrast_is_detected_for_both_signs(ca_setup, phase_flipped, inverted):
    count, box, pixel = 96, 32, 4.4
    rng = np.random.default_rng(5)
    defocus = rng.uniform(8000, 20000, count)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus - 300.0, defocus_angle=np.zeros(count))
    images = simulate_particles(ca_setup, rng.uniform(-100, 100, (count, 3)), rng.uniform(-180, 180, (count, 3)),
                                np.zeros((count, 2)), box, pixel, ctf, snr=0.1, seed=5, phase_flip=phase_flipped,
                                invert_contrast=inverted).images
    evidence = contrast_evidence(images, ctf, 'phase_flipped' if phase_flipped else 'full', pixel)
    assert is_inverted('auto', evidence) == inverted, evidence
    assert abs(evidence) > 5.0


# ----------------------------------------------------------------------------------------------
# HEMNMA on a RELION-style export
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def export(tmp_path_factory) -> Path:
    """24 particles of adenylate kinase (all atoms, modes 7-9) in a RELION-style export of 64 px of 2.2 A: three
    optics groups, inverted, raw CTF, one stack per micrograph (12), and the same particles in the project's
    convention."""
    folder = tmp_path_factory.mktemp('export')
    simulate_relion_export(folder, paper_ak_setup((7, 8, 9)), micrographs=12, box=64, pixel_size=2.2, snr=1.0,
                           seed=3, per_micrograph=2)
    return folder


class TestExport:
    def test_export_reads_as_relion_wrote_it(self, export):
        particles = read_particles(export / EXPORT_STAR)
        truth = ExportTruth.load(export / 'truth.npz')
        assert len({location.split('@')[1] for location in particles.image}) == 12
        np.testing.assert_array_equal(particles.voltage, [THREE_MICROSCOPES[g].voltage for g in truth.group])
        np.testing.assert_array_equal(particles.phase_shift, [THREE_MICROSCOPES[g].phase_shift for g in truth.group])
        assert geodesic_angle_deg(euler_to_matrix(particles.angles), euler_to_matrix(truth.angles)).max() < 0.01

    def test_alignment_of_the_export_equals_that_of_the_project_convention(self, export, tmp_path):
        """Local refinement from the STAR poses: the inverted raw-CTF export (``--ctf full``, contrast detected)
        and the phase-flipped copy (the defaults) must give the same estimates, and near the truth."""
        truth = ExportTruth.load(export / 'truth.npz')
        own = read_particles(export / OWN_STAR)
        own.angles, own.shifts = truth.angles, truth.shifts
        write_particles(tmp_path / 'own.star', own.resolved((export / OWN_STAR).parent))
        common = ['--modes', export / MODES, '--local-refine', '--device', 'cpu', '--threads', '1',
                  '--angular-step', '15', '--top-k', '4', '--resolutions', '10', '7', '5', '--quiet']
        results = {}
        for name, source, options in (('export', export / EXPORT_STAR, ['--ctf', 'full']),
                                      ('own', tmp_path / 'own.star', [])):
            result = run('align', '-i', source, '-o', tmp_path / f'{name}_aligned.star', *common, *options)
            assert result.status == 0, result.err
            summary = json.loads(result.out.strip().splitlines()[-1])
            results[name] = (summary, read_particles(tmp_path / f'{name}_aligned.star'))
        assert results['export'][0]['contrast']['inverted'] is True
        assert results['own'][0]['contrast']['inverted'] is False
        exported, own_aligned = results['export'][1], results['own'][1]
        np.testing.assert_allclose(exported.amplitudes, own_aligned.amplitudes, atol=0.01)
        errors = geodesic_angle_deg(euler_to_matrix(exported.angles), euler_to_matrix(truth.angles))
        assert np.median(errors) < 2.0, errors  # measured 0.5
        assert np.abs(exported.amplitudes - truth.amplitudes).mean() < 10.0  # measured 3.4 (range -200..200)


# ----------------------------------------------------------------------------------------------
# ChimeraX's frame
# ----------------------------------------------------------------------------------------------
def test_centroid_structure_sits_in_its_map(ca_modes, tmp_path):
    """gemmi's atoms of the written PDB against the density centre of the written map, placed by its origin."""
    modes = ca_modes.centred()
    box, pixel = 48, 2.0
    write_centroids(tmp_path, modes, np.full((1, len(modes)), 30.0), box, pixel)
    structure = gemmi.read_structure(str(tmp_path / 'centroid_001.pdb'))
    atoms = np.array([atom.pos.tolist() for residue in structure[0][0] for atom in residue])
    with mrcfile.open(tmp_path / 'centroid_001.mrc') as mrc:
        density = np.asarray(mrc.data, dtype=np.float64)
        origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z])
        voxel = float(mrc.voxel_size.x)
    z, y, x = np.indices(density.shape)
    centre = np.array([(density * axis).sum() for axis in (x, y, z)]) / density.sum() * voxel + origin
    assert np.linalg.norm(centre - atoms.mean(axis=0)) < 0.5 * pixel


def test_animate_writes_a_chimerax_script_that_opens_what_it_names(ca_modes, tmp_path):
    """Group maps with their centroids, the axis animation with a slider and the axis map series, every file the
    script opens present where the script says (relative to its folder)."""
    ca_modes.save(tmp_path / 'modes.npz')
    amplitudes = np.random.default_rng(6).normal(0.0, 50.0, (200, len(ca_modes)))
    fit_space({'hemnma': amplitudes}, 'pca', 2).save(tmp_path / 'space.pkl')
    np.savetxt(tmp_path / 'centroids.txt', amplitudes[:2])
    write_map(tmp_path / 'group_001.mrc', np.zeros((16, 16, 16)), 3.0)
    out = tmp_path / 'animate'
    result = run('animate', '--modes', tmp_path / 'modes.npz', '--space', tmp_path / 'space.pkl', '--centroids',
                 tmp_path / 'centroids.txt', '--box', 16, '--pixel-size', 3.0, '--frames', 3, '--no-gif',
                 '--map-series', '--group-maps', tmp_path / 'group_001.mrc', '-o', out)
    assert result.status == 0, result.err
    script = (out / 'chimerax.cxc').read_text()
    for line in ('open centroid_001.pdb', 'open centroid_002.mrc', 'open ../group_001.mrc',
                 'open axis_1.pdb coordsets true', 'open axis_1_frame_01.mrc axis_1_frame_02.mrc axis_1_frame_03.mrc '
                 'vseries true'):
        assert line in script.splitlines(), (line, script)
    assert 'coordset slider' in script and 'vseries slider' in script
    opened = [name for line in script.splitlines() if line.startswith('open ')
              for name in line.split()[1:] if '.' in name]
    assert all((out / name).exists() for name in opened), opened


def test_half_maps_follow_the_random_subsets():
    """Images of subset 2 are blank: with the subsets its half map is empty, with even/odd both halves fill."""
    box, count = 16, 40
    rng = np.random.default_rng(7)
    images = rng.normal(0.0, 1.0, (count, box, box)).astype(np.float32)
    halves = np.where(np.arange(count) < count // 2, 1, 2)
    images[halves == 2] = 0.0
    angles = rng.uniform(-180, 180, (count, 3))
    shifts = np.zeros((count, 2))
    by_subset = reconstruct([(np.arange(count), images)], angles, shifts, box, 2.0, halves=halves)
    by_parity = reconstruct([(np.arange(count), images)], angles, shifts, box, 2.0)
    assert np.abs(by_subset.half_maps[1]).max() == 0.0 < np.abs(by_subset.half_maps[0]).max()
    assert np.abs(by_parity.half_maps[1]).max() > 0.0


def test_a_group_inside_one_random_subset_is_split_even_odd(tmp_path):
    """RELION's subsets rule the half maps, but a group whose images all lie in one subset (a small group can)
    is reconstructed from even and odd images instead, said on stderr and in its FSC file, not refused."""
    box, count = 16, 12
    rng = np.random.default_rng(8)
    write_stack(tmp_path / 'p.mrcs', rng.normal(0.0, 1.0, (count, box, box)).astype(np.float32), 2.0)
    half = np.array([1, 2] * 4 + [1] * 4)
    particles = Particles(image=np.array(stack_locations('p.mrcs', count)), pixel_size=2.0,
                          angles=rng.uniform(-180, 180, (count, 3)), shifts=np.zeros((count, 2)), half=half)
    write_particles(tmp_path / 'p.star', particles)
    np.savetxt(tmp_path / 'labels.txt', [0] * 8 + [1] * 4, fmt='%d')
    assert read_particles(tmp_path / 'p.star').half.tolist() == half.tolist()
    result = run('reconstruct', '-i', tmp_path / 'p.star', '--groups', tmp_path / 'labels.txt', '-o',
                 tmp_path / 'maps')
    assert result.status == 0, result.err
    assert 'group_002: its 4 images all lie in half set 1' in result.err
    summaries = {g: json.loads((tmp_path / 'maps' / f'{g}_fsc.json').read_text()) for g in ('group_001', 'group_002')}
    assert [(s['images'], s['half_sets']) for s in summaries.values()] == [(8, 'given'), (4, 'even/odd')]


# ----------------------------------------------------------------------------------------------
# Open stacks
# ----------------------------------------------------------------------------------------------
def test_open_stacks_stay_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(stacks, 'MAX_OPEN_STACKS', 3)
    images = np.arange(12 * 2 * 4 * 4, dtype=np.float32).reshape(12, 2, 4, 4)
    for number, pair in enumerate(images):
        write_stack(tmp_path / f'mic_{number:02d}.mrcs', pair, 1.0)
    locations = [f'{i % 2 + 1}@mic_{i // 2:02d}.mrcs' for i in range(24)]
    source = stacks.ImageSource(locations, base_dir=tmp_path)
    before = len(os.listdir('/proc/self/fd'))
    order = np.random.default_rng(0).permutation(24)
    read = np.concatenate([source.read([i]) for i in order])
    np.testing.assert_array_equal(read, images.reshape(24, 4, 4)[order])
    assert len(source._open) <= 3
    assert len(os.listdir('/proc/self/fd')) - before <= 3


def test_particles_stack_locations_are_read_inverted(tmp_path):
    write_stack(tmp_path / 'p.mrcs', np.ones((2, 4, 4), dtype=np.float32), 1.0)
    source = stacks.ImageSource(stack_locations(str(tmp_path / 'p.mrcs'), 2), invert=True)
    np.testing.assert_array_equal(source.read([0, 1]), -np.ones((2, 4, 4)))
