"""The HEMNMA engine: pose and amplitude recovery, resumption, torchrun sharding, the Xmipp backend's files."""
import os
import subprocess
import sys
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.hemnma.aligner import (
    Aligner,
    AlignSettings,
    orientation_grid,
    prepare_images,
    small_rotation,
    so3_ball_fraction,
)
from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.hemnma.stack import (
    RefineSettings,
    align_particles,
    calibration_rows,
    missed_score,
    refine_predictions,
    refinement_report,
    score_threshold,
)
from deephemnma.hemnma.xmipp import XmippAlignmentJob, merge_in_order, read_alignment
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg, matrix_to_euler, random_rotations
from deephemnma.runtime.errors import InputError
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup

FIXTURES = Path(__file__).parent.parent / 'data'
BOX, PIXEL = 64, 2.2
CTF = dict(voltage=200.0, cs=2.0, amplitude_contrast=0.1)


def simulated(count: int, seed: int, amplitude_scale: float = 40.0):
    """Clean phase-flipped 64 px images of all-atom AK with small amplitudes, and their truth."""
    setup = paper_ak_setup((7, 8, 9))
    rng = np.random.default_rng(seed)
    amplitudes = rng.uniform(-amplitude_scale, amplitude_scale, (count, 3))
    angles = matrix_to_euler(random_rotations(count, rng))
    shifts = rng.uniform(-3, 3, (count, 2))
    ctf = CTFParams(defocus_u=5000.0, defocus_v=5000.0, **CTF)
    images = simulate_particles(setup, amplitudes, angles, shifts, BOX, PIXEL, ctf, phase_flip=True).images
    return setup, images, amplitudes, angles, shifts


def ctf_params(count: int) -> CTFParams:
    return CTFParams(defocus_u=torch.full((count,), 5000.0), defocus_v=torch.full((count,), 5000.0), **CTF)


class SingleThreaded(unittest.TestCase):
    """Runs its tests with one torch thread (small batches on a shared machine run fastest so), then restores."""

    @classmethod
    def setUpClass(cls):
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls.threads)


FAST = AlignSettings(angular_step=15.0, start_amplitudes=(0.0,), top_k=4, refine_resolutions=(10.0, 7.0, 5.0),
                     refine_steps=(25, 20, 20), refine_keep=(2, 1, 1))


class TestGeometry(unittest.TestCase):
    def test_orientation_grid_covers_so3(self):
        grid = euler_to_matrix(orientation_grid(15.0))
        probes = random_rotations(200, 1)
        nearest = np.array([geodesic_angle_deg(grid, p[None]).min() for p in probes])
        self.assertLess(nearest.max(), 15.0)

    def test_small_rotation_is_rodrigues(self):
        vector = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
        angle = float(vector.norm())
        matrix = small_rotation(vector)[0]
        self.assertAlmostEqual(float(torch.det(matrix)), 1.0, places=12)
        self.assertAlmostEqual(float(geodesic_angle_deg(matrix.numpy(), np.eye(3))), np.degrees(angle), places=8)
        np.testing.assert_allclose(small_rotation(torch.zeros(1, 3))[0].numpy(), np.eye(3), atol=1e-7)

    def test_ball_fraction_matches_uniform_rotations(self):
        angles = geodesic_angle_deg(random_rotations(40000, 3), np.eye(3))
        for radius in (20.0, 45.0, 90.0, 180.0):
            self.assertAlmostEqual(so3_ball_fraction(np.radians(radius)), float((angles < radius).mean()), delta=0.004)


