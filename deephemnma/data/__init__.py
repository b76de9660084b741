"""Particles and their files: the in-memory particle set, STAR/.xmd/CSV formats, MRC/SPIDER images and
random access to stacks."""
