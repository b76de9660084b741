"""Noise at a set signal-to-noise ratio, split between before and after the CTF.

Definition used throughout (as Xmipp's simulator): for an image, the SNR is the variance over all its pixels
of the clean signal (the projection after the CTF, before any phase flip) divided by the variance of the total
noise over all its pixels::

    SNR = var(CTF * P) / var(noise_total),     noise_total = CTF * n_before + n_after

with ``n_before`` and ``n_after`` independent white Gaussian noises (variances ``s_b^2`` and ``s_a^2``) added
before the CTF (structural noise, ice, ...) and after it (shot noise, detector). The CTF-filtered ``n_before``
has variance ``s_b^2 <CTF^2>``, ``<CTF^2>`` the mean of ``CTF^2`` over the image's frequency grid. A fraction
``before_fraction`` of the total noise variance (measured after the CTF) comes from ``n_before``::

    s_b^2 <CTF^2> = before_fraction * var_total,      s_a^2 = (1 - before_fraction) * var_total

The two noises are drawn together as one Gaussian field whose power spectrum is ``s_b^2 CTF^2 + s_a^2``: the
Fourier coefficients of ``CTF * n_before + n_after`` are independent zero-mean Gaussians (with the Hermitian
symmetry of a real image) of exactly that variance, as are those of white noise scaled by
``sqrt(s_b^2 CTF^2 + s_a^2)`` (the CTF is real), so both have the same distribution; one Fourier transform
instead of two. Phase flipping multiplies by
``sign(CTF)``, which changes neither variance, so the SNR holds before and after it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from deephemnma.imaging.filters import mean_full_grid


def split_noise_variances(total_variance: torch.Tensor, before_fraction: float,
                          ctf: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Variances ``(s_b^2, s_a^2)`` (per image, ``(B,)``) of the white noises before and after the CTF.

    ``total_variance`` (B,) the wanted variance of the total noise in the image; ``ctf`` (B, box, box//2+1)
    on the rfft grid, or None (no CTF: both noises are simply added).
    """
    if not 0.0 <= before_fraction <= 1.0:
        raise ValueError(f'the fraction of noise before the CTF must be in [0, 1], not {before_fraction}')
    ctf_power = torch.ones_like(total_variance) if ctf is None else mean_full_grid(ctf ** 2).to(total_variance)
    return before_fraction * total_variance / ctf_power, (1.0 - before_fraction) * total_variance


def total_noise_variance(var_before: torch.Tensor, var_after: torch.Tensor,
                         ctf: Optional[torch.Tensor]) -> torch.Tensor:
    """Variance (B,) of ``CTF * n_before + n_after`` over an image whose rfft-grid CTF is ``ctf`` (or None):
    ``s_b^2 <CTF^2> + s_a^2``, the inverse of :func:`split_noise_variances`."""
    ctf_power = torch.ones_like(var_before) if ctf is None else mean_full_grid(ctf ** 2).to(var_before)
    return var_before * ctf_power + var_after


def noise_spectrum_scale(var_before: torch.Tensor, var_after: torch.Tensor, ctf: Optional[torch.Tensor],
                         grid_shape: Tuple[int, int]) -> torch.Tensor:
    """Per-frequency standard deviation ``sqrt(s_b^2 CTF^2 + s_a^2)`` ``(B, H, W)`` to multiply the rfft of
    unit white noise with (see the module docstring)."""
    vb = var_before[:, None, None]
    va = var_after[:, None, None]
    if ctf is None:
        return torch.sqrt(vb + va).expand(-1, *grid_shape)
    return torch.sqrt(vb * ctf ** 2 + va)


def measured_snr(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per image, ``var(clean) / var(images - clean)`` over all pixels (the definition above)."""
    noise = images - clean
    return clean.var(dim=(-2, -1), unbiased=False) / noise.var(dim=(-2, -1), unbiased=False)
