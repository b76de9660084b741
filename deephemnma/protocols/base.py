"""The base of the plugin's protocols: GPU fields and the one way to run heavy work.

Every protocol computes through the ``deephemnma`` command line, started with Scipion's ``runJob``: Scipion's
queue settings (hosts.conf), its logs and its stop button apply, and the same command runs on a laptop, a GPU
node or (for ``align``, ``train``, ``infer`` and ``reconstruct``) under ``torchrun`` over several GPUs. A
protocol's own Python code only converts Scipion sets to files, builds the command's arguments, validates its
form and registers the outputs (see :mod:`deephemnma.convert`).
"""
from __future__ import annotations

import os
import shlex
from typing import List, Tuple

from pwem.protocols import EMProtocol
from pyworkflow.protocol import params
from pyworkflow.utils import Environ

from deephemnma.convert.modes import modes_mismatch, write_modes_xmd_from_set
from deephemnma.convert.particles import ctf_state_of
from deephemnma.hemnma.aligner import AlignSettings
from deephemnma.hemnma.reference import COARSE_MODELS
from deephemnma.imaging.ctf import CTF_STATES
from deephemnma.molecule.structure import COARSE_LEVELS
from deephemnma.nma.deform import DEFORMATIONS
from deephemnma.nma.modes import RIGID_MODES, parse_mode_numbers
from deephemnma.runtime.errors import InputError

#: The forms' choices of what the images carry of the CTF: the set's own state first, then the states themselves.
CTF_CHOICES = ('as the particle set says', *CTF_STATES)
#: The forms' choices of the images' contrast (``--invert-data``).
CONTRAST_CHOICES = ('detect from the data', 'inverted (RELION/cryoSPARC export)', 'as this project expects')
_INVERT_DATA = ('auto', 'yes', 'no')

#: Commands that split their work over torchrun processes.
DISTRIBUTED_COMMANDS = ('align', 'train', 'infer', 'reconstruct')
#: The atoms a model is reduced to, as the forms offer them: (label, level of ``coarse_grain`` or None).
COARSE_CHOICES = (('all heavy atoms', None), ('C-alpha', 'CA'), ('C-alpha and P', 'CA+P'))
assert {level for _, level in COARSE_CHOICES if level} == set(COARSE_LEVELS)
#: The engine's reference models as the forms offer them (the default, two beads per residue, first).
REFERENCE_MODEL_CHOICES = ('residues2', 'residues', 'atoms')
assert set(REFERENCE_MODEL_CHOICES) == set(COARSE_MODELS)


