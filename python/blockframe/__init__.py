"""BlockFrame: a local write-once archive protected by Reed-Solomon parity and BLAKE3 hashes.

The public Python API is :class:`blockframe.archive.Archive`; the command line is
``blockframe`` (:mod:`blockframe.cli`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blockframe")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
