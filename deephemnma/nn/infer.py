"""Streaming inference: predict amplitudes, angles and shifts for stacks of any size.

Images are read batch by batch from memory-mapped stacks (reader threads read ahead while the model
computes), normalised with the statistics stored in the model, predicted (bfloat16 mixed
precision on GPUs and on CPUs with bfloat16 units) and converted to Xmipp's conventions. Results are kept
per chunk of images on disk (:class:`deephemnma.runtime.chunks.ChunkStore`), so a killed run resumes, and with
``torchrun`` chunk ``c`` is predicted by rank ``c % world_size`` and rank 0 merges the chunks in order.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from deephemnma.data.particles import Particles
from deephemnma.data.stacks import ImageSource, read_ahead
from deephemnma.imaging import rotations
from deephemnma.imaging.filters import fourier_crop
from deephemnma.nn import targets as tg
from deephemnma.nn.augment import merge_hypotheses, transform_images, unrotate_outputs
from deephemnma.nn.modelfile import TrainedModel
from deephemnma.runtime.chunks import ChunkStore
from deephemnma.runtime.distributed import Rank, barrier
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.machine import amp_supported, flush_denormals

#: Raw-output key of the orientation hypotheses: one per in-plane rotated copy (when there are several), then the
#: network's own hypotheses (when it learnt them): ``(B, H, 4)`` quaternions.
HYPOTHESES = 'orientation_hypotheses'


#: In-plane copies of each image for predict-then-refine by default: their orientations and their average are
#: hypotheses beside the network's own. With the network's own 8 hypotheses they raise the share of held-out
#: particles with a hypothesis within 45 deg of the truth from 89 to 93 % (71 % from the copies alone) and bring the
#: network's averaged orientation from 64 to 55 deg median, for 6 % more CPU time (``deephemnma bench hybrid``).
#: A network pretrained on simulated images needs none (``deephemnma bench hybrid``: the same refined errors and
#: global searches with 1 copy as with 8, for a third of the prediction time).
REFINE_ROTATIONS = 8


def own_hypotheses(model: TrainedModel) -> int:
    """Number of orientation hypotheses the network learnt beside its orientation (0: none)."""
    return tg.hypothesis_count(model.network.config.outputs)


class Predictor:
    """A trained model on a device: raw images ``(k, box, box)`` -> raw outputs and decoded labels."""

    def __init__(self, model: TrainedModel, device: torch.device, amp: bool = True, rotations: int = 1,
                 keep_hypotheses: bool = False):
        """``rotations``: average the predictions over this many in-plane rotations of each image (angles
        ``360 k / rotations`` deg; test-time augmentation, ``rotations`` times the cost; 1: off).
        ``keep_hypotheses``: also return each copy's orientation and the network's own orientation hypotheses
        (key :data:`HYPOTHESES`), the starting points of predict-then-refine."""
        if rotations < 1:
            raise InputError(f'the number of in-plane rotations must be at least 1, not {rotations}')
        self.rotations = int(rotations)
        self.keep_hypotheses = bool(keep_hypotheses)
        self.model = model
        self.device = torch.device(device)
        if self.device.type == 'cpu':
            flush_denormals()
        self.network = model.network.to(self.device).eval()
        self.amp = bool(amp) and amp_supported(self.device)
        if self.device.type == 'cuda':
            self.network = self.network.to(memory_format=torch.channels_last)

    def check_box(self, box: int, source: str) -> None:
        if box != self.model.box:
            raise InputError(f'{source}: images of {box} px but the model was trained on {self.model.box} px; '
                             'resize the images (or train a model on this size)')

    def raw(self, images: torch.Tensor) -> Dict[str, np.ndarray]:
        """Network outputs per type (orientation normalised to unit quaternions) as float32 arrays."""
        return {t: value.cpu().numpy() for t, value in self.raw_on_device(images).items()}

    @torch.no_grad()
    def raw_on_device(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """As :meth:`raw`, as float32 tensors left on the device (no synchronisation with a GPU)."""
        scaling = self.model.scaling
        batch = images.to(self.device, non_blocking=True).float()[:, None]
        batch = (batch - scaling.image_mean) / scaling.image_std
        angles = [360.0 * k / self.rotations for k in range(self.rotations)]
        no_shift = torch.zeros(len(batch), 2, device=self.device)
        outputs = [self._forward(transform_images(batch, torch.full((len(batch),), angle, device=self.device),
                                                  no_shift) if angle else batch) for angle in angles]
        learnt = [output.pop(tg.HYPOTHESIS_OUTPUT, None) for output in outputs][0]  # of the image as given
        if self.rotations == 1:
            merged = outputs[0]
            copies = torch.zeros(len(batch), 0, tg.QUATERNION_SIZE, device=self.device)
        else:
            hypotheses = unrotate_outputs(outputs, angles, scaling)
            merged = merge_hypotheses(hypotheses)
            copies = hypotheses['orientation'].transpose(0, 1).float()
        if self.keep_hypotheses and 'orientation' in merged:
            merged[HYPOTHESES] = copies if learnt is None else torch.cat([copies, learnt], dim=1)
        return merged

    def _forward(self, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Outputs for normalised images ``(B, 1, box, box)`` (Fourier-cropped here to the network size)."""
        batch = fourier_crop(batch, self.model.network_box)
        if self.device.type == 'cuda':
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            outputs = self.network(batch)
        result = {}
        for t, value in outputs.items():
            value = value.float()
            if t == tg.HYPOTHESIS_OUTPUT:
                value = tg.hypothesis_quaternions(value)
            result[t] = tg.normalise_quaternions(value) if t == 'orientation' else value
        return result

    def predict(self, images: np.ndarray | torch.Tensor) -> tg.Labels:
        """Decoded labels (angles deg, shifts px, amplitudes) of raw images ``(k, box, box)``."""
        return tg.decode(self.raw(torch.as_tensor(np.asarray(images, dtype=np.float32))), self.model.scaling)


