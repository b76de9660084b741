"""Scipion viewer of the conformational space: density/source/score plots, interactive selection, FSC, maps.

The space is drawn as a 2D histogram image (responsive with millions of points). The interactive selection
window draws a lasso (free hand) or polygon (click vertices) with matplotlib widgets; every finished selection
is kept, and "save" writes them to a polygon file and launches, in one step, a groups protocol with it (one
particle subset per selection) and a reconstruction protocol of every subset with its particles' poses, so that
selections and maps keep their provenance in the project; the finished maps open at once. Slices of an axis (the
paper's grouping) are launched the same way. Maps open in ChimeraX when it is configured, otherwise their central
slices are shown.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np
from pwem.viewers import EmProtocolViewer
from pyworkflow.protocol import params

from deephemnma.convert.particles import particles_from_set, space_coordinates
from deephemnma.protocols.base import CTF_CHOICES
from deephemnma.protocols.protocol_animate import DeepHemnmaProtAnimate
from deephemnma.protocols.protocol_groups import METHODS, DeepHemnmaProtGroups
from deephemnma.protocols.protocol_reconstruct import DeepHemnmaProtReconstruct
from deephemnma.protocols.protocol_space import DeepHemnmaProtSpace
from deephemnma.space.groups import write_polygons
from deephemnma.space.plots import COLOUR_MODES, draw_space, save_fsc_plot, save_map_slices, save_space_plot
from deephemnma.viewers._images import show_image

SELECTION_TOOLS = ('lasso', 'polygon')


class LaunchedGroups(NamedTuple):
    """The finished protocols of one launch from the viewer: the groups and, when asked, their maps."""

    groups: DeepHemnmaProtGroups
    reconstruction: Optional[DeepHemnmaProtReconstruct]

    def map_files(self) -> List[str]:
        """The reconstructed maps, one per group (empty without a reconstruction)."""
        return [] if self.reconstruction is None else volume_files(self.reconstruction.outputVolumes)


def _finished(project, protocol, what: str):
    """Launch ``protocol``, wait for it and return its finished copy; a failed run raises with its error."""
    project.launchProtocol(protocol, wait=True)
    finished = project.getProtocol(protocol.getObjId())
    if not finished.isFinished():
        raise RuntimeError(f'{what} failed: {finished.getErrorMessage()}')
    return finished


def launch_groups(project, particles, label: str, reconstruct: bool = True, ctf_mode: int = 0,
                  **grouping) -> LaunchedGroups:
    """Run a groups protocol on ``particles`` (a set with space coordinates) with the ``grouping`` fields of
    :class:`DeepHemnmaProtGroups` and, when ``reconstruct``, a reconstruction protocol of every group with its
    particles' poses (``ctf_mode``: index in ``CTF_CHOICES``); waits for both."""
    groups = project.newProtocol(DeepHemnmaProtGroups, objLabel=label, **grouping)
    groups.inputParticles.set(particles)
    groups = _finished(project, groups, f'The groups protocol "{label}"')
    if not reconstruct:
        return LaunchedGroups(groups, None)
    reconstruction = project.newProtocol(DeepHemnmaProtReconstruct, objLabel=f'{label}: maps', ctfMode=ctf_mode)
    for _name, subset in groups.iterOutputAttributes():
        reconstruction.inputSets.append(subset)
    errors = reconstruction._validate()
    if errors:
        raise ValueError(f'The groups of "{label}" cannot be reconstructed: ' + ' '.join(errors))
    return LaunchedGroups(groups, _finished(project, reconstruction, f'The reconstruction of "{label}"'))


def launch_selection(project, particles, polygons: Dict[str, np.ndarray], path: str, reconstruct: bool = True,
                     ctf_mode: int = 0) -> LaunchedGroups:
    """Write ``polygons`` to ``path``, select them from ``particles`` (a groups protocol: ``outputGroupN`` is
    the subset of selection N) and reconstruct each subset (see :func:`launch_groups`)."""
    write_polygons(path, polygons)
    return launch_groups(project, particles, 'space selection', reconstruct, ctf_mode, method=METHODS.index('polygons'),
                         polygonsFile=os.path.abspath(path))


