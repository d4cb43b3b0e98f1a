"""Chosen kill points for crash tests.

A test sets ``BLOCKFRAME_CRASH_AT=<point>`` (or ``<point>@<n>``: the ``n``-th time that
point is reached, counting from 0) in the environment of a command; the command kills
itself with SIGKILL there, exactly as a power cut or the OOM killer would stop it. Without
the variable every call is a dictionary lookup and nothing else. The points are named
where they are called; tests/test_crash.py lists the ones it exercises.

``BLOCKFRAME_PAUSE_AT=<point>=<directory>`` pauses instead, for race tests: at that point the
command creates ``<directory>/reached`` and waits until the test creates
``<directory>/go``; the test thus runs another command at exactly that moment.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV", "crash_in_progress", "crash_point"]

from collections.abc import Callable

ENV = "BLOCKFRAME_CRASH_AT"
PAUSE_ENV = "BLOCKFRAME_PAUSE_AT"
PAUSE_LIMIT = 300.0  # seconds a paused command waits for its test at most

_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die (or pause) here if the test hook names this point (and this is the chosen
    passage)."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        _pause(name, pause)
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


def _pause(name: str, spec: str) -> None:
    point, _, directory = spec.partition("=")
    if point != name:
        return
    import time
    from pathlib import Path

    where = Path(directory)
    (where / "reached").touch()
    deadline = time.monotonic() + PAUSE_LIMIT
    # Polling a file is how the test process and this one meet; the wait's length never
    # decides an outcome.
    while not (where / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"test hook: paused at {name} and never released")
        time.sleep(0.01)
