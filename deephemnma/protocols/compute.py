"""How the heavy protocols run the ``deephemnma`` command line: on CPU, one GPU, or several GPUs via torchrun."""
from __future__ import annotations

import os
from typing import List

from pyworkflow.utils import Environ


def check_gpus_available(gpus: list) -> None:
    """Refuse with a clear message when GPUs are requested on a machine where torch sees none."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError(f'GPU(s) {" ".join(gpus)} requested, but torch sees no CUDA device on this machine '
                           f'({os.uname().nodename}): set "Use GPU" to No, or run on a GPU node.')


def gpu_ids(protocol) -> List[str]:
    """The GPU ids a protocol is set to use: its "GPU IDs" list (commas or spaces) when "Use GPU" is on, none
    otherwise."""
    return str(protocol.getGpuList() if protocol.useGpu.get() else '').replace(',', ' ').split()


def gpu_command(protocol, command: str, arguments: str):
    """``(program, arguments, env)`` of a ``deephemnma`` command on this protocol's GPUs: ``torchrun`` over
    all listed GPUs when there are several (its per-rank logs in the protocol's logs folder, not in /tmp), the
    command itself otherwise (CPU when "Use GPU" is off)."""
    env = Environ(os.environ)
    gpus = gpu_ids(protocol)
    device = '--device cuda' if gpus else '--device cpu'
    if gpus:
        check_gpus_available(gpus)
        env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
    if len(gpus) > 1:
        from deephemnma import Plugin
        return Plugin.getTorchrun(), f'--nproc_per_node={len(gpus)} --log-dir {protocol._getLogsPath("torchrun")} ' \
                                     f'-m deephemnma.cli.main {command} {arguments} {device}', env
    return 'deephemnma', f'{command} {arguments} {device}', env
