"""Scipion protocols of the plugin, discovered from the ``protocol_*`` modules of this package."""
from deephemnma._discovery import export_classes

export_classes(__name__, globals(), 'protocol_')
