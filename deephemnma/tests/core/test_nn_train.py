"""Training and inference on tiny data: resume equals an uninterrupted run, DDP (2 gloo processes) equals one
process, best-model selection, and streaming inference in chunks and shards equals in-memory prediction."""
import os
import shutil
import socket
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.data.stacks import ImageSource
from deephemnma.imaging import rotations
from deephemnma.imaging.filters import fourier_crop
from deephemnma.nn import targets as tg
from deephemnma.nn import trainer as train
from deephemnma.nn.augment import transform_images, transform_quaternions, transform_shifts
from deephemnma.nn.config import preset_config
from deephemnma.nn.data import prepare_data
from deephemnma.nn.history import HISTORY_CSV, read_history
from deephemnma.nn.infer import HYPOTHESES, Predictor, hypothesis_angles, predict_source
from deephemnma.nn.model import DeepHemnmaNet, NetworkConfig
from deephemnma.nn.modelfile import TrainedModel, load_model
from deephemnma.nn.targets import labels_from_particles
from deephemnma.runtime.distributed import cleanup, init_from_env
from deephemnma.runtime.errors import InputError

torch.set_num_threads(1)
COUNT, BOX = 40, 32


def make_particles(folder: Path, box: int = BOX) -> Particles:
    rng = np.random.default_rng(0)
    write_stack(folder / f'images_{box}.mrcs', rng.normal(size=(COUNT, box, box)).astype(np.float32), 2.0)
    return Particles(image=stack_locations(str(folder / f'images_{box}.mrcs'), COUNT), pixel_size=2.0,
                     angles=rng.uniform(0, 180, (COUNT, 3)), shifts=rng.normal(0, 2, (COUNT, 2)),
                     amplitudes=rng.normal(0, 100, (COUNT, 2)))


def tiny_config(**changes) -> train.TrainConfig:
    values = dict(arch='resnet18', epochs=2, batch_size=8, lr=1e-3, amp=False, patience=0, validation=8,
                  test=4, outlier_threshold=0.0, max_rotation_deg=180.0, max_translation_px=2.0, seed=3)
    values.update(changes)
    return preset_config('fast', **values)


class Interrupted(Exception):
    pass


