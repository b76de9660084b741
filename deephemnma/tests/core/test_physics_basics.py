"""CTF, scattering factors and atom densities against their formulas."""
import math

import numpy as np
import pytest
import torch
from scipy.special import erf

from deephemnma.imaging.ctf import CTFParams, apply_ctf, ctf_2d, ctf_zero_frequencies, phase_flip, wavelength
from deephemnma.molecule.density import atoms_to_map, gaussians_to_map
from deephemnma.molecule.scattering import gaussian_parameters, scattering_amplitude


def test_wavelength_known_values():
    assert wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    assert wavelength(200) == pytest.approx(0.025079, abs=2e-6)


def test_peng_carbon_values_and_forward_scattering():
    a, b = gaussian_parameters(['C'])
    assert a[0, 0] == pytest.approx(0.0893) and b[0, 4] == pytest.approx(50.2523)
    assert scattering_amplitude(['C'], np.array([0.0]))[0, 0] == pytest.approx(a.sum())
    # Heavier atoms scatter more at s = 0.
    f0 = scattering_amplitude(['H', 'C', 'N', 'O', 'S'], np.array([0.0]))[:, 0]
    assert np.all(np.diff(f0[:2]) > 0) and f0[4] > f0[3]


def test_unknown_element_is_refused():
    with pytest.raises(ValueError, match="unknown chemical element 'Qq'"):
        gaussian_parameters(['Qq'])


def test_density_conserves_scattering_mass_and_centres_atoms():
    box, pixel = 24, 0.8
    volume = atoms_to_map(np.array([[0.0, 0.0, 0.0]]), ['O'], box, pixel)
    a, _ = gaussian_parameters(['O'])
    assert volume.sum() * pixel ** 3 == pytest.approx(a.sum(), rel=1e-5)
    assert np.unravel_index(volume.argmax(), volume.shape) == (box // 2,) * 3
    # An atom displaced along +x (Angstrom) moves the density to larger column index.
    moved = atoms_to_map(np.array([[4 * pixel, 0.0, 0.0]]), ['O'], box, pixel)
    assert np.unravel_index(moved.argmax(), moved.shape) == (box // 2, box // 2, box // 2 + 4)


def test_gaussian_map_matches_analytic_profile():
    box, pixel, sigma = 33, 1.0, 2.0
    volume = gaussians_to_map(np.zeros((1, 3)), np.ones((1, 1)), np.full((1, 1), sigma), box, pixel)
    x = np.arange(box) - box // 2
    # Voxel averages of a unit 3D Gaussian: products of 1D integrals over each voxel (scipy's erf).
    edges = (np.append(x - 0.5, x[-1] + 0.5)) / (sigma * math.sqrt(2))
    profile = np.diff(erf(edges)) / 2
    expected = np.einsum('i,j,k->ijk', profile, profile, profile)
    assert np.abs(volume - expected).max() < 1e-5 * expected.max()
    # Close to the point samples of the density for a Gaussian wider than a voxel.
    samples = np.exp(-x ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    assert np.abs(volume - np.einsum('i,j,k->ijk', samples, samples, samples)).max() < 0.035 * volume.max()


def test_ctf_zeros_match_formula_and_sign_at_low_frequency():
    box, pixel = 256, 1.0
    ctf = ctf_2d(CTFParams(5000.0, 5000.0, 0.0, 200.0, 2.0, 0.1), box, pixel)[0, 0]
    assert ctf[0] == pytest.approx(-0.1, abs=1e-6)
    zeros = ctf_zero_frequencies(5000.0, 200.0, 2.0, 0.1, 0.5)
    freqs = np.fft.rfftfreq(box, pixel)
    sign_changes = freqs[1:][np.diff(np.sign(ctf.numpy())) != 0]
    assert len(sign_changes) >= 3
    for k in sign_changes[:3]:
        assert np.min(np.abs(zeros.numpy() - k)) <= 1.0 / (box * pixel)


def test_astigmatism_direction():
    box, pixel = 128, 1.0
    params = CTFParams(20000.0, 10000.0, 0.0, 300.0, 2.7, 0.1)
    ctf = ctf_2d(params, box, pixel, rfft=False)[0]
    rotated = ctf_2d(CTFParams(20000.0, 10000.0, 90.0, 300.0, 2.7, 0.1), box, pixel, rfft=False)[0]
    # Rotating the astigmatism by 90 degrees swaps the roles of the x and y axes.
    assert torch.allclose(ctf[0, :], rotated[:, 0], atol=1e-5)


def _below_nyquist(images: torch.Tensor) -> torch.Tensor:
    """Remove the Nyquist row and column, where a real filter of an even CTF is not Hermitian-consistent."""
    spectrum = torch.fft.rfft2(images)
    spectrum[..., images.shape[-2] // 2, :] = 0
    spectrum[..., -1] = 0
    return torch.fft.irfft2(spectrum, s=images.shape[-2:])


def test_phase_flip_twice_restores_the_images_and_removes_sign_reversals():
    images = _below_nyquist(torch.randn(3, 64, 64, dtype=torch.float64))
    params = CTFParams(torch.tensor([8000.0, 12000.0, 15000.0]), torch.tensor([8000.0, 11000.0, 15000.0]),
                       torch.tensor([0.0, 30.0, 60.0]), 300.0, 2.7, 0.1)
    twice = phase_flip(phase_flip(images, params, 1.5), params, 1.5)
    assert torch.allclose(twice, images, atol=1e-9)
    flipped_signal = phase_flip(apply_ctf(images, params, 1.5), params, 1.5)
    ctf = ctf_2d(params, 64, 1.5, 3, dtype=torch.float64)
    expected = torch.fft.irfft2(torch.fft.rfft2(images) * ctf.abs(), s=(64, 64))
    assert torch.allclose(_below_nyquist(flipped_signal), _below_nyquist(expected), atol=1e-9)
