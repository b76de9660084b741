"""The contrast transfer function (CTF), its application and phase flipping, batched in torch.

Conventions (RELION/cisTEM): defocus in Angstrom, positive = underfocus; ``defocus_angle`` (degrees) is the angle
of the ``defocus_u`` axis from the image x axis; spherical aberration ``cs`` in mm; voltage in kV. With spatial
frequency ``k`` (1/Angstrom) at angle ``alpha``::

    chi(k) = pi lambda dz(alpha) k^2 - pi/2 Cs lambda^3 k^4 + phase_shift
    CTF(k) = -(sqrt(1 - w^2) sin(chi) + w cos(chi))          (w = amplitude contrast)

so the CTF is negative at low frequency (dark particles on a bright background after multiplying a positive
potential projection). Xmipp writes defocus in Angstrom too (``ctfDefocusU``); its older "-0.5 um" notation means
0.5 um underfocus, i.e. ``defocus_u = 5000`` here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Union

import numpy as np
import torch

Number = Union[float, torch.Tensor]


def wavelength(voltage_kv: Number) -> Number:
    """Relativistic electron wavelength (Angstrom) at ``voltage_kv`` kilovolts (a float, or a tensor of them)."""
    volts = voltage_kv * 1e3
    root = torch.sqrt if isinstance(volts, torch.Tensor) else math.sqrt
    return 12.2642598 / root(volts * (1.0 + 0.978466e-6 * volts))


#: What the images carry of the CTF, in the one order every choice list uses: phase-flipped (a model is multiplied
#: by ``|CTF|``), the full CTF (raw images: the model by the CTF), or none (CTF-corrected or CTF-free images).
CTF_STATES = ('phase_flipped', 'full', 'none')

#: Fields of :class:`CTFParams` of the microscope: one float for a set of one optics, else one value per image.
_SHARED = ('voltage', 'cs', 'amplitude_contrast')


@dataclass
class CTFParams:
    """CTF parameters: the one CTF type of the project (simulation, alignment, reconstruction).

    Each field is a float, or one value per image as a ``(B,)`` numpy array or tensor (the microscope's
    ``voltage``, ``cs`` and ``amplitude_contrast`` too, for particles of several RELION optics groups). Defocus in
    Angstrom (positive = underfocus), angles (astigmatism, phase shift of a phase plate) in degrees.
    """

    defocus_u: Number
    defocus_v: Number
    defocus_angle: Number = 0.0
    voltage: Number = 300.0
    cs: Number = 2.7
    amplitude_contrast: Number = 0.1
    phase_shift: Number = 0.0

    def batched(self, count: int, device: torch.device, dtype: torch.dtype = torch.float32) -> 'CTFParams':
        """A copy with every per-image field as a ``(count,)`` tensor on ``device`` (the microscope's fields stay
        floats when they are one value for all)."""
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in _SHARED and np.ndim(value) == 0:
                values[field.name] = float(value)
            else:
                tensor = torch.as_tensor(value, device=device, dtype=dtype)
                values[field.name] = tensor.expand(count).clone() if tensor.ndim == 0 else tensor.reshape(count)
        return CTFParams(**values)

    def rows(self, index) -> 'CTFParams':
        """The parameters of the images at ``index`` (positions, a mask or a slice) of per-image fields."""
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            values[field.name] = value[index] if np.ndim(value) > 0 else value
        return CTFParams(**values)


def frequency_grid(box: int, pixel_size: float, rfft: bool = True, device: torch.device = torch.device('cpu'),
                   dtype: torch.dtype = torch.float32):
    """Spatial frequencies ``(ky, kx)`` in 1/Angstrom on the (r)fft grid of a ``box x box`` image."""
    ky = torch.fft.fftfreq(box, d=pixel_size, device=device, dtype=dtype)
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(box, d=pixel_size, device=device, dtype=dtype)
    return torch.meshgrid(ky, kx, indexing='ij')


def ctf_2d(params: CTFParams, box: int, pixel_size: float, count: int = 1, rfft: bool = True,
           device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The CTF on the (r)fft grid: ``(count, box, box // 2 + 1)`` (or ``(count, box, box)`` if not rfft)."""
    p = params.batched(count, device, dtype)
    ky, kx = frequency_grid(box, pixel_size, rfft, device, dtype)
    k2 = kx ** 2 + ky ** 2
    angle = torch.atan2(ky, kx)
    lam = _image_axis(wavelength(p.voltage))
    mean = 0.5 * (p.defocus_u + p.defocus_v)
    half_diff = 0.5 * (p.defocus_u - p.defocus_v)
    astig = torch.deg2rad(p.defocus_angle)
    defocus = mean[:, None, None] + half_diff[:, None, None] * torch.cos(2.0 * (angle[None] - astig[:, None, None]))
    cs_angstrom = _image_axis(p.cs * 1e7)
    chi = (math.pi * lam * defocus * k2[None] - 0.5 * math.pi * cs_angstrom * lam ** 3 * (k2 ** 2)[None]
           + torch.deg2rad(p.phase_shift)[:, None, None])
    w = _image_axis(p.amplitude_contrast)
    root = torch.sqrt if isinstance(w, torch.Tensor) else math.sqrt
    return -(root(1.0 - w * w) * torch.sin(chi) + w * torch.cos(chi))


def _image_axis(value: Number) -> Number:
    """A per-image ``(B,)`` tensor shaped to broadcast over images ``(B, H, W)``; floats as they are."""
    return value[:, None, None] if isinstance(value, torch.Tensor) else value


def apply_ctf(images: torch.Tensor, params: CTFParams, pixel_size: float) -> torch.Tensor:
    """Multiply ``(B, H, W)`` images by their CTFs in Fourier space."""
    ctf = ctf_2d(params, images.shape[-1], pixel_size, images.shape[0], device=images.device, dtype=images.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(images) * ctf, s=images.shape[-2:])


def phase_flip(images: torch.Tensor, params: CTFParams, pixel_size: float) -> torch.Tensor:
    """Phase-flip ``(B, H, W)`` images: multiply their Fourier transforms by the sign of their CTFs."""
    ctf = ctf_2d(params, images.shape[-1], pixel_size, images.shape[0], device=images.device, dtype=images.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(images) * torch.sign(ctf), s=images.shape[-2:])


def ctf_zero_frequencies(defocus: float, voltage: float, cs: float, amplitude_contrast: float,
                         max_frequency: float, phase_shift: float = 0.0) -> torch.Tensor:
    """Frequencies (1/Angstrom) below ``max_frequency`` where the (non-astigmatic) CTF is zero."""
    lam = wavelength(voltage)
    cs_angstrom = cs * 1e7
    offset = math.atan2(amplitude_contrast, math.sqrt(1.0 - amplitude_contrast ** 2)) + math.radians(phase_shift)
    zeros = []
    for n in range(0, 1000):
        # chi(k) + offset = n pi, with chi = pi lam dz k^2 - pi/2 Cs lam^3 k^4: a quadratic in u = k^2.
        a, b, c = -0.5 * math.pi * cs_angstrom * lam ** 3, math.pi * lam * defocus, offset - n * math.pi
        disc = b * b - 4 * a * c
        if disc < 0:
            break
        u = (-b + math.sqrt(disc)) / (2 * a)
        if u <= 0:
            continue
        k = math.sqrt(u)
        if k > max_frequency:
            break
        zeros.append(k)
    return torch.tensor(zeros)