class TestRecovery(SingleThreaded):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.setup, cls.images, cls.amplitudes, cls.angles, cls.shifts = simulated(6, 11)
        cls.reference = reference_from_modes(cls.setup.modes, 'residues2')

    def test_global_search_recovers_known_poses(self):
        aligner = Aligner(self.reference, BOX, PIXEL, FAST)
        result = aligner.align(torch.as_tensor(self.images), ctf_params(len(self.images)))
        errors = geodesic_angle_deg(euler_to_matrix(result['angles']), euler_to_matrix(self.angles))
        self.assertLess(np.median(errors), 2.0, errors)
        self.assertLess(errors.max(), 6.0, errors)
        self.assertLess(np.abs(result['shifts'] - self.shifts).mean(), 0.3)
        self.assertLess(np.abs(result['amplitudes'] - self.amplitudes).mean(), 12.0)
        self.assertTrue(np.all(result['score'] > 0.9))

    def test_local_mode_refines_given_poses(self):
        rng = np.random.default_rng(5)
        initial = {'angles': self.angles + rng.normal(0, 4, self.angles.shape),
                   'shifts': self.shifts + rng.normal(0, 1, self.shifts.shape)}
        aligner = Aligner(self.reference, BOX, PIXEL, FAST)
        result = aligner.align(torch.as_tensor(self.images), ctf_params(len(self.images)), initial)
        errors = geodesic_angle_deg(euler_to_matrix(result['angles']), euler_to_matrix(self.angles))
        self.assertLess(np.median(errors), 2.0, errors)
        self.assertLess(np.abs(result['amplitudes'] - self.amplitudes).mean(), 12.0)


    def _rotated(self, degrees: float, seed: int) -> np.ndarray:
        """The true orientations turned by ``degrees`` about random axes (Euler angles, deg)."""
        axes = np.random.default_rng(seed).normal(size=(len(self.angles), 3))
        axes *= np.radians(degrees) / np.linalg.norm(axes, axis=1, keepdims=True)
        turns = small_rotation(torch.as_tensor(axes)).numpy()
        return matrix_to_euler(turns @ euler_to_matrix(self.angles))

    def test_guided_search_finds_poses_near_a_hypothesis(self):
        settings = AlignSettings(angular_step=15.0, start_amplitudes=(0.0,), top_k=2, hypothesis_radius=35.0,
                                 hypothesis_shift_range=2.0, **AlignSettings.stages((7.0, 5.0), 2))
        aligner = Aligner(self.reference, BOX, PIXEL, settings)
        wrong = self._rotated(120.0, 1)
        shifts = self.shifts + np.random.default_rng(2).normal(0, 1, self.shifts.shape)
        guided = {'angles': np.stack([wrong, self._rotated(25.0, 3)], axis=1), 'shifts': shifts}
        result = aligner.align(torch.as_tensor(self.images), ctf_params(len(self.images)), hypotheses=guided)
        errors = geodesic_angle_deg(euler_to_matrix(result['angles']), euler_to_matrix(self.angles))
        self.assertLess(np.median(errors), 2.0, errors)
        self.assertLess(np.abs(result['shifts'] - self.shifts).mean(), 0.3)
        # only far hypotheses: the search stays near them, so the poses are not found
        far = aligner.align(torch.as_tensor(self.images), ctf_params(len(self.images)),
                            hypotheses={'angles': wrong[:, None], 'shifts': shifts})
        far_errors = geodesic_angle_deg(euler_to_matrix(far['angles']), euler_to_matrix(self.angles))
        self.assertGreater(np.median(far_errors), 45.0, far_errors)
        self.assertLess(far['score'].mean(), result['score'].mean())

    def test_guided_search_over_the_whole_sphere_is_the_global_search(self):
        """A hypothesis ball of 180 deg around shift 0 with the global search's shift grid (1 px steps) scores
        every template at every shift: the same candidates as the global search."""
        settings = AlignSettings(angular_step=20.0, shift_range=2.0, shift_step=1.0, top_k=3, hypothesis_radius=180.0,
                                 hypothesis_shift_range=2.0)
        aligner = Aligner(self.reference, BOX, PIXEL, settings)
        prepared = prepare_images(torch.as_tensor(self.images, dtype=torch.float32), ctf_params(len(self.images)),
                                  PIXEL, settings.ctf_mode)
        searched = aligner.global_search(prepared)
        anywhere = torch.as_tensor(euler_to_matrix(self._rotated(120.0, 1)), dtype=torch.float32)[:, None]
        guided = aligner.guided_search(prepared, anywhere, torch.zeros(len(self.images), 2))
        for name in ('rotations', 'shifts', 'amplitudes', 'scores'):
            torch.testing.assert_close(getattr(guided, name), getattr(searched, name))

    def test_guided_candidates_start_from_predicted_amplitudes_that_score_higher(self):
        """Hypotheses at the true orientations and the library's one start conformation (amplitudes 0): the true
        amplitudes, given as predictions, score higher than 0 and become the best candidate's start; amplitudes
        three times too large the other way score lower, and the candidates keep the library's."""
        settings = AlignSettings(angular_step=15.0, start_amplitudes=(0.0,), top_k=2, hypothesis_radius=20.0,
                                 hypothesis_shift_range=0.0)
        aligner = Aligner(self.reference, BOX, PIXEL, settings)
        prepared = prepare_images(torch.as_tensor(self.images, dtype=torch.float32), ctf_params(len(self.images)),
                                  PIXEL, settings.ctf_mode)
        hypotheses = torch.as_tensor(euler_to_matrix(self.angles), dtype=torch.float32)[:, None]
        centres = torch.as_tensor(self.shifts, dtype=torch.float32)
        library = aligner.guided_search(prepared, hypotheses, centres)
        true = torch.as_tensor(self.amplitudes, dtype=torch.float32)
        predicted = aligner.guided_search(prepared, hypotheses, centres, true)
        torch.testing.assert_close(predicted.rotations, library.rotations)
        # the best candidate (at the true orientation; the second lies at least 1.5 angular steps away)
        torch.testing.assert_close(predicted.amplitudes[:, 0], true)
        self.assertTrue(torch.all(predicted.scores[:, 0] > library.scores[:, 0]))
        wrong = aligner.guided_search(prepared, hypotheses, centres, -3.0 * true)
        torch.testing.assert_close(wrong.amplitudes[:, 0], torch.zeros_like(true))

    def test_guided_search_with_amplitudes_scores_the_nearest_start_conformation(self):
        """With ``nearest_start`` (predict then refine's setting), predicted amplitudes nearest the library's start
        conformation (+a, +a, +a) of eight (+-a per mode): the candidates' orientations and shifts are those of a
        library made of that conformation alone."""
        refine = RefineSettings(radius=35.0, shift_radius=1.0, top_k=2, nearest_start=True)
        corner = 30.0
        aligner = Aligner(self.reference, BOX, PIXEL, refine.align_settings(
            AlignSettings(angular_step=15.0, start_amplitudes=(-corner, corner))))
        alone = Aligner(self.reference, BOX, PIXEL, replace(refine, nearest_start=False).align_settings(
            AlignSettings(angular_step=15.0, start_amplitudes=(corner,))))
        prepared = prepare_images(torch.as_tensor(self.images, dtype=torch.float32), ctf_params(len(self.images)),
                                  PIXEL, 'phase_flipped')
        hypotheses = torch.as_tensor(euler_to_matrix(self._rotated(20.0, 6)), dtype=torch.float32)[:, None]
        centres = torch.as_tensor(self.shifts, dtype=torch.float32)
        near_corner = torch.full((len(self.images), 3), 0.8 * corner)
        self.assertTrue(torch.all(aligner.nearest_start(near_corner) == 7))
        guided = aligner.guided_search(prepared, hypotheses, centres, near_corner)
        expected = alone.guided_search(prepared, hypotheses, centres)
        torch.testing.assert_close(guided.rotations, expected.rotations)
        torch.testing.assert_close(guided.shifts, expected.shifts)
        every_start = aligner.guided_search(prepared, hypotheses, centres)
        self.assertGreater(len(torch.unique(every_start.amplitudes.reshape(-1, 3), dim=0)), 1)

    def test_predict_then_refine_falls_back_to_the_global_search(self):
        """Hypotheses 25 deg off for four particles, 120 deg off for two: the guided refinement finds the first
        four; the other two score below what the global search scores on a calibration sample (particles 0 and 5),
        and the global search (the fallback) finds them."""
        with tempfile.TemporaryDirectory() as folder:
            write_stack(Path(folder) / 'particles.mrcs', self.images, PIXEL)
            count = len(self.images)
            predicted = Particles(image=stack_locations(str(Path(folder) / 'particles.mrcs'), count),
                                  pixel_size=PIXEL, angles=self.angles, shifts=self.shifts,
                                  amplitudes=np.zeros((count, 3)), defocus_u=np.full(count, 5000.0),
                                  defocus_v=np.full(count, 5000.0), defocus_angle=np.zeros(count), **CTF)
            far = np.arange(count) >= count - 2
            hypotheses = np.where(far[:, None], self._rotated(120.0, 4), self._rotated(25.0, 5))[:, None]
            settings = RefineSettings(radius=35.0, shift_radius=2.0, resolutions=(7.0, 5.0), top_k=2, calibration=2)
            result = refine_predictions(predicted, hypotheses, self.reference, settings, FAST,
                                        Path(folder) / 'refine')
            searched = result.extra['refine_fallback'] == 1
            self.assertTrue(np.all(searched[far]) and searched[0], searched)
            errors = geodesic_angle_deg(euler_to_matrix(result.angles), euler_to_matrix(self.angles))
            self.assertLess(errors.max(), 6.0, errors)
            # without the fallback (the guided chunks are reused), the two stay far from their poses
            settings.fallback_sigma = 0.0
            guided_only = refine_predictions(predicted, hypotheses, self.reference, settings, FAST,
                                             Path(folder) / 'refine')
            errors = geodesic_angle_deg(euler_to_matrix(guided_only.angles), euler_to_matrix(self.angles))
            self.assertTrue(np.all(errors[far] > 45.0), errors)
            self.assertFalse(guided_only.extra['refine_fallback'].any())


