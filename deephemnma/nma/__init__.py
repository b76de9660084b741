"""Normal modes: the elastic network (ANM, RTB), the modes and their amplitude convention, comparisons, mode
files (Xmipp/ContinuousFlex) and the one deformation and animation."""
