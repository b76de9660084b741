"""Training of the DeepHEMNMA network: presets, epochs, validation, checkpoints, resume and DDP.

* Loss: L1 (see :mod:`deephemnma.nn.targets`); optimiser Adam with L2 weight decay (1e-5 by default).
* Presets: ``paper`` (batch 2, learning rate 1e-5 divided by 10 every 80 epochs, 400 epochs, no early stop)
  and ``fast`` (batch 128, bfloat16 mixed precision, one-cycle schedule, early stopping on validation in the
  second half of the epochs).
* Every epoch ``checkpoint_last.pt`` (model, optimiser, schedule, random state, history) is written
  atomically; ``model.pt`` holds the best weights so far (by validation loss, per independent network in the
  ``separate`` layout) with the network configuration and the scaling statistics: it is all inference needs.
  A killed run started again with the same settings resumes from the last epoch and ends with the same
  weights as an uninterrupted run (data order and augmentation are drawn from ``(seed, epoch)``, dropout's
  random state is saved).
* ``loss_history.csv`` and ``loss_curves.png`` record the training and validation losses per epoch.
* Several processes (``torchrun``; gloo on CPU, NCCL on GPU): each global batch is split evenly among the
  ranks (DistributedDataParallel averages the gradients), so a run on W processes follows the run on one
  process (exactly with ``norm='group'``; batch-norm statistics are per process on CPU and synchronised on
  GPU).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from deephemnma.constants import MIN_NETWORK_BOX
from deephemnma.core.distributed import Rank, barrier, local_device
from deephemnma.core.fileio import InputError, atomic_path
from deephemnma.core.filters import fourier_crop
from deephemnma.core.machine import flush_denormals
from deephemnma.core.stacks import ImageSource
from deephemnma.nn import targets as tg
from deephemnma.nn.data import Augmentation, image_statistics, inlier_mask, read_ahead, \
    split_by_particle, transform_images, transform_quaternions, transform_shifts
from deephemnma.nn.model import DeepHemnmaNet, NetworkConfig

MODEL_FILE = 'model.pt'
LAST_CHECKPOINT = 'checkpoint_last.pt'
HISTORY_CSV = 'loss_history.csv'
CURVES_PNG = 'loss_curves.png'
SPLIT_FILE = 'split.npz'
SUMMARY_FILE = 'training_summary.json'
MODEL_FORMAT = 'deephemnma-model-1'
PROGRESS_EVERY = 10  # steps between updates of the progress bar's loss (each one waits for the GPU)


def amp_supported(device: torch.device) -> bool:
    """bfloat16 autocast pays off: on CUDA, and on CPUs with native bfloat16 (AVX512-BF16/AMX)."""
    if device.type == 'cuda':
        return True
    return device.type == 'cpu' and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in the checkpoints; a resume must use the same)."""

    types: Tuple[str, ...] = tg.TYPES
    arch: str = 'resnet34'
    layout: str = 'combined'
    norm: str = 'batch'
    dropout: float = 0.5
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = 'onecycle'
    step_epochs: int = 80
    step_gamma: float = 0.1
    weight_decay: float = 1e-5
    amp: bool = True  # bfloat16 autocast where it pays off (GPU; CPU with AMX/AVX512-BF16)
    patience: int = 10
    max_rotation_deg: float = 180.0
    max_translation_px: float = 0.0
    outlier_threshold: float = 3.2
    network_box: int = 0  # image size (px) the network sees: images are Fourier-cropped to it; 0: no cropping
    validation: float = 0.1
    test: float = 0.1
    seed: int = 0
    readers: int = 2  # threads reading images ahead when they are streamed from disk (above ram_limit_gb)
    ram_limit_gb: float = 4.0

    def __post_init__(self) -> None:
        self.types = tuple(self.types)
        unknown = set(self.types) - set(tg.TYPES)
        if unknown or not self.types:
            raise InputError(f'parameter types {sorted(unknown) or "(none)"} are not among {tg.TYPES}')
        if self.schedule not in SCHEDULES:
            raise InputError(f'unknown schedule {self.schedule!r}; choose one of {sorted(SCHEDULES)}')
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InputError('epochs, batch size and learning rate must be positive')
        if self.network_box and self.network_box < MIN_NETWORK_BOX:
            raise InputError(f'the network input size must be at least {MIN_NETWORK_BOX} px, not {self.network_box}')

    def to_dict(self) -> dict:
        data = asdict(self)
        data['types'] = list(self.types)
        return data


