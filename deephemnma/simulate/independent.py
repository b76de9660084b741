"""Particle images by a second, independent image-formation path, to check the engine against images it did
not make itself.

Where the simulator (:mod:`deephemnma.simulate.physics`) projects each atom's 5-Gaussian scattering factor
exactly in Fourier space, this path does what a map-based program does: the atoms (weighted by atomic number)
are spread on a voxel grid at the image's pixel size (trilinear, "cloud in cell") and blurred by a Gaussian
(:data:`BLUR_ANGSTROM`); the map is rotated by interpolation (``scipy.ndimage.affine_transform``, cubic
splines) and summed along z; the shift is an interpolated image shift (``scipy.ndimage.shift``); then the CTF is
applied in Fourier space (phase-flipped images: times ``|CTF|``). Conventions as everywhere in the project: Xmipp
ZYZ matrices ``A`` (an atom at x appears at ``A x``), the box centre ``box // 2`` is the origin, a recorded
shift ``s`` (pixels) means the particle is drawn at ``-s``. Images are scaled to unit standard deviation.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.ndimage
import torch

from deephemnma.imaging.ctf import CTFParams, ctf_2d
from deephemnma.imaging.rotations import euler_to_matrix

#: Gaussian blur (standard deviation, Angstrom) of the voxel map: about an atom's scattering width.
BLUR_ANGSTROM = 1.0
#: Atomic numbers of the elements of proteins and nucleic acids (others count as carbon).
ATOMIC_NUMBER = {'H': 1, 'C': 6, 'N': 7, 'O': 8, 'P': 15, 'S': 16, 'SE': 34}


def voxel_map(coords: np.ndarray, elements, box: int, pixel_size: float) -> np.ndarray:
    """Map ``(box, box, box)`` [z, y, x] of atoms at ``coords`` (N, 3) Angstrom (origin at voxel ``box // 2``)."""
    weights = np.array([ATOMIC_NUMBER.get(str(e).strip().upper(), 6) for e in elements], dtype=np.float64)
    position = coords[:, ::-1] / pixel_size + box // 2                  # (z, y, x) in voxels
    base = np.floor(position).astype(np.int64)
    fraction = position - base
    volume = np.zeros((box, box, box))
    for corner in np.ndindex(2, 2, 2):
        index = base + np.array(corner)
        weight = weights * np.prod(np.where(np.array(corner) == 1, fraction, 1.0 - fraction), axis=1)
        inside = np.all((index >= 0) & (index < box), axis=1)
        np.add.at(volume, tuple(index[inside].T), weight[inside])
    return scipy.ndimage.gaussian_filter(volume, BLUR_ANGSTROM / pixel_size)


def project_volume(volume: np.ndarray, angles: np.ndarray, prefiltered: bool = False) -> np.ndarray:
    """Image [y, x]: the map [z, y, x] rotated by the Xmipp matrix of ``angles`` (degrees; the voxel at r goes to
    ``A r``, cubic-spline interpolation about voxel ``box // 2``) and summed along z. ``prefiltered``: ``volume``
    already holds the cubic-spline coefficients (``scipy.ndimage.spline_filter``, for many poses of one map)."""
    box = volume.shape[0]
    reverse = np.eye(3)[::-1]                                            # (x, y, z) <-> (z, y, x)
    matrix = reverse @ euler_to_matrix(np.asarray(angles, dtype=np.float64)).T @ reverse   # output -> input voxel
    centre = np.full(3, box // 2, dtype=np.float64)
    rotated = scipy.ndimage.affine_transform(volume, matrix, centre - matrix @ centre, order=3, mode='constant',
                                             prefilter=not prefiltered)
    return rotated.sum(axis=0)


def independent_images(coordinates: np.ndarray, elements, angles: np.ndarray, shifts: np.ndarray, box: int,
                       pixel_size: float, ctf: Optional[CTFParams] = None) -> np.ndarray:
    """Noise-free phase-flipped images (n, box, box) float32 of conformations ``coordinates`` (n, N, 3) Angstrom
    (centred), at ``angles`` (n, 3) degrees and ``shifts`` (n, 2) pixels; ``ctf`` scalar parameters or None."""
    flip = None if ctf is None else ctf_2d(ctf, box, pixel_size, dtype=torch.float64)[0].abs().numpy()
    out = np.empty((len(coordinates), box, box), dtype=np.float32)
    for i, coords in enumerate(coordinates):
        image = project_volume(voxel_map(coords, elements, box, pixel_size), angles[i])
        image = scipy.ndimage.shift(image, (-shifts[i][1], -shifts[i][0]), order=3, mode='constant')
        if flip is not None:
            image = np.fft.irfft2(np.fft.rfft2(image) * flip, s=(box, box))
        out[i] = (image - image.mean()) / image.std()
    return out
