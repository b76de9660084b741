"""Image formation and comparison: rotations, the CTF, projection, Fourier filters, noise and FSC."""
