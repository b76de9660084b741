"""Molecules: atomic structures, electron scattering factors, density maps and pseudoatoms."""
