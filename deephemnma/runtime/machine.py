"""Devices and the description of the machine a figure was measured on."""
from __future__ import annotations

import os
import platform
from typing import Dict

import numpy as np
import torch


def resolve_device(name: str = 'auto') -> torch.device:
    """``'auto'`` -> CUDA when available else CPU; ``'cuda'`` without a GPU raises a clear error."""
    name = (name or 'auto').lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f"A GPU was requested ('{name}') but torch sees no CUDA device on this machine; "
                           "use --device cpu or run on a GPU node.")
    return device


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def describe_machine() -> Dict[str, object]:
    """CPU model, usable cores, torch threads and GPU names: stated with every benchmark figure."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {'cpu': cpu_model(), 'cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
            else os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'gpus': gpus,
            'torch': torch.__version__}


def flush_denormals() -> None:
    """Treat denormal floats as zero in CPU arithmetic. The tiny weights and optimiser moments of a trained
    network are otherwise denormal and slow its training and prediction down: a ResNet-18 after 95 epochs trains
    1.65 times slower without this (119 vs 196 images/s, 32 px, one core). The setting belongs to the calling
    thread and the threads it starts afterwards: call it before torch's first parallel operation (the command
    line does). numpy's float limits are computed first: with denormals flushed, numpy would warn that the
    smallest subnormal is zero."""
    for dtype in (np.float16, np.float32, np.float64):
        np.finfo(dtype).smallest_subnormal
    torch.set_flush_denormal(True)


def amp_supported(device: torch.device) -> bool:
    """bfloat16 autocast pays off: on CUDA, and on CPUs with native bfloat16 (AVX512-BF16/AMX)."""
    if device.type == 'cuda':
        return True
    return device.type == 'cpu' and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