def test_score_threshold_separates_found_from_missed_poses():
    rng = np.random.default_rng(0)
    found = rng.normal(0.76, 0.03, 64)
    threshold = score_threshold(np.concatenate([found, [0.40, 0.45]]), 4.0)  # two misses among the calibration
    assert 0.60 < threshold < 0.68
    refined = np.concatenate([rng.normal(0.76, 0.03, 90), rng.normal(0.42, 0.05, 10)])
    np.testing.assert_array_equal(np.flatnonzero(refined < threshold), np.arange(90, 100))
    np.testing.assert_array_equal(calibration_rows(100, 3), [0, 50, 99])
    np.testing.assert_array_equal(calibration_rows(2, 64), [0, 1])


def test_missed_score_is_the_best_score_of_a_missed_pose():
    angles = np.zeros((4, 3))
    guided = Particles(image=np.array(['1@a'] * 4), angles=angles, score=np.array([0.80, 0.60, 0.85, 0.70]))
    found = angles.copy()
    found[[1, 2], 1] = [90.0, 40.0]                      # particles 1 and 2: the global search found a far pose
    searched = Particles(image=guided.image, angles=found, score=np.array([0.90, 0.70, 0.84, 0.75]))
    assert missed_score(guided, searched, 15.0) == 0.60   # 2 scored higher where it was: not a miss
    searched.score[2] = 0.95
    assert missed_score(guided, searched, 15.0) == 0.85   # a missed pose scoring as well as found ones elsewhere
    assert missed_score(guided, searched, 95.0) == -np.inf


