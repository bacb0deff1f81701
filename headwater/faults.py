"""Crash points, for tests that must kill a process at one exact step.

`HEADWATER_CRASH_AT=<point>:<marker file>` makes the process that reaches `crash_point(point)`
exit at once, without cleaning up (as SIGKILL would), the first time only: it leaves the
marker file, and a process that finds the marker goes on. Unset, a crash point costs one
comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "HEADWATER_CRASH_AT"
EXIT_STATUS = 70
_POINT, _, _MARKER = os.environ.get(VARIABLE, "").partition(":")


def crash_point(name: str) -> None:
    if name != _POINT:
        return
    marker = Path(_MARKER)
    if marker.exists():
        return
    marker.write_text(name)
    os._exit(EXIT_STATUS)
