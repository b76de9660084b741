"""Reconstruction and FSC: known truths, the clean reconstruction of a simulated map, CTF correction, the CLI."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from deephemnma.cli import main as cli
from deephemnma.data.formats import write_particles
from deephemnma.data.images import read_image, write_map, write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.data.stacks import array_batches
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.fsc import crossing_shell, fsc, soft_sphere_mask
from deephemnma.imaging.rotations import matrix_to_euler, random_rotations
from deephemnma.molecule.density import atoms_to_map
from deephemnma.runtime.distributed import rank_positions
from deephemnma.runtime.errors import InputError
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup
from deephemnma.space.reconstruct import FourierAccumulator, reconstruct

BOX, PIXEL, COUNT = 32, 2.5, 900
DEFOCUS = (6000.0, 16000.0)


@lru_cache(maxsize=1)
def dataset():
    """Clean and CTF-modulated projections of 4AKE chain A at random poses, the true map and the poses."""
    torch.set_num_threads(1)
    setup = paper_ak_setup()
    rng = np.random.default_rng(3)
    angles = matrix_to_euler(random_rotations(COUNT, rng))
    shifts = rng.uniform(-2.0, 2.0, (COUNT, 2))
    defocus = rng.uniform(*DEFOCUS, COUNT)
    zeros = np.zeros((COUNT, setup.num_modes))
    clean = simulate_particles(setup, zeros, angles, shifts, BOX, PIXEL).images
    ctf = CTFParams(defocus_u=torch.as_tensor(defocus), defocus_v=torch.as_tensor(defocus), voltage=200.0, cs=2.0,
                    amplitude_contrast=0.1)
    modulated = simulate_particles(setup, zeros, angles, shifts, BOX, PIXEL, ctf=ctf).images
    truth = atoms_to_map(setup.structure.coords, setup.structure.elements, BOX, PIXEL)
    return clean, modulated, truth, angles, shifts, defocus


def test_fsc_of_identical_maps_is_one_and_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16, 16))
    assert np.allclose(fsc(a, a).values, 1.0)
    b = a + rng.normal(size=a.shape)
    curve = fsc(a, b)
    # Direct computation on the full spectrum with the same rounded shells.
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(16, 1 / 16)
    shells = np.round(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
    for shell in (1, 4, 8):
        inside = shells == shell
        expected = np.real(np.sum(fa[inside] * np.conj(fb[inside]))) / np.sqrt(
            np.sum(np.abs(fa[inside]) ** 2) * np.sum(np.abs(fb[inside]) ** 2))
        assert curve.values[shell] == pytest.approx(expected, abs=1e-9)


def test_fsc_of_signal_plus_independent_noise_follows_snr():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(48, 48, 48))
    curve = fsc(signal + rng.normal(size=signal.shape), signal + rng.normal(size=signal.shape))
    # White signal and noise of equal variance: FSC = SNR / (1 + SNR) = 0.5 in every shell.
    assert np.abs(curve.values[6:] - 0.5).max() < 0.06
    assert crossing_shell(np.array([1.0, 0.9, 0.6, 0.4, 0.1]), 0.5) == pytest.approx(2.5)
    assert curve.resolution_angstrom(0.0) == pytest.approx(2.0)  # never below 0 in expectation: Nyquist


def test_clean_projections_reconstruct_to_nyquist_against_the_true_map():
    clean, _, truth, angles, shifts, _ = dataset()
    result = reconstruct(array_batches(clean, 300), angles, shifts, BOX, PIXEL)
    curve = fsc(result.volume, truth, PIXEL)
    assert curve.resolution_px(0.5) <= 2.3
    assert result.half_map_fsc().resolution_px(0.143) <= 2.3
    assert result.count == COUNT
    # Wrong shift signs must break it: the shift convention matters.
    wrong = reconstruct(array_batches(clean, 300), angles, -shifts, BOX, PIXEL)
    assert fsc(wrong.volume, truth, PIXEL).resolution_px(0.5) > 3.0


def test_ctf_correction_beats_no_correction():
    _, modulated, truth, angles, shifts, defocus = dataset()
    table = CTFParams(defocus, defocus, np.zeros(COUNT), 200.0, 2.0, 0.1)
    mask = soft_sphere_mask(BOX, 14, 2)
    corrected = reconstruct(array_batches(modulated, 300), angles, shifts, BOX, PIXEL, ctf=table, ctf_mode='full')
    uncorrected = reconstruct(array_batches(modulated, 300), angles, shifts, BOX, PIXEL)
    good = fsc(corrected.volume, truth, PIXEL, mask)
    bad = fsc(uncorrected.volume, truth, PIXEL, mask)
    assert good.area() > bad.area() + 0.2
    assert good.resolution_px(0.5) < 3.0


def test_padding_and_gridding_keep_the_map_scale():
    clean, _, truth, angles, shifts, _ = dataset()
    for pad, tolerance in ((1.0, 0.1), (2.0, 0.04)):
        result = reconstruct(array_batches(clean[:300], 300), angles[:300], shifts[:300], BOX, PIXEL, pad=pad)
        # Summing the map along z gives the image (potential per area): the map sums to truth * pixel size.
        assert result.volume.sum() / truth.sum() == pytest.approx(PIXEL, rel=tolerance)


def test_rank_shares_add_up_to_the_whole():
    clean, _, _, angles, shifts, _ = dataset()
    shares = [rank_positions(250, 64, rank, 3) for rank in range(3)]
    assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(250))
    # Accumulators of disjoint shares (as torchrun ranks make them) add up to the single-process sums.
    whole = FourierAccumulator(BOX, PIXEL)
    whole.insert(clean[:250], angles[:250], shifts[:250])
    parts = []
    for share in shares:
        part = FourierAccumulator(BOX, PIXEL)
        part.insert(clean[share], angles[share], shifts[share])
        parts.append(part)
    parts[0].add(parts[1])
    parts[0].add(parts[2])
    assert parts[0].count == 250
    assert np.allclose(parts[0].volume(), whole.volume(), atol=1e-4 * np.abs(whole.volume()).max())


def test_bad_inputs_are_refused():
    clean, _, _, angles, shifts, _ = dataset()
    with pytest.raises(InputError, match='no angles'):
        reconstruct(array_batches(clean[:10]), None, shifts[:10], BOX, PIXEL)
    with pytest.raises(InputError, match='do not match'):
        reconstruct(array_batches(clean[:10]), angles[:5], shifts[:5], BOX, PIXEL)
    with pytest.raises(InputError, match='needs the CTF'):
        reconstruct(array_batches(clean[:10]), angles[:10], shifts[:10], BOX, PIXEL, ctf_mode='full')
    with pytest.raises(InputError, match='empty group'):
        FourierAccumulator(BOX, PIXEL).volume()
    with pytest.raises(InputError, match='pixels'):
        FourierAccumulator(BOX, PIXEL).insert(clean[:2, :16, :16], angles[:2], shifts[:2])


def _write_dataset(folder: Path, count: int, shift_factor: float = 1.0) -> Path:
    _, modulated, _, angles, shifts, defocus = dataset()
    write_stack(folder / 'particles.mrcs', modulated[:count], PIXEL)
    particles = Particles(image=stack_locations('particles.mrcs', count), pixel_size=PIXEL, angles=angles[:count],
                          shifts=shifts[:count] * shift_factor, defocus_u=defocus[:count],
                          defocus_v=defocus[:count], defocus_angle=np.zeros(count), voltage=200.0, cs=2.0,
                          amplitude_contrast=0.1)
    return write_particles(folder / f'particles_{shift_factor:g}.star', particles)


def test_cli_groups_reference_and_pose_box(tmp_path, capsys):
    star = _write_dataset(tmp_path, 400)
    truth = dataset()[2]
    write_map(tmp_path / 'truth.mrc', truth, PIXEL)
    labels = np.repeat([0, 1, -1], [200, 150, 50])
    np.savetxt(tmp_path / 'labels.txt', labels, fmt='%d')
    assert cli.main(['reconstruct', '-i', str(star), '-o', str(tmp_path / 'maps'), '--ctf', 'full', '--groups',
                     str(tmp_path / 'labels.txt'), '--reference', str(tmp_path / 'truth.mrc'), '--threads',
                     '1']) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['group_001']['images'] == 200 and summary['group_002']['images'] == 150
    volume, pixel = read_image(tmp_path / 'maps' / 'group_001.mrc')
    assert volume.shape == (BOX,) * 3 and pixel == pytest.approx(PIXEL)
    report = json.loads((tmp_path / 'maps' / 'group_001_fsc.json').read_text())
    assert report['vs_reference']['resolution_05_angstrom'] < 4 * PIXEL
    # Poses estimated on images twice as large: shifts twice as large, scaled back with --pose-box.
    doubled = _write_dataset(tmp_path, 400, 2.0)
    assert cli.main(['reconstruct', '-i', str(doubled), '-o', str(tmp_path / 'scaled'), '--ctf', 'full',
                     '--pose-box', str(2 * BOX), '--threads', '1']) == 0
    assert cli.main(['reconstruct', '-i', str(star), '-o', str(tmp_path / 'plain'), '--ctf', 'full',
                     '--threads', '1']) == 0
    scaled, _ = read_image(tmp_path / 'scaled' / 'map.mrc')
    plain, _ = read_image(tmp_path / 'plain' / 'map.mrc')
    assert np.allclose(scaled, plain, atol=1e-4 * np.abs(plain).max())


def test_cli_refuses_missing_poses_and_count_mismatch(tmp_path):
    star = _write_dataset(tmp_path, 20)
    no_poses = Particles(image=stack_locations('particles.mrcs', 20), pixel_size=PIXEL)
    write_particles(tmp_path / 'no_poses.star', no_poses)
    with pytest.raises(InputError, match='no poses'):
        cli.main(['reconstruct', '-i', str(tmp_path / 'no_poses.star'), '-o', str(tmp_path / 'out')])
    np.savetxt(tmp_path / 'short.txt', np.zeros(5), fmt='%d')
    with pytest.raises(InputError, match='5 labels for 20 particles'):
        cli.main(['reconstruct', '-i', str(star), '-o', str(tmp_path / 'out'), '--groups',
                  str(tmp_path / 'short.txt')])
    too_many = Particles(image=stack_locations('particles.mrcs', 25), pixel_size=PIXEL,
                         angles=np.zeros((25, 3)), shifts=np.zeros((25, 2)))
    write_particles(tmp_path / 'too_many.star', too_many)
    with pytest.raises(InputError, match='holds 20 images'):
        cli.main(['reconstruct', '-i', str(tmp_path / 'too_many.star'), '-o', str(tmp_path / 'out')])
    np.savetxt(tmp_path / 'empty.txt', np.array([0] * 10 + [2] * 10), fmt='%d')
    with pytest.raises(InputError, match='empty group'):
        cli.main(['reconstruct', '-i', str(star), '-o', str(tmp_path / 'out'), '--groups',
                  str(tmp_path / 'empty.txt')])
