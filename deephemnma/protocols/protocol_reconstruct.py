"""Scipion protocol: 3D reconstruction of groups of particles by direct Fourier inversion, with half maps and FSC."""
from __future__ import annotations

import json
import os

import numpy as np
from pwem.objects import Volume
from pyworkflow.protocol import params

from deephemnma.convert.particles import max_shift, particles_from_set
from deephemnma.data.formats import write_particles
from deephemnma.data.particles import concatenate
from deephemnma.protocols.base import DeepHemnmaProtocol
from deephemnma.space.groups import write_labels

PARTICLES_FILE = 'particles.star'
LABELS_FILE = 'labels.txt'


class DeepHemnmaProtReconstruct(DeepHemnmaProtocol):
    """Reconstruct a map of each input set of particles (e.g. each group of the conformational space) from
    their images and poses by direct Fourier inversion with CTF correction, with half maps, FSC curves and,
    optionally, the FSC against a reference map. Runs on CPU, a GPU or several GPUs (torchrun)."""

    _label = 'reconstruct groups'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputSets', params.MultiPointerParam, pointerClass='SetOfParticles', important=True,
                      label='Particle sets', help='One map is reconstructed per set (e.g. each group).')
        self._defineImageParams(form)
        form.addParam('poseBox', params.IntParam, default=0, label='Pose image size (px)',
                      help='Size of the images the poses were estimated on, when the images reconstructed here '
                           'are of another size (e.g. poses from 128 px images, reconstruction from the original '
                           '256 px images): shifts are scaled by the size ratio. 0: the same size.')
        form.addParam('referenceVolume', params.PointerParam, pointerClass='Volume', allowsNull=True,
                      label='Reference map (optional)', help='For an FSC of each map against it.')
        form.addSection(label='Advanced')
        form.addParam('pad', params.FloatParam, default=1.0, expertLevel=params.LEVEL_ADVANCED,
                      label='Padding factor', help='Fourier grid oversampling: 1 (fast) or 2 (most accurate).')
        form.addParam('wiener', params.FloatParam, default=0.01, expertLevel=params.LEVEL_ADVANCED,
                      label='Wiener regularisation',
                      help='Added to the CTF^2 weights, as a fraction of their mean in each Fourier shell.')
        form.addParam('batchSize', params.IntParam, default=256, expertLevel=params.LEVEL_ADVANCED,
                      label='Images per batch')
        self._defineGpuParams(form, 'Reconstruct on the GPUs listed below (several: torchrun, each inserts a share '
                                    'of the images).')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.reconstructStep)
        self._insertFunctionStep(self.createOutputStep)

    def _name(self, number: int) -> str:
        return self._getExtraPath(f'group_{number:03d}')

    def convertInputStep(self) -> None:
        """All sets in one particle file, with one group label per particle (set ``k`` is group ``k``)."""
        sets = [particles_from_set(pointer.get(), require_alignment=True) for pointer in self.inputSets]
        write_particles(self._getExtraPath(PARTICLES_FILE), concatenate(sets).resolved())
        write_labels(self._getExtraPath(LABELS_FILE), np.repeat(np.arange(len(sets)), [len(s) for s in sets]))

    def reconstructStep(self) -> None:
        arguments = (f'-i {self._getExtraPath(PARTICLES_FILE)} --groups {self._getExtraPath(LABELS_FILE)} '
                     f'-o {self._getExtraPath()} {self._imageArguments(self.inputSets[0].get())} '
                     f'--pad {self.pad.get()} '
                     f'--wiener {self.wiener.get()} --batch-size {self.batchSize.get()} '
                     f'--pixel-size {self.inputSets[0].get().getSamplingRate()}')
        if self.poseBox.get():
            arguments += f' --pose-box {self.poseBox.get()}'
        if self.referenceVolume.get() is not None:
            arguments += f' --reference {os.path.abspath(self.referenceVolume.get().getFileName())}'
        self.runCommand('reconstruct', arguments)

    def createOutputStep(self) -> None:
        volumes = self._createSetOfVolumes()
        volumes.setSamplingRate(self.inputSets[0].get().getSamplingRate())
        for number in range(1, len(self.inputSets) + 1):
            name = self._name(number)
            volume = Volume(location=f'{name}.mrc')
            volume.setSamplingRate(self.inputSets[number - 1].get().getSamplingRate())
            volume.setHalfMaps([f'{name}_half1.mrc', f'{name}_half2.mrc'])
            volume.setObjComment(self.fsc_summary(number))
            volumes.append(volume)
        self._defineOutputs(outputVolumes=volumes)
        for pointer in self.inputSets:
            self._defineSourceRelation(pointer, volumes)

    def fsc_curves(self, number: int) -> dict:
        """The FSC record of reconstruction ``number`` (1-based) as written by the protocol."""
        with open(f'{self._name(number)}_fsc.json') as handle:
            return json.load(handle)

    def fsc_summary(self, number: int) -> str:
        record = self.fsc_curves(number)
        text = (f"{record['images']} images; half maps: "
                f"{record['half_maps']['resolution_0143_angstrom']:.2f} A at FSC 0.143")
        if 'vs_reference' in record:
            text += f"; vs reference: {record['vs_reference']['resolution_05_angstrom']:.2f} A at FSC 0.5"
        return text

    def _validate(self):
        errors = []
        if len(self.inputSets) == 0:
            return ['Give at least one set of particles.']
        mode = self._ctfState(self.inputSets[0].get()) if len(self.inputSets) and self.inputSets[0].get() else 'none'
        for number, pointer in enumerate(self.inputSets, start=1):
            particle_set = pointer.get()
            label = f'Set {number} ({particle_set.getObjLabel() or particle_set.getNameId()})' \
                if particle_set is not None else f'Set {number}'
            if particle_set is None or particle_set.getSize() == 0:
                errors.append(f'{label} is empty (empty group): nothing to reconstruct.')
                continue
            if particle_set.getSize() < 2:
                errors.append(f'{label} holds 1 particle: half maps need at least 2.')
            if not particle_set.hasAlignmentProj():
                errors.append(f'{label} has no poses (3D projection alignment): align or predict them first.')
                continue
            if mode != 'none' and not particle_set.hasCTF():
                errors.append(f"{label} has no CTF: choose CTF correction 'none' or give particles with CTF.")
            box = particle_set.getXDim() or 0
            scale = box / self.poseBox.get() if self.poseBox.get() else 1.0
            shift = max_shift(particle_set) * scale
            if box and shift >= box / 2:
                errors.append(f'{label}: shifts of up to {shift:.1f} px do not fit its {box} px images: the poses '
                              "do not match the particles' size (set 'Pose image size' to the size the poses "
                              'were estimated at).')
        reference = self.referenceVolume.get()
        if reference is not None and errors == []:
            box = self.inputSets[0].get().getXDim()
            if reference.getXDim() != box:
                errors.append(f'The reference map is {reference.getXDim()} px wide but the particles {box} px.')
        if self.pad.get() < 1:
            errors.append('The padding factor must be at least 1.')
        return errors + self._validateGpus()

    def _summary(self):
        if not hasattr(self, 'outputVolumes'):
            return ['Maps not computed yet.']
        return [f'Map {n}: {self.fsc_summary(n)}' for n in range(1, len(self.inputSets) + 1)]

    def _methods(self):
        return ['Maps were reconstructed by direct Fourier inversion with trilinear gridding and Wiener-like CTF '
                'correction from the particles\' poses, with even/odd half maps and FSC, as in DeepHEMNMA '
                '[Hamitouche2022].']

    def _citations(self):
        return ['Hamitouche2022', 'Jin2014']
