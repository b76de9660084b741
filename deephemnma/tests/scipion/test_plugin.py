"""The plugin registers with Scipion, and its protocols and viewers need neither Xmipp's programs nor ContinuousFlex."""
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent('''
    import importlib.abc, sys
    BLOCKED = ('xmipp3', 'continuousflex')
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'{name} is blocked to simulate a Scipion without Xmipp and ContinuousFlex')
    sys.meta_path.insert(0, Blocker())
''')


def test_plugin_registers_with_scipion():
    code = ("from pwem import Domain; import deephemnma; plugins = Domain.getPlugins(); "
            "assert 'deephemnma' in plugins, plugins; print(deephemnma.Plugin.getTorchrun())")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == 'torchrun'


def test_protocols_register_without_xmipp_and_continuousflex():
    """Neither ContinuousFlex nor scipion-em-xmipp is needed: every protocol and viewer of the plugin registers."""
    code = BLOCKER + textwrap.dedent('''
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


def test_protocols_conf_lays_out_every_protocol_in_workflow_order():
    """Scipion's protocol tree reads the plugin's protocols.conf: the DeepHEMNMA view lists every protocol of the
    plugin once, in the order of the workflow."""
    code = textwrap.dedent('''
        import deephemnma.tests  # the Scipion test environment
        from pwem import Domain
        from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
        tree = ProtocolTreeConfig.load(Domain, '/nonexistent/protocols.conf')
        def leaves(node):
            return [node.value] if node.tag == 'protocol' else [v for c in node.childs for v in leaves(c)]
        print(' '.join(v for v in leaves(tree['DeepHEMNMA']) if v.startswith('DeepHemnmaProt')))
        print(' '.join(sorted(name for name in Domain.getProtocols() if name.startswith('DeepHemnmaProt'))))
    ''')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    listed, registered = (line.split() for line in result.stdout.strip().splitlines()[-2:])
    assert listed == [f'DeepHemnmaProt{name}' for name in ('NMA', 'ImportParticles', 'Simulate', 'Split', 'Align',
                                                           'Train', 'Infer', 'Space', 'Groups', 'Reconstruct',
                                                           'Animate')]
    assert sorted(listed) == registered
