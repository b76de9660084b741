"""The training and prediction protocols in a Scipion project, on simulated particles with ground truth."""
import os

import numpy as np

from deephemnma.constants import AMPLITUDES_ATTR, TRUE_PREFIX
from deephemnma.data.stacks import ImageSource
from deephemnma.imaging.rotations import pose_from_transform
from deephemnma.nn.config import PRESETS
from deephemnma.nn.infer import Predictor
from deephemnma.nn.modelfile import load_model
from deephemnma.protocols.protocol_infer import DeepHemnmaProtInfer
from deephemnma.protocols.protocol_train import DeepHemnmaProtTrain
from deephemnma.tests.scipion.projects import SimulatedProjectCase, launch_simulation

SIMULATION = dict(count=16, box=32, pixelSize=3.0, coarse=1, amplitudeScale=30.0, snr=1.0, seed=2)
TRAINING = dict(labelSource=1, epochs=2, batchSize=4, arch=1, validationSize=3, testSize=2, outlierThreshold=0.0,
                patience=5, useGpu=False)


class TestProtocolTrainInfer(SimulatedProjectCase):
    SIMULATION = SIMULATION

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.training = cls.newProtocol(DeepHemnmaProtTrain, **TRAINING)
        cls.training.inputParticles.set(cls.simulation.outputParticles)
        cls.launchProtocol(cls.training)

    def test_training_outputs_a_model_and_reports(self):
        model = self.training.outputModel
        self.assertTrue(os.path.exists(model.getFileName()))
        summary = self.training.training_summary()
        self.assertEqual(summary['epochs_run'], 2)
        self.assertEqual(summary['split_sizes'], {'train': 11, 'validation': 3, 'test': 2})
        self.assertIn('Split: train 11, validation 3, test 2.', self.training.summary())
        self.assertEqual(self.training.test_metrics()['images'], 2)
        self.assertIn('Hamitouche2022', self.training._citations())
        self.assertEqual(summary['config']['patience'], 5)  # the form's patience reaches the training
        self.assertIn('early stopping after 5 epochs', ' '.join(self.training.methods()))
        self.assertIn('with 8 orientation hypotheses beside the orientation', ' '.join(self.training.methods()))
        self.assertIn('Rupprecht2017', self.training._citations())

    def test_training_starts_from_another_runs_network(self):
        """"Start from the network of": the run fine-tunes the first run's network (its model file reaches the
        command as --init-weights and the training's settings record it), with the finetune preset's learning rate
        (1e-4, cosine); one epoch moves the weights."""
        tuned = self.newProtocol(DeepHemnmaProtTrain, **{**TRAINING, 'epochs': 1,
                                                         'preset': list(PRESETS).index('finetune')})
        tuned.inputParticles.set(self.simulation.outputParticles)
        tuned.initialTraining.set(self.training)
        self.launchProtocol(tuned)
        start = self.training.model_path()
        config = tuned.training_summary()['config']
        self.assertEqual(start, config['init_weights'])
        self.assertEqual((config['lr'], config['schedule'], config['patience']), (1e-4, 'cosine', 5))
        before, after = (load_model(path).network.state_dict() for path in (start, tuned.model_path()))
        self.assertFalse(all(np.array_equal(before[key], after[key]) for key in before))

    def test_prediction_outputs_pose_and_amplitudes(self):
        inference = self.newProtocol(DeepHemnmaProtInfer, useGpu=False, batchSize=5, rotations=2)
        inference.inputTraining.set(self.training)
        inference.inputParticles.set(self.simulation.outputParticles)
        self.launchProtocol(inference)
        output = inference.outputParticles
        self.assertEqual(output.getSize(), 16)
        self.assertTrue(output.hasAlignmentProj())
        predicted = os.path.join(inference._getExtraPath('predicted.star'))
        from deephemnma.data.formats import read_particles
        expected = read_particles(predicted)
        # Scipion reuses one item object while iterating: copy the values out at once
        rows = [(np.array(p.getTransform().getMatrix()), list(map(float, getattr(p, AMPLITUDES_ATTR))),
                 getattr(p, TRUE_PREFIX + 'amplitudes', None) is not None) for p in output.iterItems(orderBy='id')]
        angles, shifts = pose_from_transform(np.array([r[0] for r in rows]))
        np.testing.assert_allclose(shifts, expected.shifts, atol=1e-4)
        np.testing.assert_allclose(np.array([r[1] for r in rows]), expected.amplitudes, rtol=1e-5, atol=1e-4)
        self.assertEqual(np.array([r[1] for r in rows]).shape, (16, 3))
        self.assertTrue(all(r[2] for r in rows))  # the input's other attributes are kept
        self.assertIn('each averaged over 2 in-plane rotations', inference.summary()[0])
        images = ImageSource(read_particles(inference._getExtraPath('particles.star')).image).read(np.arange(16))
        direct = Predictor(load_model(self.training.model_path()), 'cpu', rotations=2).predict(images)
        np.testing.assert_allclose(direct.amplitudes, expected.amplitudes, rtol=1e-4, atol=1e-3)
        # the viewer draws the loss curves and predicted vs true (from the simulation's ground truth)
        from deephemnma.viewers.viewer_train import DeepHemnmaNetworkViewer
        for protocol in (self.training, inference):
            viewer = DeepHemnmaNetworkViewer(project=self.proj, protocol=protocol)
            self.assertGreater(os.path.getsize(viewer.save_loss(protocol._getExtraPath('loss.png'))), 1000)
            estimated, truth, _ = viewer.scatter_data()
            self.assertEqual(len(truth), 2 if protocol is self.training else 16)
            self.assertGreater(os.path.getsize(viewer.save_scatter(protocol._getExtraPath('scatter.png'))), 1000)
        np.testing.assert_allclose(estimated.amplitudes, expected.amplitudes, atol=1e-4)

    def test_hypotheses_the_network_learns(self):
        """The model file's (8, the fast preset's), else the form's choice or its preset's (paper: none): without
        them the prediction protocol's refinement needs in-plane copies."""
        self.assertEqual(8, self.training.learnt_hypotheses())
        for changes, expected in (({}, 8), ({'hypotheses': 3}, 3), ({'preset': 1}, 0), ({'hypotheses': 0}, 0)):
            self.assertEqual(expected, self.newProtocol(DeepHemnmaProtTrain, **{**TRAINING, **changes})
                             .learnt_hypotheses(), changes)

    def test_validation_refuses_bad_inputs(self):
        too_small = self.newProtocol(DeepHemnmaProtTrain, **{**TRAINING, 'validationSize': 10, 'testSize': 5})
        too_small.inputParticles.set(self.simulation.outputParticles)
        self.assertTrue(any('Too few images' in e for e in too_small.validate()))
        no_labels = self.newProtocol(DeepHemnmaProtTrain, **{**TRAINING, 'labelSource': 0})
        no_labels.inputParticles.set(self.simulation.outputParticles)
        errors = ' '.join(no_labels.validate())
        self.assertIn('no 3D projection alignment', errors)
        self.assertIn('no normal-mode amplitudes', errors)
        other = launch_simulation(type(self), **{**SIMULATION, 'count': 2, 'box': 40})
        wrong_size = self.newProtocol(DeepHemnmaProtInfer, useGpu=False)
        wrong_size.inputTraining.set(self.training)
        wrong_size.inputParticles.set(other.outputParticles)
        self.assertTrue(any('40 px but the network was trained on 32 px' in e for e in wrong_size.validate()))
        tiny = launch_simulation(type(self), **{**SIMULATION, 'count': 2, 'box': 24, 'pixelSize': 4.0})
        too_small_images = self.newProtocol(DeepHemnmaProtTrain, **TRAINING)
        too_small_images.inputParticles.set(tiny.outputParticles)
        self.assertIn('The images are 24 px wide: the network needs at least 32 px.', too_small_images.validate())
