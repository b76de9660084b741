"""Scipion viewer of the conformational space: density/source/score plots, interactive selection, FSC, maps.

The space is drawn as a 2D histogram image (responsive with millions of points). The interactive selection
window draws a lasso (free hand) or polygon (click vertices) with matplotlib widgets; every finished selection
is kept, and "save" writes them to a polygon file and launches a groups protocol with it, whose outputs are the
particle subsets (one per selection), so that selections keep their provenance in the project. Maps open in
ChimeraX when it is installed, otherwise their central slices are shown.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable, Dict, List, Optional

import numpy as np
from pwem.viewers import EmProtocolViewer
from pyworkflow.protocol import params

from deephemnma.convert.particles import particles_from_set, space_coordinates
from deephemnma.protocols.protocol_animate import DeepHemnmaProtAnimate
from deephemnma.protocols.protocol_groups import DeepHemnmaProtGroups
from deephemnma.protocols.protocol_reconstruct import DeepHemnmaProtReconstruct
from deephemnma.protocols.protocol_space import DeepHemnmaProtSpace
from deephemnma.space.groups import write_polygons
from deephemnma.space.plots import COLOUR_MODES, draw_space, save_fsc_plot, save_map_slices, save_space_plot
from deephemnma.viewers._images import show_image

SELECTION_TOOLS = ('lasso', 'polygon')


def launch_selection(project, particles, polygons: Dict[str, np.ndarray], path: str) -> DeepHemnmaProtGroups:
    """Write ``polygons`` to ``path`` and run a groups protocol selecting them from ``particles`` (a set with
    space coordinates); returns the finished protocol (its ``outputGroupN`` are the subsets)."""
    write_polygons(path, polygons)
    protocol = project.newProtocol(DeepHemnmaProtGroups, method=4, polygonsFile=os.path.abspath(path),
                                   objLabel='space selection')
    protocol.inputParticles.set(particles)
    project.launchProtocol(protocol, wait=True)
    return project.getProtocol(protocol.getObjId())


class SelectionWindow:
    """Lasso/polygon selection on a drawn space; ``on_save(polygons)`` receives the finished selections."""

    def __init__(self, coords: np.ndarray, on_save: Callable[[Dict[str, np.ndarray]], object],
                 tool: str = 'lasso', figure=None):
        import matplotlib.pyplot as plt
        from matplotlib.path import Path as PolygonPath
        from matplotlib.widgets import Button, LassoSelector, PolygonSelector
        self._contains = PolygonPath
        self.coords = np.asarray(coords, dtype=np.float64)[:, :2]
        self.on_save = on_save
        self.polygons: Dict[str, np.ndarray] = {}
        self.figure = figure or plt.figure(figsize=(8, 7))
        self.ax = self.figure.add_axes([0.1, 0.15, 0.8, 0.78])
        draw_space(self.ax, self.coords, 'density')
        self.ax.set_title(f'{tool}: draw a selection; "save" makes one particle subset per selection')
        if tool == 'lasso':
            self.selector = LassoSelector(self.ax, onselect=self.on_select)
        else:
            self.selector = PolygonSelector(self.ax, onselect=self.on_select)
        button_ax = self.figure.add_axes([0.78, 0.03, 0.12, 0.06])
        self.button = Button(button_ax, 'save')
        self.button.on_clicked(lambda _event: self.save())

    def on_select(self, vertices) -> int:
        """Keep a finished selection; returns the number of points inside it."""
        vertices = np.asarray(vertices, dtype=np.float64)
        if len(vertices) < 3:
            return 0
        name = f'selection {len(self.polygons) + 1}'
        self.polygons[name] = vertices
        inside = int(self._contains(vertices).contains_points(self.coords).sum())
        closed = np.vstack([vertices, vertices[:1]])
        self.ax.plot(closed[:, 0], closed[:, 1], 'r-', lw=1.2)
        self.ax.annotate(f'{name}: {inside}', closed[0], color='red')
        self.figure.canvas.draw_idle()
        return inside

    def save(self):
        """Hand the selections over (e.g. to :func:`launch_selection`)."""
        if not self.polygons:
            return None
        return self.on_save(dict(self.polygons))


class DeepHemnmaSpaceViewer(EmProtocolViewer):
    """Plots of the conformational space, groups, FSC curves and maps of the DeepHEMNMA space protocols."""

    _label = 'DeepHEMNMA space viewer'
    _targets = [DeepHemnmaProtSpace, DeepHemnmaProtGroups, DeepHemnmaProtReconstruct, DeepHemnmaProtAnimate]

    def _defineParams(self, form) -> None:
        form.addSection(label='Visualization')
        form.addParam('colourBy', params.EnumParam, choices=list(COLOUR_MODES), default=0, label='Colour by',
                      help='density: images per bin; source: each amplitude set in its colour; score: mean '
                           'alignment score per bin.')
        form.addParam('bins', params.IntParam, default=0, label='Bins per axis',
                      help='The space is drawn as a 2D histogram; 0: about 2 sqrt(images), between 50 and 400.')
        form.addParam('displaySpace', params.LabelParam, label='Display the space')
        form.addParam('selectionTool', params.EnumParam, choices=list(SELECTION_TOOLS), default=0,
                      label='Selection tool')
        form.addParam('displaySelection', params.LabelParam, label='Select groups interactively')
        form.addParam('displayFsc', params.LabelParam, label='Display FSC curves')
        form.addParam('displayMaps', params.LabelParam, label='Display maps')

    def _getVisualizeDict(self):
        return {'displaySpace': self._show_space, 'displaySelection': self._show_selection,
                'displayFsc': self._show_fsc, 'displayMaps': self._show_maps}

    def _form_value(self, name: str, default):
        """A form value (form attributes exist only once the viewer's form has been built)."""
        value = getattr(self, name, None)
        return value.get() if value is not None and value.get() is not None else default

    # ------------------------------------------------------------------ data
    def _space_particles(self):
        """The particle sets carrying space coordinates for this protocol."""
        protocol = self.protocol
        if isinstance(protocol, DeepHemnmaProtSpace):
            return [output for name, output in protocol.iterOutputAttributes() if name.startswith('outputParticles')]
        if isinstance(protocol, DeepHemnmaProtGroups):
            return [protocol.inputParticles.get()]
        return []

    def space_data(self):
        """``(coords, sources, scores or None)`` of every point of the space."""
        protocol = self.protocol
        if isinstance(protocol, DeepHemnmaProtSpace):
            from deephemnma.space.reduction import Space
            space = Space.load(protocol.space_path())
            scores = None
            particles = [particles_from_set(s) for s in self._space_particles()]
            if all(p.score is not None for p in particles):
                scores = np.concatenate([p.score for p in particles])
            return space.coords, space.sources, scores
        sets = self._space_particles()
        if not sets:
            raise ValueError(f'{type(protocol).__name__} has no conformational space to show')
        particles = particles_from_set(sets[0])
        return space_coordinates(sets[0]), np.full(len(particles), 'particles'), particles.score

    def save_space(self, path: str, colour_by: Optional[str] = None) -> str:
        """Draw the space (coloured by ``colour_by`` or the form's choice) into ``path``; returns it."""
        colour = colour_by or COLOUR_MODES[self._form_value('colourBy', 0)]
        coords, sources, scores = self.space_data()
        save_space_plot(path, coords, colour, values=scores, sources=sources, bins=self._form_value('bins', 0))
        return path

    def save_fsc(self, path: str) -> str:
        """All FSC curves of a reconstruction protocol in one plot."""
        from deephemnma.imaging.fsc import FSCCurve
        protocol = self.protocol
        if not isinstance(protocol, DeepHemnmaProtReconstruct):
            raise ValueError('FSC curves come from the reconstruction protocol')
        curves = {}
        for number in range(1, len(protocol.inputSets) + 1):
            record = protocol.fsc_curves(number)
            for key, curve in record.items():
                if isinstance(curve, dict) and 'fsc' in curve:
                    curves[f'map {number} {key}'] = FSCCurve(np.array(curve['fsc']), curve['box'],
                                                             curve['pixel_size'])
        save_fsc_plot(path, curves)
        return path

    def map_files(self) -> List[str]:
        protocol = self.protocol
        volumes = getattr(protocol, 'outputVolumes', None) or getattr(protocol, 'outputCentroidMaps', None)
        return [v.getFileName() for v in volumes] if volumes is not None else []

    def save_maps(self, folder: str) -> List[str]:
        """Central slices of every output map as PNG files in ``folder``."""
        from deephemnma.data.images import read_image
        paths = []
        for number, filename in enumerate(self.map_files(), start=1):
            volume, _ = read_image(filename)
            path = os.path.join(folder, f'map_{number:03d}_slices.png')
            save_map_slices(path, volume, os.path.basename(filename))
            paths.append(path)
        return paths

    # ------------------------------------------------------------------ GUI
    def _show_space(self, _param=None):
        return show_image(self.save_space(self.protocol._getExtraPath('viewer_space.png')))

    def _show_selection(self, _param=None):
        import matplotlib.pyplot as plt
        sets = self._space_particles()
        coords = space_coordinates(sets[0])
        path = self.protocol._getExtraPath('selection.json')
        window = SelectionWindow(coords, lambda polygons: launch_selection(self.getProject(), sets[0], polygons,
                                                                           path),
                                 SELECTION_TOOLS[self._form_value('selectionTool', 0)])
        self._selection_window = window  # keep the widgets alive
        plt.show(block=False)
        return []

    def _show_fsc(self, _param=None):
        return show_image(self.save_fsc(self.protocol._getExtraPath('viewer_fsc.png')))

    def _show_maps(self, _param=None):
        files = self.map_files()
        chimerax = chimerax_program()
        if chimerax and files:
            subprocess.Popen([chimerax] + files)
            return []
        for path in self.save_maps(self.protocol._getExtraPath()):
            show_image(path)
        return []


def chimerax_program() -> Optional[str]:
    """The ChimeraX that Scipion is configured with (the chimera plugin's home, or ``CHIMERA_HOME``), else the one
    on the PATH; None when there is none."""
    from pwem.viewers.viewer_chimera import Chimera
    configured = Chimera.getProgram()
    if configured and os.path.exists(configured):
        return configured
    return shutil.which('chimerax') or shutil.which('ChimeraX')
