"""Names shared by the core, the command line and the Scipion protocols."""

DEVICE_VAR = 'DEEPHEMNMA_DEVICE'
TORCHRUN_VAR = 'DEEPHEMNMA_TORCHRUN'
DEFAULT_DEVICE = 'auto'

#: Scipion attribute holding per-particle normal-mode amplitudes (same name as ContinuousFlex/Xmipp).
AMPLITUDES_ATTR = '_xmipp_nmaDisplacements'
#: Scipion attribute holding the per-particle alignment score of this plugin.
SCORE_ATTR = '_deephemnma_score'
#: Prefix of ground-truth attributes written by the simulator.
TRUE_PREFIX = '_deephemnma_true_'
