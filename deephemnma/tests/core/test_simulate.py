"""The particle simulator: projection conventions and exactness, CTF and noise physics, outputs and resuming."""
import json

import numpy as np
import pytest
import torch

from deephemnma.bench.simulate import ctf_zero_errors, voxel_projection_cc
from deephemnma.data.formats import read_particles
from deephemnma.data.images import read_stack, stack_info
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.filters import fourier_crop
from deephemnma.imaging.noise import measured_snr
from deephemnma.imaging.projection import AtomModel, DirectProjector, project_fourier
from deephemnma.imaging.rotations import euler_to_matrix_torch
from deephemnma.molecule.structure import check_fits
from deephemnma.runtime.errors import InputError
from deephemnma.simulate import conformations as conf
from deephemnma.simulate import physics as S
from deephemnma.simulate.config import SimulationConfig, validate_config
from deephemnma.simulate.dataset import (
    AMPLITUDES_NAME,
    CONFIG_NAME,
    STACK_NAME,
    STAR_NAME,
    TRUTH_NAME,
    XMD_NAME,
    simulate_to_disk,
)
from deephemnma.simulate.parameters import chunk_seed, sample_angles, sample_parameters, sample_shifts
from deephemnma.simulate.setup import paper_ak_setup

CTF = CTFParams(defocus_u=5000.0, defocus_v=5000.0, voltage=200.0, cs=2.0, amplitude_contrast=0.1)


def _poses(count, seed=0, scale=30.0):
    rng = np.random.default_rng(seed)
    return (conf.helix(count, rng, scale=scale).amplitudes, sample_angles(count, rng),
            sample_shifts(count, rng, 3.0))


