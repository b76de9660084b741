"""Running ``deephemnma`` commands in the test process, with their exit status and output."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import List

from deephemnma.cli.main import console


@dataclass
class Run:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> List[str]:
        """The lines printed on stderr, progress-bar updates (carriage returns) and the log line of the contrast
        decision left out."""
        return [line for line in self.err.split('\n')
                if line.strip() and '\r' not in line and not line.startswith('deephemnma: contrast:')]


def run(*argv) -> Run:
    """``deephemnma ARGV`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = console([str(a) for a in argv])
        except SystemExit as end:
            status = end.code if isinstance(end.code, int) else 1
    return Run(status, out.getvalue(), err.getvalue())
