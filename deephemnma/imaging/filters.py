"""Fourier-space image filters: anti-aliased downscaling (Fourier cropping) and grid weights.

Images are ``(..., box, box)`` real arrays (row y, column x). Their transforms are ``torch.fft.rfft2``
arrays ``(..., box, box // 2 + 1)`` with rows in ``fftfreq`` order (0, 1, ..., box/2 - 1, -box/2, ..., -1)
and columns ``0 .. box // 2``.
"""
from __future__ import annotations

import torch


def crop_rfft_to_box(transforms: torch.Tensor, box_out: int) -> torch.Tensor:
    """The coefficients of a larger rfft2 grid that a ``box_out`` image's rfft2 grid holds, in its order.

    Rows kept: the integer frequencies of ``fftfreq(box_out) * box_out``; columns ``0 .. box_out // 2``.
    No scaling is applied (see :func:`fourier_crop`).
    """
    box_in = transforms.shape[-2]
    if box_out > box_in:
        raise ValueError(f'cannot crop a {box_in}-pixel transform to {box_out} pixels')
    rows = torch.fft.fftfreq(box_out, d=1.0 / box_out, device=transforms.device).round().long()
    rows = torch.where(rows >= 0, rows, rows + box_in)
    return transforms[..., rows, :][..., :box_out // 2 + 1]


def fourier_crop(images: torch.Tensor, box_out: int) -> torch.Tensor:
    """Downscale ``(..., box, box)`` images to ``box_out`` pixels by Fourier cropping (ideal anti-alias low-pass).

    The pixel size grows by ``box / box_out``; values are kept (an image band-limited below the new Nyquist
    frequency is resampled exactly, so a constant stays the same constant).
    """
    box_in = images.shape[-1]
    if box_out == box_in:
        return images
    cropped = crop_rfft_to_box(torch.fft.rfft2(images), box_out)
    return torch.fft.irfft2(cropped, s=(box_out, box_out)) * (box_out / box_in) ** 2


def rfft_weights(box: int, device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
    """``(box, box // 2 + 1)`` multiplicities of rfft2 coefficients in the full grid (2 for the mirrored columns).

    ``sum(weights * |F|^2) / box^2`` equals the sum of squared pixel values of the image (Parseval).
    """
    weights = torch.full((box, box // 2 + 1), 2.0, device=device, dtype=dtype)
    weights[:, 0] = 1.0
    if box % 2 == 0:
        weights[:, -1] = 1.0
    return weights


def mean_full_grid(values: torch.Tensor) -> torch.Tensor:
    """Mean over the full ``box x box`` frequency grid of a real, centro-symmetric quantity given on the
    rfft grid ``(..., box, box // 2 + 1)`` (e.g. ``CTF^2``)."""
    box = values.shape[-2]
    weights = rfft_weights(box, values.device, values.dtype)
    return (values * weights).sum(dim=(-2, -1)) / box ** 2
