"""Scipion viewer of the network protocols: loss curves, and predicted vs true parameters when known."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from pwem.viewers import EmProtocolViewer
from pyworkflow.protocol import params

from deephemnma.convert.particles import particles_from_set
from deephemnma.data.formats import read_particles
from deephemnma.imaging import rotations
from deephemnma.nn.history import CURVES_PNG, HISTORY_CSV, plot_history, read_history
from deephemnma.nn.targets import Labels, labels_from_particles, true_labels_from_particles
from deephemnma.protocols.protocol_infer import DeepHemnmaProtInfer
from deephemnma.protocols.protocol_train import DeepHemnmaProtTrain
from deephemnma.runtime.files import save_figure
from deephemnma.viewers._images import show_image


def save_scatter(path: str, estimated: Labels, truth: Labels, title: str) -> str:
    """Predicted vs true amplitudes (one panel per mode) and shifts, and the histogram of orientation errors."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = []
    if estimated.amplitudes is not None and truth.amplitudes is not None:
        panels += [(f'amplitude {k + 1}', truth.amplitudes[:, k], estimated.amplitudes[:, k])
                   for k in range(truth.amplitudes.shape[1])]
    if estimated.shifts is not None and truth.shifts is not None:
        panels += [(f'shift {axis} (px)', truth.shifts[:, k], estimated.shifts[:, k]) for k, axis in enumerate('xy')]
    has_angles = estimated.angles is not None and truth.angles is not None
    figure, axes = plt.subplots(1, len(panels) + has_angles, figsize=(3.4 * (len(panels) + has_angles), 3.4),
                                squeeze=False)
    for axis, (name, true_values, estimates) in zip(axes[0], panels):
        axis.scatter(true_values, estimates, s=4, alpha=0.5)
        low, high = float(min(true_values.min(), estimates.min())), float(max(true_values.max(), estimates.max()))
        axis.plot([low, high], [low, high], 'k--', lw=0.8)
        axis.set_xlabel(f'true {name}')
        axis.set_ylabel(f'predicted {name}')
    if has_angles:
        errors = rotations.geodesic_angle_deg(rotations.euler_to_matrix(estimated.angles),
                                              rotations.euler_to_matrix(truth.angles))
        axis = axes[0][-1]
        axis.hist(errors, bins=36, range=(0, 180))
        axis.set_xlabel('orientation error (deg)')
        axis.set_title(f'median {np.median(errors):.1f} deg')
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=90)
    return path


class DeepHemnmaNetworkViewer(EmProtocolViewer):
    """Loss curves of a training run; predicted vs true parameters (the held-out test set of a training run
    against its labels, or a prediction against the simulation ground truth when the particles carry it)."""

    _label = 'DeepHEMNMA network viewer'
    _targets = [DeepHemnmaProtTrain, DeepHemnmaProtInfer]

    def _defineParams(self, form) -> None:
        form.addSection(label='Visualization')
        form.addParam('displayLoss', params.LabelParam, label='Display the loss curves',
                      help='Training and validation L1 loss per epoch (total and per parameter type).')
        form.addParam('displayScatter', params.LabelParam, label='Display predicted vs true',
                      help='Scatter plots of predicted against true amplitudes and shifts, and the histogram '
                           'of orientation errors.')

    def _getVisualizeDict(self):
        return {'displayLoss': self._show_loss, 'displayScatter': self._show_scatter}

    def _training(self) -> DeepHemnmaProtTrain:
        protocol = self.protocol
        return protocol if isinstance(protocol, DeepHemnmaProtTrain) else protocol.inputTraining.get()

    def save_loss(self, path: str) -> str:
        """Redraw the loss curves of the training run into ``path``."""
        history = os.path.join(self._training().training_dir(), HISTORY_CSV)
        if not os.path.exists(history):
            raise FileNotFoundError(f'{history}: no loss history yet (has the training started?)')
        plot_history(Path(path), read_history(history))
        return path

    def scatter_data(self) -> Optional[Tuple[Labels, Labels, str]]:
        """``(estimated, truth, title)`` or None when no truth is known."""
        protocol = self.protocol
        if isinstance(protocol, DeepHemnmaProtTrain):
            folder = protocol.training_dir()
            estimated = os.path.join(folder, 'test_predictions.star')
            if not os.path.exists(estimated):
                return None
            predicted = labels_from_particles(read_particles(estimated))
            labels = labels_from_particles(read_particles(os.path.join(folder, 'particles_test.star')))
            return (predicted, labels,
                    'held-out test set vs its labels')
        truth = particles_from_set(protocol.inputParticles.get())
        if 'true_amplitudes' not in truth.extra:
            return None
        true_labels = true_labels_from_particles(truth)
        predicted = labels_from_particles(read_particles(protocol.predictions_path()))
        return predicted, true_labels, 'prediction vs ground truth'

    def save_scatter(self, path: str) -> Optional[str]:
        data = self.scatter_data()
        return None if data is None else save_scatter(path, *data)

    def _show_loss(self, _param=None):
        return show_image(self.save_loss(self.protocol._getExtraPath('viewer_' + CURVES_PNG)))

    def _show_scatter(self, _param=None):
        path = self.save_scatter(self.protocol._getExtraPath('viewer_predicted_vs_true.png'))
        if path is None:
            return [self.errorMessage('No true parameters are known for these particles.', title='Nothing to show')]
        return show_image(path)
