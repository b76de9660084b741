"""Structures from the conformational space: group centroids and animations along the axes of the space.

* Centroid of a group: the reference deformed by the group's mean amplitudes (:mod:`deephemnma.nma.deform`),
  written as PDB, and its scattering-potential map (:func:`deephemnma.molecule.density.atoms_to_map`) for FSC
  comparison with the group's reconstruction. Maps are centred like the simulator's images: the geometric
  centre of the reference atoms is the centre voxel ``box // 2``.
* Animation along axis ``a`` of the space: points from ``-spread`` to ``+spread`` standard deviations of that
  axis through the mean of the space, mapped back to amplitudes (:meth:`Space.inverse_transform`); the
  deformed reference is written by :func:`deephemnma.nma.deform.write_animation`, and an animated GIF of
  projections at one fixed view (exact Fourier projections of the atoms, :mod:`deephemnma.imaging.projection`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from deephemnma.imaging.projection import AtomModel, project_atoms
from deephemnma.imaging.rotations import euler_to_matrix
from deephemnma.molecule.density import atoms_to_map
from deephemnma.molecule.structure import write_structure
from deephemnma.nma.deform import DEFAULT_DEFORMATION, deformed_coordinates
from deephemnma.nma.modes import NormalModes
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.space.reduction import Space, axis_points


def conformation_maps(modes: NormalModes, amplitudes: np.ndarray, box: int, pixel_size: float,
                      bfactor: float = 0.0, deformation: str = DEFAULT_DEFORMATION) -> List[np.ndarray]:
    """Maps ``(box, box, box)`` of the reference deformed by each amplitude row (centred on the reference;
    ``deformation``: the model the amplitudes were estimated with)."""
    return _coordinate_maps(modes, deformed_coordinates(modes, amplitudes, deformation), box, pixel_size, bfactor)


def _coordinate_maps(modes: NormalModes, coordinates: np.ndarray, box: int, pixel_size: float,
                     bfactor: float = 0.0) -> List[np.ndarray]:
    """Maps of deformed coordinates ``(n, N, 3)`` of the reference's atoms (centred on the reference)."""
    centre = modes.structure.centre()
    elements = modes.structure.elements
    return [atoms_to_map(coords - centre, elements, box, pixel_size, bfactor) for coords in coordinates]


def write_centroids(folder: str | os.PathLike, modes: NormalModes, centroid_amplitudes: np.ndarray,
                    box: Optional[int] = None, pixel_size: Optional[float] = None,
                    deformation: str = DEFAULT_DEFORMATION) -> List[Path]:
    """Write ``centroid_NNN.pdb`` (and ``centroid_NNN.mrc`` when ``box`` and ``pixel_size`` are given), the
    reference deformed by each row of amplitudes with the ``deformation`` model."""
    from deephemnma.data.images import write_map
    folder = Path(folder)
    written = []
    coordinates = deformed_coordinates(modes, centroid_amplitudes, deformation)
    maps = _coordinate_maps(modes, coordinates, box, pixel_size) if box and pixel_size else None
    for number, coords in enumerate(coordinates, start=1):
        path = folder / f'centroid_{number:03d}.pdb'
        write_structure(path, modes.structure.with_coords(coords))
        written.append(path)
        if maps is not None:
            write_map(folder / f'centroid_{number:03d}.mrc', maps[number - 1], pixel_size)
    return written


def axis_amplitudes(space: Space, axis: int, frames: int = 11, spread: float = 2.0) -> np.ndarray:
    """Amplitudes ``(frames, M)`` of the points along ``axis`` (0-based) of the space."""
    return space.inverse_transform(axis_points(space, axis, frames, spread))


def projection_frames(modes: NormalModes, coordinates: np.ndarray, box: int, pixel_size: float,
                      view: Sequence[float] = (0.0, 90.0, 0.0)) -> np.ndarray:
    """Projections ``(frames, box, box)`` of each conformation at one view (Euler angles, degrees)."""
    centre = modes.structure.centre()
    model = AtomModel.from_elements(list(modes.structure.elements))
    rotation = torch.as_tensor(euler_to_matrix(np.asarray(view, dtype=np.float64)), dtype=torch.float64)
    frames = []
    with torch.no_grad():
        for coords in coordinates:
            image = project_atoms(torch.as_tensor(coords - centre, dtype=torch.float64), model, rotation[None],
                                  None, box, pixel_size)
            frames.append(image[0].numpy())
    return np.stack(frames).astype(np.float32)


def write_gif(path: str | os.PathLike, frames: np.ndarray, duration_ms: int = 120) -> None:
    """An animated GIF (back and forth) of image frames, grey levels scaled jointly over all frames."""
    from PIL import Image
    frames = np.asarray(frames, dtype=np.float64)
    if len(frames) == 0:
        raise InputError(f'{path}: no frame to write')
    low, high = np.percentile(frames, 0.5), np.percentile(frames, 99.8)
    scaled = np.clip((frames - low) / max(high - low, 1e-12), 0, 1)
    images = [Image.fromarray((255 * frame[::-1]).astype(np.uint8)) for frame in scaled]
    sequence = images + images[-2:0:-1]
    with atomic_path(path, suffix='.gif') as tmp:
        sequence[0].save(tmp, format='GIF', save_all=True, append_images=sequence[1:], duration=duration_ms,
                         loop=0)


def write_map_series(folder: str | os.PathLike, name: str, modes: NormalModes, amplitudes: np.ndarray, box: int,
                     pixel_size: float, deformation: str = DEFAULT_DEFORMATION) -> List[Path]:
    """The maps of the reference deformed by each amplitude row, ``NAME_frame_KK.mrc`` (a series ChimeraX plays
    with a slider)."""
    from deephemnma.data.images import write_map
    paths = []
    for frame, volume in enumerate(conformation_maps(modes, amplitudes, box, pixel_size,
                                                               deformation=deformation), start=1):
        path = Path(folder) / f'{name}_frame_{frame:02d}.mrc'
        write_map(path, volume, pixel_size)
        paths.append(path)
    return paths


def chimerax_script(names: Sequence[str]) -> str:
    """A ChimeraX command script (``.cxc``) opening the files ``names`` (relative to the script's folder): PDBs and
    maps as they are (the project writes them in one frame, so they overlay), multi-model animations as
    trajectories and frame maps as volume series, each with a slider."""
    lines = ['# Open with: chimerax chimerax.cxc (run from this folder). Structures and maps share one frame: the',
             '# box centre is coordinate 0, so every map overlays its structure as written.']
    model = 0
    series: dict = {}
    for name in names:
        if '_frame_' in name:
            series.setdefault(name.rsplit('_frame_', 1)[0], []).append(name)
            continue
        model += 1
        if name.startswith('axis_') and name.endswith('.pdb'):
            lines += [f'open {name} coordsets true', f'coordset slider #{model}']
        else:
            lines.append(f'open {name}')
            if name.endswith('.mrc'):
                lines.append(f'volume #{model} style mesh')
    for prefix, frames in series.items():
        model += 1
        lines += [f'open {" ".join(sorted(frames))} vseries true', f'vseries slider #{model}']
    return '\n'.join(lines) + '\n'
