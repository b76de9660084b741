"""Scipion protocol: the conformational space of normal-mode amplitudes (PCA and other reductions)."""
from __future__ import annotations

from pyworkflow.protocol import params

from deephemnma.constants import AMPLITUDES_ATTR, SPACE_ATTR
from deephemnma.convert.particles import copy_with_vectors, first_item_has, particles_from_set
from deephemnma.data.formats import write_particles
from deephemnma.protocols.base import DeepHemnmaProtocol, quoted
from deephemnma.space.reduction import METHODS, TRANSFORMABLE

SPACE_FILE = 'space.pkl'
_FIT_CHOICES = ('both sets', 'first set', 'second set')


class DeepHemnmaProtSpace(DeepHemnmaProtocol):
    """Reduce the normal-mode amplitudes of particles (predicted, HEMNMA-estimated or both) to a 2D or 3D
    conformational space. Each particle becomes a point; near points are similar conformations."""

    _label = 'conformational space'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      label='Particles with amplitudes', important=True,
                      help='Particles carrying normal-mode amplitudes (output of DeepHEMNMA inference, of the '
                           'HEMNMA alignment, or of ContinuousFlex HEMNMA).')
        form.addParam('firstName', params.StringParam, default='predicted', label='Name of this set',
                      help='Shown in the plots coloured by source.')
        form.addParam('secondParticles', params.PointerParam, pointerClass='SetOfParticles', allowsNull=True,
                      label='Second set (optional)',
                      help='Another set with amplitudes of the same modes, e.g. the HEMNMA estimates of the '
                           'training images, to see both in one space.')
        form.addParam('secondName', params.StringParam, default='hemnma', label='Name of the second set',
                      condition='secondParticles')
        form.addParam('fitOn', params.EnumParam, choices=list(_FIT_CHOICES), default=0,
                      label='Fit the space on', condition='secondParticles',
                      help='The set(s) whose amplitudes define the axes; the other set is placed in the space '
                           '(possible with PCA, kernel PCA, Isomap and UMAP).')
        form.addSection(label='Reduction')
        form.addParam('method', params.EnumParam, choices=list(METHODS), default=0, label='Method',
                      help='PCA (the paper\'s choice), kernel PCA, Isomap, spectral embedding, LTSA, t-SNE '
                           '(scikit-learn), or UMAP (needs umap-learn).')
        form.addParam('components', params.IntParam, default=2, label='Dimensions',
                      validators=[params.Range(1, 3)], help='Dimensions of the space (2 or 3 for plots).')
        form.addParam('standardise', params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label='Standardise modes', help='Scale each mode\'s amplitudes to unit variance first.')
        form.addParam('neighbours', params.IntParam, default=15, expertLevel=params.LEVEL_ADVANCED,
                      label='Neighbours', help='Neighbourhood size of Isomap, spectral embedding, LTSA and UMAP.')
        form.addParam('perplexity', params.FloatParam, default=30.0, expertLevel=params.LEVEL_ADVANCED,
                      label='t-SNE perplexity')
        form.addParam('seed', params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED, label='Random seed')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.buildSpaceStep)
        self._insertFunctionStep(self.createOutputStep)

    def _sets(self):
        sets = [(self.firstName.get(), self.inputParticles.get())]
        if self.secondParticles.get() is not None:
            sets.append((self.secondName.get(), self.secondParticles.get()))
        return sets

    def _fit_on(self):
        names = [name for name, _ in self._sets()]
        choice = self.fitOn.get() if len(names) > 1 else 0
        return names if choice == 0 else [names[choice - 1]]

    def _amplitudesPath(self, number: int) -> str:
        return self._getExtraPath(f'amplitudes_{number}.star')

    def convertInputStep(self) -> None:
        for number, (_, particle_set) in enumerate(self._sets(), start=1):
            write_particles(self._amplitudesPath(number), particles_from_set(particle_set, require_amplitudes=True))

    def buildSpaceStep(self) -> None:
        inputs = ' '.join(f'-i {quoted(f"{name}={self._amplitudesPath(number)}")}'
                          for number, (name, _) in enumerate(self._sets(), start=1))
        arguments = (f'{inputs} -o {self._getExtraPath()} --method {METHODS[self.method.get()]} '
                     f'--components {self.components.get()} --fit-on {quoted(*self._fit_on())} '
                     f'--neighbours {self.neighbours.get()} --perplexity {self.perplexity.get()} '
                     f'--seed {self.seed.get()}')
        if self.standardise.get():
            arguments += ' --standardise'
        self.runCommand('space', arguments)

    def space_path(self) -> str:
        """The fitted space file (reload with :meth:`deephemnma.space.reduction.Space.load`)."""
        return self._getExtraPath(SPACE_FILE)

    def createOutputStep(self) -> None:
        from deephemnma.space.reduction import Space
        space = Space.load(self.space_path())
        outputs = {}
        for number, (name, particle_set) in enumerate(self._sets(), start=1):
            key = 'outputParticles' if number == 1 else f'outputParticles{number}'
            outputs[key] = copy_with_vectors(self._createSetOfParticles(suffix=str(number)), particle_set,
                                             space.of_source(name), SPACE_ATTR)
        self._defineOutputs(**outputs)
        for number, (_, particle_set) in enumerate(self._sets(), start=1):
            key = 'outputParticles' if number == 1 else f'outputParticles{number}'
            self._defineSourceRelation(particle_set, outputs[key])

    def _validate(self):
        errors = []
        method = METHODS[self.method.get()]
        for name, particle_set in self._sets():
            if particle_set is None or particle_set.getSize() == 0:
                errors.append(f"The set '{name}' is empty.")
            elif not first_item_has(particle_set, AMPLITUDES_ATTR):
                errors.append(f"The particles of '{name}' have no normal-mode amplitudes ({AMPLITUDES_ATTR}); "
                              'use the output of an alignment or inference protocol.')
        if len(self._sets()) > 1 and self.fitOn.get() != 0 and method not in TRANSFORMABLE:
            errors.append(f'{method} cannot place points it was not fitted on: fit it on both sets, or use one '
                          f'of {", ".join(TRANSFORMABLE)}.')
        if method == 'umap':
            try:
                import umap  # noqa: F401
            except ImportError:
                errors.append('UMAP needs the umap-learn package: pip install umap-learn')
        if len({n for n, _ in self._sets()}) < len(self._sets()):
            errors.append('Give the two sets different names.')
        return errors

    def _summary(self):
        if not hasattr(self, 'outputParticles'):
            return ['Space not computed yet.']
        lines = [f'{METHODS[self.method.get()]} space of {self.components.get()} dimensions, fitted on '
                 f'{", ".join(self._fit_on())}.']
        for name, particle_set in self._sets():
            lines.append(f'{name}: {particle_set.getSize()} particles.')
        return lines

    def _methods(self):
        return [f'The normal-mode amplitudes of the particles were reduced to a {self.components.get()}-D '
                f'conformational space with {METHODS[self.method.get()]} (scikit-learn), as in DeepHEMNMA '
                '[Hamitouche2022] and HEMNMA [Harastani2020].']

    def _citations(self):
        return ['Hamitouche2022', 'Harastani2020', 'Jin2014']
