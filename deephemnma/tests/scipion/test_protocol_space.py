"""Scipion protocols of the conformational space (space, groups, reconstruct, animate) and the space viewer.

Data: adenylate kinase images on the paper's helix (simulated here, small), imported into a Scipion project as
a SetOfParticles with poses, CTF and amplitudes; bad inputs (empty group, poses missing, particles and poses
of different sizes) are checked through each protocol's ``_validate``.
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache

import numpy as np
import torch
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImportParticles
from pyworkflow.tests import BaseTest, setupTestProject

from deephemnma.convert.particles import fill_set_of_particles, particles_from_set
from deephemnma.data.images import write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.imaging.ctf import CTFParams
from deephemnma.imaging.rotations import matrix_to_euler, random_rotations
from deephemnma.protocols import (
    DeepHemnmaProtAnimate,
    DeepHemnmaProtGroups,
    DeepHemnmaProtReconstruct,
    DeepHemnmaProtSpace,
)
from deephemnma.simulate.physics import simulate_particles
from deephemnma.simulate.setup import paper_ak_setup
from deephemnma.space.groups import write_polygons
from deephemnma.space.reduction import fit_space

COUNT, BOX, PIXEL = 240, 32, 2.5


@lru_cache(maxsize=1)
def _simulated():
    """Phase-flipped CTF images of adenylate kinase on the helix (poses, amplitudes, defocus, r)."""
    torch.set_num_threads(1)
    setup = paper_ak_setup()
    rng = np.random.default_rng(11)
    r = rng.uniform(0, 1, COUNT)
    amplitudes = 150 * np.stack([r, np.sin(np.pi * r), np.cos(np.pi * r)], axis=1)
    angles = matrix_to_euler(random_rotations(COUNT, rng))
    shifts = rng.uniform(-2, 2, (COUNT, 2))
    defocus = rng.uniform(6000, 16000, COUNT)
    ctf = CTFParams(defocus_u=torch.as_tensor(defocus), defocus_v=torch.as_tensor(defocus), voltage=200.0, cs=2.0,
                    amplitude_contrast=0.1)
    images = simulate_particles(setup, amplitudes, angles, shifts, BOX, PIXEL, ctf=ctf, phase_flip=True).images
    return images, amplitudes, angles, shifts, defocus, r


def _write_particles(folder: str, shifts_scale: float = 1.0, aligned: bool = True, name: str = 'particles'):
    """The simulated particles as a Scipion sqlite set (with CTF, and poses and amplitudes when ``aligned``)."""
    images, amplitudes, angles, shifts, defocus, _ = _simulated()
    stack = os.path.join(folder, 'particles.mrcs')
    if not os.path.exists(stack):
        write_stack(stack, images, PIXEL)
    particles = Particles(image=stack_locations(stack, COUNT), pixel_size=PIXEL,
                          angles=angles if aligned else None, shifts=shifts * shifts_scale if aligned else None,
                          amplitudes=amplitudes if aligned else None, defocus_u=defocus, defocus_v=defocus,
                          defocus_angle=np.zeros(COUNT), voltage=200.0, cs=2.0, amplitude_contrast=0.1)
    output = SetOfParticles(filename=os.path.join(folder, f'{name}.sqlite'))
    fill_set_of_particles(output, particles, base_dir=folder)
    output.write()
    output.close()
    return os.path.join(folder, f'{name}.sqlite')


class TestSpaceProtocols(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = tempfile.mkdtemp(prefix='space-data-', dir=cls.proj.getPath())
        cls.imported = cls._import(_write_particles(cls.data))
        _, cls.amplitudes, _, _, _, cls.r = _simulated()
        cls.space_prot = cls._space()

    @classmethod
    def _import(cls, sqlite):
        prot = cls.newProtocol(ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_SCIPION,
                               sqliteFile=sqlite, samplingRate=PIXEL, voltage=200.0, sphericalAberration=2.0,
                               amplitudeContrast=0.1, magnification=50000)
        cls.launchProtocol(prot)
        return prot.outputParticles

    @classmethod
    def _space(cls):
        prot = cls.newProtocol(DeepHemnmaProtSpace, components=2)
        prot.inputParticles.set(cls.imported)
        cls.launchProtocol(prot)
        return prot

    def test_space_groups_reconstruct_animate_view(self):
        space_prot = self.space_prot
        output = space_prot.outputParticles
        self.assertEqual(output.getSize(), COUNT)
        coords = np.asarray(particles_from_set(output).extra['space'])
        expected = fit_space({'predicted': self.amplitudes}, 'pca', 2).coords
        self.assertTrue(np.allclose(np.abs(coords), np.abs(expected), atol=1e-3))
        self.assertGreater(abs(np.corrcoef(coords[:, 0], self.r)[0, 1]), 0.95)

        groups = self.newProtocol(DeepHemnmaProtGroups, method=0, minCount=80, numberOfGroups=0, equalCounts=True)
        groups.inputParticles.set(output)
        self.launchProtocol(groups)
        sizes = [getattr(groups, f'outputGroup{n}').getSize() for n in (1, 2, 3)]
        self.assertEqual(sizes, [80, 80, 80])
        self.assertFalse(hasattr(groups, 'outputGroup4'))

        recon = self.newProtocol(DeepHemnmaProtReconstruct, ctfMode=1)  # 1: phase-flipped (CTF_CHOICES)
        for n in (1, 2):
            recon.inputSets.append(getattr(groups, f'outputGroup{n}'))
        self.assertEqual(recon._validate(), [])
        self.launchProtocol(recon)
        volumes = recon.outputVolumes
        self.assertEqual(volumes.getSize(), 2)
        first = volumes.getFirstItem()
        self.assertTrue(first.hasHalfMaps())
        self.assertEqual(first.getXDim(), BOX)
        record = recon.fsc_curves(1)
        self.assertEqual(record['images'], sizes[0])
        self.assertLess(record['half_maps']['resolution_0143_angstrom'], 8 * PIXEL)

        self._viewer_checks(space_prot, groups, recon)
        self._animate_checks(space_prot, groups)

    def _animate_checks(self, space_prot, groups):
        from deephemnma.convert.modes import normal_modes_from_set
        from deephemnma.molecule.structure import read_structure
        from deephemnma.tests.scipion.projects import launch_simulation
        simulation = launch_simulation(type(self), count=8, box=32, pixelSize=4.5, coarse=1, maxShift=0.0,
                                       applyCtf=False, addNoise=False, numberOfThreads=1)
        animate = self.newProtocol(DeepHemnmaProtAnimate, modeNumbers='7 8 9', frames=5, axes='1 2')
        animate.inputModes.set(simulation.outputModes)
        for n in (1, 2, 3):
            animate.inputGroups.append(getattr(groups, f'outputGroup{n}'))
        animate.inputSpace.set(space_prot)
        self.assertEqual(animate._validate(), [])
        self.launchProtocol(animate)
        modes = normal_modes_from_set(simulation.outputModes, [7, 8, 9])
        members = particles_from_set(groups.outputGroup2).amplitudes
        centroid = read_structure(animate.outputCentroid2.getFileName())
        expected = modes.structure.coords + np.tensordot(members.mean(axis=0), modes.vectors, axes=1)
        self.assertLess(np.abs(centroid.coords - expected).max(), 2e-3)
        self.assertEqual(animate.outputCentroidMaps.getSize(), 3)
        with open(animate.outputAnimation2.getFileName()) as handle:
            self.assertEqual(handle.read().count('MODEL'), 5)
        wrong = self.newProtocol(DeepHemnmaProtAnimate, modeNumbers='7 8')
        wrong.inputModes.set(simulation.outputModes)
        wrong.inputGroups.append(groups.outputGroup1)
        self.assertTrue(any('2 modes are selected' in e for e in wrong._validate()))

    def _viewer_checks(self, space_prot, groups, recon):
        from deephemnma.viewers.viewer_space import DeepHemnmaSpaceViewer
        viewer = DeepHemnmaSpaceViewer(project=self.proj, protocol=space_prot)
        folder = tempfile.mkdtemp(prefix='viewer-', dir=self.proj.getPath())
        for colour in ('density', 'source'):
            path = viewer.save_space(os.path.join(folder, f'{colour}.png'), colour)
            self.assertGreater(os.path.getsize(path), 3000)
        fsc_viewer = DeepHemnmaSpaceViewer(project=self.proj, protocol=recon)
        path = fsc_viewer.save_fsc(os.path.join(folder, 'fsc.png'))
        self.assertGreater(os.path.getsize(path), 3000)
        paths = fsc_viewer.save_maps(folder)
        self.assertEqual(len(paths), 2)
        self._selection_checks(viewer, space_prot, folder)

    def _selection_checks(self, viewer, space_prot, folder):
        """The viewer's selection, driven headless with given polygons: one step makes the groups protocol (one
        subset per polygon) and the reconstruction of each subset with its poses; the maps open as slices."""
        from matplotlib.figure import Figure
        from pyworkflow.object import Boolean, Integer

        from deephemnma.viewers.viewer_space import SelectionWindow, open_maps
        coords = np.asarray(particles_from_set(space_prot.outputParticles).extra['space'])
        middle = np.median(coords[:, 0])
        low, high = coords.min(axis=0) - 1, coords.max(axis=0) + 1
        left = np.array([[low[0], low[1]], [middle, low[1]], [middle, high[1]], [low[0], high[1]]])
        right = np.array([[middle, low[1]], [high[0], low[1]], [high[0], high[1]], [middle, high[1]]])
        viewer.groupsCtf = Integer(1)  # the form's "Images are": phase_flipped (CTF_CHOICES)
        window = SelectionWindow(coords, viewer.select_groups, 'polygon', figure=Figure())
        expected = [int((coords[:, 0] < middle).sum()), int((coords[:, 0] > middle).sum())]
        self.assertEqual([window.on_select(left), window.on_select(right)], expected)
        launched = window.save()
        sizes = [launched.groups.outputGroup1.getSize(), launched.groups.outputGroup2.getSize()]
        self.assertEqual(sizes, expected)
        volumes = [volume.clone() for volume in launched.reconstruction.outputVolumes]
        self.assertEqual(len(volumes), 2)
        for number, (volume, size) in enumerate(zip(volumes, sizes), start=1):
            self.assertTrue(os.path.exists(volume.getFileName()))
            self.assertEqual(volume.getXDim(), BOX)
            self.assertEqual(launched.reconstruction.fsc_curves(number)['images'], size)
        self.assertEqual(launched.map_files(), [v.getFileName() for v in volumes])
        slices = tempfile.mkdtemp(prefix='opened-', dir=folder)
        open_maps(launched.map_files(), slices)  # no ChimeraX here: central slices drawn and shown
        self.assertEqual(sorted(os.listdir(slices)), ['map_001_slices.png', 'map_002_slices.png'])
        # Slices of an axis from the viewer's form, groups only.
        viewer.reconstructGroups, viewer.numberOfSlices = Boolean(False), Integer(3)
        sliced = viewer.slice_axis()
        self.assertIsNone(sliced.reconstruction)
        self.assertEqual([getattr(sliced.groups, f'outputGroup{n}').getSize() for n in (1, 2, 3)], [80, 80, 80])

    def test_bad_inputs_are_refused(self):
        space_prot = self.space_prot
        # Empty group: polygons that select no particle.
        polygons = os.path.join(self.data, 'nowhere.json')
        write_polygons(polygons, {'far': np.array([[1e6, 1e6], [1e6 + 1, 1e6], [1e6, 1e6 + 1]])})
        groups = self.newProtocol(DeepHemnmaProtGroups, method=4, polygonsFile=polygons)
        groups.inputParticles.set(space_prot.outputParticles)
        self.assertTrue(any('empty selection' in e for e in groups._validate()))
        # Particles without space coordinates.
        groups_raw = self.newProtocol(DeepHemnmaProtGroups, method=1, numberOfGroups=2)
        groups_raw.inputParticles.set(self.imported)
        self.assertTrue(any('no space coordinates' in e for e in groups_raw._validate()))
        # Poses missing.
        unaligned = self._import(_write_particles(self.data, aligned=False, name='unaligned'))
        recon = self.newProtocol(DeepHemnmaProtReconstruct, ctfMode=1)  # 1: phase-flipped (CTF_CHOICES)
        recon.inputSets.append(unaligned)
        self.assertTrue(any('no poses' in e for e in recon._validate()))
        space_bad = self.newProtocol(DeepHemnmaProtSpace)
        space_bad.inputParticles.set(unaligned)
        self.assertTrue(any('no normal-mode amplitudes' in e for e in space_bad._validate()))
        # Particles and poses of different sizes: poses (shifts) from 10x larger images do not fit ...
        big_poses = self._import(_write_particles(self.data, shifts_scale=10.0, name='big_poses'))
        recon_size = self.newProtocol(DeepHemnmaProtReconstruct, ctfMode=1)  # 1: phase-flipped (CTF_CHOICES)
        recon_size.inputSets.append(big_poses)
        self.assertTrue(any('do not match' in e for e in recon_size._validate()))
        # ... unless the size the poses were estimated at is given.
        recon_size.poseBox.set(10 * BOX)
        self.assertEqual(recon_size._validate(), [])