def test_single_atom_lands_where_the_conventions_say():
    """rot = 90 maps an atom at +x to -y (Xmipp A r); a shift s draws the particle at -s."""
    box, pixel = 64, 1.0
    coords = np.array([[10.0, 0.0, 0.0]])
    projector = DirectProjector(coords, np.zeros((1, 1, 3)), AtomModel.from_elements(['C']), box, pixel)
    rotations = euler_to_matrix_torch(torch.tensor([[90.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    shifts = torch.tensor([[0.0, 0.0], [2.0, -3.0]])
    images = torch.fft.irfft2(projector.project(projector.coords.expand(2, -1, -1), rotations, shifts),
                              s=(box, box))
    peaks = [np.unravel_index(int(torch.argmax(image)), image.shape) for image in images]
    assert peaks[0] == (box // 2 - 10, box // 2)          # (row y, column x): A r = (0, -10, 0)
    assert peaks[1] == (box // 2 + 3, box // 2 + 10 - 2)  # drawn at (10, 0) - (2, -3)
    # The image integrates the atom's scattering: sum of Peng's a (Angstrom) over the pixel area.
    from deephemnma.molecule.scattering import gaussian_parameters
    a, _ = gaussian_parameters(['C'])
    assert float(images[0].sum()) == pytest.approx(a.sum() / pixel ** 2, rel=1e-4)


@pytest.mark.parametrize('box', [48, 33])
def test_direct_projector_equals_reference_projector(ca_setup, box):
    amplitudes, angles, shifts = _poses(6)
    pixel = 2.0
    projector = ca_setup.projector(box, pixel)
    coords = S.deform(projector.coords, projector.vectors, torch.as_tensor(amplitudes, dtype=torch.float32))
    rotations = euler_to_matrix_torch(torch.as_tensor(angles, dtype=torch.float32))
    shifts_t = torch.as_tensor(shifts, dtype=torch.float32)
    fast = projector.project(coords, rotations, shifts_t)
    reference_coords = S.deform(ca_setup.structure.coords, ca_setup.modes.vectors,
                                torch.as_tensor(amplitudes, dtype=torch.float64))
    reference = project_fourier(reference_coords, ca_setup.model, rotations.double(), shifts_t.double(), box, pixel)
    assert float((fast - reference).abs().max() / reference.abs().max()) < 2e-5


def test_projection_agrees_with_an_independent_voxel_path(ca_setup):
    rng = np.random.default_rng(3)
    angles = sample_angles(3, rng)
    shifts = sample_shifts(3, rng, 3.0)
    cc = voxel_projection_cc(ca_setup, angles, shifts, box=48, pixel_size=1.6, oversampling=2)
    assert cc.min() > 0.99, cc


def test_oversampling_then_cropping_equals_the_direct_band_limited_image(ca_setup):
    amplitudes, angles, shifts = _poses(4, seed=1)
    direct = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 40, 2.0, ctf=CTF)
    fine = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 40, 2.0, ctf=CTF, oversampling=2)
    assert np.abs(fine.images - direct.images).max() < 2e-4 * np.abs(direct.images).max()
    # fourier_crop keeps a band-limited image's values: a constant stays the same constant.
    assert torch.allclose(fourier_crop(torch.full((1, 64, 64), 3.0), 32), torch.full((1, 32, 32), 3.0))


@pytest.mark.parametrize('scope', ['dataset', 'image'])
def test_noise_reaches_the_target_snr(ca_setup, scope):
    amplitudes, angles, shifts = _poses(48, seed=2)
    out = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 64, 1.3, ctf=CTF, snr=0.1, seed=5,
                               snr_scope=scope, return_clean=True)
    snr = measured_snr(torch.as_tensor(out.images), torch.as_tensor(out.clean)).numpy()
    noise = out.images - out.clean
    assert noise.var() == pytest.approx(1.0, rel=0.03)  # images are scaled to unit noise variance
    if scope == 'image':
        assert np.all(np.abs(snr / 0.1 - 1) < 0.1), snr  # variance estimates from 4,096 pixels: ~2% each
        assert snr.mean() == pytest.approx(0.1, rel=0.02)
    else:
        assert out.clean.var(axis=(1, 2)).mean() / noise.var(axis=(1, 2)).mean() == pytest.approx(0.1, rel=0.03)
        assert np.std(snr) > 0.005  # one noise level: the SNR follows each image's own signal


def test_snr_on_the_simulation_grid_is_the_snr_before_the_fourier_crop(ca_setup):
    """With snr_grid='simulation' the SNR holds on the 4x finer images (the paper's 256 px of 0.325 A): the crop
    to the output keeps the signal below its Nyquist frequency and 1/16 of the white noise, so the output's SNR
    is 16 * snr * (signal variance on the output grid / on the fine grid); the noise keeps unit variance."""
    amplitudes, angles, shifts = _poses(48, seed=6)
    box, pixel, factor = 32, 2.6, 4
    out = S.simulate_particles(ca_setup, amplitudes, angles, shifts, box, pixel, ctf=CTF, snr=0.1, seed=5,
                               oversampling=factor, snr_grid='simulation', return_clean=True)
    clean_fine = S.simulate_particles(ca_setup, amplitudes, angles, shifts * factor, box * factor,
                                      pixel / factor, ctf=CTF).images
    clean_out = S.simulate_particles(ca_setup, amplitudes, angles, shifts, box, pixel, ctf=CTF).images
    expected = 0.1 * factor ** 2 * clean_out.var(axis=(1, 2)).mean() / clean_fine.var(axis=(1, 2)).mean()
    noise = out.images - out.clean
    assert noise.var() == pytest.approx(1.0, rel=0.04)
    assert out.clean.var(axis=(1, 2)).mean() / noise.var(axis=(1, 2)).mean() == pytest.approx(expected, rel=0.04)
    assert expected > 2 * 0.1  # the crop removed more of the noise than of the signal
    # Without oversampling the two grids are one: the same images.
    plain = S.simulate_particles(ca_setup, amplitudes[:4], angles[:4], shifts[:4], box, pixel, ctf=CTF, snr=0.1)
    same = S.simulate_particles(ca_setup, amplitudes[:4], angles[:4], shifts[:4], box, pixel, ctf=CTF, snr=0.1,
                                snr_grid='simulation')
    np.testing.assert_array_equal(plain.images, same.images)
    with pytest.raises(InputError, match="unknown SNR grid 'fine'"):
        S.simulate_particles(ca_setup, amplitudes[:1], angles[:1], shifts[:1], box, pixel, snr=0.1, snr_grid='fine')


def test_noise_before_the_ctf_has_the_ctf_power_spectrum(ca_setup):
    amplitudes, angles, shifts = _poses(64, seed=4)
    box, pixel = 64, 1.3
    out = S.simulate_particles(ca_setup, amplitudes, angles, shifts, box, pixel, ctf=CTF, snr=0.1,
                               noise_before_ctf=0.6, return_clean=True, seed=9)
    power = (torch.fft.rfft2(torch.as_tensor(out.images - out.clean)).abs() ** 2).mean(dim=0) / box ** 2
    from deephemnma.imaging.ctf import ctf_2d
    from deephemnma.imaging.filters import mean_full_grid
    ctf2 = ctf_2d(CTF, box, pixel)[0] ** 2
    expected = 0.6 * ctf2 / mean_full_grid(ctf2[None])[0] + 0.4  # unit total noise variance
    ratio = power[1:, 1:].sum() / expected[1:, 1:].sum()
    assert float(ratio) == pytest.approx(1.0, rel=0.03)
    zeros = ctf2 < 1e-3
    assert float(power[zeros].mean()) == pytest.approx(0.4, rel=0.15)  # only the noise after the CTF is left


def test_ctf_zeros_of_filtered_noise_match_the_formula(ca_setup):
    errors = ctf_zero_errors(ca_setup, defocus=5000.0, box=256, pixel_size=1.0, count=8)
    assert len(errors) >= 3 and max(errors) <= 1.0, errors


def test_phase_flip_and_contrast_signs(ca_setup):
    amplitudes, angles, shifts = _poses(2, seed=6)
    plain = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 48, 1.6).images
    with_ctf = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 48, 1.6, ctf=CTF).images
    flipped = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 48, 1.6, ctf=CTF, phase_flip=True).images
    inverted = S.simulate_particles(ca_setup, amplitudes, angles, shifts, 48, 1.6, ctf=CTF, phase_flip=True,
                                    invert_contrast=True).images
    assert np.all(plain.sum(axis=(1, 2)) > 0)  # potential: bright particles
    assert np.all(with_ctf.sum(axis=(1, 2)) < 0)  # CTF(0) = -amplitude contrast: dark particles
    assert np.all(flipped.sum(axis=(1, 2)) > 0)
    np.testing.assert_allclose(inverted, -flipped, atol=1e-7)
    # Phase flipping keeps the variance (|sign(CTF)| = 1), so the SNR is the same before and after it.
    assert flipped.var() == pytest.approx(with_ctf.var(), rel=1e-3)


