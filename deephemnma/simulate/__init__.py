"""Synthetic particles: the molecule, per-image parameters, the imaging physics and data sets on disk."""
