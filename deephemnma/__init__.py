"""DeepHEMNMA: continuous conformational heterogeneity in cryo-EM images with normal modes and deep learning.

The computational core (the domain packages ``runtime``, ``molecule``, ``nma``, ``imaging``, ``data``,
``simulate``, ``hemnma``, ``nn`` and ``space``) and the command line (``cli``, ``bench``) need only torch,
torchvision, numpy and scipy (and the file-format libraries); the Scipion side is ``protocols``, ``viewers``,
``convert`` and ``workflow``. The Scipion ``Plugin`` class is built on first access (Scipion's plugin discovery
asks for it), so importing the core never imports pwem/pyworkflow: the core runs on a bare GPU node, starts fast,
and the tests can set Scipion's environment before pyworkflow reads it.
"""
import os

__version__ = '0.1.0'


def _build_plugin_class():
    try:
        import pwem
    except ImportError as error:  # a bare compute node: no Scipion plugin there
        raise AttributeError(f'deephemnma.Plugin needs Scipion (pwem): {error}') from error
    from deephemnma.constants import TORCHRUN_VAR

    class Plugin(pwem.Plugin):
        """Scipion plugin entry: declares the plugin's variables (no binaries to install)."""

        _url = 'https://github.com/scipion-em'

        @classmethod
        def _defineVariables(cls) -> None:
            cls._defineVar(TORCHRUN_VAR, 'torchrun',
                           description='torchrun launcher used for multi-GPU and multi-node runs.')

        @classmethod
        def getTorchrun(cls) -> str:
            return cls._variable(TORCHRUN_VAR, 'torchrun')

        @classmethod
        def _variable(cls, name: str, default: str) -> str:
            """A plugin variable: as registered by Scipion's plugin discovery, else from the environment (a
            protocol run outside a registered session), else its default."""
            return cls.getVar(name) or os.environ.get(name, default)

        @classmethod
        def defineBinaries(cls, env) -> None:
            """Nothing to build: everything installs with pip."""

    Plugin.__module__ = __name__
    return Plugin


def __getattr__(name: str):
    if name == 'Plugin':
        plugin = _build_plugin_class()
        globals()['Plugin'] = plugin
        return plugin
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