def test_conformation_distributions():
    rng = np.random.default_rng(0)
    helix = conf.helix(1000, rng)
    r = helix.labels
    np.testing.assert_allclose(helix.amplitudes, 200 * np.stack([r, np.sin(np.pi * r), np.cos(np.pi * r)], 1))
    states = np.array([[0.0, 0.0], [100.0, -50.0]])
    discrete = conf.discrete(400, rng, states, weights=[1, 3])
    assert abs((discrete.labels == 1).mean() - 0.75) < 0.07
    np.testing.assert_allclose(discrete.amplitudes, states[discrete.labels.astype(int)])
    assert np.abs(conf.uniform(500, rng, 2, 50).amplitudes).max() <= 50
    with pytest.raises(InputError, match='exactly 3 modes'):
        conf.helix(5, rng, num_modes=2)


def test_amplitude_file(tmp_path):
    path = tmp_path / 'q.txt'
    path.write_text('# q7 q8\n1, 2\n3 4\n')
    np.testing.assert_allclose(conf.read_amplitudes(path, 2), [[1, 2], [3, 4]])
    with pytest.raises(InputError, match='2 amplitudes per row for 3 modes'):
        conf.read_amplitudes(path, 3)


def test_refuses_bad_settings(ca_setup):
    with pytest.raises(InputError, match='too small for the molecule'):
        check_fits(ca_setup.radius, 32, 1.0, 5.0)
    assert 'SNR must be positive' in ' '.join(validate_config(SimulationConfig(snr=-1.0)))
    with pytest.raises(InputError, match='SNR must be positive'):
        S.simulate_particles(ca_setup, *_poses(1), 48, 1.6, snr=0.0)
    other = paper_ak_setup()  # all-atom modes do not belong to the C-alpha reference
    with pytest.raises(InputError, match='do not belong to this reference'):
        S.SimulationSetup.create(ca_setup.structure, other.modes)


def _config(**changes):
    values = dict(count=30, box=48, pixel_size=1.6, coarse='CA', amplitude_scale=30.0, chunk_size=8,
                  defocus_min=6000.0, defocus_max=12000.0, astigmatism=400.0, ctf_group_size=5, snr=0.1)
    values.update(changes)
    return SimulationConfig(**values)


