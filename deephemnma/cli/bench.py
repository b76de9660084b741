"""Run a benchmark and print its measured figures; the last line printed is one JSON object.

Benchmarks live in ``deephemnma.bench`` (one module per benchmark with ``add_args`` and ``run`` returning a
dict of figures). Each states the machine it ran on (CPU model, cores, GPU name) in its JSON.

Examples::

    deephemnma bench rotations
    deephemnma bench nma
    deephemnma bench simulate --device cuda
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil

from deephemnma import bench as bench_package
from deephemnma.runtime.machine import describe_machine


def benchmark_names() -> list:
    """Names of the available benchmarks."""
    return sorted(i.name for i in pkgutil.iter_modules(bench_package.__path__) if not i.name.startswith('_'))


def add_args(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest='benchmark', metavar='NAME', required=True)
    for name in benchmark_names():
        module = importlib.import_module(f'deephemnma.bench.{name}')
        sub = subparsers.add_parser(name, help=(module.__doc__ or '').strip().splitlines()[0],
                                    description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(sub)
        sub.set_defaults(_benchmark=module)


def main(args: argparse.Namespace) -> int:
    figures = args._benchmark.run(args)
    figures = {'benchmark': args.benchmark, **figures, 'machine': describe_machine()}
    print(json.dumps(figures, sort_keys=False, default=float))
    return 0
