"""DeepHEMNMA: continuous conformational heterogeneity in cryo-EM images with normal modes and deep learning.

The computational core (``deephemnma.core``, ``deephemnma.nn``, ``deephemnma.cli``) needs only torch,
torchvision, numpy and scipy. The Scipion ``Plugin`` below is defined only where pwem is installed, so that
the core runs on a bare GPU node as well as inside Scipion.
"""
__version__ = '0.1.0'

try:
    import pwem as _pwem
except ImportError:  # a bare compute node: the core works without Scipion
    _pwem = None

if _pwem is not None:
    from .constants import DEVICE_VAR, TORCHRUN_VAR, DEFAULT_DEVICE

    class Plugin(_pwem.Plugin):
        """Scipion plugin entry: declares the plugin's variables (no binaries to install)."""

        _url = 'https://github.com/scipion-em'

        @classmethod
        def _defineVariables(cls) -> None:
            cls._defineVar(DEVICE_VAR, DEFAULT_DEVICE,
                           description='Default torch device for DeepHEMNMA: auto, cpu or cuda.')
            cls._defineVar(TORCHRUN_VAR, 'torchrun',
                           description='torchrun launcher used for multi-GPU and multi-node runs.')

        @classmethod
        def getDefaultDevice(cls) -> str:
            return cls.getVar(DEVICE_VAR)

        @classmethod
        def getTorchrun(cls) -> str:
            return cls.getVar(TORCHRUN_VAR)

        @classmethod
        def defineBinaries(cls, env) -> None:
            """Nothing to build: everything installs with pip."""
