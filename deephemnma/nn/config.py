"""Settings of a training run: :class:`TrainConfig`, the presets and the learning-rate schedules.

* Presets: ``fast`` (batch 128, bfloat16 mixed precision, one-cycle schedule, early stopping on validation in the
  second half of the epochs, 8 orientation hypotheses) and ``paper`` (batch 2, learning rate 1e-5 divided by 10
  every 80 epochs, 400 epochs, no early stop, the orientation alone as in the paper) and ``finetune`` (the fast
  preset's, but a learning rate of 1e-4 decaying from the first step (cosine) for 60 epochs: for a network that
  starts from another one's weights, ``init_weights``, whose features a one-cycle warm-up to 1e-3 would first
  undo).
* The settings that change the trained weights must stay the same for a resume (:func:`result_settings`); how
  images are read (threads, RAM limit) may change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Dict, Tuple

import torch

from deephemnma.nn import targets as tg
from deephemnma.nn.model import MIN_NETWORK_BOX
from deephemnma.runtime.errors import InputError


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
    hypotheses: int = 8  # orientation hypotheses beside the orientation (winner-takes-all; 0: none)
    outlier_threshold: float = 3.2
    network_box: int = 0  # image size (px) the network sees: images are Fourier-cropped to it; 0: no cropping
    validation: float = 0.1
    test: float = 0.1
    seed: int = 0
    init_weights: str = ''  # model.pt whose weights training starts from (fine-tuning; '': random weights)
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
        if self.hypotheses < 0:
            raise InputError(f'the number of orientation hypotheses cannot be negative ({self.hypotheses})')
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


#: Training presets (the order of the Scipion form's choices).
PRESETS: Dict[str, Dict[str, object]] = {
    'fast': dict(batch_size=128, lr=1e-3, schedule='onecycle', epochs=60, amp=True, patience=10,
                 max_rotation_deg=180.0, max_translation_px=0.0),
    'paper': dict(batch_size=2, lr=1e-5, schedule='step', step_epochs=80, step_gamma=0.1, epochs=400,
                  amp=False, patience=0, max_rotation_deg=0.0, max_translation_px=0.0, hypotheses=0),
    'finetune': dict(batch_size=128, lr=1e-4, schedule='cosine', epochs=60, amp=True, patience=10,
                     max_rotation_deg=180.0, max_translation_px=0.0),
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The settings of preset ``name`` (one of :data:`PRESETS`) with ``overrides`` (None values ignored)."""
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
