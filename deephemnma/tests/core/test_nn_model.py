"""The network and its targets: architecture, output conversions, sign-invariant loss, scaling."""
import unittest

import numpy as np
import torch

from deephemnma.imaging import rotations
from deephemnma.nn import targets as tg
from deephemnma.nn.model import DeepHemnmaNet, NetworkConfig

torch.set_num_threads(1)
OUTPUTS = {'amplitudes': 3, 'orientation': 4, 'shifts': 2}


class TestNetwork(unittest.TestCase):
    def test_resnet34_with_paper_mlp(self):
        net = DeepHemnmaNet(NetworkConfig(outputs=OUTPUTS))
        branch = net.branches['combined']
        self.assertEqual(branch.trunk.conv1.in_channels, 1)
        self.assertEqual([len(branch.trunk.layer1), len(branch.trunk.layer2), len(branch.trunk.layer3),
                          len(branch.trunk.layer4)], [3, 4, 6, 3])  # ResNet-34
        linear = [m for m in branch.heads['amplitudes'] if isinstance(m, torch.nn.Linear)]
        self.assertEqual([(m.in_features, m.out_features) for m in linear], [(1000, 512), (512, 128), (128, 3)])
        self.assertEqual(branch.trunk.fc.out_features, 1000)
        drop = [m.p for m in branch.heads['amplitudes'] if isinstance(m, torch.nn.Dropout)]
        self.assertEqual(drop, [0.5, 0.5, 0.5])

    def test_output_is_unbounded(self):
        net = DeepHemnmaNet(NetworkConfig(outputs={'shifts': 2}, arch='resnet18')).eval()
        with torch.no_grad():
            net.branches['combined'].heads['shifts'][-1].bias.fill_(-7.5)
            net.branches['combined'].heads['shifts'][-1].weight.zero_()
            out = net(torch.randn(2, 1, 32, 32))['shifts']
        np.testing.assert_allclose(out.numpy(), -7.5)  # an ELU output could not go below -1

    def test_separate_networks_share_nothing(self):
        net = DeepHemnmaNet(NetworkConfig(outputs=OUTPUTS, arch='resnet18', layout='separate'))
        self.assertEqual(sorted(net.branches), sorted(OUTPUTS))
        out = net(torch.randn(3, 1, 32, 32))
        self.assertEqual({k: tuple(v.shape) for k, v in out.items()},
                         {'amplitudes': (3, 3), 'orientation': (3, 4), 'shifts': (3, 2)})
        out['amplitudes'].sum().backward()
        for name, branch in net.branches.items():
            touched = any(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
            self.assertEqual(touched, name == 'amplitudes', name)

    def test_bad_config_refused(self):
        with self.assertRaises(ValueError):
            NetworkConfig(outputs=OUTPUTS, arch='vgg16')
        with self.assertRaises(ValueError):
            NetworkConfig(outputs={'amplitudes': 0})


class TestTargets(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(3)
        self.angles = rotations.matrix_to_euler(rotations.random_rotations(200, rng))
        self.labels = tg.Labels(self.angles, rng.normal(1.0, 3.0, (200, 2)), rng.normal(50, 80, (200, 3)))
        self.scaling = tg.Scaling.fit(self.labels, 0.5, 2.0)

    def test_quaternion_euler_round_trip_through_output_conversion(self):
        encoded = tg.encode(self.labels, tg.TYPES, self.scaling)
        rng = np.random.default_rng(4)
        # raw outputs: any positive scale and either sign describe the same rotation
        raw = {t: v.astype(np.float64) for t, v in encoded.items()}
        raw['orientation'] = raw['orientation'] * rng.uniform(0.2, 5, (200, 1)) * rng.choice([-1, 1], (200, 1))
        decoded = tg.decode(raw, self.scaling)
        angle = rotations.geodesic_angle_deg(rotations.euler_to_matrix(decoded.angles),
                                             rotations.euler_to_matrix(self.angles))
        self.assertLess(angle.max(), 1e-3)
        np.testing.assert_allclose(decoded.amplitudes, self.labels.amplitudes, atol=1e-3)
        np.testing.assert_allclose(decoded.shifts, self.labels.shifts, atol=1e-4)

    def test_scaling_standardises_and_survives_saving(self):
        encoded = tg.encode(self.labels, ('amplitudes', 'shifts'), self.scaling)
        np.testing.assert_allclose(encoded['amplitudes'].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(encoded['amplitudes'].std(0), 1, atol=1e-4)
        again = tg.Scaling.from_dict(self.scaling.to_dict())
        np.testing.assert_array_equal(again.amplitude_std, self.scaling.amplitude_std)
        self.assertEqual((again.image_mean, again.image_std), (0.5, 2.0))

    def test_orientation_loss_is_sign_invariant(self):
        q = torch.tensor(rotations.euler_to_quaternion(self.angles[:10]))
        self.assertAlmostEqual(tg.losses({'orientation': -3 * q}, {'orientation': q})['orientation'].item(), 0,
                               places=6)
        other = torch.tensor(rotations.euler_to_quaternion(self.angles[10:20]))
        expected = np.abs(rotations.euler_to_matrix(self.angles[10:20]) - rotations.euler_to_matrix(self.angles[:10]))
        for sign in (1, -1):
            self.assertAlmostEqual(tg.losses({'orientation': sign * other}, {'orientation': q})['orientation'].item(),
                                   float(expected.mean()), places=6)

    def test_l1_losses(self):
        out, target = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 2.0]])
        self.assertAlmostEqual(tg.losses({'shifts': out}, {'shifts': target})['shifts'].item(), 2.5)


if __name__ == '__main__':
    unittest.main()
