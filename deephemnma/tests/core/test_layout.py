"""The house's layout: the core runs where Scipion is absent (a bare GPU node), imports point downward only
(core <- command line and benchmarks <- Scipion protocols and viewers), protocol modules are independent, the
code passes the linter, and bad input stops the command line with one line."""
import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2]
#: The computational core: domain packages that import neither Scipion nor the layers above them.
CORE = ('runtime', 'molecule', 'nma', 'imaging', 'data', 'simulate', 'hemnma', 'nn', 'space')
#: What the core may not import (the command line, the benchmarks and the Scipion side).
ABOVE_CORE = ('cli', 'bench', 'protocols', 'viewers', 'convert', 'workflow', 'constants', 'scipion_env', 'tests')

BLOCKER = textwrap.dedent('''
    import importlib.abc, sys
    BLOCKED = ('pyworkflow', 'pwem', 'xmipp3', 'xmippLib', 'continuousflex', 'emtable', 'tkinter')
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'{name} is blocked to simulate a node without Scipion')
    sys.meta_path.insert(0, Blocker())
''')

CHECK = textwrap.dedent('''
    import importlib, pkgutil
    import numpy as np
    import deephemnma
    assert not hasattr(deephemnma, 'Plugin'), 'the Scipion plugin class must only exist with pwem'
    imported = []
    for package_name in [f'deephemnma.{name}' for name in CORE] + ['deephemnma.cli', 'deephemnma.bench']:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f'{package_name}.{info.name}')
            imported.append(info.name)
    from deephemnma.imaging import rotations
    m = rotations.random_rotations(10, seed=0)
    assert np.abs(rotations.euler_to_matrix(rotations.matrix_to_euler(m)) - m).max() < 1e-9
    from deephemnma.cli.main import command_names
    assert 'bench' in command_names()
    print('OK', len(imported))
''')


def test_core_imports_and_runs_with_scipion_blocked():
    code = BLOCKER + f'CORE = {CORE!r}\n' + CHECK
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('OK')
    assert int(result.stdout.split()[1]) >= 60


def _imports(path: Path):
    """The deephemnma modules a file imports (absolute names), anywhere in the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('deephemnma'):
            yield from (node.module, *(f'{node.module}.{alias.name}' for alias in node.names))
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith('deephemnma'))


def _files(*packages: str):
    for package in packages:
        yield from sorted((PACKAGE / package).rglob('*.py'))


def _layer(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_core_imports_nothing_above_it():
    offending = [f'{path.relative_to(PACKAGE)} imports {module}' for path in _files(*CORE)
                 for module in _imports(path) if _layer(module) in ABOVE_CORE or module == 'deephemnma']
    assert offending == []


def test_command_line_and_benchmarks_import_no_scipion_side():
    scipion_side = ('protocols', 'viewers', 'convert', 'constants')
    offending = [f'{path.relative_to(PACKAGE)} imports {module}' for path in _files('cli', 'bench')
                 for module in _imports(path) if _layer(module) in scipion_side]
    offending += [f'{path.relative_to(PACKAGE)} imports {module}' for path in _files('bench')
                  for module in _imports(path) if _layer(module) == 'cli']
    # ``demo`` is the command that drives Scipion's workflow; it reaches the Scipion side only through workflow.
    assert [line for line in offending if not line.startswith('cli/demo.py')] == []


def test_protocol_modules_import_no_other_protocol_module():
    offending = [f'{path.name} imports {module}' for path in _files('protocols') if path.name.startswith('protocol_')
                 for module in _imports(path)
                 if module.startswith('deephemnma.protocols.protocol_') and module.split('.')[2] != path.stem]
    assert offending == []


def test_linter_passes():
    ruff = shutil.which('ruff') or str(Path(sys.executable).with_name('ruff'))
    if not Path(ruff).exists():
        pytest.fail('ruff is not installed: pip install -e .[test]')
    result = subprocess.run([ruff, 'check', '--no-cache', str(PACKAGE)], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_command_line_reports_bad_input_in_one_line(tmp_path):
    missing = tmp_path / 'missing.star'
    result = subprocess.run([sys.executable, '-m', 'deephemnma.cli.main', 'reconstruct', '-i', str(missing), '-o',
                             str(tmp_path / 'maps')], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f'deephemnma: error: {missing}: no such metadata file'
    assert not (tmp_path / 'maps').exists()
