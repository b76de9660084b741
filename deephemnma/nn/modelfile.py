"""TODO docstring"""
from __future__ import annotations

import torch
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.nn import targets as tg
from deephemnma.nn.model import DeepHemnmaNet, NetworkConfig
from deephemnma.nn.config import TrainConfig

MODEL_FILE = 'model.pt'
MODEL_FORMAT = 'deephemnma-model-1'


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