def check_gpus_available(gpus: List[str]) -> None:
    """Refuse with a clear message when GPUs are requested on a machine where torch sees none."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError(f'GPU(s) {" ".join(gpus)} requested, but torch sees no CUDA device on this machine '
                           f'({os.uname().nodename}): set "Use GPU" to No, or run on a GPU node.')


def gpu_ids(protocol) -> List[str]:
    """The GPU ids a protocol is set to use: its "GPU IDs" list (commas or spaces) when "Use GPU" is on, none
    otherwise."""
    return str(protocol.getGpuList() if protocol.useGpu.get() else '').replace(',', ' ').split()


def command_line(protocol, command: str, arguments: str) -> Tuple[str, str, Environ]:
    """``(program, arguments, env)`` of ``deephemnma COMMAND ARGUMENTS`` on the protocol's GPUs: ``torchrun``
    over all listed GPUs for the distributed commands when there are several (its per-rank logs in the
    protocol's logs folder, not in /tmp), the command itself on one GPU, or on the CPU when "Use GPU" is off."""
    env = Environ(os.environ)
    gpus = gpu_ids(protocol)
    device = '--device cuda' if gpus else '--device cpu'
    if gpus:
        check_gpus_available(gpus)
        env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
    if len(gpus) > 1 and command in DISTRIBUTED_COMMANDS:
        from deephemnma import Plugin
        return Plugin.getTorchrun(), f'--nproc_per_node={len(gpus)} --log-dir {protocol._getLogsPath("torchrun")} ' \
                                     f'-m deephemnma.cli.main {command} {arguments} {device}', env
    return 'deephemnma', f'{command} {arguments} {device}', env


def quoted(*paths: str) -> str:
    """Paths as command-line words (quoted where they hold spaces)."""
    return ' '.join(shlex.quote(str(p)) for p in paths)


class DeepHemnmaProtocol(EMProtocol):
    """Base class of the DeepHEMNMA protocols (see the module docstring)."""

    #: Default of the "Use GPU" field of protocols that offer it.
    _gpuDefault = False

    @classmethod
    def _defineGpuParams(cls, form, help_text: str) -> None:
        """The standard hidden "Use GPU" and "GPU IDs" fields (Scipion shows them in the run section)."""
        form.addHidden(params.USE_GPU, params.BooleanParam, default=cls._gpuDefault, label='Use GPU',
                       help=help_text)
        form.addHidden(params.GPU_LIST, params.StringParam, default='0', label='GPU IDs',
                       help='GPUs to use, e.g. "0" or "0 1 2 3" (several: torchrun where the step supports it).')

    @classmethod
    def _defineImageParams(cls, form, ctf: bool = True) -> None:
        """The images' CTF state (``ctfMode``) and contrast (``invertData``) fields."""
        if ctf:
            form.addParam('ctfMode', params.EnumParam, choices=list(CTF_CHOICES), default=0, label='Images are',
                          help='What the images carry of the CTF: phase_flipped (the model is multiplied by |CTF|), '
                               'full (raw images: by the CTF) or none (CTF-free). By default as the particle set '
                               'records it (phase-flipped flag, CTF present).')
        form.addParam('invertData', params.EnumParam, choices=list(CONTRAST_CHOICES), default=0,
                      label='Contrast', help='RELION and cryoSPARC extract particles with inverted contrast (protein '
                                            'white): detect it from the data, or say it.')

    @classmethod
    def _defineDeformationParam(cls, form, condition: str = 'True') -> None:
        """The deformation model (``deformation``): how amplitudes move the reference."""
        form.addParam('deformation', params.EnumParam, choices=list(DEFORMATIONS), default=0, condition=condition,
                      label='Deformation model',
                      help='linear (default): x0 + sum q_k v_k, the model of Xmipp and ContinuousFlex (amplitudes '
                           'exchangeable with them). screw: each neighbourhood of the reference turns by the true '
                           'rotation its modes start, so large motions (a domain closing by tens of degrees) keep '
                           'their geometry; on the adenylate kinase open-to-closed benchmark it orders the '
                           'particles better than the linear model, on motions that really are linear it is worse. '
                           'Both agree for small amplitudes. Use the same model in the alignment and in the '
                           'animations.')

    @classmethod
    def _defineModesParams(cls, form, condition: str = 'True') -> None:
        """The normal modes (``inputModes``), the modes used (``modeList``) and the reference model
        (``referenceModel``) of the HEMNMA engine."""
        form.addParam('inputModes', params.PointerParam, pointerClass='SetOfNormalModes', important=True,
                      condition=condition, allowsNull=condition != 'True', label='Normal modes',
                      help='Modes of the reference (atomic structure or pseudoatoms).')
        form.addParam('modeList', params.StringParam, default='', label='Modes to use', condition=condition,
                      help='Mode numbers, e.g. "7-9" or "7 8 9 11"; empty: the enabled modes of the set.')

    @classmethod
    def _defineOtherModesParam(cls, form, condition: str, what: str) -> None:
        """The modes of another conformation (``otherModes``, optional): a second reference; ``what``: the step
        that uses it, for the help text."""
        form.addParam('otherModes', params.PointerParam, pointerClass='SetOfNormalModes', allowsNull=True,
                      condition=condition, label='Modes of another conformation (optional)',
                      help='Normal modes of the same molecule in another conformation (for example the closed '
                           'structure when the reference above is the open one), with the same mode numbers. '
                           f'{what} every particle against both references and keeps the better score '
                           '(_deephemnma_reference: 0 the first, 1 this one); amplitudes are given in the first '
                           "reference's modes. For motions beyond the reach of one structure's modes: on "
                           "adenylate kinase's open-to-closed path, with the screw model and six modes each, poses "
                           'within 15 deg rise from 98 to 100 % and the order of the space (PC1 Spearman) from '
                           '0.93 to 0.98.')

    @classmethod
    def _defineGlobalSearchParams(cls, form, step_condition: str = 'True', shift_condition: str = 'True') -> None:
        """The grid of the engine's global search (``angularStep`` deg, ``shiftRange`` px)."""
        form.addParam('angularStep', params.FloatParam, default=AlignSettings.angular_step, label='Angular step (deg)',
                      condition=step_condition,
                      help='Orientation sampling of the global (discrete) search; the refinement of predictions '
                           "searches the same grid near the network's hypotheses.")
        form.addParam('shiftRange', params.FloatParam, default=AlignSettings.shift_range, label='Shift range (px)',
                      condition=shift_condition, expertLevel=params.LEVEL_ADVANCED,
                      help='The global search tries shifts up to this many pixels on each axis.')

    def _globalSearchArguments(self) -> str:
        """The command-line options of the global search's grid."""
        return f'--angular-step {self.angularStep.get()} --shift-range {self.shiftRange.get()}'

    @classmethod
    def _defineReferenceModelParam(cls, form, condition: str = 'True') -> None:
        """How the engine draws the reference (``referenceModel``)."""
        form.addParam('referenceModel', params.EnumParam, choices=list(REFERENCE_MODEL_CHOICES), default=0,
                      label='Reference model', condition=condition,
                      help='residues2: two Gaussian beads per residue (main chain, side chain); residues: one '
                           'per residue; atoms: every atom with Peng scattering factors. Pseudoatom references '
                           'are always used as they are.')

    def _selectedModes(self) -> List[int]:
        """The mode numbers chosen in the form (default: the enabled non-rigid modes of the set)."""
        numbers = parse_mode_numbers(self.modeList.get())
        if numbers:
            return numbers
        return [int(m.getObjId()) for m in self.inputModes.get() if m.isEnabled() and m.getObjId() > RIGID_MODES]

    def _referencePath(self, modes_set=None) -> str:
        """The structure file of ``modes_set`` (default: the form's normal modes), absolute."""
        return os.path.abspath((modes_set or self.inputModes.get()).getPdb().getFileName())

    def _modesPath(self) -> str:
        return self._getExtraPath('modes.xmd')

    def _writeModes(self) -> None:
        """The selected modes as an Xmipp modes.xmd in the protocol's extra folder."""
        write_modes_xmd_from_set(self.inputModes.get(), self._modesPath(), enabled=self._selectedModes())

    def _modesArguments(self) -> str:
        """``--modes --reference --select`` of the command line."""
        select = ' '.join(str(n) for n in self._selectedModes())
        return f'--modes {self._modesPath()} --reference {self._referencePath()} --select {select}'

    def _otherModesPath(self) -> str:
        return self._getExtraPath('other_modes.xmd')

    def _writeOtherModes(self) -> None:
        """The other conformation's selected modes as an Xmipp modes.xmd (nothing without them)."""
        if self.otherModes.get() is not None:
            write_modes_xmd_from_set(self.otherModes.get(), self._otherModesPath(), enabled=self._selectedModes())

    def _otherModesArguments(self) -> str:
        """`` --other-modes --other-reference`` of the command line ('' without other modes)."""
        if self.otherModes.get() is None:
            return ''
        return f' --other-modes {self._otherModesPath()} --other-reference {self._referencePath(self.otherModes.get())}'

    def _validateOtherModes(self) -> List[str]:
        """The other conformation's modes must have the selected mode numbers."""
        other = self.otherModes.get()
        if other is None:
            return []
        missing = sorted(set(self._selectedModes()) - {int(m.getObjId()) for m in other})
        return [f'The modes of the other conformation lack mode(s) {missing}: compute as many modes for it.'] \
            if missing else []

    def _referenceModel(self) -> str:
        """The reference model chosen in the form (a value of ``--model`` / ``--reference-model``)."""
        return REFERENCE_MODEL_CHOICES[self.referenceModel.get()]

    def _validateModes(self, particle_set) -> List[str]:
        """Form errors of the modes fields: empty set, unknown, rigid or missing modes, reference mismatch."""
        modes = self.inputModes.get()
        if modes is None or modes.getSize() == 0:
            return ['The set of normal modes is empty.']
        try:
            selected = self._selectedModes()
        except InputError as error:
            return [str(error)]
        errors: List[str] = []
        available = {int(m.getObjId()) for m in modes}
        if not selected:
            errors.append('No mode selected: give mode numbers (7 and up) or enable modes in the input set.')
        missing = sorted(set(selected) - available)
        if missing:
            errors.append(f'Mode(s) {missing} are not in the input set (available: {sorted(available)}).')
        rigid = [n for n in selected if n <= RIGID_MODES]
        if rigid:
            errors.append(f'Modes {rigid} are rigid-body motions (1-{RIGID_MODES}); alignment already finds the '
                          'pose.')
        return errors + self._checkReference(modes, selected, particle_set)

    @staticmethod
    def _checkReference(modes, selected: List[int], particle_set) -> List[str]:
        from deephemnma.molecule.structure import check_fits, read_structure
        pdb = modes.getPdb()
        if pdb is None or not os.path.exists(pdb.getFileName()):
            return ['The normal modes have no reference structure file.']
        structure = read_structure(pdb.getFileName(), remove_hydrogens=False, remove_waters=False)
        problem = modes_mismatch(modes, selected, len(structure))
        if problem:
            return [f'{problem} (reference {os.path.basename(pdb.getFileName())}).']
        if particle_set is not None and particle_set.getSize():
            try:
                check_fits(structure.radius(), particle_set.getXDim(), particle_set.getSamplingRate(), 0.0)
            except InputError as error:
                return [f'{error} (reference {os.path.basename(pdb.getFileName())}; check the pixel size of the '
                        'particles or of the reference).']
        return []

    def _deformationArgument(self) -> str:
        return f'--deformation {DEFORMATIONS[self.deformation.get()]}'

    def _ctfState(self, particle_set) -> str:
        """The CTF state of the images (the form's choice, or the set's own)."""
        choice = self.ctfMode.get() if hasattr(self, 'ctfMode') else 0
        return ctf_state_of(particle_set) if choice == 0 else CTF_STATES[choice - 1]

    def _imageArguments(self, particle_set) -> str:
        """``--ctf`` and ``--invert-data`` of the images of ``particle_set``."""
        return f'--ctf {self._ctfState(particle_set)} --invert-data {_INVERT_DATA[self.invertData.get()]}'

    def gpuIds(self) -> List[str]:
        return gpu_ids(self) if hasattr(self, 'useGpu') else []

    def runCommand(self, command: str, arguments: str) -> None:
        """Run ``deephemnma COMMAND ARGUMENTS`` as this protocol's job (on its GPUs when it has the fields)."""
        if hasattr(self, 'useGpu'):
            program, arguments, env = command_line(self, command, arguments)
        else:
            program, arguments, env = 'deephemnma', f'{command} {arguments}', Environ(os.environ)
        self.runJob(program, arguments, env=env, numberOfMpi=1, numberOfThreads=1)

    def _threads(self) -> int:
        """The CPU threads of the form's parallel section (1 without one)."""
        threads = getattr(self, 'numberOfThreads', None)
        return max(1, threads.get()) if threads is not None and threads.get() else 1

    def _validateGpus(self) -> List[str]:
        """Form errors of the GPU fields."""
        if hasattr(self, 'useGpu') and self.useGpu.get() and not gpu_ids(self):
            return ['"Use GPU" is on but the GPU list is empty.']
        return []
