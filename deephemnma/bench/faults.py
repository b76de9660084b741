"""Fault injection: run the fault-injection test cases and count the promises kept.

Runs ``deephemnma/tests/core/test_faults.py`` (bad numbers, malformed files, path faults, kill and resume,
interrupts, concurrent runs, file modes: every command) with pytest and reports ``cases``, ``kept_promise`` and
``broken`` (the target is 0), per class of fault, with the names of the broken cases. Needs the test extra
(``pip install -e .[test]``).

Examples::

    deephemnma bench faults
    deephemnma bench faults --workers 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

from deephemnma.runtime.errors import InputError

#: The test module holding the cases (found by path: benchmarks do not import the tests).
CASES_MODULE = Path(__file__).resolve().parents[1] / 'tests' / 'core' / 'test_faults.py'


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--workers', type=int, default=1, help='pytest-xdist processes (1: in turn)')


def run(args: argparse.Namespace) -> dict:
    if not CASES_MODULE.exists():
        raise InputError(f'{CASES_MODULE}: the fault-injection cases are missing (install from a source checkout)')
    with tempfile.TemporaryDirectory(prefix='deephemnma-bench-faults-') as folder:
        report = Path(folder) / 'report.xml'
        command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={report}',
                   str(CASES_MODULE)]
        if args.workers > 1:
            command += ['-n', str(args.workers)]
        start = time.time()
        finished = subprocess.run(command, capture_output=True, text=True)
        if not report.exists():
            raise InputError(f'pytest did not run the cases (is the test extra installed?): '
                             f'{finished.stderr.strip()[-300:]}')
        cases = ElementTree.parse(report).getroot().iter('testcase')
        outcomes = [(case.get('name'), case.find('failure') is None and case.find('error') is None
                     and case.find('skipped') is None) for case in cases]
    kinds = Counter(_kind(name) for name, _ in outcomes)
    broken = [name for name, kept in outcomes if not kept]
    return {'cases': len(outcomes), 'kept_promise': len(outcomes) - len(broken), 'broken': len(broken),
            'cases_by_class': dict(sorted(kinds.items())),
            'broken_by_class': dict(sorted(Counter(_kind(name) for name in broken).items())),
            'broken_cases': broken, 'seconds': round(time.time() - start, 1)}


def _kind(test_name: str) -> str:
    """The class of a case from its test id ``test_promise[CLASS:name]``."""
    return test_name.partition('[')[2].partition(':')[0] or 'other'
