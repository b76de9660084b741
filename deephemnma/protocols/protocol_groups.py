"""Scipion protocol: groups of particles in the conformational space, output as particle subsets."""
from __future__ import annotations

import os

from pyworkflow.protocol import params

from deephemnma.constants import SPACE_ATTR
from deephemnma.convert.particles import first_item_has, particles_from_set, space_coordinates, subset_of
from deephemnma.data.formats import write_particles
from deephemnma.protocols.base import DeepHemnmaProtocol
from deephemnma.runtime.errors import InputError
from deephemnma.space.groups import (
    AUTOMATIC_METHODS,
    PAPER_MIN_COUNT,
    group_members,
    polygon_labels,
    read_labels,
    read_polygons,
)

METHODS = AUTOMATIC_METHODS + ('polygons',)
LABELS_FILE = 'labels.txt'
POINTS_FILE = 'points.star'


class DeepHemnmaProtGroups(DeepHemnmaProtocol):
    """Make groups of particles in the conformational space: polygons (drawn in the viewer or given in a file),
    quasi-uniform slices of an axis (the paper), k-means, Gaussian mixtures or density peaks. Each group is
    output as a subset of the particles, ready for 3D reconstruction."""

    _label = 'space groups'

    def _defineParams(self, form) -> None:
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles', important=True,
                      label='Particles in the space',
                      help='Output particles of the conformational space protocol (they carry their space '
                           'coordinates).')
        form.addSection(label='Groups')
        form.addParam('method', params.EnumParam, choices=list(METHODS), default=0, label='Grouping',
                      help='slices: quasi-uniform slices of one axis with a minimum number of images (the '
                           'paper); kmeans, gmm (Gaussian mixture), density_peaks: clustering; polygons: the '
                           'selections of a polygon file (e.g. saved by the viewer).')
        form.addParam('polygonsFile', params.FileParam, condition='method == 4', label='Polygon file',
                      help='JSON: {"name": [[x, y], ...], ...} in the coordinates of the space (axes 1 and 2).')
        form.addParam('axis', params.IntParam, default=1, condition='method == 0', label='Axis to slice',
                      help='1 = first principal axis.')
        form.addParam('minCount', params.IntParam, default=PAPER_MIN_COUNT, condition='method == 0',
                      label='Minimum images per group', help='The paper used about 900.')
        form.addParam('numberOfGroups', params.IntParam, default=3, condition='method != 4',
                      label='Number of groups',
                      help='For clustering; for slices, 0 makes as many slices as the minimum size allows.')
        form.addParam('trim', params.FloatParam, default=0.0, condition='method == 0',
                      expertLevel=params.LEVEL_ADVANCED, label='Trim fraction',
                      help='Fraction of images left out at each end of the axis (outliers).')
        form.addParam('equalCounts', params.BooleanParam, default=False, condition='method == 0',
                      expertLevel=params.LEVEL_ADVANCED, label='Equal-count slices',
                      help='Cut the axis at quantiles (groups of equal size) instead of equal widths.')
        form.addParam('seed', params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED, label='Random seed')

    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.groupStep)
        self._insertFunctionStep(self.createOutputStep)

    def convertInputStep(self) -> None:
        write_particles(self._getExtraPath(POINTS_FILE), particles_from_set(self.inputParticles.get(),
                                                                            require_amplitudes=True))

    def _arguments(self) -> str:
        method = METHODS[self.method.get()]
        arguments = f'--points {self._getExtraPath(POINTS_FILE)} -o {self._getExtraPath()} --method {method}'
        if method == 'polygons':
            return arguments + f' --polygons {os.path.abspath(self.polygonsFile.get())}'
        arguments += f' --axis {self.axis.get()} --min-count {self.minCount.get()} --trim {self.trim.get()} ' \
                     f'--seed {self.seed.get()}'
        if self.numberOfGroups.get():
            arguments += f' --groups {self.numberOfGroups.get()}'
        return arguments + (' --equal-counts' if self.equalCounts.get() else '')

    def groupStep(self) -> None:
        self.runCommand('groups', self._arguments())

    def createOutputStep(self) -> None:
        source = self.inputParticles.get()
        members = group_members(read_labels(self._getExtraPath(LABELS_FILE)))
        outputs = {f'outputGroup{number}': subset_of(self._createSetOfParticles(suffix=f'group{number}'), source,
                                                     indices)
                   for number, indices in enumerate(members, start=1)}
        self._defineOutputs(**outputs)
        for output in outputs.values():
            self._defineSourceRelation(self.inputParticles, output)

    def _validate(self):
        errors = []
        particle_set = self.inputParticles.get()
        if particle_set is None or particle_set.getSize() == 0:
            return ['The input set of particles is empty.']
        if not first_item_has(particle_set, SPACE_ATTR):
            return ['The particles have no space coordinates: use the output of the conformational space '
                    'protocol.']
        method = METHODS[self.method.get()]
        if method == 'polygons':
            path = self.polygonsFile.get()
            if not path or not os.path.exists(path):
                return [f'Polygon file not found: {path}']
            try:
                polygons = list(read_polygons(path).values())
                group_members(polygon_labels(space_coordinates(self.inputParticles.get()), polygons))
            except InputError as error:
                errors.append(f'The polygons select no valid groups: {error}')
        elif method == 'slices':
            if self.minCount.get() < 1:
                errors.append('The minimum group size must be at least 1.')
            if self.minCount.get() > particle_set.getSize():
                errors.append(f'The minimum group size {self.minCount.get()} exceeds the {particle_set.getSize()} '
                              'particles.')
            if not 0 <= self.trim.get() < 0.5:
                errors.append('The trim fraction must be in [0, 0.5).')
        elif not 1 <= self.numberOfGroups.get() <= particle_set.getSize():
            errors.append(f'The number of groups must be between 1 and {particle_set.getSize()}.')
        return errors

    def _summary(self):
        groups = [output for name, output in self.iterOutputAttributes() if name.startswith('outputGroup')]
        if not groups:
            return ['Groups not computed yet.']
        return [f'{len(groups)} groups ({METHODS[self.method.get()]}): '
                + ', '.join(str(g.getSize()) for g in groups) + ' particles.']

    def _methods(self):
        return [f'Particles were grouped in the conformational space by {METHODS[self.method.get()]}, as in '
                'DeepHEMNMA [Hamitouche2022] (slices of the first principal axis with at least about 900 images).']

    def _citations(self):
        return ['Hamitouche2022', 'Harastani2020']
