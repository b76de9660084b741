"""Scipion viewers of the plugin, discovered from the ``viewer_*`` modules of this package."""
from deephemnma._discovery import export_classes

export_classes(__name__, globals(), 'viewer_')
