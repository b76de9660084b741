"""The Scipion side's vocabulary: the plugin's variables and the per-particle attribute names of its sets."""

TORCHRUN_VAR = 'DEEPHEMNMA_TORCHRUN'

#: Scipion attribute holding per-particle normal-mode amplitudes (same name as ContinuousFlex/Xmipp).
AMPLITUDES_ATTR = '_xmipp_nmaDisplacements'
#: Scipion attribute holding the per-particle alignment score (ContinuousFlex's name, read by its viewers).
SCORE_ATTR = '_xmipp_cost'
#: Prefix of the extra per-particle columns (e.g. the simulator's ground truth, '_deephemnma_true_...').
EXTRA_PREFIX = '_deephemnma_'
#: Prefix of the simulator's ground-truth attributes (e.g. '_deephemnma_true_amplitudes').
TRUE_PREFIX = EXTRA_PREFIX + 'true_'
#: Per-particle attribute holding a particle's coordinates in the conformational space (extra column 'space').
SPACE_ATTR = EXTRA_PREFIX + 'space'
