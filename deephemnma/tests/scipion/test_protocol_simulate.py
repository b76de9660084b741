"""The simulation protocol in a Scipion project: outputs with ground truth, and refusals of bad settings."""
import json
import os

import numpy as np

from deephemnma.constants import TRUE_PREFIX
from deephemnma.protocols.protocol_simulate import DeepHemnmaProtSimulate
from deephemnma.tests.scipion.projects import SimulatedProjectCase

SMALL = dict(count=12, box=48, pixelSize=1.6, coarse=1, amplitudeScale=30.0, chunkSize=5, defocusMin=6000.0,
             defocusMax=9000.0, astigmatism=300.0, snr=0.1, seed=3)


class TestProtocolSimulate(SimulatedProjectCase):
    SIMULATION = SMALL

    def test_outputs_carry_ctf_and_ground_truth(self):
        prot = self.simulation
        particles, modes, structure = prot.outputParticles, prot.outputModes, prot.outputStructure
        self.assertEqual(particles.getSize(), 12)
        self.assertTrue(particles.hasCTF())
        self.assertFalse(particles.hasAlignment())
        self.assertAlmostEqual(particles.getSamplingRate(), 1.6)
        self.assertAlmostEqual(particles.getAcquisition().getVoltage(), 200.0)
        folder = prot._getExtraPath('simulation')
        truth = np.load(os.path.join(folder, 'ground_truth.npz'))
        stored = np.array([list(map(float, p.__getattribute__(TRUE_PREFIX + 'amplitudes')))
                           for p in particles.iterItems(orderBy='id')])
        np.testing.assert_allclose(stored, truth['amplitudes'], atol=1e-5)
        first = particles.getFirstItem()
        np.testing.assert_allclose(list(map(float, getattr(first, TRUE_PREFIX + 'angles'))), truth['angles'][0],
                                   atol=1e-5)
        self.assertAlmostEqual(first.getCTF().getDefocusU() - first.getCTF().getDefocusV(), 300.0, places=3)
        index, stack = first.getLocation()
        self.assertEqual(index, 1)
        self.assertTrue(os.path.exists(stack))
        self.assertTrue(os.path.exists(structure.getFileName()))
        enabled = [m.getObjId() for m in modes if m.isEnabled()]
        self.assertEqual(enabled, [7, 8, 9])
        vector = np.loadtxt(modes[7].getModeFile())
        self.assertEqual(len(vector), 214)  # one line per C-alpha of 4AKE chain A
        self.assertAlmostEqual(float(np.linalg.norm(vector)), 1.0, places=5)
        record = json.loads(open(os.path.join(folder, 'simulation.json')).read())
        self.assertAlmostEqual(record['measured_snr'], 0.1, delta=0.02)
        self.assertIn('measured', ' '.join(prot.summary()))

    def test_validate_refuses_bad_settings(self):
        errors = self.newProtocol(DeepHemnmaProtSimulate, **{**SMALL, 'snr': 0.0}).validate()
        self.assertTrue(any('SNR must be positive' in e for e in errors), errors)
        errors = self.newProtocol(DeepHemnmaProtSimulate, **{**SMALL, 'box': 32}).validate()
        self.assertTrue(any('too small for the molecule' in e for e in errors), errors)
        # C-alpha modes (214 atoms) with the all-atom reference (1,656 atoms) do not match.
        from pwem.protocols import ProtImportPdb

        from deephemnma.simulate.setup import ak_reference_path
        imported = self.newProtocol(ProtImportPdb, inputPdbData=1, pdbFile=str(ak_reference_path()))
        self.launchProtocol(imported)
        mismatched = self.newProtocol(DeepHemnmaProtSimulate, **SMALL)
        mismatched.inputStructure.set(imported.outputPdb)
        mismatched.inputModes.set(self.simulation.outputModes)
        errors = mismatched.validate()
        self.assertTrue(any('come from another structure' in e for e in errors), errors)
        # The matching pair (the simulation's own reference and modes) is accepted.
        matching = self.newProtocol(DeepHemnmaProtSimulate, **SMALL)
        matching.inputModes.set(self.simulation.outputModes)
        self.assertEqual(matching.validate(), [])
