"""Scipion viewer of the normal-mode protocol: eigenvalues and collectivity plots, mode animations."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pwem.viewers import EmProtocolViewer
from pyworkflow.protocol import params

from deephemnma.nma.deform import mode_sweep, write_animation
from deephemnma.nma.modes import NormalModes
from deephemnma.protocols.protocol_nma import DeepHemnmaProtNMA
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import save_figure


def plot_modes(path: str, modes: NormalModes, threshold: Optional[float] = None) -> str:
    """Eigenvalues and collectivity per mode number as a PNG (threshold drawn as a dashed line)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.bar(modes.numbers, modes.eigenvalues, color='tab:blue')
    left.set_xlabel('mode')
    left.set_ylabel('eigenvalue')
    left.set_title(f'{modes.method}, cutoff {modes.cutoff:.1f} A')
    right.bar(modes.numbers, modes.collectivity, color='tab:green')
    if threshold is not None:
        right.axhline(threshold, color='k', ls='--', lw=0.8)
    right.set_ylim(0, 1)
    right.set_xlabel('mode')
    right.set_ylabel('collectivity')
    figure.tight_layout()
    save_figure(figure, path, dpi=90)
    return path


class DeepHemnmaNMAViewer(EmProtocolViewer):
    """Eigenvalues and collectivity of the computed modes; animation of one mode as a multi-model PDB."""

    _label = 'DeepHEMNMA normal modes viewer'
    _targets = [DeepHemnmaProtNMA]

    def _defineParams(self, form) -> None:
        form.addSection(label='Visualization')
        form.addParam('displayModes', params.LabelParam, label='Display eigenvalues and collectivity')
        form.addParam('modeNumber', params.IntParam, default=7, label='Mode to animate',
                      help='Mode number (7 = first non-rigid mode).')
        form.addParam('amplitude', params.FloatParam, default=100.0, label='Amplitude',
                      help='The animation sweeps the mode from -amplitude to +amplitude.')
        form.addParam('frames', params.IntParam, default=11, label='Frames')
        form.addParam('displayAnimation', params.LabelParam, label='Write the animation')

    def _getVisualizeDict(self):
        return {'displayModes': self._show_modes, 'displayAnimation': self._show_animation}

    def save_plot(self, path: str) -> str:
        return plot_modes(path, self.protocol.loadModes(), self.protocol.collectivityThreshold.get())

    def save_animation(self, number: int, path: str, amplitude: float, frames: int) -> str:
        """Write mode ``number`` swept from -amplitude to +amplitude as a ``frames``-model PDB."""
        modes = self.protocol.loadModes()
        write_animation(Path(path), modes, mode_sweep(modes, number, amplitude, frames))
        return path

    def _show_modes(self, _param=None):
        import matplotlib.pyplot as plt
        path = self.save_plot(self.protocol._getExtraPath('viewer_modes.png'))
        figure = plt.figure()
        figure.figimage(plt.imread(path))
        plt.show(block=False)
        return []

    def _show_animation(self, _param=None):
        number = self.modeNumber.get()
        try:
            path = self.save_animation(number, self.protocol._getExtraPath(f'viewer_mode_{number:03d}.pdb'),
                                       self.amplitude.get(), self.frames.get())
        except InputError as error:
            return [self.errorMessage(str(error), title='No such mode')]
        return [self.infoMessage(f'Animation written to {path} (open it in ChimeraX or VMD).', title='Animation')]
