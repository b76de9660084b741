"""Scipion protocol: train the DeepHEMNMA network on particles with amplitudes, angles and shifts."""
from __future__ import annotations

import json
import os
from typing import Optional

from pwem.objects import EMFile
from pyworkflow.protocol import params

from deephemnma.constants import AMPLITUDES_ATTR, TRUE_PREFIX
from deephemnma.convert.particles import labelled_particles
from deephemnma.data.formats import write_particles
from deephemnma.nn.config import PRESETS, preset_config
from deephemnma.nn.model import ARCHITECTURES, LAYOUTS, MIN_NETWORK_BOX
from deephemnma.nn.modelfile import MODEL_FILE, read_model_info
from deephemnma.nn.targets import TYPES, hypothesis_count
from deephemnma.protocols.base import DeepHemnmaProtocol, quoted

LABEL_SOURCES = ('alignment and amplitudes', 'simulation ground truth')
#: The form's parameter-type switches, one per type of :data:`deephemnma.nn.targets.TYPES`.
TYPE_PARAMS = tuple(zip(('learnAmplitudes', 'learnOrientation', 'learnShifts'), TYPES))


def _hypotheses(config: dict) -> str:
    """The methods' words for the orientation hypotheses of a training configuration."""
    count = config.get('hypotheses', 0)
    return (f', with {count} orientation hypotheses beside the orientation (relaxed winner-takes-all loss '
            '[Rupprecht2017])' if count else '')


def _stopping(config: dict) -> str:
    """Early stopping of a training configuration, in words (empty when off)."""
    patience = config.get('patience', 0)
    return f', early stopping after {patience} epochs without a lower validation loss' if patience else ''


