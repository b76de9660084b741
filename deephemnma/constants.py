"""Names shared by the core, the command line and the Scipion protocols."""

DEVICE_VAR = 'DEEPHEMNMA_DEVICE'
TORCHRUN_VAR = 'DEEPHEMNMA_TORCHRUN'
DEFAULT_DEVICE = 'auto'

#: Scipion attribute holding per-particle normal-mode amplitudes (same name as ContinuousFlex/Xmipp).
AMPLITUDES_ATTR = '_xmipp_nmaDisplacements'
#: Scipion attribute holding the per-particle alignment score (ContinuousFlex's name, read by its viewers).
SCORE_ATTR = '_xmipp_cost'
#: Prefix of the extra per-particle columns (e.g. the simulator's ground truth, '_deephemnma_true_...').
EXTRA_PREFIX = '_deephemnma_'
#: Prefix of the simulator's ground-truth attributes (e.g. '_deephemnma_true_amplitudes').
TRUE_PREFIX = EXTRA_PREFIX + 'true_'
#: Smallest image size (px) the network may be given (the ResNet stem and pooling need at least this).
MIN_NETWORK_BOX = 16
