"""HEMNMA: elastic and rigid-body 3D-to-2D alignment (the reference, the aligner, whole stacks, Xmipp backend)."""