def _ddp_worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    process = init_from_env('cpu')
    try:
        particles = make_particles(Path(folder))
        train.run_training(particles, tiny_config(norm='group', dropout=0.0), Path(folder) / 'ddp', 'cpu',
                           rank=process, progress=False)
        model = load_model(Path(folder) / 'ddp' / 'model.pt')
        raw = predict_source(Predictor(model, torch.device('cpu')), ImageSource(particles.image), batch_size=4,
                             work_dir=Path(folder) / 'chunks', chunk_size=8, rank=process, progress=False)
        if process.is_main:
            np.savez(Path(folder) / 'ddp_predictions.npz', **raw)
    finally:
        cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class TestTraining(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = Path(tempfile.mkdtemp(prefix='nn-train-'))
        cls.particles = make_particles(cls.folder)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.folder, ignore_errors=True)

    def test_resume_after_kill_equals_uninterrupted(self):
        config = tiny_config()
        whole, _ = train.run_training(self.particles, config, self.folder / 'whole', 'cpu', progress=False)

        def kill_after_first(epoch, row):
            if epoch == 0:
                raise Interrupted()
        with self.assertRaises(Interrupted):
            train.run_training(self.particles, config, self.folder / 'killed', 'cpu', progress=False,
                               on_epoch_end=kill_after_first)
        self.assertEqual(len(read_history(self.folder / 'killed' / HISTORY_CSV)), 1)
        resumed, summary = train.run_training(self.particles, config, self.folder / 'killed', 'cpu', progress=False)
        self.assertTrue(summary['resumed'])
        self.assertEqual(len(resumed.history), 2)
        self.assertIn('validation_hypotheses', resumed.history[-1])  # the fast preset's 8 hypotheses learn too
        for a, b in zip(whole.history, resumed.history):
            self.assertEqual(a, b)
        for key, value in whole.network.state_dict().items():
            torch.testing.assert_close(resumed.network.state_dict()[key], value, rtol=0, atol=0, msg=key)
        # the best model file holds the weights of the epoch with the lowest validation loss
        losses = [row['validation_loss'] for row in whole.history]
        model = load_model(self.folder / 'whole' / train.MODEL_FILE)
        self.assertEqual(model.info['best_epoch']['combined'], int(np.argmin(losses)) + 1)
        self.assertEqual(model.box, BOX)
        self.assertTrue((self.folder / 'whole' / train.CURVES_PNG).stat().st_size > 1000)
        split = np.load(self.folder / 'whole' / train.SPLIT_FILE)
        self.assertEqual(sorted(np.concatenate([split[k] for k in split.files])), list(range(COUNT)))

    def test_streaming_from_disk_equals_training_in_memory(self):
        """Images read from the stack by reader threads give the same weights as images held in memory, and a
        run may resume with other reading settings (threads, memory limit)."""
        in_memory, _ = train.run_training(self.particles, tiny_config(), self.folder / 'memory', 'cpu',
                                          progress=False)

        def kill_after_first(epoch, row):
            if epoch == 0:
                raise Interrupted()
        with self.assertRaises(Interrupted):
            train.run_training(self.particles, tiny_config(ram_limit_gb=0.0, readers=2), self.folder / 'streamed',
                               'cpu', progress=False, on_epoch_end=kill_after_first)
        resumed, summary = train.run_training(self.particles, tiny_config(ram_limit_gb=0.0, readers=0),
                                              self.folder / 'streamed', 'cpu', progress=False)
        self.assertTrue(summary['resumed'])
        self.assertEqual(in_memory.history, resumed.history)
        for key, value in in_memory.network.state_dict().items():
            torch.testing.assert_close(resumed.network.state_dict()[key], value, rtol=0, atol=0, msg=key)

    def test_resume_with_other_settings_is_refused(self):
        train.run_training(self.particles, tiny_config(epochs=1), self.folder / 'other', 'cpu', progress=False)
        with self.assertRaises(ValueError):
            train.run_training(self.particles, tiny_config(epochs=1, lr=5e-4), self.folder / 'other', 'cpu',
                               progress=False)

    def test_training_starts_from_the_weights_of_another_model(self):
        """``init_weights`` (``--init-weights``): before its first step the network holds the given model's weights
        (one trained with another seed), where a fresh network does not, and training moves them; the model of
        another network (no hypotheses head) is refused with an error naming the file and the difference."""
        train.run_training(self.particles, tiny_config(epochs=1, seed=5), self.folder / 'start', 'cpu', progress=False)
        path = self.folder / 'start' / train.MODEL_FILE
        start = load_model(path).network.state_dict()
        config = tiny_config(epochs=1, init_weights=str(path))
        data = prepare_data(ImageSource(self.particles.image), labels_from_particles(self.particles),
                            self.particles.image, config)

        def same_as_start(network) -> bool:
            return all(torch.equal(network.state_dict()[key], value) for key, value in start.items())

        tuned = train.Trainer(config, data, self.folder / 'tuned', 'cpu', progress=False)
        self.assertTrue(same_as_start(tuned.network))
        self.assertFalse(same_as_start(train.Trainer(tiny_config(epochs=1), data, self.folder / 'fresh', 'cpu',
                                                     progress=False).network))
        tuned.fit()
        self.assertFalse(same_as_start(tuned.network))
        with self.assertRaisesRegex(InputError, f'{path}: its network differs.*outputs'):
            train.Trainer(tiny_config(epochs=1, init_weights=str(path), hypotheses=0), data, self.folder / 'other',
                          'cpu', progress=False)

    def test_ddp_two_processes_match_one(self):
        single, _ = train.run_training(self.particles, tiny_config(norm='group', dropout=0.0),
                                       self.folder / 'single', 'cpu', progress=False)
        mp.spawn(_ddp_worker, args=(str(self.folder), _free_port()), nprocs=2, join=True)
        ddp = load_model(self.folder / 'ddp' / train.MODEL_FILE)
        one = load_model(self.folder / 'single' / train.MODEL_FILE)
        # Adam's step is about lr for every weight, whatever its gradient: rounding differences of near-zero
        # gradients can change a weight by up to a few lr, never more (lr = 1e-3 here).
        for key, value in one.network.state_dict().items():
            torch.testing.assert_close(ddp.network.state_dict()[key], value, rtol=0, atol=1e-3, msg=key)
        ddp_history = read_history(self.folder / 'ddp' / HISTORY_CSV)
        for a, b in zip(single.history, ddp_history):
            self.assertAlmostEqual(a['train_loss'], b['train_loss'], delta=1e-5 * abs(a['train_loss']))
            self.assertAlmostEqual(a['validation_loss'], b['validation_loss'], delta=1e-5 * a['validation_loss'])
        # inference sharded over the two processes, merged in order, equals one in-memory pass
        predictor = Predictor(ddp, torch.device('cpu'))
        expected = predict_source(predictor, ImageSource(self.particles.image), batch_size=16, progress=False)
        merged = np.load(self.folder / 'ddp_predictions.npz')
        for key, value in expected.items():
            np.testing.assert_allclose(merged[key], value, rtol=1e-4, atol=1e-5)
        labels = predictor.predict(ImageSource(self.particles.image).read(np.arange(COUNT)))
        self.assertEqual(labels.angles.shape, (COUNT, 3))

    def test_early_stopping_waits_for_the_second_half_of_the_schedule(self):
        config = tiny_config(epochs=10, patience=2)
        data = train.prepare_data(ImageSource(self.particles.image), train.labels_from_particles(self.particles),
                                  self.particles.image, config)
        trainer = train.Trainer(config, data, self.folder / 'early', 'cpu', progress=False)
        trainer.best_epoch = {'combined': 0}
        self.assertEqual([trainer._stop_early(e) for e in range(10)], [False] * 7 + [True] * 3)
        trainer.best_epoch = {'combined': 7}
        self.assertEqual([trainer._stop_early(e) for e in (8, 9)], [False, True])

    def test_network_input_size_is_stored_and_applied_in_prediction(self):
        large = make_particles(self.folder, box=48)
        train.run_training(large, tiny_config(epochs=1, network_box=32), self.folder / 'small', 'cpu',
                           progress=False)
        model = load_model(self.folder / 'small' / train.MODEL_FILE)
        self.assertEqual((model.box, model.network_box), (48, 32))
        images = ImageSource(large.image).read(np.arange(5))
        normalised = (torch.from_numpy(images)[:, None] - model.scaling.image_mean) / model.scaling.image_std
        with torch.no_grad():
            expected = model.network(fourier_crop(normalised, 32))['shifts'].numpy()
        predictor = Predictor(model, torch.device('cpu'), amp=False)
        np.testing.assert_allclose(predictor.raw(torch.from_numpy(images))['shifts'],
                                   expected, rtol=1e-5, atol=1e-6)

    def test_network_input_size_outside_the_images_is_refused(self):
        with self.assertRaises(ValueError):
            tiny_config(network_box=16)
        with self.assertRaises(ValueError):
            train.run_training(self.particles, tiny_config(network_box=2 * BOX), self.folder / 'large', 'cpu',
                               progress=False)
        with self.assertRaisesRegex(ValueError, 'the images are 16 px wide'):  # too small for the ResNet's stages
            train.run_training(make_particles(self.folder, box=16), tiny_config(), self.folder / 'tiny', 'cpu',
                               progress=False)



