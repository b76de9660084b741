"""The Scipion side's conversions: sets of particles and of normal modes to and from the core's objects, and
the helpers protocols and viewers share (subsets, per-particle vectors). Imports pwem; the core never imports it."""
