"""Chosen kill points for crash tests.

A test sets ``BLOCKFRAME_CRASH_AT=<point>`` (or ``<point>@<n>``: the ``n``-th time that
point is reached, counting from 0) in the environment of a command; the command kills
itself with SIGKILL there, exactly as a power cut or the OOM killer would stop it. Without
the variable every call is a dictionary lookup and nothing else. The points are named
where they are called; tests/test_crash.py lists the ones it exercises.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV", "crash_in_progress", "crash_point"]

from collections.abc import Callable

ENV = "BLOCKFRAME_CRASH_AT"

_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here if the test hook names this point (and this is the chosen passage)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    seen = _reached.get(name, 0)
    _reached[name] = seen + 1
    if seen != (int(nth) if nth else 0):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if sys.platform == "win32":
        os._exit(137)  # no SIGKILL on Windows: leave at once, no clean-up
    os.kill(os.getpid(), signal.SIGKILL)


def crash_in_progress(
    name: str, progress: Callable[[int], None] | None
) -> Callable[[int], None] | None:
    """``progress`` with kill point ``name`` before each report (the core reports a few
    times a second while it writes): only when a test asks for a kill point."""
    if not os.environ.get(ENV):
        return progress

    def report(done: int) -> None:
        crash_point(name)
        if progress is not None:
            progress(done)

    return report
