"""The one error type of bad user input (its message names the file or setting and the problem), and the stops
asked by signals."""
from __future__ import annotations

import signal
from typing import Optional


class InputError(ValueError):
    """Bad user input (file or parameter); the message names the file and the problem."""


class Terminated(BaseException):
    """SIGTERM arrived (a queue system or a user stopping the job)."""


#: The signal (``signal.SIGINT`` or ``signal.SIGTERM``) that asked this process to stop, once one has.
_stop_signal: Optional[int] = None


def record_stop(signum: Optional[int]) -> None:
    """Remember that ``signum`` asked this process to stop (the command line's signal handlers call this; None
    forgets it, when a command starts)."""
    global _stop_signal
    _stop_signal = signum


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for, if one did: an interrupt that Python swallowed (one raised inside a
    finaliser is only printed) still stops the command before it commits its outputs."""
    if _stop_signal is None:
        return
    raise Terminated() if _stop_signal == signal.SIGTERM else KeyboardInterrupt()
