"""Rotations: Xmipp's convention (checked against xmippLib and xmipp3.convert), round trips, distances."""
import numpy as np
import torch

from deephemnma.imaging import rotations as R


def test_euler_matches_xmipp_matrix_including_gimbal_lock():
    import xmippLib  # pyxmipp3, a dependency of scipion-em
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(-360, 360, size=(500, 3)),
                             [[30, 0, 40], [30, 180, 40], [0, 0, 0], [0, 180, 0], [359, 180, 1], [12, 90, -77]]])
    ours = R.euler_to_matrix(angles)
    xmipp = np.array([np.array(xmippLib.Euler_angles2matrix(*a)) for a in angles])
    assert np.abs(ours - xmipp).max() < 1e-6


def test_transform_matches_scipion_xmipp_converter():
    from xmipp3 import convert
    rng = np.random.default_rng(1)
    for angles, shifts in zip(rng.uniform(-180, 360, (50, 3)), rng.uniform(-6, 6, (50, 2))):
        expected = convert.matrixFromGeometry(np.array([shifts[0], shifts[1], 0.0]), angles, True)
        assert np.abs(R.transform_from_pose(angles, shifts) - expected).max() < 1e-9
        back_angles, back_shifts = R.pose_from_transform(expected)
        assert np.abs(R.euler_to_matrix(back_angles) - R.euler_to_matrix(angles)).max() < 1e-9
        assert np.abs(back_shifts - shifts).max() < 1e-9


def test_round_trip_euler_matrix_quaternion_euler_100k():
    matrices = R.random_rotations(100_000, seed=2)
    quaternions = R.matrix_to_quaternion(matrices)
    back = R.euler_to_matrix(R.quaternion_to_euler(quaternions))
    assert np.abs(back - matrices).max() < 1e-6
    euler = R.matrix_to_euler(matrices)
    assert np.abs(R.euler_to_matrix(euler) - matrices).max() < 1e-6
    assert np.all(quaternions[:, 0] >= 0)
    assert np.abs(np.linalg.norm(quaternions, axis=1) - 1).max() < 1e-12


def test_gimbal_lock_angles_round_trip():
    for angles in ([30, 0, 40], [30, 180, 40], [0, 180, 0], [-170, 0, 100], [90, 180, -90]):
        matrix = R.euler_to_matrix(angles)
        back = R.matrix_to_euler(matrix)
        assert np.abs(R.euler_to_matrix(back) - matrix).max() < 1e-9
        assert back[1] in (0.0, 180.0)


def test_q_and_minus_q_give_identical_distances_and_matrices():
    rng = np.random.default_rng(3)
    qa, qb = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
    d = R.quaternion_angle_deg(qa, qb)
    assert np.array_equal(d, R.quaternion_angle_deg(-qa, qb))
    assert np.array_equal(d, R.quaternion_angle_deg(qa, -qb))
    assert np.abs(R.quaternion_to_matrix(qa) - R.quaternion_to_matrix(-qa)).max() < 1e-12
    assert np.abs(R.matrix_to_quaternion(R.quaternion_to_matrix(-qa))
                  - R.matrix_to_quaternion(R.quaternion_to_matrix(qa))).max() < 1e-12
    geodesic = R.geodesic_angle_deg(R.quaternion_to_matrix(qa), R.quaternion_to_matrix(qb))
    assert np.abs(geodesic - d).max() < 1e-6


def test_distances_against_known_rotations():
    base = R.euler_to_matrix([10, 50, 20])
    for angle in (0.0, 1.0, 37.0, 90.0, 179.0):
        turned = R.rotation_about_z_deg(angle) @ base
        assert abs(R.geodesic_angle_deg(base, turned) - angle) < 1e-6
    # A rotation about the frame's z axis leaves z fixed and turns x and y by the angle: mean of (a, a, 0).
    turned = base @ R.rotation_about_z_deg(60.0)
    assert abs(R.mean_axis_angle_deg(base, turned) - 40.0) < 1e-6


def test_random_rotations_are_uniform():
    matrices = R.random_rotations(200_000, seed=4)
    # Haar measure: the rotation angle has density (1 - cos t) / pi on [0, pi]; mean = pi/2 + 2/pi.
    angle = np.radians(R.geodesic_angle_deg(np.eye(3), matrices))
    assert abs(angle.mean() - (np.pi / 2 + 2 / np.pi)) < 0.01
    # Projection directions (third row) uniform on the sphere: cos(tilt) uniform in [-1, 1].
    assert abs(np.mean(matrices[:, 2, 2])) < 0.01 and abs(np.var(matrices[:, 2, 2]) - 1 / 3) < 0.01


def test_torch_functions_are_differentiable_and_batched():
    angles = torch.tensor([[10.0, 20.0, 30.0], [200.0, 100.0, -50.0]], dtype=torch.float64, requires_grad=True)
    matrices = R.euler_to_matrix_torch(angles)
    quaternions = R.matrix_to_quaternion_torch(matrices)
    loss = R.quaternion_to_matrix_torch(quaternions).sum() + R.geodesic_angle_deg_torch(
        matrices, R.euler_to_matrix_torch(angles.detach() + 1.0)).sum()
    loss.backward()
    assert angles.grad is not None and torch.isfinite(angles.grad).all() and angles.grad.abs().sum() > 0
    assert torch.allclose(R.quaternion_to_matrix_torch(quaternions), matrices, atol=1e-12)


def test_paper_sampling_ranges():
    angles = R.random_euler_uniform_angles(1000, seed=5)
    assert angles[:, 0].min() >= 0 and angles[:, 0].max() < 360
    assert angles[:, 1].min() >= 0 and angles[:, 1].max() <= 180
    assert angles[:, 2].min() >= 0 and angles[:, 2].max() < 360


def test_mean_quaternion_matches_scipy_and_ignores_signs():
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(3)
    centre = R.random_rotations(1, seed=rng)[0]
    spread = Rotation.from_rotvec(rng.normal(scale=0.3, size=(5, 3))).as_matrix()
    quaternions = R.matrix_to_quaternion(centre @ spread)  # 5 rotations scattered around the centre
    signs = np.array([1, -1, 1, -1, -1])[:, None]
    mean = R.mean_quaternion_torch(torch.as_tensor(quaternions * signs)).numpy()
    # scipy's quaternions are (x, y, z, w) and its matrices the transposes of Xmipp's (passive) ones
    expected = Rotation.from_quat(np.roll(quaternions, -1, axis=1)).mean().as_matrix().T
    assert R.geodesic_angle_deg(R.quaternion_to_matrix(mean), expected) < 1e-6
    batched = R.mean_quaternion_torch(torch.as_tensor(np.stack([quaternions, quaternions[::-1]], 1)), dim=0)
    np.testing.assert_allclose(batched.numpy(), np.stack([mean, mean]), atol=1e-9)
