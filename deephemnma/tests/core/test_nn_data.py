"""Training data: stacks, outlier removal, split by particle, and the augmentation's label transform."""
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.distance import mahalanobis

from deephemnma.data.images import write_stack
from deephemnma.data.stacks import ImageSource
from deephemnma.imaging import rotations
from deephemnma.nn import data
from deephemnma.nn import targets as tg
from deephemnma.nn.augment import (
    merge_hypotheses,
    transform_images,
    transform_quaternions,
    transform_shifts,
    unrotate_outputs,
)
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup

torch.set_num_threads(1)


def render_points(points: np.ndarray, angles: np.ndarray, shifts: np.ndarray, box: int = 48) -> np.ndarray:
    """Gaussian blobs at the projections ``(A r)_xy - s`` (x = column, y = row, origin box // 2)."""
    projected = points @ rotations.euler_to_matrix(angles).T
    ys, xs = np.mgrid[0:box, 0:box] - box // 2
    image = np.zeros((box, box))
    for x, y in projected[:, :2] - shifts:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2))
    return image


class TestAugmentationLabels(unittest.TestCase):
    """Rotating the image by phi and translating it by t must equal imaging with psi - phi, R(phi) s - t."""

    def _augmented_labels(self, angles, shifts, phi, t):
        q = torch.tensor(rotations.euler_to_quaternion(angles))[None]
        phi_t = torch.tensor([phi], dtype=torch.float64)
        new_angles = rotations.quaternion_to_euler(transform_quaternions(q, phi_t).numpy())[0]
        new_shifts = transform_shifts(torch.tensor(shifts)[None], phi_t, torch.tensor(t)[None]).numpy()[0]
        return new_angles, new_shifts

    def test_points_projection(self):
        points = np.random.default_rng(1).normal(size=(12, 3)) * 6
        angles, shifts, phi, t = np.array([30., 70., 40.]), np.array([2., -3.]), 35.0, np.array([1.5, -2.0])
        image = torch.tensor(render_points(points, angles, shifts))[None, None]
        moved = transform_images(image, torch.tensor([phi], dtype=torch.float64),
                                      torch.tensor(t)[None])[0, 0].numpy()
        new_angles, new_shifts = self._augmented_labels(angles, shifts, phi, t)
        self.assertAlmostEqual(new_angles[2], angles[2] - phi, places=6)
        np.testing.assert_allclose(new_angles[:2], angles[:2], atol=1e-6)
        expected = render_points(points, new_angles, new_shifts)
        self.assertGreater(np.corrcoef(expected.ravel(), moved.ravel())[0, 1], 0.999)
        wrong = render_points(points, angles + [0, 0, phi], new_shifts)  # the opposite sign must not match
        self.assertLess(np.corrcoef(wrong.ravel(), moved.ravel())[0, 1], 0.9)

    def test_simulator_projection(self):
        setup = paper_ak_setup()
        angles, shifts, phi, t = np.array([[40., 60., 30.]]), np.array([[2., -3.]]), 50.0, np.array([1.0, 2.0])
        image = simulate_particles(setup, np.zeros((1, 3)), angles, shifts, 64, 1.6).images
        moved = transform_images(torch.tensor(image)[:, None].double(), torch.tensor([phi]).double(),
                                      torch.tensor(t)[None])[0, 0].numpy()
        new_angles, new_shifts = self._augmented_labels(angles[0], shifts[0], phi, t)
        expected = simulate_particles(setup, np.zeros((1, 3)), new_angles[None], new_shifts[None], 64, 1.6).images[0]
        self.assertGreater(np.corrcoef(expected.ravel(), moved.ravel())[0, 1], 0.97)  # bilinear resampling


