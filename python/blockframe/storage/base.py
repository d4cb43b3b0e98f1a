"""The storage backend of an archive volume: what every volume (a local directory, an S3
bucket or prefix) offers, and the rule for the paths given to it.

A volume is a root holding object directories (``<name>_<id>/manifest.json``,
``<name>_<id>/blocks/block_0/segments/segment_3.dat``, ...) and hidden housekeeping entries
(names starting with ``.``). Every path given to a volume is *relative*: posix separators,
no leading ``/``, no ``.``/``..``/empty components; anything else is a ``ValueError``, so a
path can never reach outside the root.

Failures are ``OSError`` (or a subclass: ``ConnectionError``, ``TimeoutError``,
``PermissionError``, ``FileNotFoundError``) with a one-line message naming the file, so
callers handle a local disk and a remote bucket alike. A missing file is not an error:
``read``, ``get_range`` and ``size`` answer ``None``, ``listdir`` and ``files`` ``[]``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

from blockframe.format.manifest import MAX_MANIFEST

# The most a volume reads into memory at once (manifests and labels; FORMAT.md "Limits").
READ_LIMIT = MAX_MANIFEST


def check_rel(rel: str, *, allow_root: bool = False) -> str:
    """``rel`` if it is a valid volume path, else ``ValueError``.

    ``allow_root``: the empty path (the volume root) is accepted, for directory arguments.
    """
    if not isinstance(rel, str):
        raise ValueError(f"volume path must be a string, not {type(rel).__name__}")
    if rel == "":
        if allow_root:
            return rel
        raise ValueError("empty volume path")
    if rel.startswith("/"):
        raise ValueError(f"volume path must be relative: {rel!r}")
    if "\x00" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"invalid volume path: {rel!r}")
    # On Windows a backslash or a drive letter would be a second way out of the root.
    if os.name == "nt" and ("\\" in rel or ":" in rel):
        raise ValueError(f"invalid volume path: {rel!r}")
    return rel


def check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"invalid range: start {start}, length {length}")


class Volume(ABC):
    """The root of one archive volume, local or remote. Instances are thread-safe."""

    location: str  # as the user wrote it: "/disk1/bf" or "s3://bucket/prefix"
    is_local: bool

    def present(self) -> bool:
        """Whether the root exists and answers now (local: is a directory; S3: the bucket
        exists and can be reached with these credentials)."""
        return self.why_absent() is None

    @abstractmethod
    def why_absent(self) -> str | None:
        """``None`` if the volume is present, else a one-line reason (for messages)."""

    @abstractmethod
    def where(self, rel: str = "") -> str:
        """How to name ``rel`` to a user: a local path or an ``s3://`` URL."""

    @abstractmethod
    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names directly under directory ``rel`` (files and directories);
        ``[]`` if it does not exist."""

    @abstractmethod
    def read(self, rel: str, limit: int = READ_LIMIT) -> bytes | None:
        """The whole file; ``None`` if it does not exist. A file larger than ``limit``
        bytes, or one that is not a regular file, is an OSError: nothing that large is read
        into memory."""

    @abstractmethod
    def write(self, rel: str, data: bytes) -> None:
        """Store ``data`` at ``rel``, atomically (readers see the old or the new content,
        never a part) and durably, creating parent directories as needed."""

    @abstractmethod
    def create_new(self, rel: str, data: bytes) -> bool:
        """Store ``data`` at ``rel`` only if nothing is there, in one step (a lock's way
        to be taken); False if something is."""

    @abstractmethod
    def get_range(self, rel: str, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` of the file: shorter at the end of the file,
        ``b""`` at or after its end, ``None`` if the file does not exist."""

    @abstractmethod
    def size(self, rel: str) -> int | None:
        """The size of the file in bytes; ``None`` if it does not exist."""

    @abstractmethod
    def files(self, rel: str) -> list[tuple[str, int]]:
        """Every file under directory ``rel``, recursively, as (path relative to ``rel``,
        size), sorted by path; ``[]`` if the directory does not exist."""

    @abstractmethod
    def newest(self, rel: str) -> float | None:
        """The latest modification time (seconds since the epoch) of anything under
        directory ``rel``; ``None`` if it does not exist. Tells whether an operation may
        still be writing there."""

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Delete one file; a missing file is fine."""

    @abstractmethod
    def remove_tree(self, rel: str) -> None:
        """Delete directory ``rel`` and everything under it; a missing one is fine.
        The volume root itself cannot be removed this way (``ValueError``)."""

    @abstractmethod
    def upload(self, rel: str, local_file: Path) -> None:
        """Store the content of ``local_file`` at ``rel``, atomically and durably."""

    @abstractmethod
    def local_path(self, rel: str = "") -> Path | None:
        """The absolute local path of ``rel`` for a local volume, ``None`` for a remote one."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"
