"""Scipion protocol: centroid structures of groups and animations along the axes of the conformational space."""
from __future__ import annotations

import os

import numpy as np
from pwem.objects import AtomStruct, Volume
from pyworkflow.protocol import params

from deephemnma.constants import AMPLITUDES_ATTR
from deephemnma.convert.modes import missing_modes, mode_files, write_modes_xmd_from_set
from deephemnma.convert.particles import particles_from_set
from deephemnma.nma.modes import RIGID_MODES, parse_mode_numbers
from deephemnma.protocols.base import DeepHemnmaProtocol
from deephemnma.runtime.errors import InputError
from deephemnma.runtime.files import atomic_path

CENTROIDS_FILE = 'centroids.txt'
MODES_XMD = 'modes.xmd'


class DeepHemnmaProtAnimate(DeepHemnmaProtocol):
    """Atomic structures from the conformational space: the centroid conformation of each group (the
    reference deformed by the group's mean amplitudes, with its simulated map for comparison with the group's
    reconstruction), and animations of the reference along the axes of the space (multi-model PDB and GIF, and
    optionally a map series); ``chimerax.cxc`` opens them all, with the groups' reconstructions, in one frame."""

    _label = 'animate space'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputModes', params.PointerParam, pointerClass='SetOfNormalModes', important=True,
                      label='Normal modes', help='The modes (and their reference structure) of the amplitudes.')
        form.addParam('modeNumbers', params.NumericListParam, default='', label='Modes of the amplitudes',
                      help='Mode numbers the amplitudes refer to, in order (e.g. 7 8 9). Empty: every '
                           'non-rigid mode of the set.')
        form.addParam('inputGroups', params.MultiPointerParam, pointerClass='SetOfParticles', allowsNull=True,
                      label='Groups (optional)', help='Particle groups: one centroid structure and map each.')
        form.addParam('inputSpace', params.PointerParam, pointerClass='DeepHemnmaProtSpace', allowsNull=True,
                      label='Space (optional)', help='A conformational space protocol: animate along its axes.')
        form.addParam('inputVolumes', params.PointerParam, pointerClass='SetOfVolumes', allowsNull=True,
                      label='Group maps (optional)',
                      help="The groups' reconstructions: chimerax.cxc opens them with the centroid structures.")
        self._defineDeformationParam(form)
        form.addSection(label='Output')
        form.addParam('axes', params.NumericListParam, default='1', label='Axes to animate',
                      help='1-based axes of the space.')
        form.addParam('frames', params.IntParam, default=11, label='Frames', help='Conformations per animation.')
        form.addParam('spread', params.FloatParam, default=2.0, label='Range (standard deviations)',
                      help='Each animation spans +-range standard deviations of its axis through the mean.')
        form.addParam('mapSeries', params.BooleanParam, default=False, label='Map series along each axis',
                      help='Also write the map of each animation frame (axis_N_frame_KK.mrc), which chimerax.cxc '
                           'opens as a volume series with a slider.')
        form.addParam('box', params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED, label='Map box (px)',
                      help='Size of the simulated maps and projections; 0: that of the groups\' images.')
        form.addParam('pixelSize', params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                      label='Pixel size (A)', help='0: that of the groups\' images.')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.structuresStep)
        self._insertFunctionStep(self.createOutputStep)

    def _numbers(self) -> list:
        """The mode numbers of the amplitudes (default: every non-rigid mode of the set)."""
        return parse_mode_numbers(self.modeNumbers.get()) or \
            [n for n in sorted(mode_files(self.inputModes.get())) if n > RIGID_MODES]

    def _grid(self):
        groups = [p.get() for p in self.inputGroups] if self.inputGroups else []
        box = self.box.get() or (groups[0].getXDim() if groups else 64)
        pixel = self.pixelSize.get() or (groups[0].getSamplingRate() if groups else 1.5)
        return int(box), float(pixel)

    def convertInputStep(self) -> None:
        write_modes_xmd_from_set(self.inputModes.get(), self._getExtraPath(MODES_XMD))
        if self.inputGroups:
            centroids = np.stack([particles_from_set(p.get(), require_amplitudes=True).amplitudes.mean(axis=0)
                                  for p in self.inputGroups])
            with atomic_path(self._getExtraPath(CENTROIDS_FILE)) as tmp:
                np.savetxt(tmp, centroids, fmt='%.6f', header='mean amplitudes of each group (one row per group)')

    def structuresStep(self) -> None:
        box, pixel = self._grid()
        reference = os.path.abspath(self.inputModes.get().getPdb().getFileName())
        arguments = (f'--modes {self._getExtraPath(MODES_XMD)} --reference {reference} '
                     f'--select {" ".join(map(str, self._numbers()))} -o {self._getExtraPath()} '
                     f'--box {box} --pixel-size {pixel} {self._deformationArgument()}')
        if self.inputGroups:
            arguments += f' --centroids {self._getExtraPath(CENTROIDS_FILE)}'
        if self.inputSpace.get() is not None:
            arguments += (f' --space {self.inputSpace.get().space_path()} --axes {" ".join(map(str, self._axes()))} '
                          f'--frames {self.frames.get()} --spread {self.spread.get()}')
            if self.mapSeries.get():
                arguments += ' --map-series'
        if self.inputVolumes.get() is not None:
            arguments += ' --group-maps ' + ' '.join(os.path.abspath(volume.getFileName())
                                                     for volume in self.inputVolumes.get())
        self.runCommand('animate', arguments)

    def _axes(self):
        return [int(v) for v in (self.axes.get() or '1').replace(',', ' ').split()]

    def createOutputStep(self) -> None:
        outputs = {}
        if self.inputGroups:
            box, pixel = self._grid()
            maps = self._createSetOfVolumes(suffix='centroids')
            maps.setSamplingRate(pixel)
            for number in range(1, len(self.inputGroups) + 1):
                outputs[f'outputCentroid{number}'] = AtomStruct(
                    filename=self._getExtraPath(f'centroid_{number:03d}.pdb'))
                volume = Volume(location=self._getExtraPath(f'centroid_{number:03d}.mrc'))
                volume.setSamplingRate(pixel)
                maps.append(volume)
            outputs['outputCentroidMaps'] = maps
        if self.inputSpace.get() is not None:
            for axis in self._axes():
                outputs[f'outputAnimation{axis}'] = AtomStruct(filename=self._getExtraPath(f'axis_{axis}.pdb'))
        self._defineOutputs(**outputs)
        self._defineSourceRelation(self.inputModes, list(outputs.values())[0])

    def _validate(self):
        errors = []
        modes_set = self.inputModes.get()
        if modes_set is None or modes_set.getSize() == 0:
            return ['The set of normal modes is empty.']
        if not self.inputGroups and self.inputSpace.get() is None:
            errors.append('Nothing to do: give groups (centroids) and/or a space (animations).')
        try:
            numbers = self._numbers()
        except InputError as error:
            return errors + [str(error)]
        missing = missing_modes(mode_files(modes_set), numbers)
        if missing:
            errors.append(f'The {missing}.')
        for number, pointer in enumerate(self.inputGroups or [], start=1):
            group = pointer.get()
            if group is None or group.getSize() == 0:
                errors.append(f'Group {number} is empty (empty group).')
                continue
            first = group.getFirstItem()
            amplitudes = getattr(first, AMPLITUDES_ATTR, None)
            if amplitudes is None:
                errors.append(f'Group {number} has no normal-mode amplitudes.')
            elif len(amplitudes) != len(numbers):
                errors.append(f'Group {number} has {len(amplitudes)} amplitudes per particle but {len(numbers)} '
                              'modes are selected: set "Modes of the amplitudes".')
        if self.frames.get() < 2:
            errors.append('An animation needs at least 2 frames.')
        return errors

    def _summary(self):
        outputs = [name for name, _ in self.iterOutputAttributes()]
        if not outputs:
            return ['Structures not computed yet.']
        return [f'Outputs: {", ".join(outputs)}.']

    def _methods(self):
        return ['Centroid conformations of the groups were obtained by deforming the reference along the normal '
                'modes with the groups\' mean amplitudes, and the reference was animated along the axes of the '
                'conformational space [Hamitouche2022, Harastani2020].']

    def _citations(self):
        return ['Hamitouche2022', 'Harastani2020', 'Tirion1996']
