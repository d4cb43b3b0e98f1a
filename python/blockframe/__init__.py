"""BlockFrame: a local write-once archive protected by Reed-Solomon parity and BLAKE3 hashes.

The public Python API is :class:`blockframe.archive.Archive`; the command line is
``blockframe`` (:mod:`blockframe.cli`).
"""

# Kept equal to pyproject.toml's version by tests/test_cli_misc.py. A literal rather than
# importlib.metadata: that import alone costs ~50 ms on every CLI start.
__version__ = "0.1.0"

__all__ = ["__version__"]