class TestRotatedPredictionsMerge(unittest.TestCase):
    """Test-time augmentation: outputs for rotated copies, each consistent with the truth, merge to the truth."""

    def test_merge_undoes_each_rotation(self):
        rng = np.random.default_rng(5)
        count, angles = 6, [0.0, 72.0, 144.0, 216.0, 288.0]
        scaling = tg.Scaling(0.0, 1.0, np.zeros(3), np.ones(3), np.array([0.5, -1.0]), np.array([2.0, 3.0]))
        truth_q = torch.as_tensor(rotations.random_rotations(count, seed=rng)).double()
        truth_q = rotations.matrix_to_quaternion_torch(truth_q)
        truth_shifts = torch.as_tensor(rng.normal(0, 3, (count, 2)))
        amplitudes = torch.as_tensor(rng.normal(size=(count, 3)))
        outputs = []
        for k, angle in enumerate(angles):
            phi = torch.full((count,), angle, dtype=torch.float64)
            shifts = transform_shifts(truth_shifts, phi, torch.zeros(count, 2, dtype=torch.float64))
            sign = -1.0 if k % 2 else 1.0  # q and -q are the same rotation
            outputs.append({'orientation': (sign * transform_quaternions(truth_q, phi)).float(),
                            'shifts': ((shifts - torch.as_tensor(scaling.shift_mean))
                                       / torch.as_tensor(scaling.shift_std)).float(),
                            'amplitudes': (amplitudes + (k - 2) * 0.1).float()})
        hypotheses = unrotate_outputs(outputs, angles, scaling)
        for each in hypotheses['orientation']:  # every copy, its rotation undone, gives the truth
            self.assertLess(rotations.quaternion_angle_deg(each.numpy(), truth_q.numpy()).max(), 1e-3)
        merged = merge_hypotheses(hypotheses)
        np.testing.assert_allclose(merged['amplitudes'].numpy(), amplitudes.numpy(), atol=1e-6)
        decoded = tg.decode({t: v.numpy() for t, v in merged.items()}, scaling)
        np.testing.assert_allclose(decoded.shifts, truth_shifts.numpy(), atol=1e-5)
        errors = rotations.quaternion_angle_deg(merged['orientation'].double().numpy(), truth_q.numpy())
        self.assertLess(errors.max(), 1e-3)


class TestSplitsAndOutliers(unittest.TestCase):
    def test_split_by_particle_has_no_overlap(self):
        keys = np.array([f'{i % 300 + 1}@s.mrcs' for i in range(360)])  # 60 particles appear twice
        split = data.split_by_particle(keys, 0.1, 30, seed=5)
        sets = [set(split[name]) for name in ('train', 'validation', 'test')]
        self.assertEqual(sum(len(s) for s in sets), 360)
        self.assertEqual(len(sets[0] | sets[1] | sets[2]), 360)
        particles = [set(keys[list(s)]) for s in sets]
        self.assertFalse(particles[0] & particles[1] or particles[0] & particles[2] or particles[1] & particles[2])
        self.assertEqual((len(particles[1]), len(particles[2])), (30, 30))
        again = data.split_by_particle(keys, 0.1, 30, seed=5)
        np.testing.assert_array_equal(again['validation'], split['validation'])

    def test_split_refuses_too_few(self):
        with self.assertRaises(ValueError):
            data.split_by_particle(np.arange(10).astype(str), 5, 5, seed=0)

    def test_mahalanobis_matches_scipy(self):
        values = np.random.default_rng(2).multivariate_normal([1, 2, 3], [[4, 1, 0], [1, 2, 0.5], [0, 0.5, 1]], 500)
        precision = np.linalg.inv(np.cov(values, rowvar=False))
        expected = [mahalanobis(v, values.mean(0), precision) for v in values[:20]]
        np.testing.assert_allclose(data.mahalanobis_distances(values)[:20], expected, rtol=1e-10)
        values[0] = [40, -30, 20]
        mask = data.inlier_mask(values, 3.2)
        self.assertFalse(mask[0])
        self.assertTrue(data.inlier_mask(values, 0).all())


class TestImageSource(unittest.TestCase):  # deephemnma.data.stacks
    def test_reads_several_stacks_in_requested_order(self):
        folder = Path(self.enterContext(tempfile.TemporaryDirectory()))
        first = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
        write_stack(folder / 'a.mrcs', first, 1.0)
        write_stack(folder / 'b.mrcs', -first, 1.0)
        source = ImageSource(['2@b.mrcs', '1@a.mrcs', '3@a.mrcs'], base_dir=folder)
        np.testing.assert_array_equal(source.read([2, 0, 1]), np.stack([first[2], -first[1], first[0]]))
        with self.assertRaises(ValueError):
            ImageSource(['4@a.mrcs'], base_dir=folder)

    def test_runs_repeats_and_any_order_read_the_right_images(self):
        folder = Path(self.enterContext(tempfile.TemporaryDirectory()))
        images = np.random.default_rng(0).normal(size=(10, 8, 8)).astype(np.float32)
        write_stack(folder / 'a.mrcs', images, 1.0)
        source = ImageSource([f'{i + 1}@a.mrcs' for i in range(10)], base_dir=folder)
        for indices in ([3, 4, 5], [0, 0, 2], [5, 4, 3], [1, 9, 2, 2], list(range(10))):
            np.testing.assert_array_equal(source.read(indices), images[indices])


if __name__ == '__main__':
    unittest.main()
