"""Helpers shared by the viewers (not a viewer module: ``export_classes`` only scans ``viewer_*``)."""
from __future__ import annotations

from typing import List


def show_image(path: str) -> List:
    """Show the PNG at ``path`` at its own size (100 dpi) in a non-blocking matplotlib window; returns the
    empty list of messages that a viewer's display function gives back."""
    import matplotlib.pyplot as plt
    figure = plt.figure()
    figure.figimage(plt.imread(path))
    shape = figure.images[0].get_array().shape
    figure.set_size_inches(shape[1] / 100, shape[0] / 100)
    plt.show(block=False)
    return []
