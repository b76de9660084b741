"""Training of the DeepHEMNMA network: epochs, validation, checkpoints, resume and DDP.

* Loss: L1 (see :mod:`deephemnma.nn.targets`); optimiser Adam with L2 weight decay (1e-5 by default); settings
  and presets in :mod:`deephemnma.nn.config`.
* Every epoch ``checkpoint_last.pt`` (model, optimiser, schedule, random state, history) is written
  atomically; ``model.pt`` (:mod:`deephemnma.nn.modelfile`) holds the best weights so far (by validation loss,
  per independent network in the ``separate`` layout): it is all inference needs. A killed run started again
  with the same settings resumes from the last epoch and ends with the same weights as an uninterrupted run
  (data order and augmentation are drawn from ``(seed, epoch)``, dropout's random state is saved).
* The loss history and plots are written by :mod:`deephemnma.nn.history`.
* Several processes (``torchrun``; gloo on CPU, NCCL on GPU): each global batch is split evenly among the
  ranks (DistributedDataParallel averages the gradients), so a run on W processes follows the run on one
  process (exactly with ``norm='group'``; batch-norm statistics are per process on CPU and synchronised on
  GPU).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from deephemnma.data.stacks import ImageSource, read_ahead
from deephemnma.imaging.filters import fourier_crop
from deephemnma.nn import targets as tg
from deephemnma.nn.augment import Augmentation, transform_images, transform_quaternions, transform_shifts
from deephemnma.nn.config import SCHEDULES, TrainConfig, result_settings
from deephemnma.nn.data import PreparedData, prepare_data
from deephemnma.nn.history import CURVES_PNG, plot_history, write_history, write_summary
from deephemnma.nn.model import MIN_NETWORK_BOX, DeepHemnmaNet, NetworkConfig
from deephemnma.nn.modelfile import MODEL_FILE, MODEL_FORMAT, load_model, save_model
from deephemnma.nn.targets import labels_from_particles
from deephemnma.runtime.distributed import Rank, barrier, local_device
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.runtime.machine import amp_supported, flush_denormals

LAST_CHECKPOINT = 'checkpoint_last.pt'
SPLIT_FILE = 'split.npz'
PROGRESS_EVERY = 10  # steps between updates of the progress bar's loss (each one waits for the GPU)


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
        if self.network_box < MIN_NETWORK_BOX:
            raise InputError(f'the images are {self.box} px wide: the network needs at least {MIN_NETWORK_BOX} px')
        outputs = tg.output_sizes(config.types, 0 if data.labels.amplitudes is None
                                  else data.labels.amplitudes.shape[1], config.hypotheses)
        torch.manual_seed(config.seed)
        self.network = DeepHemnmaNet(NetworkConfig(outputs=outputs, arch=config.arch, layout=config.layout,
                                                   dropout=config.dropout, norm=config.norm)).to(self.device)
        if config.init_weights:
            self._start_from(Path(config.init_weights))
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
        self.loss_names = list(self.network.config.outputs)  # the parameter types, then the hypotheses
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
        totals = torch.zeros(len(self.loss_names), dtype=torch.float64, device=self.device)
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
        totals = torch.zeros(len(self.loss_names), dtype=torch.float64, device=self.device)
        batch = max(self.per_rank_batch, 64)
        for images, chunk in self._iterate([indices[start:start + batch] for start in range(0, len(indices), batch)]):
            inputs, targets = self._inputs(images, chunk, None, None)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                outputs = self.network(inputs)
            totals += self._stacked(tg.losses(outputs, targets)) * len(chunk)
        return self._reduce_mean(totals, len(indices))

    def _stacked(self, per_type: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The losses of the outputs, in :attr:`loss_names`' order, as one float64 vector."""
        return torch.stack([per_type[t].detach() for t in self.loss_names]).double()

    def _reduce_mean(self, totals: torch.Tensor, count: int) -> Dict[str, float]:
        """Sums of the losses of this rank -> means over all ranks (on the device: NCCL reduces CUDA tensors)."""
        values = torch.cat([totals, torch.tensor([float(count)], dtype=torch.float64, device=totals.device)])
        if self.rank.world_size > 1:
            dist.all_reduce(values)
        values = values.cpu()
        denominator = max(values[-1].item(), 1.0)
        return {t: values[i].item() / denominator for i, t in enumerate(self.loss_names)}

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

    def _start_from(self, path: Path) -> None:
        """Start from the weights of the model file ``path`` (fine-tuning), refused with one clear error when its
        network differs from this training's (architecture, layout, normalisation, outputs); a missing or damaged
        file is refused by :func:`load_model`."""
        start = load_model(path)
        ours, theirs = self.network.config, start.network.config
        shape = {name: (getattr(ours, name), getattr(theirs, name)) for name in ('arch', 'layout', 'norm', 'outputs')}
        differ = {name: pair for name, pair in shape.items() if pair[0] != pair[1]}
        if differ:
            raise InputError(f'{path}: its network differs from this training\'s, so its weights cannot be the start: '
                             + '; '.join(f'{name} {pair[1]} there, {pair[0]} here' for name, pair in differ.items()))
        self.network.load_state_dict(start.network.state_dict())

    def resume(self) -> bool:
        """Continue from ``checkpoint_last.pt`` if it exists (same settings required); True if resumed."""
        path = self.output_dir / LAST_CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location='cpu', weights_only=False)
        saved = {**TrainConfig().to_dict(), **state.get('config', {})}  # settings added since: their defaults
        if result_settings(saved) != result_settings(self.config.to_dict()):
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


def run_training(particles, config: TrainConfig, output_dir: str | Path, device: torch.device,
                 base_dir: Optional[str | Path] = None, rank: Rank = Rank(), progress: bool = True,
                 on_epoch_end: Optional[EpochCallback] = None, invert: bool = False) -> Tuple[Trainer, dict]:
    """Prepare the data of ``particles``, train (resuming a killed run in ``output_dir``), and write the
    summary; returns the trainer and the summary."""
    source = ImageSource(particles.image, base_dir, invert=invert)
    data = prepare_data(source, labels_from_particles(particles), particles.image, config)
    trainer = Trainer(config, data, output_dir, device, rank, progress)
    resumed = trainer.resume()
    history = trainer.fit(on_epoch_end)
    summary = {}
    if rank.is_main:
        summary = write_summary(Path(output_dir), config, data, history,
                                {'resumed': resumed, 'best_epoch': {b: e + 1 for b, e in trainer.best_epoch.items()}})
    return trainer, summary
