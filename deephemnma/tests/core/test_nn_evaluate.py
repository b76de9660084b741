"""The paper's metrics against values computed by hand."""
import unittest

import numpy as np

from deephemnma.imaging import rotations
from deephemnma.nn.evaluate import parameter_errors, rmsd_errors
from deephemnma.nn.targets import Labels


class TestMetrics(unittest.TestCase):
    def test_parameter_errors(self):
        truth = Labels(angles=np.array([[10., 0., 30.], [0., 90., 0.]]), shifts=np.array([[1., 2.], [-1., 0.]]),
                       amplitudes=np.array([[100., 0.], [-100., 50.]]))
        estimated = Labels(angles=truth.angles + [[0, 0, 12.0], [0, 0, 0]], shifts=truth.shifts + [[0.5, -0.5], [0, 1]],
                           amplitudes=truth.amplitudes + [[10., -20.], [0., 30.]])
        figures = parameter_errors(estimated, truth, amplitude_mean=np.zeros(2), shift_mean=np.zeros(2))
        self.assertAlmostEqual(figures['amp_mae'], 15.0)
        self.assertEqual(figures['amp_mae_per_mode'], [5.0, 25.0])
        self.assertAlmostEqual(figures['amp_rel_mae'], 15.0 / 62.5)
        self.assertAlmostEqual(figures['shift_mae_px'], 0.5)
        self.assertAlmostEqual(figures['shift_rel_mae'], 0.5 / 1.0)
        self.assertAlmostEqual(figures['angle_median_deg'], 6.0, places=6)  # median of 12 and 0
        # tilt 0: a psi error of 12 deg turns the x and y axes by 12 deg and leaves z: mean 8 deg (0 for the other)
        self.assertAlmostEqual(figures['angle_mean_axis_deg'], 4.0, places=5)

    def test_rmsd_errors(self):
        rng = np.random.default_rng(0)
        coords = rng.normal(size=(50, 3)) * 10
        basis, _ = np.linalg.qr(rng.normal(size=(150, 2)))  # orthonormal modes over 3N
        vectors = basis.T.reshape(2, 50, 3)
        truth = Labels(angles=np.zeros((1, 3)), shifts=np.zeros((1, 2)), amplitudes=np.zeros((1, 2)))
        estimated = Labels(angles=np.array([[0., 0., 90.]]), shifts=np.array([[3., 4.]]),
                           amplitudes=np.array([[30., 40.]]))
        figures = rmsd_errors(estimated, truth, coords, vectors, pixel_size=2.0)
        self.assertAlmostEqual(figures['rmsd_amplitudes_A'], 50.0 / np.sqrt(50), places=8)
        self.assertAlmostEqual(figures['rmsd_shifts_A'], 10.0)
        centred = coords - coords.mean(0)
        moved = centred @ (rotations.euler_to_matrix([0, 0, 90.]) - np.eye(3)).T
        self.assertAlmostEqual(figures['rmsd_orientation_A'], float(np.sqrt((moved ** 2).sum(1).mean())), places=8)


if __name__ == '__main__':
    unittest.main()