def launch_axis_slices(project, particles, axis: int, slices: int, reconstruct: bool = True,
                       ctf_mode: int = 0) -> LaunchedGroups:
    """Cut axis ``axis`` (1-based) of the space into ``slices`` groups of equal counts (the paper's grouping)
    and reconstruct each (see :func:`launch_groups`)."""
    return launch_groups(project, particles, f'axis {axis} in {slices} slices', reconstruct, ctf_mode,
                         method=METHODS.index('slices'), axis=axis, numberOfGroups=slices, minCount=1,
                         equalCounts=True)


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
        form.addParam('reconstructGroups', params.BooleanParam, default=True, label='Reconstruct the groups',
                      help='Each selection or slicing below launches a groups protocol and, when yes, the '
                           'reconstruction of every group with its particles\' poses; the maps open when done.')
        form.addParam('groupsCtf', params.EnumParam, choices=list(CTF_CHOICES), default=0,
                      condition='reconstructGroups', label='Images are',
                      help='What the images carry of the CTF, for the reconstruction (as in the reconstruction '
                           'protocol).')
        form.addParam('displaySelection', params.LabelParam, label='Select groups interactively')
        form.addParam('sliceAxis', params.IntParam, default=1, label='Axis to slice', help='1 = first axis.')
        form.addParam('numberOfSlices', params.IntParam, default=5, label='Number of slices',
                      help='Groups of equal counts along the axis (the paper\'s grouping).')
        form.addParam('displayAxisGroups', params.LabelParam, label='Slice the axis into groups')
        form.addParam('displayFsc', params.LabelParam, label='Display FSC curves')
        form.addParam('displayMaps', params.LabelParam, label='Display maps')

    def _getVisualizeDict(self):
        return {'displaySpace': self._show_space, 'displaySelection': self._show_selection,
                'displayAxisGroups': self._show_axis_groups, 'displayFsc': self._show_fsc,
                'displayMaps': self._show_maps}

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
        return volume_files(volumes) if volumes is not None else []

    def save_maps(self, folder: str) -> List[str]:
        """Central slices of every output map as PNG files in ``folder``."""
        return save_slices_of_maps(self.map_files(), folder)

    # ------------------------------------------------------------------ GUI
    def _show_space(self, _param=None):
        return show_image(self.save_space(self.protocol._getExtraPath('viewer_space.png')))

    def _launch_options(self) -> dict:
        return {'reconstruct': bool(self._form_value('reconstructGroups', True)),
                'ctf_mode': self._form_value('groupsCtf', 0)}

    def select_groups(self, polygons: Dict[str, np.ndarray]) -> LaunchedGroups:
        """Launch the groups of ``polygons`` (drawn in the selection window) and, as the form says, their maps."""
        return launch_selection(self.getProject(), self._space_particles()[0], polygons,
                                self.protocol._getExtraPath('selection.json'), **self._launch_options())

    def slice_axis(self) -> LaunchedGroups:
        """Launch the form's slices of an axis and, as the form says, their maps."""
        return launch_axis_slices(self.getProject(), self._space_particles()[0], self._form_value('sliceAxis', 1),
                                  self._form_value('numberOfSlices', 5), **self._launch_options())

    def _open_launched(self, launched: LaunchedGroups) -> List:
        if launched.reconstruction is None:
            return []
        return open_maps(launched.map_files(), launched.reconstruction._getExtraPath())

    def _show_selection(self, _param=None):
        import matplotlib.pyplot as plt
        coords = space_coordinates(self._space_particles()[0])
        window = SelectionWindow(coords, lambda polygons: self._open_launched(self.select_groups(polygons)),
                                 SELECTION_TOOLS[self._form_value('selectionTool', 0)])
        self._selection_window = window  # keep the widgets alive
        plt.show(block=False)
        return []

    def _show_axis_groups(self, _param=None):
        return self._open_launched(self.slice_axis())

    def _show_fsc(self, _param=None):
        return show_image(self.save_fsc(self.protocol._getExtraPath('viewer_fsc.png')))

    def _show_maps(self, _param=None):
        return open_maps(self.map_files(), self.protocol._getExtraPath())


def volume_files(volumes) -> List[str]:
    """The file of each volume of a Scipion set (the set's iterator reuses one item, so names are read in turn)."""
    return [volume.getFileName() for volume in volumes]


def save_slices_of_maps(files: List[str], folder: str) -> List[str]:
    """Central slices of each map in ``files`` as PNG files in ``folder``; returns their paths."""
    from deephemnma.data.images import read_image
    paths = []
    for number, filename in enumerate(files, start=1):
        volume, _ = read_image(filename)
        path = os.path.join(folder, f'map_{number:03d}_slices.png')
        save_map_slices(path, volume, os.path.basename(filename))
        paths.append(path)
    return paths


def open_maps(files: List[str], folder: str) -> List:
    """Open ``files`` in ChimeraX when it is configured, otherwise show their central slices (drawn into
    ``folder``); returns the viewer's empty list of messages."""
    chimerax = chimerax_program()
    if chimerax and files:
        subprocess.Popen([chimerax] + files)
        return []
    for path in save_slices_of_maps(files, folder):
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