def untrained_model(hypotheses: int = 0) -> TrainedModel:
    """A randomly initialised ResNet-18 model for BOX px images (image mean 0, so rotations commute with the
    normalisation), with ``hypotheses`` orientation hypotheses."""
    torch.manual_seed(0)
    network = DeepHemnmaNet(NetworkConfig(outputs=tg.output_sizes(tg.TYPES, 2, hypotheses),
                                          arch='resnet18', dropout=0.0)).eval()
    scaling = tg.Scaling(0.0, 2.0, np.array([5.0, -3.0]), np.array([40.0, 20.0]), np.array([0.5, -0.2]),
                         np.array([2.0, 1.5]))
    return TrainedModel(network, scaling, BOX, BOX, tg.TYPES, {})


class TestStreamingPrediction(unittest.TestCase):
    def test_reader_threads_deliver_every_batch_in_order(self):
        with tempfile.TemporaryDirectory() as folder:
            particles = make_particles(Path(folder))
            source = ImageSource(particles.image[::-1])  # any order of the items
            predictor = Predictor(untrained_model(), torch.device('cpu'), amp=False)
            in_turn = predict_source(predictor, source, batch_size=3, readers=0, progress=False)
            threaded = predict_source(predictor, source, batch_size=3, readers=3, progress=False)
            direct = predictor.raw(torch.from_numpy(source.read(np.arange(COUNT))))
        for key, value in direct.items():
            np.testing.assert_array_equal(threaded[key], in_turn[key])
            np.testing.assert_allclose(threaded[key], value, rtol=1e-4, atol=1e-5)


