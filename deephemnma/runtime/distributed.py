"""torch.distributed helpers for ``torchrun``: each rank processes a shard, results are merged in order.

Run any command on several GPUs or nodes with ``torchrun --nproc_per_node=N -m deephemnma.cli.main ...``
(or ``deephemnma ... `` through Scipion's ``runJob`` with the torchrun launcher). Without ``torchrun``
(no ``WORLD_SIZE`` in the environment) everything runs as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    """Where this process stands: its rank, the number of processes and its local GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str = 'cpu') -> Rank:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on GPU).

    Returns a single-process ``Rank`` when the environment does not describe one.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return Rank()
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if not dist.is_initialized():
        backend = 'nccl' if device_type == 'cuda' else 'gloo'
        if device_type == 'cuda':
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Rank(rank, world_size, local_rank)


def barrier(rank: Rank) -> None:
    """Wait for every process (no-op in a single process or outside a process group)."""
    if rank.world_size > 1 and dist.is_initialized():
        dist.barrier()


def local_device(device_name: str, rank: Rank) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` on GPU runs, else the named device."""
    device = torch.device(device_name)
    if device.type == 'cuda' and rank.world_size > 1:
        return torch.device('cuda', rank.local_rank)
    return device


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def start_process(threads: int, device_name: str):
    """Common start of a command: torch threads (0 keeps torch's default), the device, and the torchrun rank.

    Returns ``(device, rank)``, the device being this rank's own (``cuda:LOCAL_RANK`` under torchrun).
    """
    from .machine import resolve_device
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    rank = init_from_env(device.type)
    return local_device(str(device), rank), rank


def rank_positions(count: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """The item positions of the batches ``b`` with ``b % world_size == rank`` (a torchrun rank's share)."""
    blocks = [np.arange(b * batch_size, min((b + 1) * batch_size, count))
              for b in range(rank, (count + batch_size - 1) // batch_size, world_size)]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
