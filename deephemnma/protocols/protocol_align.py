"""Scipion protocol: HEMNMA elastic and rigid-body alignment of particles (this engine or Xmipp's program)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from pyworkflow.protocol import params

from deephemnma.convert.particles import copy_with_estimates, particles_from_set
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.protocols.base import DeepHemnmaProtocol

BACKEND_ENGINE = 0
BACKEND_XMIPP = 1


class DeepHemnmaProtAlign(DeepHemnmaProtocol):
    """HEMNMA: for every particle, the normal-mode amplitudes, Euler angles and shifts that make the projection
    of the deformed reference match the image (elastic and rigid-body 3D-to-2D alignment). The DeepHEMNMA engine
    runs on CPU or GPUs, batched, with a global search and a joint continuous refinement; Xmipp's
    xmipp_nma_alignment (the original HEMNMA) can be used instead where Xmipp is installed. The output
    particles carry the pose as their transform and the amplitudes as _xmipp_nmaDisplacements."""

    _label = 'HEMNMA alignment'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        self._defineModesParams(form)
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles', important=True,
                      label='Particles', help='Particle images with CTF (phase-flipped or not, see below).')
        form.addParam('backend', params.EnumParam, choices=['DeepHEMNMA engine', 'Xmipp xmipp_nma_alignment'],
                      default=BACKEND_ENGINE, display=params.EnumParam.DISPLAY_HLIST, label='Backend',
                      help='The batched engine of this plugin (CPU/GPU), or the original Xmipp program '
                           '(needs an Xmipp installation; about 230 CPU seconds per 128 px image).')
        form.addSection(label='Engine')
        self._defineReferenceModelParam(form, condition='backend == 0')
        self._defineDeformationParam(form, condition='backend == 0')
        self._defineOtherModesParam(form, 'backend == 0', 'The alignment aligns')
        form.addParam('walk', params.BooleanParam, default=False, condition='backend == 0',
                      label='Add references walked towards the particles',
                      help='After a first alignment, each reference that a tenth of the particles or more took, '
                           'deformed to the mean fit of the third of those particles farthest from it, with its '
                           'modes recomputed there, becomes one more reference (one more alignment each; '
                           '_deephemnma_reference: their numbers follow the given references). For motions beyond '
                           "the reach of the reference's modes: on adenylate kinase's open-to-closed path (screw "
                           'model, six modes) it raises the order of the space (PC1 Spearman) from 0.93 to 0.98 '
                           'with the open structure alone. Their modes are outputs (walked modes K and their '
                           'structure; K: the reference walked from, 0 the first) for the prediction protocol\'s '
                           '"Modes of another conformation".')
        form.addParam('walkCutoff', params.FloatParam, default=10.0, condition='backend == 0 and walk',
                      label="Walked references' cutoff (A)", expertLevel=params.LEVEL_ADVANCED,
                      help="Network radius of the walked references' modes (use the reference modes' own).")
        self._defineImageParams(form)
        form.addParam('localOnly', params.BooleanParam, default=False, label='Local refinement only',
                      condition='backend == 0',
                      help='Start from the particles\' own poses (and amplitudes) instead of a global search.')
        self._defineGlobalSearchParams(form, shift_condition='backend == 0')
        form.addParam('chunkSize', params.IntParam, default=64, label='Images per chunk',
                      condition='backend == 0', expertLevel=params.LEVEL_ADVANCED,
                      help='Batch size and unit of resumption.')
        form.addParam('trustRegionScale', params.IntParam, default=1, label='Trust region scale',
                      condition='backend == 1', expertLevel=params.LEVEL_ADVANCED,
                      help='Xmipp program: scale of the trust region of its amplitude optimiser.')
        self._defineGpuParams(form, 'Align on the GPUs listed below (several: torchrun, each aligns a share).')
        form.addParallelSection(threads=1, mpi=1)

    # ------------------------------------------------------------------------------------------
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.alignStep)
        self._insertFunctionStep(self.createOutputStep)

    def convertInputStep(self) -> None:
        self._writeModes()
        if self.backend.get() == BACKEND_ENGINE:
            self._writeOtherModes()
        particles = particles_from_set(self.inputParticles.get(),
                                       require_alignment=bool(self.localOnly.get())).resolved()
        write_particles(self._getExtraPath('images.xmd' if self.backend.get() == BACKEND_XMIPP
                                           else 'particles.star'), particles)

    def _outputPath(self) -> str:
        return self._getExtraPath('images.xmd' if self.backend.get() == BACKEND_XMIPP else 'aligned.star')

    def alignStep(self) -> None:
        if self.backend.get() == BACKEND_XMIPP:
            self._alignXmipp()
            return
        arguments = (f'-i {self._getExtraPath("particles.star")} -o {self._outputPath()} '
                     f'{self._modesArguments()} --model {self._referenceModel()} {self._deformationArgument()} '
                     f'{self._imageArguments(self.inputParticles.get())} {self._globalSearchArguments()} '
                     f'--chunk-size {self.chunkSize.get()} '
                     f'--threads {max(1, self.numberOfThreads.get())} --quiet')
        if self.localOnly.get():
            arguments += ' --local-refine'
        if self.walk.get():
            arguments += f' --walk --walk-cutoff {self.walkCutoff.get()}'
        self.runCommand('align', arguments + self._otherModesArguments())

    def _alignXmipp(self) -> None:
        from deephemnma.hemnma.xmipp import XmippAlignmentJob, is_pseudoatom_pdb
        job = XmippAlignmentJob(images=self._getExtraPath('images.xmd'), pdb=self._referencePath(),
                                modes=self._modesPath(),
                                sampling_rate=self.inputParticles.get().getSamplingRate(),
                                output_dir=self._getTmpPath(), discrete_angular_step=self.angularStep.get(),
                                trust_region_scale=self.trustRegionScale.get(),
                                pseudoatoms=is_pseudoatom_pdb(self._referencePath()))
        self.runJob('xmipp_nma_alignment', job.arguments(), numberOfMpi=self.numberOfMpi.get())

    def createOutputStep(self) -> None:
        inputs = particles_from_set(self.inputParticles.get())
        if self.backend.get() == BACKEND_XMIPP:
            from deephemnma.hemnma.xmipp import merge_in_order, read_alignment
            aligned = read_alignment(self._outputPath(), len(self._selectedModes()), inputs.pixel_size)
            result = merge_in_order(read_particles(self._getExtraPath('images.xmd')), aligned)
        else:
            result = read_particles(self._outputPath())
        output = copy_with_estimates(self._createSetOfParticles(), self.inputParticles.get(), result,
                                     ('reference',))
        self._defineOutputs(outputParticles=output)
        self._defineSourceRelation(self.inputParticles, output)
        self._defineSourceRelation(self.inputModes, output)
        if self.backend.get() == BACKEND_ENGINE and self.walk.get():
            self._defineWalkedModes()

    def _defineWalkedModes(self) -> None:
        """The modes of each reference walked towards the particles as outputs ``outputWalkedModesK`` (K: the
        reference walked from, 0 the first), a SetOfNormalModes on the walked structure ``outputWalkedStructureK``
        (files in ``extra/walked_K``), for the prediction protocol's "Modes of another conformation"."""
        from pwem.objects import AtomStruct, SetOfNormalModes

        from deephemnma.cli.align import walked_modes_path
        from deephemnma.convert.modes import set_of_modes_from_xmd
        from deephemnma.molecule.structure import write_structure
        from deephemnma.nma.files import write_modes
        from deephemnma.nma.modes import NormalModes
        pseudoatoms = bool(self.inputModes.get().getPdb().getPseudoAtoms())
        for walked_from in range(1 if self.otherModes.get() is None else 2):
            path = walked_modes_path(self._outputPath(), walked_from)
            if not path.exists():  # no particle chose to walk from this reference
                continue
            modes = NormalModes.load(path)
            folder = Path(self._getExtraPath(f'walked_{walked_from}'))
            folder.mkdir(parents=True, exist_ok=True)
            write_structure(folder / 'reference.pdb', modes.structure)
            structure = AtomStruct(filename=str(folder / 'reference.pdb'), pseudoatoms=pseudoatoms)
            output = set_of_modes_from_xmd(str(write_modes(folder, modes)), SetOfNormalModes(
                filename=self._getExtraPath(f'walked_{walked_from}_modes.sqlite')), structure)
            self._defineOutputs(**{f'outputWalkedStructure{walked_from}': structure,
                                   f'outputWalkedModes{walked_from}': output})
            self._defineSourceRelation(self.inputModes, output)

    # ------------------------------------------------------------------------------------------
    def _validate(self) -> List[str]:
        errors: List[str] = []
        particle_set = self.inputParticles.get()
        if particle_set is None or particle_set.getSize() == 0:
            errors.append('The set of particles is empty.')
        modes_errors = self._validateModes(particle_set)
        if modes_errors:
            return errors + modes_errors
        if self.backend.get() == BACKEND_XMIPP:
            from deephemnma.hemnma.xmipp import program_path
            if program_path() is None:
                errors.append('xmipp_nma_alignment is not on the PATH: install Xmipp or choose the DeepHEMNMA '
                              'engine.')
        if self.backend.get() == BACKEND_ENGINE:
            errors += self._validateGpus() + self._validateOtherModes()
        return errors

    def _summary(self) -> List[str]:
        if not hasattr(self, 'outputParticles'):
            return ['Alignment not finished yet.']
        backend = 'Xmipp xmipp_nma_alignment' if self.backend.get() == BACKEND_XMIPP else 'the DeepHEMNMA engine'
        lines = [f'Aligned {self.outputParticles.getSize()} particles with modes {self._selectedModes()} '
                 f'using {backend}.']
        if self.otherModes.get() is not None and self.backend.get() == BACKEND_ENGINE:
            lines.append('Each particle kept the better of two references (the modes above and those of another '
                         "conformation); amplitudes in the first reference's modes.")
        if self.walk.get() and self.backend.get() == BACKEND_ENGINE:
            walked = [name for name, _ in self.iterOutputAttributes() if name.startswith('outputWalkedModes')]
            lines.append('References walked towards the particles were added (after the given ones; their modes: '
                         f'{", ".join(walked) or "none yet"}); each particle kept the best.')
        return lines

    def _methods(self) -> List[str]:
        return ['Normal-mode amplitudes, orientations and shifts of the particles were estimated by elastic and '
                'rigid-body 3D-to-2D alignment of the normal-mode-deformed reference (HEMNMA) [Jin2014, '
                'Harastani2020], as in DeepHEMNMA [Hamitouche2022].']

    def _citations(self) -> List[str]:
        return ['Hamitouche2022', 'Jin2014', 'Harastani2020']
