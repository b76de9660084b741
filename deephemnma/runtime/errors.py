"""The one error type of bad user input: its message names the file or setting and the problem."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file or parameter); the message names the file and the problem."""