def test_refinement_report_flags_far_moves():
    angles = np.array([[10.0, 40.0, 0.0], [10.0, 40.0, 0.0], [0.0, 90.0, 0.0]])
    predicted = Particles(image=np.array(['1@a.mrcs', '2@a.mrcs', '3@a.mrcs']), angles=angles,
                          shifts=np.zeros((3, 2)), amplitudes=np.ones((3, 2)))
    refined = predicted.subset(np.arange(3))
    refined.angles = angles + np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 20.0], [0.0, 0.0, 0.0]])
    refined.amplitudes = np.zeros((3, 2))
    report = refinement_report(predicted, refined, far_angle_deg=15.0)
    np.testing.assert_allclose(report.extra['refine_change_deg'], [5.0, 20.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(report.extra['refine_moved_far'], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(report.extra['predicted_amplitudes'], np.ones((3, 2)))
    np.testing.assert_array_equal(report.amplitudes, np.zeros((3, 2)))


class TestStacks(SingleThreaded):
    """Resumption and torchrun on a small stack in local mode (fast)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.folder = tempfile.TemporaryDirectory()
        root = Path(cls.folder.name)
        setup, images, amplitudes, angles, shifts = simulated(8, 21)
        write_stack(root / 'particles.mrcs', images, PIXEL)
        rng = np.random.default_rng(2)
        cls.particles = Particles(image=stack_locations('particles.mrcs', 8), pixel_size=PIXEL,
                                  angles=angles + rng.normal(0, 3, angles.shape), shifts=shifts,
                                  defocus_u=np.full(8, 5000.0), defocus_v=np.full(8, 5000.0),
                                  defocus_angle=np.zeros(8), **CTF)
        write_particles(root / 'particles.star', cls.particles)
        setup.modes.save(root / 'modes.npz')
        cls.root, cls.reference = root, reference_from_modes(setup.modes, 'residues2')

    @classmethod
    def tearDownClass(cls):
        cls.folder.cleanup()
        super().tearDownClass()

    def _align(self, work: str, progress=None, settings: AlignSettings = FAST):
        return align_particles(self.particles, self.reference, settings, self.root / work, self.root, local=True,
                               chunk_size=4, progress=progress)

    def test_resume_with_other_chunk_sizes_keeps_the_results_another_step_is_refused(self):
        """The chunk sizes change only the speed: a rerun with others resumes (the finished chunks are kept as
        they are); a rerun with another setting of the search is refused instead of mixing results."""
        first = self._align('sizes')
        chunk = (self.root / 'sizes' / 'chunk_000000.npz').stat().st_mtime_ns
        faster = replace(FAST, template_chunk=7, projection_chunk=3)
        again = self._align('sizes', settings=faster)
        self.assertEqual(chunk, (self.root / 'sizes' / 'chunk_000000.npz').stat().st_mtime_ns)
        for name in ('angles', 'shifts', 'amplitudes', 'score'):
            np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
        with self.assertRaisesRegex(RuntimeError, 'holds the chunks of a job with other settings'):
            self._align('sizes', settings=replace(FAST, angular_step=20.0))

    def test_kill_and_resume_gives_identical_results(self):
        uninterrupted = self._align('whole')

        def killed_after_first(chunks):
            yield next(chunks)
            raise KeyboardInterrupt('killed')
        with self.assertRaises(KeyboardInterrupt):
            self._align('resumed', killed_after_first)
        self.assertEqual(sorted(p.name for p in (self.root / 'resumed').glob('chunk_*.npz')), ['chunk_000000.npz'])
        resumed = self._align('resumed')
        for name in ('angles', 'shifts', 'amplitudes', 'score'):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(uninterrupted, name))

    def test_torchrun_two_processes_equal_one(self):
        common = ['align', '-i', str(self.root / 'particles.star'), '--modes', str(self.root / 'modes.npz'),
                  '--local-refine', '--device', 'cpu', '--threads', '1', '--chunk-size', '4', '--angular-step', '15',
                  '--start-amplitudes', '0', '--top-k', '4', '--resolutions', '10', '7', '5', '--quiet']
        env = dict(os.environ, OMP_NUM_THREADS='1', TMPDIR=str(self.root))  # torchrun's log folders go there
        for command in ([sys.executable, '-m', 'deephemnma.cli.main', *common, '-o', str(self.root / 'one.star')],
                        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                         '--master_port=29613', '-m', 'deephemnma.cli.main', *common,
                         '-o', str(self.root / 'two.star')]):
            run = subprocess.run(command, env=env, capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        one, two = read_particles(self.root / 'one.star'), read_particles(self.root / 'two.star')
        np.testing.assert_array_equal(one.image, two.image)
        for name in ('angles', 'shifts', 'amplitudes', 'score'):
            np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
        errors = geodesic_angle_deg(euler_to_matrix(one.angles),
                                    euler_to_matrix(self.particles.angles))  # moved from the noisy start
        self.assertTrue(np.all(errors < 15.0))


class TestXmippBackend(unittest.TestCase):
    def test_command_is_continuousflex_s(self):
        job = XmippAlignmentJob(images='extra/images.xmd', pdb='extra/atoms.pdb', modes='extra/modes.xmd',
                                sampling_rate=2.2, output_dir='tmp')
        self.assertEqual(job.arguments(), '-i extra/images.xmd --pdb extra/atoms.pdb --modes extra/modes.xmd '
                                          '--sampling_rate 2.200000 --discrAngStep 10.000000 --odir tmp '
                                          '--centerPDB --trustradius_scale 1 --resume ')
        pseudo = XmippAlignmentJob('i.xmd', 'pseudoatoms.pdb', 'm.xmd', 1.0, 'o', pseudoatoms=True)
        self.assertTrue(pseudo.arguments().endswith('--resume --fixed_Gaussian '))
        self.assertEqual(pseudo.command()[0], 'xmipp_nma_alignment')

    def test_parse_images_xmd_fixture(self):
        aligned = read_alignment(FIXTURES / 'nma_alignment_images.xmd', 3, pixel_size=2.2)
        self.assertEqual(len(aligned), 3)
        np.testing.assert_allclose(aligned.angles[0], [12.5, 95.25, -33.0])
        np.testing.assert_allclose(aligned.shifts[1], [-1.75, 2.5])
        np.testing.assert_allclose(aligned.amplitudes[2], [-150.5, 20.25, 0.0])
        np.testing.assert_allclose(aligned.score, [0.812, 0.7935, 0.9])
        inputs = Particles(image=np.array(aligned.image[::-1]), pixel_size=2.2)
        merged = merge_in_order(inputs, aligned)
        np.testing.assert_allclose(merged.amplitudes[0], aligned.amplitudes[2])
        with self.assertRaises(InputError):
            read_alignment(FIXTURES / 'nma_alignment_images.xmd', 2)


def test_settings_stages_keep_the_defaults_and_extend_them():
    from deephemnma.hemnma.aligner import AlignSettings
    assert AlignSettings(**AlignSettings.stages(AlignSettings.refine_resolutions)) == AlignSettings()
    two = AlignSettings(**AlignSettings.stages([15.0, 12.0], top_k=2))
    assert two.refine_steps == (30, 25) and two.refine_keep == (2, 1)
    five = AlignSettings.stages([12, 10, 7, 5, 3.5])
    assert five['refine_steps'][-1] == 25 and five['refine_keep'] == (3, 1, 1, 1, 1)
    chosen = AlignSettings.stages([7.0, 5.0, 3.5], top_k=2, steps=(15, 20))
    assert chosen['refine_steps'] == (15, 20, 20) and chosen['refine_keep'] == (2, 1, 1)
    refine = RefineSettings(steps=(15, 20)).align_settings(AlignSettings())
    assert refine.refine_steps == (15, 20) and refine.refine_keep == (1, 1)   # the first stage's best goes on


if __name__ == '__main__':
    unittest.main()
