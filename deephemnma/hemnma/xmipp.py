"""Xmipp's ``xmipp_nma_alignment`` (the original HEMNMA) as an optional backend: its command and its output.

ContinuousFlex runs it as::

    xmipp_nma_alignment -i images.xmd --pdb atoms.pdb --modes modes.xmd --sampling_rate Ts --discrAngStep 10
        --odir DIR --centerPDB --trustradius_scale 1 --resume [--fixed_Gaussian] [--projMatch]

(``--fixed_Gaussian`` when the reference is made of pseudoatoms). The program keeps the images it has finished
in ``DIR/nmaDone.xmd`` (what ``--resume`` continues from) and writes the result into the ``-i`` metadata, whose
columns are ContinuousFlex's ``image, enabled, angleRot, angleTilt, anglePsi, shiftX, shiftY, nmaDisplacements,
cost``. This module builds that command and reads those files into :class:`~deephemnma.data.particles.Particles`
(no Xmipp binary is needed to build or parse).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from deephemnma.data.formats import read_particles
from deephemnma.data.particles import Particles
from deephemnma.runtime.errors import InputError

PROGRAM = 'xmipp_nma_alignment'
DONE_NAME = 'nmaDone.xmd'


@dataclass
class XmippAlignmentJob:
    """The inputs of one ``xmipp_nma_alignment`` run (paths as the program will see them)."""

    images: str
    pdb: str
    modes: str
    sampling_rate: float
    output_dir: str
    discrete_angular_step: float = 10.0
    trust_region_scale: int = 1
    pseudoatoms: bool = False
    projection_matching: bool = False

    def arguments(self) -> str:
        """The argument string, exactly as ContinuousFlex's HEMNMA protocol builds it."""
        args = (f'-i {self.images} --pdb {self.pdb} --modes {self.modes} --sampling_rate {self.sampling_rate:f} '
                f'--discrAngStep {self.discrete_angular_step:f} --odir {self.output_dir} --centerPDB '
                f'--trustradius_scale {int(self.trust_region_scale):d} --resume ')
        if self.pseudoatoms:
            args += '--fixed_Gaussian '
        if self.projection_matching:
            args += '--projMatch '
        return args

    def command(self) -> List[str]:
        """``[program, arg, ...]`` for subprocess."""
        return [PROGRAM] + self.arguments().split()


def program_path() -> Optional[str]:
    """Where ``xmipp_nma_alignment`` is on the PATH (None without an Xmipp installation)."""
    return shutil.which(PROGRAM)


def is_pseudoatom_pdb(path: str | os.PathLike) -> bool:
    """True for a pseudoatom PDB (Xmipp's ``REMARK xmipp_convert_vol2pseudo`` header or ContinuousFlex's name)."""
    path = Path(path)
    if path.name == 'pseudoatoms.pdb':
        return True
    try:
        with open(path) as handle:
            for line in handle:
                if not line.startswith('REMARK'):
                    break
                if 'xmipp_convert_vol2pseudo' in line:
                    return True
    except OSError as error:
        raise InputError(f'{path}: cannot read the reference ({error})') from error
    return False


def read_alignment(images_xmd: str | os.PathLike, num_modes: int, pixel_size: Optional[float] = None) -> Particles:
    """Particles with angles, shifts, amplitudes and cost from the program's ``images.xmd`` (or nmaDone.xmd).

    Disabled rows are dropped; InputError when a column is missing or the amplitudes have another count than
    ``num_modes``.
    """
    particles = read_particles(images_xmd, pixel_size)
    missing = [name for name, value in (('angles', particles.angles), ('shifts', particles.shifts),
                                        ('nmaDisplacements', particles.amplitudes), ('cost', particles.score))
               if value is None]
    if missing:
        raise InputError(f'{images_xmd}: not an xmipp_nma_alignment output (missing {", ".join(missing)})')
    if particles.amplitudes.shape[1] != num_modes:
        raise InputError(f'{images_xmd}: {particles.amplitudes.shape[1]} amplitudes per image for {num_modes} '
                         'modes')
    return particles


def merge_in_order(inputs: Particles, aligned: Particles) -> Particles:
    """The input particles (in their order) with the alignment of the same images; InputError for a missing one."""
    position = {name: i for i, name in enumerate(aligned.image)}
    missing = [name for name in inputs.image if name not in position]
    if missing:
        raise InputError(f'{len(missing)} image(s) have no xmipp_nma_alignment result (first: {missing[0]})')
    order = np.array([position[name] for name in inputs.image], dtype=np.int64)
    result = inputs.subset(np.arange(len(inputs)))
    result.angles, result.shifts = aligned.angles[order], aligned.shifts[order]
    result.amplitudes, result.score = aligned.amplitudes[order], aligned.score[order]
    return result
