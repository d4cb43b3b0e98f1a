"""Restore: write an object's verified bytes out, to a file that appears only when
complete."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from blockframe.errors import OutputError
from blockframe.storage.local import fsync_dir
from blockframe.testhook import crash_point


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` only if the block completes.

    On Linux the bytes go to an anonymous ``O_TMPFILE`` inode in the target directory
    (nothing is visible even if the process is killed), which is fsynced, linked under a
    temporary name and renamed over ``path``. Elsewhere, or where the filesystem lacks
    ``O_TMPFILE``, a hidden temporary file in the same directory is used instead (created
    exclusively, never through a link) and ``os.replace``d over ``path``.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.blockframe-{uuid.uuid4().hex[:8]}"
    fd = _anonymous(directory)
    anonymous = fd is not None
    if fd is None:
        try:
            fd = os.open(tmp, _NEW_FILE, 0o644)
        except OSError as e:
            raise OutputError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            crash_point("restore:synced")
            if anonymous:
                try:
                    # Straight to its name when that is free: no moment with a temporary
                    # name a kill could leave behind.
                    _link_anonymous(f.fileno(), directory, path.name)
                except FileExistsError:
                    _link_anonymous(f.fileno(), directory, tmp.name)
                    os.replace(tmp, path)
            else:
                os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)


_NEW_FILE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)


def _anonymous(directory: Path) -> int | None:
    """An unnamed file in ``directory`` (Linux ``O_TMPFILE``), or None where there is none."""
    if sys.platform != "linux":
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:
        return None


def _link_anonymous(fd: int, directory: Path, name: str) -> None:
    """Give the ``O_TMPFILE`` inode ``fd`` the name ``name`` in ``directory``."""
    if sys.platform != "linux":
        raise AssertionError("O_TMPFILE files exist only on Linux")
    # A dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), which resolves the /proc magic
    # link to the anonymous inode (plain link() would not).
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dirfd, follow_symlinks=True)
    finally:
        os.close(dirfd)