class DeepHemnmaProtTrain(DeepHemnmaProtocol):
    """Train the DeepHEMNMA network (ResNet feature extractor and MLP predictor) to predict the normal-mode
    amplitudes, orientation and shifts of particle images from labelled particles: this plugin's HEMNMA
    alignment, ContinuousFlex's (attribute _xmipp_nmaDisplacements and the particle transform), or the
    simulator's ground truth. Outliers in amplitude space are removed, the rest split by particle into
    training, validation and test sets; the best model (by validation loss) is the output."""

    _label = 'train network'
    _gpuDefault = True

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles', important=True,
                      label='Labelled particles',
                      help='Particles with a 3D alignment (angles, shifts) and normal-mode amplitudes '
                           f'({AMPLITUDES_ATTR}), e.g. the output of HEMNMA; or simulated particles.')
        form.addParam('labelSource', params.EnumParam, choices=list(LABEL_SOURCES), default=0,
                      label='Labels', help='alignment and amplitudes: the particles\' transform and amplitudes '
                                           '(HEMNMA estimates); simulation ground truth: the true parameters '
                                           'stored by the simulation protocol.')
        form.addParam('learnAmplitudes', params.BooleanParam, default=True, label='Learn amplitudes')
        form.addParam('learnOrientation', params.BooleanParam, default=True, label='Learn orientation')
        form.addParam('learnShifts', params.BooleanParam, default=True, label='Learn shifts')
        form.addParam('layout', params.EnumParam, choices=list(LAYOUTS), default=0, label='Networks',
                      help='combined: one ResNet shared by all parameter types with one MLP head each; '
                           'separate: one network per parameter type, as in the paper.')
        form.addParam('initialTraining', params.PointerParam, pointerClass='DeepHemnmaProtTrain', allowsNull=True,
                      label='Start from the network of',
                      help='Optional: a training run whose network (same settings) this one starts from and '
                           'fine-tunes on these labels, e.g. one trained on particles simulated from the same '
                           'reference, modes, CTF, noise and pixel size with their ground truth (pretraining).')
        form.addSection(label='Training')
        form.addParam('preset', params.EnumParam, choices=list(PRESETS), default=0, label='Preset',
                      help='fast: batch 128, one-cycle learning rate, mixed precision, early stopping. paper: '
                           'batch 2, learning rate 1e-5 divided by 10 every 80 epochs, 400 epochs. finetune: '
                           'fast, but learning rate 1e-4 decaying from the start (cosine), 60 epochs: for a network '
                           'that starts from another (Start from the network of).')
        form.addParam('epochs', params.IntParam, default=0, label='Epochs', help='0: the preset\'s.')
        form.addParam('batchSize', params.IntParam, default=0, label='Batch size', help='0: the preset\'s.')
        form.addParam('patience', params.IntParam, default=-1, label='Early stopping patience (epochs)',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='Stop after this many epochs without a lower validation loss; 0: never (the learning '
                           'rate schedule runs to its end, which a small validation set may otherwise cut '
                           'short); -1: the preset\'s (fast and finetune 10, paper never).')
        form.addParam('learningRate', params.FloatParam, default=0.0, label='Learning rate',
                      help='(Maximum) learning rate; 0: the preset\'s.')
        form.addParam('arch', params.EnumParam, choices=list(ARCHITECTURES), default=0, label='Feature extractor',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='ResNet-34 as in the paper; ResNet-50/101 gave little gain for much more time.')
        form.addParam('weightDecay', params.FloatParam, default=1e-5, label='Weight decay (L2)',
                      expertLevel=params.LEVEL_ADVANCED)
        form.addParam('dropout', params.FloatParam, default=0.5, label='Dropout', expertLevel=params.LEVEL_ADVANCED)
        form.addParam('maxRotation', params.FloatParam, default=-1.0, label='Rotation augmentation (deg)',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='Random in-plane rotations of the images up to this angle, with psi and the shifts '
                           'transformed consistently; -1: the preset\'s (fast and finetune 180, paper 0).')
        form.addParam('hypotheses', params.IntParam, default=-1, label='Orientation hypotheses',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='Orientations learnt beside the predicted one, each image training only the one '
                           'nearest its label (winner-takes-all), so that views that look alike get several '
                           'answers: the starting points of the refinement in the prediction protocol. '
                           '-1: the preset\'s (fast and finetune 8, paper 0).')
        form.addParam('networkBox', params.IntParam, default=0, label='Network input size (px)',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='The images are Fourier-cropped to this size before entering the network (about 4 '
                           'times faster at half the size); the shifts stay in the original pixels. 0: the '
                           'images\' size (the paper: 128 px images).')
        form.addParam('outlierThreshold', params.FloatParam, default=3.2, label='Outlier threshold',
                      help='Images whose amplitudes lie farther than this Mahalanobis distance from their mean '
                           'are removed before training (paper: 3.2; 0 keeps all).')
        form.addParam('validationSize', params.FloatParam, default=0.1, label='Validation set',
                      help='Fraction (< 1) or number of particles for validation (model selection).')
        form.addParam('testSize', params.FloatParam, default=0.1, label='Test set',
                      help='Fraction (< 1) or number of particles held out to report the errors.')
        form.addParam('seed', params.IntParam, default=0, label='Random seed', expertLevel=params.LEVEL_ADVANCED)
        self._defineImageParams(form, ctf=False)
        self._defineGpuParams(form, 'Train on the GPUs listed below (several: torchrun with '
                                    'DistributedDataParallel).')

    # ------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.trainStep)
        self._insertFunctionStep(self.createOutputStep)

    def _types(self):
        return [name for param, name in TYPE_PARAMS if getattr(self, param).get()]

    def particles_path(self) -> str:
        return self._getExtraPath('particles.star')

    def training_dir(self) -> str:
        return self._getExtraPath('training')

    def model_path(self) -> str:
        return os.path.join(self.training_dir(), MODEL_FILE)

    def convertInputStep(self) -> None:
        write_particles(self.particles_path(), labelled_particles(self.inputParticles.get(),
                                                                 self.labelSource.get() == 1))

    def _arguments(self) -> str:
        arguments = [f'-i {self.particles_path()}', f'-o {self.training_dir()}',
                     f'--preset {list(PRESETS)[self.preset.get()]}',
                     f'--types {" ".join(self._types())}', f'--layout {LAYOUTS[self.layout.get()]}',
                     f'--arch {list(ARCHITECTURES)[self.arch.get()]}', f'--weight-decay {self.weightDecay.get()}',
                     f'--dropout {self.dropout.get()}', f'--outlier-threshold {self.outlierThreshold.get()}',
                     f'--validation {self.validationSize.get()}', f'--test {self.testSize.get()}',
                     f'--network-box {self.networkBox.get()}', f'--seed {self.seed.get()}', '--quiet',
                     self._imageArguments(self.inputParticles.get())]
        for flag, value in (('--epochs', self.epochs.get()), ('--batch-size', self.batchSize.get()),
                            ('--lr', self.learningRate.get())):
            if value:
                arguments.append(f'{flag} {value}')
        if self.maxRotation.get() >= 0:
            arguments.append(f'--max-rotation {self.maxRotation.get()}')
        if self.patience.get() >= 0:
            arguments.append(f'--patience {self.patience.get()}')
        if self.hypotheses.get() >= 0:
            arguments.append(f'--hypotheses {self.hypotheses.get()}')
        if self.initialTraining.get() is not None:
            arguments.append(f'--init-weights {quoted(self.initialTraining.get().model_path())}')
        return ' '.join(arguments)

    def learnt_hypotheses(self, info: Optional[dict] = None) -> int:
        """Orientation hypotheses the network learns: the model file's once written (``info``: what
        :func:`read_model_info` read of it, when already read), else the form's."""
        if info is None and os.path.exists(self.model_path()):
            info = read_model_info(self.model_path())
        if info is not None:
            return hypothesis_count(info['network']['outputs'])
        chosen = self.hypotheses.get()
        return chosen if chosen >= 0 else preset_config(list(PRESETS)[self.preset.get()]).hypotheses

    def trainStep(self) -> None:
        self.runCommand('train', self._arguments())

    def createOutputStep(self) -> None:
        model = EMFile(filename=self.model_path())
        self._defineOutputs(outputModel=model)
        self._defineSourceRelation(self.inputParticles, model)

    # ------------------------------------------------------------------ information
    def _read_json(self, name: str) -> dict:
        path = os.path.join(self.training_dir(), name)
        if not os.path.exists(path):
            return {}
        with open(path) as handle:
            return json.load(handle)

    def training_summary(self) -> dict:
        return self._read_json('training_summary.json')

    def test_metrics(self) -> dict:
        return self._read_json('test_metrics.json')

    def _validate(self):
        errors = []
        particle_set = self.inputParticles.get()
        if particle_set is None or particle_set.getSize() == 0:
            return ['The set of particles is empty.']
        if not self._types():
            errors.append('Choose at least one parameter type to learn.')
        first = particle_set.getFirstItem()
        if self.labelSource.get() == 0:
            if not particle_set.hasAlignmentProj() and (self.learnOrientation.get() or self.learnShifts.get()):
                errors.append('The particles have no 3D projection alignment (angles and shifts) to learn: use '
                              'the output of an alignment (HEMNMA) or choose the simulation ground truth.')
            if self.learnAmplitudes.get() and getattr(first, AMPLITUDES_ATTR, None) is None:
                errors.append(f'The particles have no normal-mode amplitudes ({AMPLITUDES_ATTR}) to learn.')
        elif getattr(first, TRUE_PREFIX + 'amplitudes', None) is None:
            errors.append('The particles carry no simulation ground truth: choose "alignment and amplitudes".')
        count = particle_set.getSize()
        held_out = sum(size * count if 0 < size < 1 else size
                       for size in (self.validationSize.get(), self.testSize.get()))
        if count - round(held_out) < 2 or self.validationSize.get() <= 0:
            errors.append(f'Too few images for the split: {count} particles, {round(held_out)} of them for '
                          'validation and test, leaving fewer than 2 for training (and validation needs at '
                          'least one particle).')
        box, network_box = (particle_set.getDim() or (None,))[0], self.networkBox.get()
        if network_box and (network_box < MIN_NETWORK_BOX or (box and network_box > box)):
            errors.append(f'The network input size must lie between {MIN_NETWORK_BOX} px and the image size '
                          f'({box} px), or be 0.')
        elif not network_box and box and box < MIN_NETWORK_BOX:
            errors.append(f'The images are {box} px wide: the network needs at least {MIN_NETWORK_BOX} px.')
        return errors + self._validateGpus()

    def _summary(self):
        summary = self.training_summary()
        if not summary:
            return ['Training not finished yet.']
        lines = [f'Trained {summary["epochs_run"]} epochs; best epoch(s): {summary.get("best_epoch")}.',
                 f'Outliers removed (Mahalanobis > {summary["outlier_threshold"]}): {summary["outliers_removed"]}.',
                 'Split: ' + ', '.join(f'{k} {v}' for k, v in summary['split_sizes'].items()) + '.']
        metrics = self.test_metrics()
        if metrics:
            parts = [f'{k} {metrics[k]:.3g}' for k in ('amp_mae', 'shift_mae_px', 'angle_mean_axis_deg',
                                                       'angle_median_deg') if k in metrics]
            lines.append('Test set errors: ' + ', '.join(parts) + '.')
        return lines

    def _methods(self):
        summary = self.training_summary()
        config = summary.get('config', {})
        sizes = summary.get('split_sizes', {})
        details = ''
        if config:
            crop = f', Fourier-cropped to {config["network_box"]} px' if config.get('network_box') else ''
            details = (f' {config["arch"]} ({config["layout"]} layout) took the images{crop}; '
                       f'{summary["epochs_run"]} epochs, batch {config["batch_size"]}, learning rate '
                       f'{config["lr"]:g} ({config["schedule"]} schedule), weight decay {config["weight_decay"]:g}, '
                       f'in-plane rotation augmentation up to {config["max_rotation_deg"]:g} deg{_stopping(config)}'
                       f'{_hypotheses(config)}; {sizes.get("train", 0)} training, {sizes.get("validation", 0)} '
                       f'validation and {sizes.get("test", 0)} test images.')
        return [f'A ResNet-based network [He2016] was trained as in DeepHEMNMA [Hamitouche2022] to predict '
                f'{", ".join(self._types())} of particle images from labelled particles (HEMNMA [Jin2014, '
                f'Harastani2020] or ground truth), with an L1 loss and the Adam optimiser.' + details]

    def _citations(self):
        return ['Hamitouche2022', 'He2016', 'Jin2014', 'Harastani2020', 'Rupprecht2017']
