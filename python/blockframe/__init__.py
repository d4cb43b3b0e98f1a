"""BlockFrame: a local write-once archive protected by Reed-Solomon parity and BLAKE3 hashes.

The public Python API is :func:`open_archive` (:mod:`blockframe.access.api`), with the lower-level
:class:`blockframe.archive.Archive` underneath; the command line is ``blockframe``
(:mod:`blockframe.cli`).
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: importing typing would cost every CLI start (type
# checkers treat any constant of this name as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from blockframe.access.api import BlockFrameArchive
    from blockframe.config import StorageConfig

# Kept equal to pyproject.toml's version by tests/test_cli_misc.py. A literal rather than
# importlib.metadata: that import alone costs ~50 ms on every CLI start.
__version__ = "0.1.0"

__all__ = ["__version__", "open_archive"]


def open_archive(
    location: str | os.PathLike[str],
    token: str | None = None,
    *,
    storage: StorageConfig | None = None,
) -> BlockFrameArchive:
    """Open a local archive directory, or a remote one at the ``http(s)://`` URL of
    ``blockframe serve`` (``token``: its bearer token, default ``$BLOCKFRAME_TOKEN``).

    See :mod:`blockframe.access.api`. The module is imported here, on first use, so that
    ``import blockframe`` (and the CLI's start-up) stays fast.
    """
    from blockframe.access.api import open_archive as _open

    return _open(location, token, storage=storage)
