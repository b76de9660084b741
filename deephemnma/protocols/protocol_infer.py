"""Scipion protocol: predict amplitudes, orientations and shifts of particles with a trained network."""
from __future__ import annotations

import os

from pyworkflow.protocol import params

from deephemnma.convert.particles import copy_with_estimates, particles_from_set
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.nn.modelfile import read_model_info
from deephemnma.protocols.base import DeepHemnmaProtocol


class DeepHemnmaProtInfer(DeepHemnmaProtocol):
    """Predict the normal-mode amplitudes, orientation (Euler angles) and shifts of particle images with a
    network trained by "train network". The output particles carry the predicted pose as their transform and
    the amplitudes as _xmipp_nmaDisplacements, like HEMNMA's output, for the conformational space protocols."""

    _label = 'predict with network'
    _gpuDefault = True

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputTraining', params.PointerParam, pointerClass='DeepHemnmaProtTrain', important=True,
                      label='Trained network', help='A finished "train network" protocol.')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles', important=True,
                      label='Particles', help='Images of the same size and preprocessing as the training images.')
        form.addParam('rotations', params.IntParam, default=1, label='In-plane rotations per image',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='Test-time augmentation: predict each image this many times, rotated in-plane by '
                           '360/n degree steps, and average the predictions after undoing each rotation on the '
                           'angles and shifts. Steadier estimates on noisy images for n times the prediction '
                           'time; 1 switches it off.')
        self._defineImageParams(form, ctf=False)
        form.addParam('batchSize', params.IntParam, default=256, label='Batch size',
                      expertLevel=params.LEVEL_ADVANCED, help='Images per forward pass.')
        form.addParam('readers', params.IntParam, default=2, label='Reading threads',
                      expertLevel=params.LEVEL_ADVANCED, help='Threads reading images ahead of the network.')
        self._defineGpuParams(form, 'Predict on the GPUs listed below (several: torchrun, each predicts a share).')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.inferStep)
        self._insertFunctionStep(self.createOutputStep)

    def _input_path(self) -> str:
        return self._getExtraPath('particles.star')

    def predictions_path(self) -> str:
        return self._getExtraPath('predicted.star')

    def _model_path(self) -> str:
        return self.inputTraining.get().model_path()

    def convertInputStep(self) -> None:
        write_particles(self._input_path(), particles_from_set(self.inputParticles.get()).resolved())

    def inferStep(self) -> None:
        arguments = (f'-m {self._model_path()} -i {self._input_path()} -o {self.predictions_path()} '
                     f'{self._imageArguments(self.inputParticles.get())} '
                     f'--batch-size {self.batchSize.get()} --readers {self.readers.get()} '
                     f'--rotations {self.rotations.get()} --quiet')
        self.runCommand('infer', arguments)

    def createOutputStep(self) -> None:
        predicted = read_particles(self.predictions_path())
        output = copy_with_estimates(self._createSetOfParticles(), self.inputParticles.get(), predicted)
        self._defineOutputs(outputParticles=output)
        self._defineSourceRelation(self.inputParticles, output)
        self._defineSourceRelation(self.inputTraining, output)

    def _validate(self):
        errors = []
        training = self.inputTraining.get()
        particle_set = self.inputParticles.get()
        if particle_set is None or particle_set.getSize() == 0:
            errors.append('The set of particles is empty.')
        if training is None or not os.path.exists(training.model_path()):
            errors.append('The training protocol has no model yet: run it first.')
        elif particle_set is not None and particle_set.getSize():
            box = read_model_info(training.model_path())['box']
            size = particle_set.getXDim()
            if size != box:
                errors.append(f'The particles are {size} px but the network was trained on {box} px images: '
                              'resize them (same pixel size and preprocessing as for training).')
        if self.batchSize.get() < 1:
            errors.append('The batch size must be at least 1.')
        if self.rotations.get() < 1:
            errors.append('The number of in-plane rotations per image must be at least 1.')
        return errors + self._validateGpus()

    def _summary(self):
        if not hasattr(self, 'outputParticles'):
            return ['Prediction not finished yet.']
        averaged = (f', each averaged over {self.rotations.get()} in-plane rotations'
                    if self.rotations.get() > 1 else '')
        return [f'Predicted the parameters of {self.outputParticles.getSize()} particles{averaged}.']

    def _methods(self):
        averaged = (f' Each prediction is the average over {self.rotations.get()} in-plane rotations of the '
                    'image, with the rotations undone on the angles and shifts.' if self.rotations.get() > 1 else '')
        return ['Normal-mode amplitudes, orientations and shifts of the particles were predicted with a '
                'trained DeepHEMNMA network [Hamitouche2022, He2016].' + averaged]

    def _citations(self):
        return ['Hamitouche2022', 'He2016']
