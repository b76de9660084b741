"""Rotation conventions: round-trip errors and throughput of the batched conversions.

Measures, on 1,000,000 uniform random rotations, the largest matrix error of Euler -> matrix -> quaternion ->
Euler -> matrix, and how many rotations per second the batched torch conversions handle on this machine.

Example::

    deephemnma bench rotations --count 1000000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from deephemnma.imaging import rotations as R


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--count', type=int, default=1_000_000, help='number of random rotations')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    matrices = R.random_rotations(args.count, seed=args.seed)
    euler = R.matrix_to_euler(matrices)
    start = time.perf_counter()
    quaternions = R.matrix_to_quaternion_torch(R.euler_to_matrix_torch(torch.as_tensor(euler)))
    back = R.euler_to_matrix_torch(R.matrix_to_euler_torch(R.quaternion_to_matrix_torch(quaternions)))
    seconds = time.perf_counter() - start
    error = float(np.abs(back.numpy() - matrices).max())
    return {'count': args.count, 'round_trip_max_matrix_error': error,
            'round_trips_per_second_cpu_float64': args.count / seconds}
