"""Scipion protocol: import particles from a RELION STAR, a cryoSPARC .cs, an Xmipp .xmd or a Scipion .sqlite file."""
from __future__ import annotations

import os
from typing import List

from pwem.objects import SetOfParticles
from pyworkflow.protocol import params

from deephemnma.convert.particles import fill_set_of_particles, particles_from_set
from deephemnma.data.formats import read_particles, write_particles
from deephemnma.protocols.base import DeepHemnmaProtocol
from deephemnma.runtime.errors import InputError

#: File endings this protocol imports.
IMPORTED = ('.star', '.cs', '.xmd', '.sqlite')
IMPORTED_STAR = 'imported.star'


class DeepHemnmaProtImportParticles(DeepHemnmaProtocol):
    """Import particles exported by RELION (STAR, with its optics groups), cryoSPARC (.cs, poses as rotation
    vectors), Xmipp (.xmd) or another Scipion project (.sqlite): image locations, pixel size, microscope, CTF per
    particle (with the phase shift of a phase plate), poses and half sets where the file has them. The images stay
    where they are. Particles of several optics groups keep each its microscope (as the particle's acquisition);
    particles of different pixel sizes are refused with a message saying how to bring them to one."""

    _label = 'import particles'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('filePath', params.FileParam, important=True, label='Particle file',
                      help='RELION .star, cryoSPARC .cs, Xmipp .xmd or Scipion .sqlite.')
        form.addParam('baseDir', params.PathParam, default='', label='Folder of relative image paths',
                      help='Where relative stack paths start (a cryoSPARC project folder for a .cs file); empty: '
                           'the particle file\'s folder, then the Scipion project folder.')
        form.addParam('pixelSize', params.FloatParam, default=0.0, label='Pixel size (A)',
                      help='0: from the file (RELION optics, cryoSPARC blob/psize_A, Xmipp ctfSamplingRate).')
        form.addParam('phaseFlipped', params.BooleanParam, default=False, label='Images are phase-flipped',
                      help='RELION and cryoSPARC extract images that carry the full CTF: No.')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.importStep)

    def _read(self):
        path = self.filePath.get()
        if path.endswith('.sqlite'):
            particles = particles_from_set(SetOfParticles(filename=path))
        else:
            particles = read_particles(path, self.pixelSize.get() or None)
        if self.pixelSize.get():
            particles.pixel_size = self.pixelSize.get()
        base = self.baseDir.get() or os.path.dirname(os.path.abspath(path))
        return particles.resolved(base).check(path, images=True)

    def importStep(self) -> None:
        particles = self._read()
        write_particles(self._getExtraPath(IMPORTED_STAR), particles)
        output = fill_set_of_particles(self._createSetOfParticles(), particles, base_dir=os.getcwd())
        output.setIsPhaseFlipped(bool(self.phaseFlipped.get()))
        self._defineOutputs(outputParticles=output)

    def _validate(self) -> List[str]:
        path = self.filePath.get()
        if not path or not os.path.exists(path):
            return [f'Particle file not found: {path}']
        if not path.endswith(IMPORTED):
            return [f'{path}: import a file ending in {", ".join(IMPORTED)}.']
        try:
            self._read()
        except (InputError, ValueError) as error:
            return [str(error)]
        return []

    def _summary(self) -> List[str]:
        if not hasattr(self, 'outputParticles'):
            return ['Particles not imported yet.']
        particles = self.outputParticles
        return [f'{particles.getSize()} particles of {particles.getSamplingRate():g} A/px from {self.filePath.get()}'
                f'{" (phase-flipped)" if particles.isPhaseFlipped() else ""}.']

    def _methods(self) -> List[str]:
        return ['Particles were imported with their CTF and poses [Hamitouche2022].']

    def _citations(self) -> List[str]:
        return ['Hamitouche2022']