READING_SETTINGS = ('readers', 'ram_limit_gb')


def result_settings(config: dict) -> dict:
    """The settings of a :class:`TrainConfig` dictionary that change the trained weights (a resume must keep
    them); how images are read (``READING_SETTINGS``) may change between runs."""
    return {name: value for name, value in config.items() if name not in READING_SETTINGS}


PRESETS: Dict[str, Dict[str, object]] = {
    'paper': dict(batch_size=2, lr=1e-5, schedule='step', step_epochs=80, step_gamma=0.1, epochs=400,
                  amp=False, patience=0, max_rotation_deg=0.0, max_translation_px=0.0),
    'fast': dict(batch_size=128, lr=1e-3, schedule='onecycle', epochs=60, amp=True, patience=10,
                 max_rotation_deg=180.0, max_translation_px=0.0),
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The settings of preset ``name`` ('paper' or 'fast') with ``overrides`` (None values ignored)."""
    if name not in PRESETS:
        raise InputError(f'unknown preset {name!r}; choose one of {sorted(PRESETS)}')
    known = {f.name for f in fields(TrainConfig)}
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None and k in known}}
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------
def _step_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_epochs * steps_per_epoch,
                                           gamma=config.step_gamma)


def _onecycle_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                               total_steps=config.epochs * steps_per_epoch, pct_start=0.15)


def _cosine_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)


#: Learning-rate schedules, all stepped once per optimisation step.
SCHEDULES = {'step': _step_schedule, 'onecycle': _onecycle_schedule, 'cosine': _cosine_schedule}


# ----------------------------------------------------------------------------------------------
# the prepared data set
# ----------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Images, encoded targets, split and scaling of a training run (identical on every rank)."""

    source: ImageSource
    labels: tg.Labels
    split: Dict[str, np.ndarray]
    scaling: tg.Scaling
    outliers_removed: int
    in_memory: Optional[torch.Tensor] = None
    memory_index: Optional[np.ndarray] = None
    targets: Dict[str, torch.Tensor] = field(default_factory=dict)

    def held_images(self, indices: np.ndarray) -> torch.Tensor:
        """Raw images ``(k, box, box)`` float32 of dataset items ``indices`` from those held in memory (on their
        device)."""
        return self.in_memory[torch.as_tensor(self.memory_index[indices], device=self.in_memory.device)]

    def hold_on_gpu(self, device: torch.device, max_fraction: float = 0.25) -> None:
        """Move the images held in memory to the GPU ``device`` when they take at most ``max_fraction`` of its
        free memory (batches are then gathered there, with no host-to-device copy per step)."""
        if self.in_memory is None or device.type != 'cuda':
            return
        free, _ = torch.cuda.mem_get_info(device)
        if self.in_memory.numel() * self.in_memory.element_size() <= max_fraction * free:
            self.in_memory = self.in_memory.to(device)


def prepare_data(source: ImageSource, labels: tg.Labels, keys: np.ndarray, config: TrainConfig) -> PreparedData:
    """Outlier removal (on amplitudes), split by particle, scaling fitted on the training set, targets."""
    missing = [t for t in config.types if t not in labels.available_types()]
    if missing:
        raise InputError(f'the particles carry no labels for {missing}; train only on {labels.available_types()}')
    if len(labels) != len(source):
        raise InputError(f'{len(labels)} labels for {len(source)} images')
    kept = np.arange(len(labels))
    removed = 0
    if 'amplitudes' in config.types:
        mask = inlier_mask(labels.amplitudes, config.outlier_threshold)
        kept, removed = kept[mask], int((~mask).sum())
    parts = split_by_particle(np.asarray(keys)[kept], config.validation, config.test, config.seed)
    split = {name: kept[idx] for name, idx in parts.items()}
    mean, std = image_statistics(source, split['train'])
    scaling = tg.Scaling.fit(labels.subset(split['train']), mean, std)
    prepared = PreparedData(source, labels, split, scaling, removed)
    encoded = tg.encode(labels, config.types, scaling)
    if 'shifts' in config.types:  # shifts stay in pixels until augmentation has been applied
        encoded['shifts'] = np.asarray(labels.shifts, dtype=np.float32)
    prepared.targets = {t: torch.from_numpy(v) for t, v in encoded.items()}
    used = np.concatenate([split['train'], split['validation'], split['test']])
    if source.nbytes(len(used)) <= config.ram_limit_gb * 2 ** 30:
        prepared.memory_index = np.full(len(source), -1, dtype=np.int64)
        prepared.memory_index[used] = np.arange(len(used))
        prepared.in_memory = torch.from_numpy(source.read(used))
    return prepared


# ----------------------------------------------------------------------------------------------
# model files
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainedModel:
    """A network ready for prediction with its scaling, the image size it was trained on and the size its
    input is Fourier-cropped to (pixels)."""

    network: DeepHemnmaNet
    scaling: tg.Scaling
    box: int
    network_box: int
    types: Tuple[str, ...]
    info: dict


def save_model(path: Path, network: DeepHemnmaNet, state_dict: dict, scaling: tg.Scaling, box: int,
               network_box: int, config: TrainConfig, info: dict) -> None:
    """One file with the weights, the network configuration, the scaling, the image sizes (px) and the
    training settings."""
    payload = {'format': MODEL_FORMAT, 'network': network.config.to_dict(), 'state_dict': state_dict,
               'scaling': scaling.to_dict(), 'box': int(box), 'network_box': int(network_box),
               'types': list(config.types),
               'train_config': config.to_dict(), 'info': info}
    with atomic_path(path, suffix='.pt') as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, device: torch.device | str = 'cpu') -> TrainedModel:
    """Load a ``model.pt`` written by :func:`save_model` (in eval mode, on ``device``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f'{path}: model file not found')
    payload = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(payload, dict) or payload.get('format') != MODEL_FORMAT:
        raise InputError(f'{path}: not a DeepHEMNMA model file (format {MODEL_FORMAT})')
    network = DeepHemnmaNet(NetworkConfig(**payload['network']))
    network.load_state_dict(payload['state_dict'])
    network.to(device).eval()
    return TrainedModel(network, tg.Scaling.from_dict(payload['scaling']), int(payload['box']),
                        int(payload['network_box']), tuple(payload['types']), dict(payload.get('info', {})))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
EpochCallback = Callable[[int, dict], None]


class Trainer:
    """Trains one network on prepared data into ``output_dir`` (see the module docstring)."""

    def __init__(self, config: TrainConfig, data: PreparedData, output_dir: str | Path, device: torch.device,
                 rank: Rank = Rank(), progress: bool = True):
        self.config, self.data, self.rank = config, data, rank
        self.output_dir = Path(output_dir)
        self.device = local_device(str(device), rank)
        if self.device.type == 'cpu':
            flush_denormals()
        self.progress = progress and rank.is_main
        self.use_amp = bool(config.amp) and amp_supported(self.device)
        self.augmentation = Augmentation(config.max_rotation_deg, config.max_translation_px)
        self.box = data.source.box
        self.network_box = config.network_box or self.box
        if self.network_box > self.box:
            raise InputError(f'the network input size ({self.network_box} px) exceeds the images\' ({self.box} px)')
        outputs = tg.output_sizes(config.types, 0 if data.labels.amplitudes is None
                                  else data.labels.amplitudes.shape[1])
        torch.manual_seed(config.seed)
        self.network = DeepHemnmaNet(NetworkConfig(outputs=outputs, arch=config.arch, layout=config.layout,
                                                   dropout=config.dropout, norm=config.norm)).to(self.device)
        if self.device.type == 'cuda':
            self.network = self.network.to(memory_format=torch.channels_last)
            data.hold_on_gpu(self.device)
        self.model = self.network
        if rank.world_size > 1:
            if self.device.type == 'cuda':
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
                self.network = self.model
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        self.per_rank_batch = max(1, min(config.batch_size, len(data.split['train'])) // rank.world_size)
        self.global_batch = self.per_rank_batch * rank.world_size
        self.steps_per_epoch = max(1, len(data.split['train']) // self.global_batch)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay, fused=True)
        self.scheduler = SCHEDULES[config.schedule](self.optimizer, config, self.steps_per_epoch)
        self.branches = self.network.config.branches()
        self.history: List[dict] = []
        self.best_loss = {b: math.inf for b in self.branches}
        self.best_epoch = {b: -1 for b in self.branches}
        self.best_states = {b: None for b in self.branches}
        self.start_epoch = 0

    # ---- batches -----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> List[np.ndarray]:
        """This rank's share of each global batch of the epoch (same order on every rank)."""
        train = self.data.split['train']
        generator = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        order = train[torch.randperm(len(train), generator=generator).numpy()]
        batches = []
        for step in range(self.steps_per_epoch):
            global_batch = order[step * self.global_batch:(step + 1) * self.global_batch]
            batches.append(global_batch[self.rank.rank::self.rank.world_size])
        return batches

    def _epoch_augmentation(self, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rotation and translation of every position of every global batch of the epoch."""
        generator = torch.Generator().manual_seed(self.config.seed * 100003 + epoch + 7919)
        phi, t = self.augmentation.draw(self.steps_per_epoch * self.global_batch, generator)
        return phi.view(self.steps_per_epoch, self.global_batch), \
            t.view(self.steps_per_epoch, self.global_batch, 2)

    def _iterate(self, batches: List[np.ndarray]) -> Iterator[Tuple[torch.Tensor, np.ndarray]]:
        """``(raw images, indices)`` of each batch: gathered from memory, or read from the stacks on disk by
        ``config.readers`` threads ahead of the model."""
        if self.data.in_memory is not None:
            return ((self.data.held_images(indices), indices) for indices in batches)
        return read_ahead(self.data.source, batches, self.config.readers, pin=self.device.type == 'cuda')

    def _inputs(self, images: torch.Tensor, indices: np.ndarray, phi: Optional[torch.Tensor],
                translation: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Normalised (augmented) images ``(B, 1, n, n)``, Fourier-cropped to the network size n, and the matching
        scaled targets on the device."""
        scaling = self.data.scaling
        images = images.to(self.device, non_blocking=True).float()[:, None]
        images = (images - scaling.image_mean) / scaling.image_std
        targets = {t: v[torch.as_tensor(indices)] for t, v in self.data.targets.items()}
        if phi is not None:
            images = transform_images(images, phi.to(self.device).float(), translation.to(self.device).float())
            if 'orientation' in targets:
                targets['orientation'] = transform_quaternions(targets['orientation'].double(),
                                                               phi).float()
            if 'shifts' in targets:
                targets['shifts'] = transform_shifts(targets['shifts'].double(), phi, translation).float()
        images = fourier_crop(images, self.network_box)
        if 'shifts' in targets:
            targets['shifts'] = ((targets['shifts'].double() - torch.as_tensor(scaling.shift_mean))
                                 / torch.as_tensor(scaling.shift_std)).float()
        if self.device.type == 'cuda':
            images = images.contiguous(memory_format=torch.channels_last)
        return images, {t: v.to(self.device, non_blocking=True) for t, v in targets.items()}

    # ---- one epoch ---------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        batches = self._epoch_batches(epoch)
        phi_all, t_all = self._epoch_augmentation(epoch)
        mine = slice(self.rank.rank, None, self.rank.world_size)
        totals = torch.zeros(len(self.config.types), dtype=torch.float64, device=self.device)
        iterator = self._iterate(batches)
        if self.progress:
            from tqdm import tqdm
            iterator = tqdm(iterator, total=len(batches), desc=f'epoch {epoch + 1}/{self.config.epochs}',
                            leave=False, dynamic_ncols=True)
        for step, (images, indices) in enumerate(iterator):
            phi = phi_all[step][mine] if self.augmentation.active else None
            translation = t_all[step][mine] if self.augmentation.active else None
            inputs, targets = self._inputs(images, indices, phi, translation)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                outputs = self.model(inputs)
            per_type = tg.losses(outputs, targets)
            loss = sum(per_type.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            totals += self._stacked(per_type)  # stays on the device: no synchronisation per step
            if self.progress and step % PROGRESS_EVERY == 0:
                iterator.set_postfix(loss=f'{float(loss.detach()):.4f}')
        return self._reduce_mean(totals, len(batches))

    @torch.no_grad()
    def _validate(self) -> Dict[str, float]:
        self.model.eval()
        indices = self.data.split['validation'][self.rank.rank::self.rank.world_size]
        totals = torch.zeros(len(self.config.types), dtype=torch.float64, device=self.device)
        batch = max(self.per_rank_batch, 64)
        for images, chunk in self._iterate([indices[start:start + batch] for start in range(0, len(indices), batch)]):
            inputs, targets = self._inputs(images, chunk, None, None)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                outputs = self.network(inputs)
            totals += self._stacked(tg.losses(outputs, targets)) * len(chunk)
        return self._reduce_mean(totals, len(indices))

    def _stacked(self, per_type: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The losses of the parameter types, in the configuration's order, as one float64 vector."""
        return torch.stack([per_type[t].detach() for t in self.config.types]).double()

    def _reduce_mean(self, totals: torch.Tensor, count: int) -> Dict[str, float]:
        """Sums of the losses of this rank -> means over all ranks (on the device: NCCL reduces CUDA tensors)."""
        values = torch.cat([totals, torch.tensor([float(count)], dtype=torch.float64, device=totals.device)])
        if self.rank.world_size > 1:
            dist.all_reduce(values)
        values = values.cpu()
        denominator = max(values[-1].item(), 1.0)
        return {t: values[i].item() / denominator for i, t in enumerate(self.config.types)}

    # ---- checkpoints -------------------------------------------------------------------------
    def _checkpoint(self) -> dict:
        return {'format': MODEL_FORMAT, 'config': self.config.to_dict(), 'epoch': len(self.history),
                'network': self.network.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'scheduler': self.scheduler.state_dict(), 'history': self.history,
                'best_loss': self.best_loss, 'best_epoch': self.best_epoch, 'best_states': self.best_states,
                'torch_rng': torch.get_rng_state(),
                'cuda_rng': torch.cuda.get_rng_state(self.device) if self.device.type == 'cuda' else None}

    def _save_checkpoint(self) -> None:
        with atomic_path(self.output_dir / LAST_CHECKPOINT, suffix='.pt') as tmp:
            torch.save(self._checkpoint(), tmp)

    def resume(self) -> bool:
        """Continue from ``checkpoint_last.pt`` if it exists (same settings required); True if resumed."""
        path = self.output_dir / LAST_CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location='cpu', weights_only=False)
        if result_settings(state.get('config', {})) != result_settings(self.config.to_dict()):
            raise InputError(f'{path} was written with other settings; remove it (or choose another output '
                             'folder) to start afresh')
        self.network.load_state_dict(state['network'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.history = list(state['history'])
        self.best_loss, self.best_epoch = dict(state['best_loss']), dict(state['best_epoch'])
        self.best_states = dict(state['best_states'])
        torch.set_rng_state(state['torch_rng'])
        if state['cuda_rng'] is not None and self.device.type == 'cuda':
            torch.cuda.set_rng_state(state['cuda_rng'], self.device)
        self.start_epoch = int(state['epoch'])
        return True

    def _best_state_dict(self) -> dict:
        """The weights of each independent network from its own best epoch."""
        merged = {}
        current = self.network.state_dict()
        for key, value in current.items():
            branch = key.split('.')[1]
            best = self.best_states.get(branch)
            merged[key] = (best[key] if best is not None else value).clone()
        return merged

    def _save_model(self) -> None:
        info = {'best_epoch': {b: e + 1 for b, e in self.best_epoch.items()},
                'best_validation_loss': self.best_loss, 'epochs_run': len(self.history),
                'outliers_removed': self.data.outliers_removed,
                'split_sizes': {k: int(len(v)) for k, v in self.data.split.items()}}
        save_model(self.output_dir / MODEL_FILE, self.network, self._best_state_dict(), self.data.scaling,
                   self.box, self.network_box, self.config, info)

    def _update_best(self, epoch: int, validation: Dict[str, float]) -> bool:
        improved = False
        state = self.network.state_dict()
        for branch, types in self.branches.items():
            loss = sum(validation[t] for t in types)
            if loss < self.best_loss[branch]:
                self.best_loss[branch], self.best_epoch[branch] = loss, epoch
                self.best_states[branch] = {k: v.detach().clone() for k, v in state.items()
                                            if k.split('.')[1] == branch}
                improved = True
        return improved

    def _stop_early(self, epoch: int) -> bool:
        """No improvement of the validation loss for ``patience`` epochs, counted in the second half of the
        epochs only: the one-cycle schedule's high learning rates of the first half make it noisy."""
        patience = self.config.patience
        if not patience or patience <= 0 or epoch < self.config.epochs // 2:
            return False
        return epoch - max(max(self.best_epoch.values()), self.config.epochs // 2) >= patience

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self, on_epoch_end: Optional[EpochCallback] = None) -> List[dict]:
        """Train until the last epoch or early stopping; returns the history (one dict per epoch)."""
        if self.rank.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._save_split()
        barrier(self.rank)
        for epoch in range(self.start_epoch, self.config.epochs):
            if self.history and self._stop_early(epoch - 1):
                break
            train = self._train_epoch(epoch)
            validation = self._validate()
            row = {'epoch': epoch + 1, 'lr': self.optimizer.param_groups[0]['lr'],
                   'train_loss': sum(train.values()), 'validation_loss': sum(validation.values()),
                   **{f'train_{t}': v for t, v in train.items()},
                   **{f'validation_{t}': v for t, v in validation.items()}}
            self.history.append(row)
            improved = self._update_best(epoch, validation)
            if self.rank.is_main:
                self._save_checkpoint()
                if improved or not (self.output_dir / MODEL_FILE).exists():
                    self._save_model()
                write_history(self.output_dir, self.history)
            barrier(self.rank)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        if self.rank.is_main:
            self._save_model()
            write_history(self.output_dir, self.history)
            plot_history(self.output_dir / CURVES_PNG, self.history)
        barrier(self.rank)
        return self.history

    def _save_split(self) -> None:
        with atomic_path(self.output_dir / SPLIT_FILE, suffix='.npz') as tmp:
            np.savez(tmp, **self.data.split)


def write_history(output_dir: Path, history: List[dict]) -> None:
    """The loss history as CSV (one row per epoch)."""
    if not history:
        return
    with atomic_path(output_dir / HISTORY_CSV) as tmp:
        with open(tmp, 'w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def read_history(path: str | Path) -> List[dict]:
    """Rows of a ``loss_history.csv`` with float values."""
    with open(path, newline='') as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot_history(path: Path, history: List[dict]) -> None:
    """Training and validation loss per epoch (total and per parameter type) as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [row['epoch'] for row in history]
    keys = [k for k in history[0] if k.startswith('validation_') and k != 'validation_loss']
    figure, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.2), squeeze=False)
    panels = [('loss', 'total')] + [(k[len('validation_'):], k[len('validation_'):]) for k in keys]
    for axis, (key, title) in zip(axes[0], panels):
        axis.plot(epochs, [row[f'train_{key}'] for row in history], label='training')
        axis.plot(epochs, [row[f'validation_{key}'] for row in history], label='validation')
        axis.set_title(f'{title} (L1)')
        axis.set_xlabel('epoch')
        axis.legend()
    figure.tight_layout()
    with atomic_path(path, suffix='.png') as tmp:
        figure.savefig(tmp, format='png', dpi=100)
    plt.close(figure)


def write_summary(output_dir: Path, config: TrainConfig, data: PreparedData, history: List[dict],
                  extra: Optional[dict] = None) -> dict:
    """``training_summary.json``: settings, outliers removed, split sizes, best epochs and losses."""
    summary = {'config': config.to_dict(), 'outliers_removed': data.outliers_removed,
               'outlier_threshold': config.outlier_threshold,
               'split_sizes': {k: int(len(v)) for k, v in data.split.items()},
               'epochs_run': len(history), 'final': history[-1] if history else None, **(extra or {})}
    with atomic_path(output_dir / SUMMARY_FILE) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float))
    return summary


def labels_from_particles(particles) -> tg.Labels:
    """The training labels carried by a :class:`deephemnma.core.metadata.Particles`."""
    return tg.Labels(angles=particles.angles, shifts=particles.shifts, amplitudes=particles.amplitudes)


def true_labels_from_particles(particles) -> tg.Labels:
    """The simulator's ground truth carried by a Particles (extra columns ``true_amplitudes``, as one row per
    particle even for one mode, and ``true_angles`` and ``true_shifts`` where present)."""
    extra = particles.extra
    return tg.Labels(angles=extra.get('true_angles'), shifts=extra.get('true_shifts'),
                     amplitudes=np.atleast_2d(extra['true_amplitudes'].T).T)


def run_training(particles, config: TrainConfig, output_dir: str | Path, device: torch.device,
                 base_dir: Optional[str | Path] = None, rank: Rank = Rank(), progress: bool = True,
                 on_epoch_end: Optional[EpochCallback] = None) -> Tuple[Trainer, dict]:
    """Prepare the data of ``particles``, train (resuming a killed run in ``output_dir``), and write the
    summary; returns the trainer and the summary."""
    source = ImageSource(particles.image, base_dir)
    data = prepare_data(source, labels_from_particles(particles), particles.image, config)
    trainer = Trainer(config, data, output_dir, device, rank, progress)
    resumed = trainer.resume()
    history = trainer.fit(on_epoch_end)
    summary = {}
    if rank.is_main:
        summary = write_summary(Path(output_dir), config, data, history,
                                {'resumed': resumed, 'best_epoch': {b: e + 1 for b, e in trainer.best_epoch.items()}})
    return trainer, summary
