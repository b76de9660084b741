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

    def test_hypotheses_train_with_the_orientation(self):
        outputs = tg.output_sizes(tg.TYPES, 3, hypotheses=8)
        self.assertEqual(outputs[tg.HYPOTHESIS_OUTPUT], 32)
        self.assertNotIn(tg.HYPOTHESIS_OUTPUT, tg.output_sizes(('amplitudes', 'shifts'), 3, hypotheses=8))
        self.assertEqual(NetworkConfig(outputs=outputs, layout='separate').branches(),
                         {'amplitudes': ['amplitudes'], 'orientation': ['orientation', tg.HYPOTHESIS_OUTPUT],
                          'shifts': ['shifts']})

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

    def test_hypothesis_loss_is_relaxed_winner_takes_all(self):
        """Exact value: (1 - spread) x the best hypothesis's rotation-matrix error + spread x their mean."""
        target = torch.tensor(rotations.euler_to_quaternion(self.angles[:5]))
        guesses = [torch.tensor(rotations.euler_to_quaternion(self.angles[5 * k:5 * k + 5])) for k in (1, 2)]
        errors = np.stack([np.abs(rotations.euler_to_matrix(self.angles[5 * k:5 * k + 5])
                                  - rotations.euler_to_matrix(self.angles[:5])).mean(axis=(1, 2)) for k in (1, 2)], 1)
        raw = torch.cat([-2 * guesses[0], 0.5 * guesses[1]], dim=1)  # (5, 8): any length, any sign
        loss = tg.losses({tg.HYPOTHESIS_OUTPUT: raw}, {'orientation': target})[tg.HYPOTHESIS_OUTPUT].item()
        expected = (1 - tg.HYPOTHESIS_SPREAD) * errors.min(1).mean() + tg.HYPOTHESIS_SPREAD * errors.mean()
        self.assertAlmostEqual(loss, expected, places=5)

    def test_hypotheses_find_both_answers_of_an_ambiguous_view(self):
        """One input, labelled half the time with rotation A and half with B (a view that looks the same from
        two orientations): the orientation output gives one answer at best (an L1 loss's optimum is a median),
        each answer is one of 4 hypotheses (started at random, as a network's outputs)."""
        answers = torch.tensor(rotations.euler_to_quaternion(np.array([[0., 0., 0.], [90., 60., 0.]])))
        labels = answers[torch.arange(64) % 2].float()
        generator = torch.Generator().manual_seed(0)
        single = torch.nn.Parameter(torch.randn(1, 4, generator=generator))
        hypotheses = torch.nn.Parameter(torch.randn(1, 16, generator=generator))
        optimiser = torch.optim.Adam([single, hypotheses], lr=0.02)
        for _ in range(600):
            loss = tg.losses({'orientation': single.expand(64, -1),
                              tg.HYPOTHESIS_OUTPUT: hypotheses.expand(64, -1)}, {'orientation': labels})
            optimiser.zero_grad()
            sum(loss.values()).backward()
            optimiser.step()
        learnt = tg.hypothesis_quaternions(hypotheses.detach())[0].double().numpy()
        found = rotations.quaternion_angle_deg(learnt[:, None], answers.numpy()[None])  # (4 hypotheses, 2 answers)
        self.assertLess(max(found.min(axis=0)), 2.0, found)
        apart = rotations.quaternion_angle_deg(tg.normalise_quaternions(single.detach()).double().numpy(),
                                               answers.numpy())
        self.assertGreater(apart.max(), 90.0, apart)  # the other answer (104 deg away) is missed

    def test_l1_losses(self):
        out, target = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 2.0]])
        self.assertAlmostEqual(tg.losses({'shifts': out}, {'shifts': target})['shifts'].item(), 2.5)


if __name__ == '__main__':
    unittest.main()
