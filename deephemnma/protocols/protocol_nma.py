"""Scipion protocol: normal modes of an atomic structure or of an EM map converted into pseudoatoms."""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
from pwem.objects import AtomStruct, SetOfNormalModes
from pyworkflow.protocol import params

from deephemnma.convert.modes import set_of_modes_from_xmd
from deephemnma.nma.elastic import check_mode_count, check_network, degrees_of_freedom, resolve_cutoff
from deephemnma.nma.modes import DEFAULT_COLLECTIVITY_THRESHOLD, NormalModes
from deephemnma.protocols.base import COARSE_CHOICES, DeepHemnmaProtocol
from deephemnma.runtime.errors import InputError

INPUT_ATOMS, INPUT_MAP = 0, 1
CUTOFF_ABSOLUTE, CUTOFF_RELATIVE = 0, 1
REFERENCE_PDB = 'reference.pdb'
PSEUDOATOMS_PDB = 'pseudoatoms.pdb'
MODES_NPZ = 'modes.npz'
#: Fewest atoms accepted: below this an elastic network has hardly any non-rigid mode.
MIN_ATOMS = 4


class DeepHemnmaProtNMA(DeepHemnmaProtocol):
    """Normal mode analysis with an elastic network (Tirion 1996; ANM, or RTB for large complexes), on an
    atomic structure (optionally reduced to C-alpha or C-alpha and P atoms) or on an EM map converted into
    pseudoatoms (Gaussians approximating the map to a target error; Jonic & Sorzano 2016). The 6 rigid-body
    modes are skipped; modes are numbered as in Xmipp (7 = first non-rigid mode) and written in
    ContinuousFlex's layout (modes.xmd and one vector file per mode), so HEMNMA/ContinuousFlex and the
    DeepHEMNMA protocols can use them. Mode vectors have unit norm over the 3N coordinates of the reference
    output with them: an amplitude q moves its N atoms by |q|/sqrt(N) Angstrom RMS."""

    _label = 'normal mode analysis'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputType', params.EnumParam, choices=['atomic structure', 'EM map (pseudoatoms)'],
                      default=INPUT_ATOMS, label='Reference', display=params.EnumParam.DISPLAY_HLIST,
                      help='An atomic model, or an EM map that is first converted into pseudoatoms.')
        form.addParam('inputStructure', params.PointerParam, pointerClass='AtomStruct', allowsNull=True,
                      condition=f'inputType == {INPUT_ATOMS}', label='Atomic structure', important=True,
                      help='PDB or mmCIF model. Hydrogens and waters are removed.')
        form.addParam('chains', params.StringParam, default='', condition=f'inputType == {INPUT_ATOMS}',
                      label='Chains', help='Chain identifiers to keep, separated by spaces; empty: all chains.')
        form.addParam('coarse', params.EnumParam, choices=[label for label, _ in COARSE_CHOICES], default=0,
                      condition=f'inputType == {INPUT_ATOMS}', label='Atoms',
                      help='All heavy atoms, or one atom per residue (C-alpha; C-alpha and P for nucleic acids, '
                           'as the paper\'s ribosome model). Amplitudes are relative to the model used: 200 moves '
                           'the all-atom AK chain by about 5 A RMS and its C-alpha model by about 14 A.')
        form.addParam('inputVolume', params.PointerParam, pointerClass='Volume', allowsNull=True,
                      condition=f'inputType == {INPUT_MAP}', label='EM map', important=True,
                      help='Cubic map; its sampling rate sets the pseudoatom scale.')
        form.addParam('pseudoSigma', params.FloatParam, default=1.0, condition=f'inputType == {INPUT_MAP}',
                      label='Pseudoatom sigma (voxels)',
                      help='Standard deviation of the Gaussian pseudoatoms (ContinuousFlex\'s default: 1 voxel).')
        form.addParam('targetError', params.FloatParam, default=5.0, condition=f'inputType == {INPUT_MAP}',
                      label='Target error (%)',
                      help='Pseudoatoms are added until the relative L2 error between the map and the '
                           'pseudoatom map is below this (ContinuousFlex\'s default: 5 %).')

        form.addSection(label='Normal modes')
        form.addParam('numberOfModes', params.IntParam, default=10, label='Number of non-rigid modes',
                      validators=[params.Positive],
                      help='Modes 7, 8, ... are computed (the 6 rigid-body modes are computed too, and disabled).')
        form.addParam('cutoffMode', params.EnumParam, choices=['absolute', 'relative'],
                      default=CUTOFF_ABSOLUTE, label='Cutoff mode', display=params.EnumParam.DISPLAY_HLIST,
                      help='Absolute: a radius in Angstrom. Relative: the given percentile of the distances of '
                           'each atom to its 10 nearest neighbours (recommended for pseudoatoms).')
        form.addParam('cutoff', params.FloatParam, default=10.0, condition=f'cutoffMode == {CUTOFF_ABSOLUTE}',
                      label='Cutoff (A)', help='Atoms closer than this are joined by springs (C-alpha models: '
                                               '10-15 A; all atoms: 8 A; the paper\'s ribosome: 20 A).')
        form.addParam('percentile', params.FloatParam, default=95.0, condition=f'cutoffMode == {CUTOFF_RELATIVE}',
                      label='Cutoff percentile', help='ContinuousFlex\'s default: 95.')
        form.addParam('rtbBlockSize', params.IntParam, default=0, label='RTB block size (residues)',
                      expertLevel=params.LEVEL_ADVANCED,
                      help='0: full elastic network. Otherwise blocks of this many consecutive residues move '
                           'rigidly (rotation-translation blocks), for large complexes (the paper\'s ribosome: '
                           '20). Ignored for pseudoatoms.')
        form.addParam('collectivityThreshold', params.FloatParam, default=DEFAULT_COLLECTIVITY_THRESHOLD,
                      label='Collectivity threshold',
                      help='Modes whose collectivity (0-1) is below this are disabled in the output '
                           '(ContinuousFlex\'s default: 0.15); 0 keeps all.')

        form.addSection(label='Animation')
        form.addParam('amplitude', params.FloatParam, default=100.0, label='Amplitude',
                      help='Animations sweep each enabled mode from -amplitude to +amplitude (mode units: see '
                           'the protocol help).')
        form.addParam('frames', params.IntParam, default=11, label='Frames', expertLevel=params.LEVEL_ADVANCED)
        self._defineGpuParams(form, 'Compute the dense eigensolver and the pseudoatom fit on the first GPU listed.')

    # ------------------------------------------------------------------------------------------
    def _insertAllSteps(self) -> None:
        if self.inputType.get() == INPUT_MAP:
            self._insertFunctionStep(self.pseudoatomsStep)
        self._insertFunctionStep(self.computeModesStep)
        self._insertFunctionStep(self.createOutputStep)

    def _isMap(self) -> bool:
        return self.inputType.get() == INPUT_MAP

    def _chains(self) -> Optional[List[str]]:
        return (self.chains.get() or '').replace(',', ' ').split() or None

    def _coarseLevel(self) -> Optional[str]:
        return COARSE_CHOICES[self.coarse.get()][1]

    def _referenceStructure(self):
        """The atoms the modes are computed on (pseudoatoms after the first step for a map)."""
        from deephemnma.molecule.structure import coarse_grain, read_structure
        if self._isMap():
            from deephemnma.molecule.pseudoatoms import read_pseudoatoms
            return read_pseudoatoms(self._getPath(PSEUDOATOMS_PDB)).to_structure()
        structure = read_structure(self.inputStructure.get().getFileName(), chains=self._chains())
        level = self._coarseLevel()
        return coarse_grain(structure, level) if level else structure

    def _mapData(self):
        from deephemnma.data.images import read_image
        volume = self.inputVolume.get()
        data, _ = read_image(volume.getFileName())
        return data, volume.getSamplingRate()

    def pseudoatomsStep(self) -> None:
        volume = self.inputVolume.get()
        pixel_size = volume.getSamplingRate()
        self.runCommand('pseudoatoms', f'{os.path.abspath(volume.getFileName())} -o {self._getPath(PSEUDOATOMS_PDB)} '
                                       f'--sigma {self.pseudoSigma.get() * pixel_size} '
                                       f'--target-error {self.targetError.get() / 100.0} --pixel-size {pixel_size} '
                                       '--accept-above-target')

    def computeModesStep(self) -> None:
        relative = self.cutoffMode.get() == CUTOFF_RELATIVE
        arguments = [f'-o {self._getPath()} --modes {self.numberOfModes.get()}',
                     f'--percentile {self.percentile.get()}' if relative else f'--cutoff {self.cutoff.get()}',
                     f'--collectivity-threshold {self.collectivityThreshold.get()} --animate-enabled',
                     f'--amplitude {self.amplitude.get()} --frames {self.frames.get()}']
        if self._isMap():
            arguments.insert(0, self._getPath(PSEUDOATOMS_PDB))
        else:
            arguments.insert(0, os.path.abspath(self.inputStructure.get().getFileName()))
            if self._chains():
                arguments.append('--chains ' + ' '.join(self._chains()))
            arguments.append(f'--coarse {self._coarseLevel() or "none"} --rtb-block {self.rtbBlockSize.get()}')
        self.runCommand('nma', ' '.join(arguments))

    def createOutputStep(self) -> None:
        structure = AtomStruct(filename=self._getPath(REFERENCE_PDB), pseudoatoms=self._isMap())
        if self._isMap():
            structure.setVolume(self.inputVolume.get())
        modes = set_of_modes_from_xmd(self._getPath('modes.xmd'), SetOfNormalModes(filename=self._getPath(
            'modes.sqlite')), structure)
        self._defineOutputs(outputStructure=structure, outputModes=modes)
        source = self.inputVolume if self._isMap() else self.inputStructure
        self._defineSourceRelation(source, structure)
        self._defineSourceRelation(source, modes)

    def loadModes(self) -> NormalModes:
        """The computed modes (with their reference) as the core's NormalModes."""
        return NormalModes.load(self._getPath(MODES_NPZ))

    # ------------------------------------------------------------------------------------------
    def _validate(self) -> List[str]:
        errors = self._validateSettings()
        if errors:
            return errors
        if self._isMap():
            return self._validateMap()
        try:
            structure = self._referenceStructure()
        except InputError as error:
            return [str(error)]
        return self._validateNetwork(structure)

    def _validateSettings(self) -> List[str]:
        errors = []
        if self._isMap() and not self.inputVolume.hasValue():
            errors.append('Choose the EM map to convert into pseudoatoms.')
        if not self._isMap() and not self.inputStructure.hasValue():
            errors.append('Choose the atomic structure.')
        if self.numberOfModes.get() is None or self.numberOfModes.get() < 1:
            errors.append('The number of modes must be at least 1.')
        if self.cutoffMode.get() == CUTOFF_ABSOLUTE and not (self.cutoff.get() or 0) > 0:
            errors.append('The cutoff must be a positive distance in Angstrom.')
        if self.cutoffMode.get() == CUTOFF_RELATIVE and not 0 < (self.percentile.get() or 0) <= 100:
            errors.append('The cutoff percentile must be in (0, 100].')
        if not 0 <= self.collectivityThreshold.get() <= 1:
            errors.append('The collectivity threshold must be between 0 and 1.')
        if self.rtbBlockSize.get() < 0:
            errors.append('The RTB block size must be 0 (no RTB) or a positive number of residues.')
        if self._isMap() and not 0 < self.targetError.get() < 100:
            errors.append('The target error must be a percentage between 0 and 100.')
        if self._isMap() and not self.pseudoSigma.get() > 0:
            errors.append('The pseudoatom sigma must be positive.')
        return errors + self._validateGpus()

    def _validateMap(self) -> List[str]:
        try:
            volume, _ = self._mapData()
        except InputError as error:
            return [str(error)]
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            return [f'The map must be a cubic 3D volume; it has shape {volume.shape}.']
        if not volume.max() > 0:
            return ['The map has no positive density to convert into pseudoatoms.']
        return []

    def _validateNetwork(self, structure) -> List[str]:
        if len(structure) < MIN_ATOMS:
            return [f'Only {len(structure)} atom(s) selected: an elastic network needs at least {MIN_ATOMS}.']
        relative = self.cutoffMode.get() == CUTOFF_RELATIVE
        try:
            check_mode_count(self.numberOfModes.get(), degrees_of_freedom(structure, self.rtbBlockSize.get()),
                             len(structure), self.rtbBlockSize.get())
            radius = resolve_cutoff(structure.coords, None if relative else self.cutoff.get(),
                                    self.percentile.get() if relative else None)
            check_network(structure.coords, radius)
        except InputError as error:
            return [f'{error}.']
        return []

    # ------------------------------------------------------------------------------------------
    def _summary(self) -> List[str]:
        if not hasattr(self, 'outputModes'):
            return ['Output not ready yet.']
        modes = self.loadModes()
        enabled = [m.getObjId() for m in self.outputModes if m.isEnabled()]
        return [f'{len(modes.structure)} {"pseudoatoms" if self._isMap() else "atoms"}, cutoff '
                f'{modes.cutoff:.2f} A, {modes.method}'
                + (f' ({modes.block_size} residues per block)' if modes.block_size else '')
                + f': modes {modes.numbers[0]}-{modes.numbers[-1]} computed, enabled: '
                + (' '.join(map(str, enabled)) or 'none') + '.',
                f'Lowest non-rigid eigenvalue {modes.eigenvalues[0]:.3e}; rigid-body eigenvalues below '
                f'{np.abs(modes.rigid_eigenvalues).max():.1e}.']

    def _methods(self) -> List[str]:
        if not hasattr(self, 'outputModes'):
            return []
        modes = self.loadModes()
        text = (f'Normal modes were computed with an elastic network model [Tirion1996] of '
                f'{len(modes.structure)} {"pseudoatoms" if self._isMap() else "atoms"} with a cutoff of '
                f'{modes.cutoff:.1f} A')
        if modes.block_size:
            text += f', using rotation-translation blocks of {modes.block_size} residues'
        if self._isMap():
            text += ', after converting the EM map into pseudoatoms [Jonic2016]'
        return [text + f'; the {len(modes)} lowest non-rigid modes (7-{modes.numbers[-1]}) were kept, as in '
                       'HEMNMA [Jin2014, Harastani2020].']

    def _citations(self) -> List[str]:
        citations = ['Tirion1996', 'Jin2014', 'Harastani2020', 'Hamitouche2022']
        return citations + ['Jonic2016'] if self._isMap() else citations
