"""The model file (``model.pt``): the weights with everything prediction needs.

One file holds the network's configuration and weights, the target scaling (image mean and standard deviation,
amplitude and shift statistics), the image size it was trained on and the size its input is Fourier-cropped to
(pixels), the parameter types and the training settings. :func:`load_model` builds the network from it;
:func:`read_model_info` reads what it says about itself without building the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torch

from deephemnma.nn import targets as tg
from deephemnma.nn.config import TrainConfig
from deephemnma.nn.model import DeepHemnmaNet, NetworkConfig
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

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


def _read_payload(path: Path) -> dict:
    """The dictionary of a model file (InputError when it is missing or not one)."""
    if not path.exists():
        raise InputError(f'{path}: model file not found')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises many kinds (pickle, zip, EOF, runtime) for a damaged file
        raise InputError(f'{path}: not a readable model file ({type(error).__name__}: {str(error)[:120]})') from error
    if not isinstance(payload, dict) or payload.get('format') != MODEL_FORMAT:
        raise InputError(f'{path}: not a DeepHEMNMA model file (format {MODEL_FORMAT})')
    return payload


def read_model_info(path: str | Path) -> dict:
    """What a model file says about itself without building the network: ``box`` and ``network_box`` (px),
    ``types``, ``network`` (its configuration), ``train_config`` and ``info``."""
    payload = _read_payload(Path(path))
    return {key: payload.get(key) for key in ('box', 'network_box', 'types', 'network', 'train_config', 'info')}


def load_model(path: str | Path, device: torch.device | str = 'cpu') -> TrainedModel:
    """Load a ``model.pt`` written by :func:`save_model` (in eval mode, on ``device``)."""
    payload = _read_payload(Path(path))
    network = DeepHemnmaNet(NetworkConfig(**payload['network']))
    network.load_state_dict(payload['state_dict'])
    network.to(device).eval()
    return TrainedModel(network, tg.Scaling.from_dict(payload['scaling']), int(payload['box']),
                        int(payload['network_box']), tuple(payload['types']), dict(payload.get('info', {})))