def _batches(items: range, batch_size: int) -> List[np.ndarray]:
    return [np.arange(s, min(s + batch_size, items.stop)) for s in range(items.start, items.stop, batch_size)]


def predict_source(predictor: Predictor, source: ImageSource, batch_size: int = 256, readers: int = 0,
                   work_dir: Optional[str | Path] = None, chunk_size: int = 16384, rank: Rank = Rank(),
                   progress: bool = True, settings: Optional[dict] = None) -> Dict[str, np.ndarray]:
    """Raw outputs for every image of ``source`` in order (on every rank).

    ``readers``: threads reading images ahead of the network (0: read in turn). With ``work_dir`` finished
    chunks are stored there (resume, several processes); ``settings`` (e.g. the model file's name and date) must
    match for a resume. Without it everything runs in one process in memory.
    """
    predictor.check_box(source.box, 'the particles')
    chunk_size = max(batch_size, chunk_size // batch_size * batch_size)
    if work_dir is None:
        if rank.world_size > 1:
            raise InputError('several processes need a work folder to exchange their results')
        store = None
        chunks = [range(0, len(source))]
    else:
        store = ChunkStore(work_dir, len(source), chunk_size, {'box': source.box, 'batch': batch_size,
                                                              'model_types': list(predictor.model.types),
                                                              'rotations': predictor.rotations,
                                                              'hypotheses': predictor.keep_hypotheses,
                                                              **(settings or {})})
        chunks = [store.chunk_range(c) for c in store.pending(rank)]
    plan = [(number, b) for number, items in enumerate(chunks) for b in _batches(items, batch_size)]
    iterator = read_ahead(source, [b for _, b in plan], readers, predictor.device.type == 'cuda')
    bar = None
    if progress and rank.is_main:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(b) for _, b in plan), unit='img', desc='inference', dynamic_ncols=True)
    parts: List[Dict[str, torch.Tensor]] = []
    results: Dict[str, np.ndarray] = {}
    for position, (images, _) in enumerate(iterator):
        parts.append(predictor.raw_on_device(images))  # a GPU runs ahead until the chunk is complete
        if bar is not None:
            bar.update(len(images))
        number = plan[position][0]
        last_of_chunk = position + 1 == len(plan) or plan[position + 1][0] != number
        if last_of_chunk:
            merged = {t: torch.cat([p[t] for p in parts]).cpu().numpy() for t in parts[0]}
            parts = []
            if store is None:
                results = merged
            else:
                store.save(chunks[number].start // chunk_size, merged)
    if bar is not None:
        bar.close()
    if store is None:
        return results
    barrier(rank)
    return store.merged()


def hypothesis_angles(raw: Dict[str, np.ndarray], labels: tg.Labels) -> np.ndarray:
    """Orientation hypotheses (n, 1 + H, 3) Euler angles (deg) of a :class:`Predictor` with
    ``keep_hypotheses``: the merged prediction first, then each in-plane copy's (when several), then the network's
    own hypotheses."""
    if HYPOTHESES not in raw:
        raise InputError('these predictions carry no hypotheses (predict with keep_hypotheses)')
    quaternions = np.asarray(raw[HYPOTHESES], dtype=np.float64)
    others = rotations.quaternion_to_euler(quaternions.reshape(-1, 4)).reshape(quaternions.shape[:2] + (3,))
    return np.concatenate([labels.angles[:, None], others], axis=1)


def labels_to_particles(particles: Particles, labels: tg.Labels) -> Particles:
    """A copy of ``particles`` whose angles, shifts and amplitudes are replaced by the predicted ones."""
    changes = {name: value for name, value in (('angles', labels.angles), ('shifts', labels.shifts),
                                               ('amplitudes', labels.amplitudes)) if value is not None}
    return replace(particles, **changes)
