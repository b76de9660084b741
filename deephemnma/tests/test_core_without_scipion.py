"""The computational core runs where Scipion is absent (a bare GPU node), and the plugin registers with it."""
import subprocess
import sys
import textwrap

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
    for package_name in ('deephemnma.core', 'deephemnma.nn', 'deephemnma.cli', 'deephemnma.bench'):
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f'{package_name}.{info.name}')
            imported.append(info.name)
    from deephemnma.core import rotations
    m = rotations.random_rotations(10, seed=0)
    assert np.abs(rotations.euler_to_matrix(rotations.matrix_to_euler(m)) - m).max() < 1e-9
    from deephemnma.cli.main import command_names
    assert 'bench' in command_names()
    print('OK', len(imported))
''')


def test_core_imports_and_runs_with_scipion_blocked():
    result = subprocess.run([sys.executable, '-c', BLOCKER + CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('OK')
    assert int(result.stdout.split()[1]) >= 8


def test_plugin_registers_with_scipion():
    code = ("from pwem import Domain; import deephemnma; plugins = Domain.getPlugins(); "
            "assert 'deephemnma' in plugins, plugins; print(deephemnma.Plugin.getDefaultDevice())")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == 'auto'


def test_protocols_register_without_xmipp_and_continuousflex():
    """Neither ContinuousFlex nor scipion-em-xmipp is needed: every protocol and viewer of the plugin registers."""
    blocker = BLOCKER.replace("('pyworkflow', 'pwem', 'xmipp3', 'xmippLib', 'continuousflex', 'emtable', 'tkinter')",
                              "('xmipp3', 'continuousflex')")
    code = blocker + textwrap.dedent('''
        import deephemnma.tests  # the Scipion test environment
        from pwem import Domain
        protocols = [name for name in Domain.getProtocols() if name.startswith('DeepHemnmaProt')]
        viewers = [v.__name__ for v in Domain.getViewers().values() if v.__module__.startswith('deephemnma')]
        print(' '.join(sorted(protocols)))
        print(' '.join(sorted(viewers)))
    ''')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    protocols, viewers = result.stdout.strip().splitlines()[-2:]
    for name in ('Simulate', 'NMA', 'Align', 'Train', 'Infer', 'Space', 'Groups', 'Reconstruct', 'Animate'):
        assert f'DeepHemnmaProt{name}' in protocols.split()
    assert len(viewers.split()) >= 3


def test_command_line_reports_bad_input_in_one_line(tmp_path):
    missing = tmp_path / 'missing.star'
    result = subprocess.run([sys.executable, '-m', 'deephemnma.cli.main', 'reconstruct', '-i', str(missing), '-o',
                             str(tmp_path / 'maps')], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f'deephemnma: error: {missing}: no such metadata file'
    assert not (tmp_path / 'maps').exists()
