"""The DeepHEMNMA network: a ResNet feature extractor and the paper's MLP predictor.

Architecture (Hamitouche & Jonic 2022): torchvision's ResNet-34 (ResNet-18/50/101 as options) with a
1-channel stem, whose final fully connected layer gives 1000 features, then per parameter type an MLP
``1000 -> 512 -> 128`` (ReLU, dropout 0.5) and a linear output layer (no bounded activation, so amplitudes
and shifts of any sign and size can be predicted).

Two layouts:

* ``combined``: one trunk shared by all parameter types, one MLP head per type;
* ``separate`` (the paper's): one independent network (trunk and head) per type. The networks share no
  parameter, so training them side by side on the same batches with the summed loss is the same as training
  them one after the other (Adam and weight decay act on each parameter alone).

No pretrained weights are used (``weights=None``): nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from deephemnma.nn.targets import HYPOTHESIS_OUTPUT

#: Feature extractors (torchvision ResNets), the paper's first; the order of the Scipion form's choices.
#: torchvision is imported when a network is built: the Scipion forms and most commands start without it.
ARCHITECTURES: Tuple[str, ...] = ('resnet34', 'resnet18', 'resnet50', 'resnet101')
LAYOUTS = ('combined', 'separate')
#: Smallest image size (px) the network may be given: the ResNets halve the image five times, so below 32 px their
#: last stage convolves single pixels with stride 2 (pure padding), where torch 2.14's bfloat16 CPU backward pass
#: returns garbage gradients (up to 1e34, different each run) instead of zeros.
MIN_NETWORK_BOX = 32
NORMS = ('batch', 'group')
FEATURES = 1000
HIDDEN = (512, 128)


@dataclass
class NetworkConfig:
    """What defines a network: architecture, layout, outputs per type (``{'amplitudes': M, ...}``)."""

    outputs: Dict[str, int]
    arch: str = 'resnet34'
    layout: str = 'combined'
    dropout: float = 0.5
    norm: str = 'batch'
    hidden: Tuple[int, ...] = field(default=HIDDEN)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f'unknown architecture {self.arch!r}; choose one of {sorted(ARCHITECTURES)}')
        if self.layout not in LAYOUTS:
            raise ValueError(f'unknown layout {self.layout!r}; choose one of {LAYOUTS}')
        if self.norm not in NORMS:
            raise ValueError(f'unknown normalisation {self.norm!r}; choose one of {NORMS}')
        if not self.outputs or any(int(n) < 1 for n in self.outputs.values()):
            raise ValueError(f'every parameter type needs at least one output: {self.outputs}')
        self.outputs = {k: int(v) for k, v in self.outputs.items()}
        self.hidden = tuple(int(h) for h in self.hidden)

    def to_dict(self) -> dict:
        return asdict(self)

    def branches(self) -> Dict[str, List[str]]:
        """Outputs predicted by each independent network (one network in the combined layout; in the separate
        layout one per parameter type, the orientation hypotheses with the orientation)."""
        outputs = list(self.outputs)
        if self.layout == 'combined':
            return {'combined': outputs}
        return {t: [t] + ([HYPOTHESIS_OUTPUT] if t == 'orientation' and HYPOTHESIS_OUTPUT in outputs else [])
                for t in outputs if t != HYPOTHESIS_OUTPUT}


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(min(32, channels), channels)


def build_trunk(arch: str, norm: str = 'batch') -> nn.Module:
    """A torchvision ResNet with a 1-channel stem; its last layer outputs 1000 features."""
    kwargs = {'weights': None, 'num_classes': FEATURES}
    if norm == 'group':
        kwargs['norm_layer'] = _group_norm
    from torchvision import models
    trunk = getattr(models, arch)(**kwargs)
    stem = trunk.conv1
    trunk.conv1 = nn.Conv2d(1, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride,
                            padding=stem.padding, bias=False)
    return trunk


def build_head(outputs: int, hidden: Tuple[int, ...], dropout: float) -> nn.Sequential:
    """The paper's predictor after the 1000 trunk features: (ReLU, dropout, linear) per layer, linear output."""
    layers: List[nn.Module] = []
    width = FEATURES
    for size in hidden:
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, size)]
        width = size
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, outputs)]
    return nn.Sequential(*layers)


class Branch(nn.Module):
    """One trunk and the heads of the parameter types it predicts."""

    def __init__(self, config: NetworkConfig, types: List[str]):
        super().__init__()
        self.trunk = build_trunk(config.arch, config.norm)
        self.heads = nn.ModuleDict({t: build_head(config.outputs[t], config.hidden, config.dropout)
                                    for t in types})

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.trunk(images)
        return {name: head(features) for name, head in self.heads.items()}


class DeepHemnmaNet(nn.Module):
    """Images ``(B, 1, H, W)`` (normalised) -> raw outputs per parameter type ``{type: (B, n_type)}``.

    The raw outputs are in the scaled target space of :mod:`deephemnma.nn.targets` (which converts them to
    amplitudes, Euler angles and shifts).
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleDict({name: Branch(config, types)
                                       for name, types in config.branches().items()})

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs: Dict[str, torch.Tensor] = {}
        for branch in self.branches.values():
            outputs.update(branch(images))
        return {t: outputs[t] for t in self.config.outputs}
