"""Aligning whole particle sets: streamed in chunks from the stacks, resumable, sharded over torchrun ranks.

Images are read from their (memory-mapped) stacks chunk by chunk, so sets larger than memory are processed;
each finished chunk's results are stored by :class:`~deephemnma.runtime.chunks.ChunkStore` (a rerun after a kill
skips them and gives the same result); with ``torchrun`` chunk ``c`` goes to rank ``c % world_size`` and rank 0
merges the results in order. A chunk is also the batch of the aligner, so the result of an image depends only
on the chunk it belongs to, never on the number of processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from deephemnma.data.particles import Particles
from deephemnma.data.stacks import ImageSource
from deephemnma.hemnma.aligner import Aligner, AlignSettings
from deephemnma.hemnma.reference import AlignReference
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg
from deephemnma.runtime.chunks import ChunkStore
from deephemnma.runtime.distributed import Rank
from deephemnma.runtime.errors import InputError


def align_particles(particles: Particles, reference: AlignReference, settings: AlignSettings,
                    work_folder: str | os.PathLike, base_dir: str | os.PathLike = '.', local: bool = False,
                    chunk_size: int = 64, device: torch.device = torch.device('cpu'), rank: Rank = Rank(),
                    progress: Optional[Callable[[Iterator[int]], Iterator[int]]] = None,
                    invert: bool = False, hypotheses: Optional[np.ndarray] = None) -> Particles:
    """Align every particle; returns (on every rank) a copy of ``particles`` with angles, shifts, amplitudes,
    score.

    ``local``: refine from the particles' own angles/shifts (and amplitudes when present) instead of a global
    search. ``hypotheses`` (n, H, 3) Euler angles (deg): guided mode (predict then refine), a search around these
    orientations and the particles' own shifts instead of the global search. ``work_folder`` keeps the finished
    chunks (resumable; the settings are checked on resume). ``invert``: multiply the images by -1 (inverted
    contrast).
    """
    if (local or hypotheses is not None) and not particles.has_alignment:
        raise InputError('local and guided alignment need particles with angles and shifts (none in the input '
                         'metadata)')
    reader = ImageSource(particles.image, base_dir, invert=invert)
    aligner = Aligner(reference, reader.box, particles.pixel_size, settings, device)
    ctf = particles.ctf()
    store = ChunkStore(work_folder, len(particles), chunk_size,
                       {'settings': settings.result_settings(), 'local': local, 'box': reader.box,
                        'modes': reference.mode_numbers, 'pixel_size': particles.pixel_size,
                        'atoms': int(reference.coords.shape[0]), 'deformation': reference.deformation,
                        'hypotheses': None if hypotheses is None else int(hypotheses.shape[1])})

    def compute(positions: range) -> Dict[str, np.ndarray]:
        index = np.asarray(positions)
        images = torch.as_tensor(reader.read(index))
        initial = _own_pose(particles, index, reference.num_modes) if local else None
        guide = None if hypotheses is None else \
            {**_own_pose(particles, index, reference.num_modes), 'angles': hypotheses[index]}
        return aligner.align(images, None if ctf is None else ctf.rows(index), initial, guide)

    store.run(compute, rank, progress)
    merged = store.merged()
    result = particles.subset(np.arange(len(particles)))
    result.angles, result.shifts = merged['angles'], merged['shifts']
    result.amplitudes, result.score = merged['amplitudes'], merged['score']
    return result


def _own_pose(particles: Particles, index: np.ndarray, num_modes: int) -> Dict[str, np.ndarray]:
    """The particles' own ``angles`` (deg), ``shifts`` (px) and, when there are ``num_modes`` of them,
    ``amplitudes`` at ``index``: the start of the local mode, the centres and start amplitudes of the guided one."""
    pose = {'angles': particles.angles[index], 'shifts': particles.shifts[index]}
    if particles.amplitudes is not None and particles.amplitudes.shape[1] == num_modes:
        pose['amplitudes'] = particles.amplitudes[index]
    return pose


@dataclass
class RefineSettings:
    """Predict then refine: how the engine searches around the network's hypotheses (the defaults of
    ``deephemnma infer --refine``; figures in the README, ``deephemnma bench hybrid``).

    The hypotheses come from the network (:func:`deephemnma.nn.infer.hypothesis_angles`). ``radius`` (deg) and
    ``shift_radius`` (px): the guided search around each hypothesis and the predicted shift (0: at the predicted
    shift alone, which the refinement then moves; the network's shifts are within a fraction of a pixel);
    ``resolutions`` (Angstrom) and ``steps``: the refinement stages and their optimisation steps; ``top_k``: the
    candidates refined at the first stage, whose best alone goes on; ``nearest_start``: search only the library
    templates of the start conformation nearest to the predicted amplitudes (:class:`AlignSettings`; a network
    whose amplitudes are good);
    ``far_angle`` (deg): flag a particle whose refined orientation is further from the prediction; ``calibration``
    particles (evenly spread) are also aligned by the global search, and a particle whose refined score lies more
    than ``fallback_sigma`` robust standard deviations below their median score (none of its hypotheses led to its
    pose), or no higher than the refined score of a calibration particle whose pose the guided search missed, is
    aligned again by the global search; the better of the two results is kept; ``fallback_sigma`` 0: no global
    search at all."""

    radius: float = 45.0
    shift_radius: float = 0.0
    resolutions: Tuple[float, ...] = (7.0, 3.5)
    steps: Tuple[int, ...] = (20, 25)
    top_k: int = 2
    far_angle: float = 15.0
    fallback_sigma: float = 4.0
    calibration: int = 64
    nearest_start: bool = False

    def align_settings(self, search: AlignSettings) -> AlignSettings:
        """The guided search and refinement: the library of the global search ``search`` (orientation grid,
        start conformations, CTF mode) searched near the hypotheses, with these stages and candidates."""
        stages = AlignSettings.stages(self.resolutions, self.top_k, self.steps)
        stages['refine_keep'] = (1,) * len(self.resolutions)
        return replace(search, top_k=self.top_k, hypothesis_radius=self.radius,
                       hypothesis_shift_range=self.shift_radius, nearest_start=self.nearest_start, **stages)


#: Predict then refine from a network pretrained on simulated images (``deephemnma bench hybrid``; with its
#: orientation of the image alone, ``--rotations 1``): its hypotheses and amplitudes are close enough for fewer
#: steps (both candidates 5 steps at 7 A, the better one 10 more, then 20 at 3.5 A), half the calibration sample
#: and the nearest start conformation alone. A network trained on HEMNMA labels alone (the demo's) needs the
#: defaults: with 15 + 20 steps and this calibration its refined amplitude error was 1.36 x HEMNMA's and its groups'
#: maps up to 0.6 A coarser.
PRETRAINED_NETWORK_REFINE = RefineSettings(resolutions=(7.0, 7.0, 3.5), steps=(5, 10, 20), calibration=32,
                                           nearest_start=True)

#: Images per batch (and resumable chunk) of predict then refine: in batches of 256 rather than 64 the images that
#: share a start conformation score the library in larger products (on 2 CPU cores 12 % less CPU time).
REFINE_CHUNK = 256


def refine_predictions(predicted: Particles, hypotheses: np.ndarray, reference: AlignReference,
                       settings: RefineSettings, search: AlignSettings, work_folder: str | os.PathLike,
                       chunk_size: int = REFINE_CHUNK, device: torch.device = torch.device('cpu'),
                       rank: Rank = Rank(), progress: Optional[Callable[[Iterator[int]], Iterator[int]]] = None,
                       invert: bool = False) -> Particles:
    """Predict then refine: the guided alignment of ``predicted`` (the network's poses; shifts are the search
    centres) around ``hypotheses`` (n, H, 3) Euler angles (deg) in the library of the global search ``search``;
    then that global search for a calibration sample, whose scores tell what a found pose scores on these images
    (:func:`score_threshold`) and what a missed one scores (:func:`missed_score`), and for the particles whose
    refined score falls below the higher of the two; with
    :func:`refinement_report`'s columns. Resumable and sharded like :func:`align_particles` (chunks in
    ``work_folder/guided``, ``calibration`` and ``fallback``)."""
    folder = Path(work_folder)

    def global_search(rows: np.ndarray, name: str) -> Particles:
        return align_particles(refined.subset(rows), reference, search, folder / name, '.', False, chunk_size,
                               device, rank, progress, invert)

    refined = align_particles(predicted, reference, settings.align_settings(search), folder / 'guided', '.',
                              False, chunk_size, device, rank, progress, invert, hypotheses)
    searched = np.zeros(len(refined), dtype=bool)
    if settings.fallback_sigma > 0 and settings.calibration > 0:
        sample = calibration_rows(len(refined), settings.calibration)
        calibrated = global_search(sample, 'calibration')
        threshold = max(score_threshold(calibrated.score, settings.fallback_sigma),
                        missed_score(refined.subset(sample), calibrated, settings.far_angle))
        refined = _better_scores(refined, sample, calibrated)
        searched[sample] = True
        rows = np.flatnonzero(~searched & (refined.score <= threshold))
        if len(rows):
            refined = _better_scores(refined, rows, global_search(rows, 'fallback'))
            searched[rows] = True
    return refinement_report(predicted, refined, settings.far_angle, searched)


def calibration_rows(count: int, size: int) -> np.ndarray:
    """``size`` rows evenly spread over ``count`` (all of them when ``count <= size``)."""
    return np.unique(np.linspace(0, count - 1, min(count, size)).round().astype(np.int64))


def score_threshold(found: np.ndarray, sigmas: float) -> float:
    """The lowest score of a found pose: ``sigmas`` robust standard deviations below the median of ``found`` (the
    global search's scores on the same images; deviation from their upper half, (q75 - median) / 0.6745, which a
    few failures in the lower tail do not widen)."""
    median, upper = np.quantile(found, [0.5, 0.75])
    return float(median - sigmas * (upper - median) / 0.6745)


def missed_score(guided: Particles, searched: Particles, far_angle_deg: float) -> float:
    """The highest score of a guided result that missed: one whose pose the global search (``searched``, the same
    particles) found more than ``far_angle_deg`` away with a higher score; -inf when none missed. Where wrong poses
    score as well as right ones on other particles (heterogeneous defocus, microscopes, views), every particle
    scoring at most this gets the global search too."""
    apart = geodesic_angle_deg(euler_to_matrix(guided.angles), euler_to_matrix(searched.angles))
    missed = (apart > far_angle_deg) & (searched.score > guided.score)
    return float(guided.score[missed].max()) if missed.any() else -np.inf


def _better_scores(refined: Particles, rows: np.ndarray, searched: Particles) -> Particles:
    """``refined`` with the poses and amplitudes of ``searched`` (the particles ``rows`` aligned again) where
    their score is higher."""
    taken = searched.score > refined.score[rows]
    better = rows[taken]
    result = refined.subset(np.arange(len(refined)))
    for name in ('angles', 'shifts', 'amplitudes', 'score'):
        values = getattr(result, name).copy()
        values[better] = getattr(searched, name)[taken]
        setattr(result, name, values)
    return result


def refinement_report(predicted: Particles, refined: Particles, far_angle_deg: float,
                      fallback: Optional[np.ndarray] = None) -> Particles:
    """``refined`` (predict then refine) with the network's predictions kept beside it (extra columns
    ``predicted_angles`` deg, ``predicted_shifts`` px, ``predicted_amplitudes``), the angle (deg) between the
    predicted and the refined orientation (``refine_change_deg``), ``refine_moved_far`` (1 where that angle
    exceeds ``far_angle_deg``, else 0) and ``refine_fallback`` (1 where the global search was run again)."""
    change = geodesic_angle_deg(euler_to_matrix(predicted.angles), euler_to_matrix(refined.angles))
    report = refined.subset(np.arange(len(refined)))
    fallback = np.zeros(len(refined), dtype=bool) if fallback is None else fallback
    report.extra.update({'predicted_angles': predicted.angles, 'predicted_shifts': predicted.shifts,
                         'refine_change_deg': change, 'refine_moved_far': (change > far_angle_deg).astype(float),
                         'refine_fallback': fallback.astype(float)})
    if predicted.amplitudes is not None:
        report.extra['predicted_amplitudes'] = predicted.amplitudes
    return report
