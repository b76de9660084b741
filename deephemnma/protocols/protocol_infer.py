"""Scipion protocol: predict amplitudes, orientations and shifts of particles with a trained network, and refine
the predictions with the HEMNMA engine (predict then refine)."""
from __future__ import annotations

import os
from typing import Optional

from pyworkflow.object import Integer
from pyworkflow.protocol import params

from deephemnma.convert.particles import copy_with_estimates, particles_from_set
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.hemnma.stack import RefineSettings
from deephemnma.nn.infer import REFINE_ROTATIONS
from deephemnma.nn.modelfile import read_model_info
from deephemnma.protocols.base import DeepHemnmaProtocol

#: The refinement's columns kept on the output particles (attributes ``_deephemnma_NAME``).
REFINE_COLUMNS = ('predicted_angles', 'predicted_shifts', 'predicted_amplitudes', 'refine_change_deg',
                  'refine_moved_far', 'refine_fallback', 'reference')
_DEFAULTS = RefineSettings()


class DeepHemnmaProtInfer(DeepHemnmaProtocol):
    """Predict the normal-mode amplitudes, orientation (Euler angles) and shifts of particle images with a
    network trained by "train network", and optionally refine every prediction with the HEMNMA engine (a search
    around the network's hypotheses and a joint refinement: HEMNMA's accuracy at a fraction of its cost). The output
    particles carry the pose as their transform and the amplitudes as _xmipp_nmaDisplacements, like HEMNMA's
    output, for the conformational space protocols; refined particles also carry the score, the network's own
    values and a flag where the refinement moved far from them."""

    _label = 'predict with network'
    _gpuDefault = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.movedFar = Integer()  # refined particles flagged as moved far (for the summary)
        self.fellBack = Integer()  # refined particles aligned again by the global search (for the summary)

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
                           'time; 1 switches it off. With the refinement each rotated copy also gives a '
                           f'hypothesis beside the network\'s own ({REFINE_ROTATIONS} is a good choice; a network '
                           'trained without hypotheses of its own needs at least 2).')
        form.addSection(label='Refinement')
        form.addParam('refine', params.BooleanParam, default=False, label='Refine the predictions',
                      help="Refine every prediction with the HEMNMA engine: it searches the orientations within "
                           "the search radius of the network's hypotheses (the prediction, the network's own "
                           'hypotheses and those of any rotated copies) and refines amplitudes, angles and shifts '
                           'jointly. Needs the modes the network was trained on.')
        self._defineModesParams(form, condition='refine')
        self._defineReferenceModelParam(form, condition='refine')
        self._defineOtherModesParam(form, 'refine', 'Trained on the labels of an alignment against two references, '
                                    'the refinement refines')
        self._defineDeformationParam(form, condition='refine')
        form.addParam('searchRadius', params.FloatParam, default=_DEFAULTS.radius, condition='refine',
                      label='Search radius (deg)', expertLevel=params.LEVEL_ADVANCED,
                      help='Orientations searched around each hypothesis: larger finds more of the poses the '
                           'network missed, at a higher cost.')
        form.addParam('nearestStart', params.BooleanParam, default=_DEFAULTS.nearest_start, condition='refine',
                      label="Search the predicted conformation's templates only", expertLevel=params.LEVEL_ADVANCED,
                      help="Score only the search library's start conformation nearest to the predicted amplitudes "
                           '(an eighth of the library to score): for a network whose amplitudes are good '
                           '(pretrained on simulated images, then fine-tuned); a network that predicts them poorly '
                           'misses poses.')
        form.addParam('farAngle', params.FloatParam, default=_DEFAULTS.far_angle, condition='refine',
                      label='Flag moves beyond (deg)', expertLevel=params.LEVEL_ADVANCED,
                      help='Particles whose refined orientation is further than this from the prediction are '
                           'flagged (_deephemnma_refine_moved_far = 1).')
        form.addParam('fallbackSigma', params.FloatParam, default=_DEFAULTS.fallback_sigma, condition='refine',
                      label='Global search below (robust sigmas)', expertLevel=params.LEVEL_ADVANCED,
                      help='The global search aligns a calibration sample of particles to learn what a found pose '
                           'scores; particles whose refined score lies more than this many robust standard '
                           "deviations below their median (none of the network's hypotheses led to the pose), or "
                           'no higher than the refined score of a calibration particle whose pose the refinement '
                           'missed, are aligned again by it (_deephemnma_refine_fallback = 1 on both); 0: no '
                           'global search.')
        form.addParam('calibration', params.IntParam, default=_DEFAULTS.calibration,
                      condition='refine and fallbackSigma > 0', label='Calibration sample (particles)',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='Particles (evenly spread over the set) aligned by the global search to learn what a '
                           'found pose scores on these images: more gives a steadier threshold at the cost of one '
                           'global search each.')
        self._defineGlobalSearchParams(form, 'refine', 'refine and fallbackSigma > 0')
        self._defineImageParams(form)
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
        if self.refine.get():
            self._writeModes()
            self._writeOtherModes()

    def inferStep(self) -> None:
        arguments = (f'-m {self._model_path()} -i {self._input_path()} -o {self.predictions_path()} '
                     f'{self._imageArguments(self.inputParticles.get())} '
                     f'--batch-size {self.batchSize.get()} --readers {self.readers.get()} '
                     f'--rotations {self.rotations.get()} --quiet')
        if self.refine.get():
            arguments += (f' --refine {self._modesArguments()} --reference-model {self._referenceModel()} '
                          f'{self._deformationArgument()} --search-radius {self.searchRadius.get()} '
                          f'--far-angle {self.farAngle.get()} --fallback-sigma {self.fallbackSigma.get()} '
                          f'--calibration {self.calibration.get()} {self._globalSearchArguments()}'
                          f'{self._otherModesArguments()}{" --nearest-start" if self.nearestStart.get() else ""}')
        self.runCommand('infer', arguments)

    def createOutputStep(self) -> None:
        predicted = read_particles(self.predictions_path())
        output = copy_with_estimates(self._createSetOfParticles(), self.inputParticles.get(), predicted,
                                     REFINE_COLUMNS)
        if 'refine_moved_far' in predicted.extra:
            self.movedFar.set(int(predicted.extra['refine_moved_far'].sum()))
            self.fellBack.set(int(predicted.extra['refine_fallback'].sum()))
            self._store(self.movedFar, self.fellBack)
        self._defineOutputs(outputParticles=output)
        self._defineSourceRelation(self.inputParticles, output)
        self._defineSourceRelation(self.inputTraining, output)

    def _validate(self):
        errors = []
        training = self.inputTraining.get()
        particle_set = self.inputParticles.get()
        if particle_set is None or particle_set.getSize() == 0:
            errors.append('The set of particles is empty.')
        info = None  # the model file's description, read once
        if training is None or not os.path.exists(training.model_path()):
            errors.append('The training protocol has no model yet: run it first.')
        else:
            info = read_model_info(training.model_path())
        if info is not None and particle_set is not None and particle_set.getSize():
            box = info['box']
            size = particle_set.getXDim()
            if size != box:
                errors.append(f'The particles are {size} px but the network was trained on {box} px images: '
                              'resize them (same pixel size and preprocessing as for training).')
        if self.batchSize.get() < 1:
            errors.append('The batch size must be at least 1.')
        if self.rotations.get() < 1:
            errors.append('The number of in-plane rotations per image must be at least 1.')
        if self.refine.get():
            errors += self._validateRefinement(training, particle_set, info)
        return errors + self._validateGpus()

    def _validateRefinement(self, training, particle_set, info: Optional[dict]) -> list:
        """Form errors of the refinement: modes as many as the network's amplitudes (``info``: the model file's
        description, None before training), a search radius, hypotheses to start from."""
        if self.inputModes.get() is None:
            return ['The refinement needs the normal modes the network was trained on.']
        errors = self._validateModes(particle_set) + self._validateOtherModes()
        if not errors and info is not None:
            amplitudes = info['network']['outputs'].get('amplitudes')
            if amplitudes is not None and amplitudes != len(self._selectedModes()):
                errors.append(f'The network predicts {amplitudes} amplitudes but {len(self._selectedModes())} '
                              'modes are selected for the refinement.')
        if self.searchRadius.get() <= 0 or self.farAngle.get() <= 0:
            errors.append('The search radius and the flag angle must be positive.')
        if self.fallbackSigma.get() < 0 or self.calibration.get() < 0:
            errors.append('The global-search threshold (robust sigmas) and the calibration sample must be 0 (no '
                          'global search) or positive.')
        if self.rotations.get() < 2 and training is not None and not training.learnt_hypotheses(info):
            errors.append('The network learnt no orientation hypotheses of its own (trained with 0): the '
                          'refinement takes its hypotheses from rotated copies, use at least 2 in-plane rotations '
                          f'per image ({REFINE_ROTATIONS} is a good choice).')
        return errors

    def _summary(self):
        if not hasattr(self, 'outputParticles'):
            return ['Prediction not finished yet.']
        averaged = (f', each averaged over {self.rotations.get()} in-plane rotations'
                    if self.rotations.get() > 1 else '')
        lines = [f'Predicted the parameters of {self.outputParticles.getSize()} particles{averaged}.']
        if self.refine.get():
            lines.append(f'Refined with the HEMNMA engine (modes {self._selectedModes()}); {self.movedFar.get()} '
                         f'moved further than {self.farAngle.get():g} deg from the prediction; '
                         f'{self.fellBack.get()} were aligned again by the global search (outlier scores).')
            if self.otherModes.get() is not None:
                lines.append('Each particle kept the better of two references (the modes above and those of '
                             "another conformation); amplitudes in the first reference's modes.")
        return lines

    def _methods(self):
        averaged = (f' Each prediction is the average over {self.rotations.get()} in-plane rotations of the '
                    'image, with the rotations undone on the angles and shifts.' if self.rotations.get() > 1 else '')
        refined = (' Each prediction was then refined by elastic and rigid-body 3D-to-2D alignment (HEMNMA) '
                   "restricted to orientations near the network's hypotheses [Jin2014]." if self.refine.get() else '')
        return ['Normal-mode amplitudes, orientations and shifts of the particles were predicted with a '
                'trained DeepHEMNMA network [Hamitouche2022, He2016].' + averaged + refined]

    def _citations(self):
        return ['Hamitouche2022', 'He2016'] + (['Jin2014'] if self.refine.get() else [])
