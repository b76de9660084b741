"""The contrast of particle images: is the protein as this project expects it, or inverted?

In raw micrographs protein is dark (the CTF is negative at low frequency under focus); RELION's and cryoSPARC's
extraction invert the contrast by default, so their particles show protein white. This project's images are
the projected potential multiplied by the CTF, ``|CTF|`` after phase flipping, or nothing for CTF-free images:
once the sign of the CTF is taken out, the protein's density is positive. :func:`contrast_evidence` measures
that from the data, without any reference: each image (its CTF sign taken out according to ``ctf_state``,
low-passed to ``resolution`` Angstrom) gives the mean of a central disk (where particles sit) minus the mean of
the ring at the image's edge; the evidence is the t statistic of these differences over the images: clearly
positive for the expected contrast, clearly negative for inverted images.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from deephemnma.imaging.ctf import CTF_STATES, CTFParams, ctf_2d
from deephemnma.runtime.errors import InputError

#: Below this |t| the decision is reported as uncertain.
CLEAR_EVIDENCE = 3.0
#: What ``--invert-data`` takes: decide from the data, or say it.
INVERT_CHOICES = ('auto', 'yes', 'no')


def contrast_evidence(images: np.ndarray, ctf: Optional[CTFParams], ctf_state: str, pixel_size: float,
                      resolution: float = 20.0) -> float:
    """The t statistic of the central-disk-minus-edge contrast of ``images`` ``(n, box, box)`` (see the module
    docstring): positive for this project's contrast, negative for inverted images."""
    if ctf_state not in CTF_STATES:
        raise InputError(f"unknown CTF state '{ctf_state}' (choose one of {', '.join(CTF_STATES)})")
    stack = torch.as_tensor(np.asarray(images, dtype=np.float32))
    count, box = stack.shape[0], stack.shape[-1]
    transform = torch.fft.rfft2(stack - stack.mean(dim=(-2, -1), keepdim=True))
    if ctf_state == 'full' and ctf is not None:
        transform = transform * torch.sign(ctf_2d(ctf, box, pixel_size, count))
    ky = torch.fft.fftfreq(box, d=pixel_size)[:, None]
    kx = torch.fft.rfftfreq(box, d=pixel_size)[None, :]
    sigma = 1.0 / resolution
    transform = transform * torch.exp(-(kx ** 2 + ky ** 2) / (2.0 * sigma ** 2))
    smooth = torch.fft.irfft2(transform, s=(box, box))
    grid = torch.arange(box, dtype=torch.float32) - box // 2
    radius = torch.sqrt(grid[:, None] ** 2 + grid[None, :] ** 2)
    centre = radius <= box / 6.0
    edge = (radius >= 0.4 * box) & (radius <= 0.5 * box)
    differences = (smooth[:, centre].mean(dim=1) - smooth[:, edge].mean(dim=1)).double().numpy()
    if count < 2:
        return float(np.sign(differences[0]) * CLEAR_EVIDENCE)
    spread = differences.std(ddof=1)
    return float(differences.mean() / max(spread / math.sqrt(count), 1e-30))


def is_inverted(choice: str, evidence: Optional[float]) -> bool:
    """Whether to multiply the images by -1: ``choice`` 'yes' or 'no', or 'auto' (from ``evidence``)."""
    if choice not in INVERT_CHOICES:
        raise InputError(f"--invert-data takes one of {', '.join(INVERT_CHOICES)}, not '{choice}'")
    if choice == 'auto':  # an uncertain measurement leaves the images as they are
        return evidence is not None and evidence <= -CLEAR_EVIDENCE
    return choice == 'yes'


def describe(choice: str, evidence: Optional[float]) -> str:
    """One line saying what was decided about the contrast, and on what evidence."""
    inverted = is_inverted(choice, evidence)
    decision = 'inverted (multiplied by -1)' if inverted else 'used as they are'
    if choice != 'auto':
        return f'contrast: images {decision} (--invert-data {choice})'
    certainty = '' if abs(evidence) >= CLEAR_EVIDENCE else \
        '; too uncertain to invert: check, and set --invert-data yes or no'
    return f'contrast: images {decision}, detected from the data (t = {evidence:+.1f}{certainty})'
