"""The Fourier-space projector against independent real-space paths, its conventions and its gradients."""
import math
import unittest

import numpy as np
import torch

from deephemnma.hemnma.reference import bead_vectors, residue_beads
from deephemnma.imaging.ctf import CTFParams, ctf_2d
from deephemnma.imaging.projection import AtomModel, project_atoms
from deephemnma.imaging.rotations import euler_to_matrix
from deephemnma.molecule.scattering import gaussian_parameters, gaussian_variances
from deephemnma.molecule.structure import Structure


def real_space_projection(coords, amplitudes, variances, rotation, shift, box, pixel_size):
    """Sum of 2D Gaussians evaluated at pixel centres (the projection of 3D isotropic Gaussians)."""
    planar = coords @ rotation.T
    rows, cols = np.mgrid[0:box, 0:box]
    x = (cols - box // 2) * pixel_size
    y = (rows - box // 2) * pixel_size
    image = np.zeros((box, box))
    for j in range(len(coords)):
        cx = planar[j, 0] - shift[0] * pixel_size
        cy = planar[j, 1] - shift[1] * pixel_size
        r2 = (x - cx) ** 2 + (y - cy) ** 2
        for a, v in zip(amplitudes[j], variances[j]):
            image += a / (2 * math.pi * v) * np.exp(-r2 / (2 * v))
    return image / 1.0


class TestProjection(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(3)
        self.coords = rng.normal(size=(25, 3)) * 7.0
        self.rotation = euler_to_matrix(np.array([35.0, 70.0, -120.0]))
        self.shift = np.array([2.5, -1.5])

    def test_beads_match_real_space_sum(self):
        rng = np.random.default_rng(4)
        weights, sigmas = rng.uniform(1, 3, 25), rng.uniform(1.6, 3.0, 25)
        model = AtomModel.beads(weights, sigmas)
        image = project_atoms(torch.tensor(self.coords), model, torch.tensor(self.rotation)[None],
                              torch.tensor(self.shift)[None], 48, 1.2)[0].numpy()
        reference = real_space_projection(self.coords, weights[:, None], sigmas[:, None] ** 2, self.rotation,
                                          self.shift, 48, 1.2)
        self.assertLess(np.abs(image - reference).max(), 1e-3 * reference.max())
        # Potential per area: the image integrates to the total scattering.
        self.assertAlmostEqual(image.sum() * 1.2 ** 2, weights.sum(), places=4)

    def test_peng_atoms_match_real_space_sum(self):
        elements = ['C', 'N', 'O', 'S', 'C'] * 5
        a, b = gaussian_parameters(elements, bfactor=37.5)
        model = AtomModel.from_elements(elements, bfactor=37.5)
        self.assertEqual(model.num_types, 4)
        image = project_atoms(torch.tensor(self.coords), model, torch.tensor(self.rotation)[None],
                              torch.tensor(self.shift)[None], 96, 0.5)[0].numpy()
        reference = real_space_projection(self.coords, a, gaussian_variances(b), self.rotation, self.shift, 96, 0.5)
        self.assertLess(np.abs(image - reference).max(), 2e-3 * reference.max())

    def test_shift_draws_particle_at_minus_shift(self):
        model = AtomModel.beads(np.ones(1), 1.5)
        image = project_atoms(torch.zeros(1, 3, dtype=torch.float64), model, torch.eye(3, dtype=torch.float64)[None],
                              torch.tensor([[3.0, -2.0]], dtype=torch.float64), 32, 1.0)[0].numpy()
        row, col = np.unravel_index(image.argmax(), image.shape)
        self.assertEqual((col - 16, row - 16), (-3, 2))

    def test_ctf_is_multiplied_in_fourier_space(self):
        model = AtomModel.beads(np.ones(25), 2.0)
        params = CTFParams(defocus_u=8000.0, defocus_v=7000.0, defocus_angle=30.0, voltage=200.0, cs=2.0)
        ctf = ctf_2d(params, 48, 1.2, 1, dtype=torch.float64)
        args = (torch.tensor(self.coords), model, torch.tensor(self.rotation)[None], torch.tensor(self.shift)[None],
                48, 1.2)
        with_ctf = project_atoms(*args, ctf=ctf)
        manual = torch.fft.irfft2(torch.fft.rfft2(project_atoms(*args)) * ctf, s=(48, 48))
        self.assertLess((with_ctf - manual).abs().max().item(), 1e-6 * manual.abs().max().item())

    def test_gradients(self):
        model = AtomModel.beads(np.ones(4), 2.0).to(torch.device('cpu'), torch.float64)
        coords = torch.tensor(self.coords[:4], requires_grad=True)
        shifts = torch.tensor(self.shift[None], requires_grad=True)
        rotation = torch.tensor(self.rotation)[None]
        self.assertTrue(torch.autograd.gradcheck(
            lambda c, s: project_atoms(c, model, rotation, s, 16, 1.5), (coords, shifts)))

    def test_residue_beads_follow_the_weighted_centre(self):
        coords = np.array([[0.0, 0, 0], [1.5, 0, 0], [0, 2, 0], [5, 5, 5], [6, 5, 5]])
        structure = Structure(coords=coords, elements=['C', 'C', 'O', 'N', 'C'],
                              atom_names=['N', 'CA', 'CB', 'N', 'CA'], residue_names=['ALA'] * 3 + ['GLY'] * 2,
                              residue_numbers=[1, 1, 1, 2, 2], chain_ids=['A'] * 5)
        centres, model, membership, weights = residue_beads(structure)
        self.assertEqual(list(membership), [0, 0, 0, 1, 1])
        np.testing.assert_allclose(centres[0], (weights[:3, None] * coords[:3]).sum(0) / weights[:3].sum())
        split = residue_beads(structure, split_side_chains=True)
        self.assertEqual(len(split[0]), 3)
        vectors = np.random.default_rng(0).normal(size=(2, 5, 3))
        moved = residue_beads(structure.with_coords(coords + 0.7 * vectors[0] - 0.2 * vectors[1]))[0]
        restricted = bead_vectors(vectors, membership, weights)
        np.testing.assert_allclose(centres + 0.7 * restricted[0] - 0.2 * restricted[1], moved, atol=1e-12)


if __name__ == '__main__':
    unittest.main()