def test_to_disk_outputs_ground_truth_and_resumes_identically(tmp_path, ca_setup):
    config = _config()
    record = simulate_to_disk(config, tmp_path / 'whole', setup=ca_setup)
    assert record['measured_snr'] == pytest.approx(0.1, rel=0.1)

    class Interrupt(Exception):
        pass

    def stop_after_two(chunks, total):
        for done, chunk in enumerate(chunks):
            if done == 2:
                raise Interrupt
            yield chunk

    with pytest.raises(Interrupt):
        simulate_to_disk(config, tmp_path / 'resumed', setup=ca_setup, progress=stop_after_two)
    assert not (tmp_path / 'resumed' / STACK_NAME).exists()
    simulate_to_disk(config, tmp_path / 'resumed', setup=ca_setup)
    whole = read_stack(tmp_path / 'whole' / STACK_NAME, mmap=False)
    np.testing.assert_array_equal(whole, read_stack(tmp_path / 'resumed' / STACK_NAME, mmap=False))
    assert stack_info(tmp_path / 'whole' / STACK_NAME).pixel_size == pytest.approx(1.6)

    truth = np.load(tmp_path / 'whole' / TRUTH_NAME)
    params = sample_parameters(config, 3)
    np.testing.assert_allclose(truth['amplitudes'], params.amplitudes)
    assert len(np.unique(truth['defocus_u'])) == 6  # groups of 5 images share one CTF
    np.testing.assert_allclose(truth['defocus_u'] - truth['defocus_v'], 400.0)
    for name in (STAR_NAME, XMD_NAME):
        particles = read_particles(tmp_path / 'whole' / name)
        np.testing.assert_allclose(particles.angles, truth['angles'], atol=1e-5)
        np.testing.assert_allclose(particles.shifts, truth['shifts'], atol=1e-5)
        np.testing.assert_allclose(particles.amplitudes, truth['amplitudes'], atol=1e-5)
        np.testing.assert_allclose(particles.defocus_u, truth['defocus_u'], atol=1e-4)
    np.testing.assert_allclose(np.loadtxt(tmp_path / 'whole' / AMPLITUDES_NAME), truth['amplitudes'], atol=1e-5)
    # The first chunk equals the in-memory API with that chunk's seed and the recorded noise level.
    first = S.simulate_particles(ca_setup, params.amplitudes[:8], params.angles[:8], params.shifts[:8], 48, 1.6,
                                 ctf=params.ctf(config).batched(30, torch.device('cpu')).rows(slice(0, 8)),
                                 snr=0.1, seed=chunk_seed(0, 0), noise_std=record['noise_std'])
    np.testing.assert_allclose(first.images, whole[:8], atol=1e-6)
    saved = json.loads((tmp_path / 'whole' / CONFIG_NAME).read_text())
    assert saved['config'] == config.to_dict()
    assert simulate_to_disk(config, tmp_path / 'whole', setup=ca_setup) == saved  # finished: left as it is


def test_independent_image_path_matches_the_simulator_conventions():
    """Images of the voxel path (another density, spline rotation, image-space shift) correlate with the
    simulator's at the same deformed conformations and poses; mirrored or transposed they do not."""
    from deephemnma.nma.deform import deform
    from deephemnma.simulate.independent import independent_images
    from deephemnma.simulate.setup import paper_ak_setup, paper_ctf
    setup = paper_ak_setup()
    rng = np.random.default_rng(4)
    amplitudes = rng.normal(size=(3, 3)) * 80
    angles = np.array([[30.0, 60.0, -40.0], [120.0, 100.0, 70.0], [-70.0, 150.0, 10.0]])
    shifts = np.array([[1.5, -2.0], [-1.0, 0.5], [2.0, 2.0]])
    coordinates = deform(setup.structure.coords, setup.modes.vectors, amplitudes).numpy()
    independent = independent_images(coordinates, setup.structure.elements, angles, shifts, 64, 2.2, paper_ctf())
    simulated = S.simulate_particles(setup, amplitudes, angles, shifts, 64, 2.2, paper_ctf(), None,
                                     phase_flip=True).images
    for ours, theirs in zip(independent, simulated):
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.88
        assert np.corrcoef(ours.T.ravel(), theirs.ravel())[0, 1] < 0.5
