"""Faults, for tests that must make a process fail at one exact step or under one condition.

`HEADWATER_CRASH_AT=<point>:<marker file>` makes the process that reaches `crash_point(point)`
exit at once, without cleaning up (as SIGKILL would), the first time only: it leaves the
marker file, and a process that finds the marker goes on. Unset, a crash point costs one
comparison.

`HEADWATER_FAULT_MAX_PAGES=<file>` caps the SQLite log's file at the page count the file holds
(read at each append, so a test can lower and raise it while the process runs): a write that
needs more pages fails as on a full disk. Unset, it costs one comparison per append.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "HEADWATER_CRASH_AT"
PAGE_LIMIT_VARIABLE = "HEADWATER_FAULT_MAX_PAGES"
VARIABLES = (VARIABLE, PAGE_LIMIT_VARIABLE)
EXIT_STATUS = 70
_POINT, _, _MARKER = os.environ.get(VARIABLE, "").partition(":")
PAGE_LIMIT_FILE = os.environ.get(PAGE_LIMIT_VARIABLE) or None


def crash_point(name: str) -> None:
    if name != _POINT:
        return
    marker = Path(_MARKER)
    if marker.exists():
        return
    marker.write_text(name)
    os._exit(EXIT_STATUS)


def page_limit() -> int | None:
    """The page count the limit file holds now (None without one, or while it holds no number)."""
    if PAGE_LIMIT_FILE is None:
        return None
    try:
        return int(Path(PAGE_LIMIT_FILE).read_text())
    except (OSError, ValueError):
        return None
