"""Scipion protocol: split particles at random, reproducibly, into the training set and the particles to predict."""
from __future__ import annotations

from typing import List

import numpy as np
from pyworkflow.protocol import params

from deephemnma.nn.data import split_by_particle
from deephemnma.protocols.base import DeepHemnmaProtocol


def training_ids(ids: np.ndarray, training: int, seed: int) -> np.ndarray:
    """The ``training`` ids of ``ids`` drawn at random with ``seed`` (sorted; the same seed, the same ids):
    the training draw of :func:`~deephemnma.nn.data.split_by_particle`, the others being the particles to predict."""
    ids = np.asarray(ids)
    rows = split_by_particle(ids.astype(str), validation=len(ids) - training, test=0, seed=seed)['train']
    return np.sort(ids[rows])


class DeepHemnmaProtSplit(DeepHemnmaProtocol):
    """Split particles into the images that HEMNMA aligns and the network learns from (drawn at random, the same
    ones for the same seed, so a rerun or a colleague's run of the workflow trains on the same particles) and
    the other particles, which the network predicts (disabled particles go to neither). Scipion's own subset and
    split protocols draw without a seed."""

    _label = 'split for training and prediction'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles', important=True,
                      label='Particles')
        form.addParam('training', params.IntParam, default=20000, label='Images for HEMNMA and training',
                      help='Drawn at random; the others are predicted. The paper trains on about 18,000 '
                           'HEMNMA-aligned images (at least 30,000 recommended for experimental data).')
        form.addParam('seed', params.IntParam, default=0, label='Random seed',
                      help='The same seed draws the same particles from the same set.')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.splitStep)

    def splitStep(self) -> None:
        particles = self.inputParticles.get()
        chosen = set(training_ids(np.array(sorted(particles.getIdSet())), self.training.get(),
                                  self.seed.get()).tolist())
        outputs = {}
        for name, suffix, wanted in (('outputTraining', 'training', True), ('outputPrediction', 'prediction', False)):
            output = self._createSetOfParticles(suffix)
            output.copyInfo(particles)
            output.copyItems(particles, itemSelectedCallback=lambda item, wanted=wanted:
                             item.isEnabled() and (item.getObjId() in chosen) == wanted)
            outputs[name] = output
        self._defineOutputs(**outputs)
        for output in outputs.values():
            self._defineSourceRelation(self.inputParticles, output)

    def _validate(self) -> List[str]:
        particles = self.inputParticles.get()
        if particles is None:
            return ['Choose the particles to split.']
        count, training = particles.getSize(), self.training.get() or 0
        if not 0 < training < count:
            return [f'Images for HEMNMA and training: {training}, but the set has {count} particles: '
                    f'choose from 1 to {count - 1}, leaving some to predict.']
        return []

    def _summary(self) -> List[str]:
        if not hasattr(self, 'outputTraining'):
            return ['Particles not split yet.']
        return [f'{self.outputTraining.getSize()} particles for HEMNMA and training (seed {self.seed.get()}), '
                f'{self.outputPrediction.getSize()} to predict.']

    def _methods(self) -> List[str]:
        return [f'{self.training.get()} particles were drawn at random (seed {self.seed.get()}) for HEMNMA and '
                f'training [Hamitouche2022].']

    def _citations(self) -> List[str]:
        return ['Hamitouche2022']
