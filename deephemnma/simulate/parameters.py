"""Per-image ground truth of a simulation: conformations, Euler angles, shifts and CTF, drawn from
independent random streams of one seed (so each kind of parameter stays the same when another changes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.rotations import matrix_to_euler, random_euler_uniform_angles, random_rotations
from deephemnma.runtime.errors import InputError
from deephemnma.simulate import conformations as conf
from deephemnma.simulate.config import ANGLE_SAMPLINGS, SimulationConfig

#: Independent random streams derived from the seed.
STREAMS = {'conformations': 0, 'angles': 1, 'shifts': 2, 'defocus': 3, 'noise': 4}


# ----------------------------------------------------------------------------------------------
# Random parameters
# ----------------------------------------------------------------------------------------------
def stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """The independent numpy generator ``name`` (see ``STREAMS``) of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), STREAMS[name], *extra]))


def chunk_seed(seed: int, chunk: int) -> int:
    """The torch seed of the noise of chunk ``chunk``."""
    state = np.random.SeedSequence([int(seed), STREAMS['noise'], int(chunk)]).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def sample_angles(count: int, rng: np.random.Generator, sampling: str = 'uniform') -> np.ndarray:
    """Euler angles (n, 3) in degrees: 'uniform' on SO(3) or the paper's 'angles' (uniform in each angle)."""
    if sampling == 'uniform':
        return matrix_to_euler(random_rotations(count, rng))
    if sampling == 'angles':
        return random_euler_uniform_angles(count, rng)
    raise InputError(f"unknown angle sampling '{sampling}'; choose one of {', '.join(ANGLE_SAMPLINGS)}")


def sample_shifts(count: int, rng: np.random.Generator, max_shift: float = 5.0) -> np.ndarray:
    """Shifts (n, 2) in pixels, uniform in ``[-max_shift, max_shift]`` on each axis (Xmipp sign)."""
    return rng.uniform(-max_shift, max_shift, (count, 2))


def sample_defocus(count: int, rng: np.random.Generator, defocus_min: float, defocus_max: float,
                   astigmatism: float = 0.0, group_size: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(defocus_u, defocus_v, defocus_angle)`` per image: mean defocus uniform in ``[min, max]`` Angstrom
    (positive = underfocus), ``defocus_u - defocus_v = astigmatism`` Angstrom at a uniform angle in [0, 180)
    degrees; consecutive groups of ``group_size`` images share one CTF (as the particles of a micrograph)."""
    if group_size < 1:
        raise InputError(f'CTF group size {group_size} must be at least 1')
    if defocus_max < defocus_min:
        raise InputError(f'defocus range [{defocus_min}, {defocus_max}] A is empty')
    groups = (count + group_size - 1) // group_size
    mean = rng.uniform(defocus_min, defocus_max, groups)
    angle = rng.uniform(0.0, 180.0, groups) if astigmatism else np.zeros(groups)
    take = np.arange(count) // group_size
    return mean[take] + 0.5 * astigmatism, mean[take] - 0.5 * astigmatism, angle[take]


@dataclass
class ParticleParameters:
    """Ground truth of every image: amplitudes (n, M), angles (n, 3) deg, shifts (n, 2) px, CTF (n,) or None,
    and a label (n,) (helix parameter r, state index or file row)."""

    amplitudes: np.ndarray
    angles: np.ndarray
    shifts: np.ndarray
    labels: np.ndarray
    defocus_u: Optional[np.ndarray] = None
    defocus_v: Optional[np.ndarray] = None
    defocus_angle: Optional[np.ndarray] = None

    def ctf(self, config: SimulationConfig) -> Optional[CTFParams]:
        if self.defocus_u is None:
            return None
        return CTFParams(defocus_u=torch.as_tensor(self.defocus_u), defocus_v=torch.as_tensor(self.defocus_v),
                         defocus_angle=torch.as_tensor(self.defocus_angle), voltage=config.voltage, cs=config.cs,
                         amplitude_contrast=config.amplitude_contrast)


def sample_parameters(config: SimulationConfig, num_modes: int) -> ParticleParameters:
    """All per-image ground truth of a configuration, from independent streams of its seed."""
    count = config.count
    conformations = conf.sample(config.conformations, count, num_modes, stream(config.seed, 'conformations'),
                                config.amplitude_scale, config.states, config.state_weights, config.jitter,
                                config.amplitudes_file)
    params = ParticleParameters(conformations.amplitudes,
                                sample_angles(count, stream(config.seed, 'angles'), config.angle_sampling),
                                sample_shifts(count, stream(config.seed, 'shifts'), config.max_shift),
                                conformations.labels)
    if config.ctf:
        params.defocus_u, params.defocus_v, params.defocus_angle = sample_defocus(
            count, stream(config.seed, 'defocus'), config.defocus_min, config.defocus_max, config.astigmatism,
            config.ctf_group_size)
    return params