class TestRotationAveraging(unittest.TestCase):
    """Averaging over quarter turns makes any network exactly equivariant to quarter turns of the image."""

    def test_quarter_turn_of_the_image_turns_the_averaged_prediction(self):
        model = untrained_model()
        images = torch.from_numpy(np.random.default_rng(2).normal(size=(6, BOX, BOX)).astype(np.float32))
        images[:, :2], images[:, -2:], images[:, :, :2], images[:, :, -2:] = 0, 0, 0, 0  # turns stay on the grid
        quarter = torch.full((len(images),), 90.0)
        turned = transform_images(images[:, None], quarter, torch.zeros(len(images), 2))[:, 0]
        predictor = Predictor(model, torch.device('cpu'), amp=False, rotations=4)
        plain, after_turn = predictor.predict(images), predictor.predict(turned)
        single = Predictor(model, torch.device('cpu'), amp=False)  # without averaging the network is not invariant
        change_without = np.abs(single.predict(turned).amplitudes - single.predict(images).amplitudes).max()
        self.assertGreater(change_without, 0.05)
        np.testing.assert_allclose(after_turn.amplitudes, plain.amplitudes, atol=1e-4)
        expected_q = transform_quaternions(torch.as_tensor(rotations.euler_to_quaternion(plain.angles)),
                                           quarter.double()).numpy()
        angle = rotations.quaternion_angle_deg(rotations.euler_to_quaternion(after_turn.angles), expected_q)
        self.assertLess(angle.max(), 1e-3)
        expected_shifts = transform_shifts(torch.as_tensor(plain.shifts), quarter.double(),
                                           torch.zeros(len(images), 2, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(after_turn.shifts, expected_shifts, atol=1e-5)

    def test_hypotheses_are_the_copies_then_the_networks_own(self):
        """Predict-then-refine's starting points: the merged orientation, each in-plane copy's (its rotation
        undone), then the network's own hypotheses for the image as given."""
        model = untrained_model(hypotheses=3)
        images = torch.from_numpy(np.random.default_rng(4).normal(size=(5, BOX, BOX)).astype(np.float32))
        raw = Predictor(model, torch.device('cpu'), amp=False, rotations=4, keep_hypotheses=True).raw(images)
        self.assertEqual(raw[HYPOTHESES].shape, (5, 4 + 3, 4))
        with torch.no_grad():
            own = tg.hypothesis_quaternions(model.network(images[:, None] / 2.0)[tg.HYPOTHESIS_OUTPUT]).numpy()
        self.assertLess(rotations.quaternion_angle_deg(raw[HYPOTHESES][:, 4:], own).max(), 1e-3)
        merged = tg.decode(raw, model.scaling)
        angles = hypothesis_angles(raw, merged)
        self.assertEqual(angles.shape, (5, 1 + 4 + 3, 3))
        np.testing.assert_allclose(angles[:, 0], merged.angles)
        single = Predictor(model, torch.device('cpu'), amp=False, keep_hypotheses=True).raw(images)
        self.assertEqual(single[HYPOTHESES].shape, (5, 3, 4))  # no copies: the merged one is the prediction
        np.testing.assert_allclose(single[HYPOTHESES], raw[HYPOTHESES][:, 4:], atol=1e-5)
        self.assertNotIn(HYPOTHESES, Predictor(model, torch.device('cpu'), amp=False).raw(images))
        without = Predictor(untrained_model(), torch.device('cpu'), amp=False, rotations=4, keep_hypotheses=True)
        self.assertEqual(without.raw(images)[HYPOTHESES].shape, (5, 4, 4))  # a network without: the copies alone


if __name__ == '__main__':
    unittest.main()
