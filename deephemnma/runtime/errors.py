"""TODO docstring"""
from __future__ import annotations



class InputError(ValueError):
    """Bad user input (file or parameter); the message names the file and the problem."""
