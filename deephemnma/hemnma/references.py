"""Several references of one molecule: each image takes the reference (and pose, amplitudes) that fits it best.

For motions far beyond one structure's modes (adenylate kinase's lid closing, 7 A RMSD), give the structures at
both ends (for example the open and the closed crystal structure, each with its own modes; ``deephemnma align
--other-modes``, and ``deephemnma infer --refine --other-modes`` for predict then refine). Every image is aligned
against every reference and keeps the result with the highest score; the ``reference`` column says which (0: the
first, k: the k-th other). Measured by ``deephemnma bench transition``.

Conventions:

* The other structures are superposed on the first by the least-squares fit of their common atoms
  (:func:`~deephemnma.molecule.structure.common_atoms`), their modes turned with them, and every reference is
  centred on the first structure's centre: the poses of all references are in the first reference's frame.
* Amplitudes are expressed in the first reference's modes, so that one space, one network and one animation serve
  every image: the conformation ``x`` of an image (its reference deformed by its amplitudes, all atoms, with the
  chosen deformation model) gives ``q = argmin sum_c |x_c - D(q)_c|^2`` over the common atoms ``c``, with ``D(q)``
  the first structure deformed by ``q`` with the same model (least squares); images of the first reference keep
  their own amplitudes.

:func:`align_walking` makes references from the data (``deephemnma align --walk``), with or without other
structures: one re-linearisation step from each reference that a tenth of the images or more took, its structure
deformed to the mean fit of the third of those images farthest from it, with its modes recomputed there, added
after the given references.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from deephemnma.data.particles import Particles
from deephemnma.hemnma.aligner import AlignSettings
from deephemnma.hemnma.reference import reference_from_modes
from deephemnma.hemnma.stack import RefineSettings, align_particles, refine_predictions
from deephemnma.molecule.structure import common_atoms, kabsch
from deephemnma.nma.deform import deform, deformed_coordinates, model_rotations
from deephemnma.nma.elastic import compute_modes
from deephemnma.nma.modes import NormalModes
from deephemnma.runtime.errors import InputError

#: Images whose conformations are converted to first-reference amplitudes at once (memory: batch x atoms x 3).
CONVERSION_BATCH = 1024
#: Gauss-Newton steps of a non-linear deformation model's conversion, and its finite-difference step (amplitude).
GAUSS_NEWTON_ITERATIONS, FINITE_STEP = 5, 1e-2
#: What an alignment gives each image.
RESULT_FIELDS = ('angles', 'shifts', 'amplitudes', 'score')
#: The share of a reference's images, farthest from it, whose mean fit the reference walked from it takes.
WALK_FRACTION = 1 / 3
#: The least share of all images a reference must take (best score) to be walked from.
MIN_WALK_SHARE = 0.1
#: What predict then refine reports per image that depends on the reference kept.
REFINE_REPORT_COLUMNS = ('refine_change_deg', 'refine_moved_far', 'refine_fallback')


def superpose_modes(modes: NormalModes, on: NormalModes) -> NormalModes:
    """``modes`` with their structure (and mode vectors) moved onto ``on``'s structure by the least-squares fit
    of their common atoms; InputError when they share too few atoms (fewer than three)."""
    mine, theirs = common_atoms(modes.structure, on.structure)
    if len(mine) < 3:
        raise InputError(f'the structures share {len(mine)} atoms: at least 3 are needed to superpose them')
    rotation, shift = kabsch(modes.structure.coords[mine], on.structure.coords[theirs])
    moved = modes.structure.with_coords(modes.structure.coords @ rotation.T + shift)
    return replace(modes, structure=moved, vectors=modes.vectors @ rotation.T,
                   rigid_vectors=modes.rigid_vectors @ rotation.T)


def first_frame_amplitudes(first: NormalModes, other: NormalModes, amplitudes: np.ndarray,
                           deformation: str) -> np.ndarray:
    """Amplitudes ``(n, M_first)`` in ``first``'s modes of the conformations of ``other`` (superposed on
    ``first``) deformed by ``amplitudes`` ``(n, M_other)`` (module docstring): least squares over the common
    atoms: the linear least-squares solution, exact for the linear model, refined by Gauss-Newton steps for a
    non-linear one."""
    in_first, in_other = common_atoms(first.structure, other.structure)
    table = np.atleast_2d(np.asarray(amplitudes, dtype=np.float64))
    (coords, vectors, rotations), fit = _deformation_of(other, deformation), _deformation_of(first, deformation)
    out = np.empty((len(table), len(first)))
    with torch.no_grad():
        for start in range(0, len(table), CONVERSION_BATCH):
            rows = slice(start, start + CONVERSION_BATCH)
            target = deform(coords, vectors, torch.as_tensor(table[rows]), rotations)[:, in_other]
            out[rows] = _fit_amplitudes(*fit, in_first, target).numpy()
    return out


def _deformation_of(modes: NormalModes, deformation: str) -> tuple:
    """``(coords, vectors, rotations)`` of :func:`~deephemnma.nma.deform.deform` for ``modes``' structure
    (float64 tensors; rotations None for the linear model), made once per conversion rather than per batch."""
    rotations = model_rotations(modes.structure.coords, modes.vectors, deformation)
    return (torch.as_tensor(modes.structure.coords, dtype=torch.float64),
            torch.as_tensor(modes.vectors, dtype=torch.float64),
            None if rotations is None else torch.as_tensor(rotations, dtype=torch.float64))


def _fit_amplitudes(x0: torch.Tensor, vectors: torch.Tensor, rotations: Optional[torch.Tensor], atoms: np.ndarray,
                    target: torch.Tensor, iterations: int = GAUSS_NEWTON_ITERATIONS) -> torch.Tensor:
    """Amplitudes ``(B, M)`` whose conformations (:func:`_deformation_of`'s model) best fit ``target``
    ``(B, len(atoms), 3)`` on ``atoms`` (least squares; Jacobian by finite differences of 0.01 amplitude)."""
    count = len(vectors)
    basis = vectors[:, atoms].reshape(count, -1)                                       # (M, 3C)
    residual_of = (lambda q: (deform(x0, vectors, q, rotations)[:, atoms] - target).reshape(len(q), -1))
    q = torch.linalg.lstsq(basis.T, (target - x0[atoms]).reshape(len(target), -1).T).solution.T
    for _ in range(iterations if rotations is not None else 0):
        residual = residual_of(q)
        jacobian = torch.stack([(residual_of(q + FINITE_STEP * torch.eye(count, dtype=q.dtype)[k]) - residual)
                                / FINITE_STEP for k in range(count)], -1)                # (B, 3C, M)
        q = q - torch.linalg.lstsq(jacobian, residual[..., None]).solution[..., 0]
    return q


def align_with_references(particles: Particles, modes: Sequence[NormalModes], coarse: str, deformation: str,
                          settings: AlignSettings, work_folder: str | os.PathLike, **align) -> Particles:
    """Align ``particles`` against the reference of each of ``modes`` (first: the frame and the amplitudes of the
    result; the others are superposed on it) and keep, per image, the best score (:func:`align_particles`'s
    other arguments in ``align``; each reference's chunks in ``work_folder/reference_k``, resumable). The result
    has amplitudes in the first reference's modes and the extra column ``reference`` (index into ``modes``)."""
    first, others, references = _references(modes, coarse, deformation)
    return _keep_best(_align_each(particles, references, settings, work_folder, **align), first, others, deformation)


def _align_each(particles: Particles, references: Sequence, settings: AlignSettings,
                work_folder: str | os.PathLike, first_index: int = 0, **align) -> list:
    """:func:`align_particles` against each of ``references``, the k-th one's chunks in
    ``work_folder/reference_{first_index + k}`` (resumable)."""
    return [align_particles(particles, reference, settings, Path(work_folder) / f'reference_{first_index + k}',
                            **align) for k, reference in enumerate(references)]


def walk_cutoff(modes: NormalModes, cutoff: Optional[float]) -> float:
    """The network radius (Angstrom) of a walked reference's modes: ``cutoff``, else the modes' own; InputError
    when neither is known (modes read from an Xmipp file)."""
    cutoff = modes.cutoff if cutoff is None else cutoff
    if not np.isfinite(cutoff):
        raise InputError('a walked reference recomputes the modes, but the network radius of these modes is unknown '
                         '(an Xmipp modes file): give it (--walk-cutoff)')
    return float(cutoff)


def walked_modes(modes: NormalModes, amplitudes: np.ndarray, deformation: str,
                 fraction: float = WALK_FRACTION, cutoff: Optional[float] = None) -> NormalModes:
    """One re-linearisation step: ``modes``' structure deformed (``deformation``) by the mean of the ``amplitudes``
    ``(n, M)`` of the ``fraction`` of images farthest from it (largest amplitude norm), with its ``M`` lowest
    modes recomputed there (Xmipp numbers 7 ... 6+M; network radius ``cutoff`` (Angstrom), by default the modes'
    own; their RTB blocks and spring constant)."""
    cutoff = walk_cutoff(modes, cutoff)
    table = np.atleast_2d(np.asarray(amplitudes, dtype=np.float64))
    norm = np.linalg.norm(table, axis=1)
    far = table[norm >= np.quantile(norm, 1.0 - fraction)].mean(axis=0)
    moved = deformed_coordinates(modes, far[None], deformation)[0]
    return compute_modes(modes.structure.with_coords(moved), n_modes=len(modes), cutoff=cutoff,
                         rtb_block_size=modes.block_size, gamma=modes.gamma)


def walked_references(modes: Sequence[NormalModes], alignments: Sequence[Dict[str, np.ndarray]], deformation: str,
                      cutoff: Optional[float] = None) -> List[Tuple[int, NormalModes]]:
    """``(k, walked)`` for every reference ``k`` of ``modes`` (superposed on the first) that at least
    :data:`MIN_WALK_SHARE` of the images took (best ``score`` of ``alignments``, one per reference): its
    :func:`walked_modes` towards the farthest third of those images (their amplitudes in its own modes)."""
    chosen = np.stack([a['score'] for a in alignments]).argmax(axis=0)
    return [(k, walked_modes(m, a['amplitudes'][chosen == k], deformation, cutoff=cutoff))
            for k, (m, a) in enumerate(zip(modes, alignments)) if np.mean(chosen == k) >= MIN_WALK_SHARE]


def align_walking(particles: Particles, modes: Sequence[NormalModes], coarse: str, deformation: str,
                  settings: AlignSettings, work_folder: str | os.PathLike, cutoff: Optional[float] = None,
                  **align) -> tuple:
    """:func:`align_with_references`, then again with the references walked towards the images
    (:func:`walked_references`, network radius ``cutoff``) as the last references; each reference's chunks in
    ``work_folder/reference_k``. Returns ``(particles, [(k, walked modes) ...])``, amplitudes in the first
    reference's modes, ``reference``: the index in ``modes`` followed by the walked ones."""
    for m in modes:
        walk_cutoff(m, cutoff)  # refused before the first pass, not after it
    first, others, references = _references(modes, coarse, deformation)
    results = _align_each(particles, references, settings, work_folder, **align)
    walked = walked_references([first, *others], [{'amplitudes': r.amplitudes, 'score': r.score} for r in results],
                               deformation, cutoff)
    centre = first.structure.centre()
    results += _align_each(particles, [reference_from_modes(w, coarse, centre=centre, deformation=deformation)
                                       for _, w in walked], settings, work_folder, len(modes), **align)
    return _keep_best(results, first, [*others, *[w for _, w in walked]], deformation), walked


def refine_with_references(predicted: Particles, hypotheses: np.ndarray, modes: Sequence[NormalModes], coarse: str,
                           deformation: str, settings: RefineSettings, search: AlignSettings,
                           work_folder: str | os.PathLike, **refine) -> Particles:
    """Predict then refine against the reference of each of ``modes`` (as :func:`align_with_references`): the
    guided search around the network's ``hypotheses`` (the global search for the calibration sample and the
    outliers) against each reference (:func:`refine_predictions`, its other arguments in ``refine``; chunks in
    ``work_folder/reference_k``), then per image the best score, amplitudes in the first reference's modes and
    the column ``reference``; the report columns (``refine_change_deg``, ``refine_moved_far``,
    ``refine_fallback``) of the reference kept."""
    first, others, references = _references(modes, coarse, deformation)
    results = [refine_predictions(predicted, hypotheses, reference, settings, search,
                                  Path(work_folder) / f'reference_{k}', **refine)
               for k, reference in enumerate(references)]
    return _keep_best(results, first, others, deformation, REFINE_REPORT_COLUMNS)


def _references(modes: Sequence[NormalModes], coarse: str, deformation: str) -> tuple:
    """``(first, others, references)``: the first modes, the others superposed on them, and the alignment
    reference of each (``coarse`` model, ``deformation``), all centred on the first structure's centre."""
    first = modes[0]
    others = [superpose_modes(m, first) for m in modes[1:]]
    centre = first.structure.centre()
    return first, others, [reference_from_modes(m, coarse, centre=centre, deformation=deformation)
                           for m in [first] + others]


def _keep_best(results: Sequence[Particles], first: NormalModes, others: Sequence[NormalModes], deformation: str,
               columns_of_the_kept: Sequence[str] = ()) -> Particles:
    """The first result with, per image, the alignment of the reference scoring best
    (:func:`best_of_references`), the column ``reference``, and ``columns_of_the_kept`` (extra columns) of the
    reference kept."""
    best = best_of_references([{name: getattr(r, name) for name in RESULT_FIELDS} for r in results], first,
                              others, deformation)
    output = results[0].subset(np.arange(len(results[0])))
    for name in RESULT_FIELDS:
        setattr(output, name, best[name])
    chosen = best['reference'].astype(int)
    for name in columns_of_the_kept:
        output.extra[name] = np.stack([r.extra[name] for r in results])[chosen, np.arange(len(chosen))]
    output.extra['reference'] = best['reference']
    return output


def best_of_references(results: Sequence[Dict[str, np.ndarray]], first: NormalModes,
                       others: Sequence[NormalModes], deformation: str) -> Dict[str, np.ndarray]:
    """Per image, the alignment (``angles``, ``shifts``, ``amplitudes``, ``score``) of the reference with the
    highest score, amplitudes in ``first``'s modes; ``reference``: its index (float; 0 ``first``, k ``others[k-1]``,
    already superposed on ``first``)."""
    chosen = np.stack([r['score'] for r in results]).argmax(axis=0)
    best = {name: np.array(results[0][name], dtype=np.float64, copy=True) for name in RESULT_FIELDS}
    for k, (result, other) in enumerate(zip(results[1:], others), start=1):
        rows = np.flatnonzero(chosen == k)
        if len(rows):
            for name in ('angles', 'shifts', 'score'):
                best[name][rows] = result[name][rows]
            best['amplitudes'][rows] = first_frame_amplitudes(first, other, result['amplitudes'][rows], deformation)
    best['reference'] = chosen.astype(np.float64)
    return best
