"""Restore: write an object's verified bytes out, to a file that appears only when
complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from blockframe.errors import OutputError
from blockframe.storage.local import fsync_dir


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` only if the block completes.

    The bytes go to an anonymous ``O_TMPFILE`` inode in the target directory (nothing is
    visible even if the process is killed), which is fsynced, linked under a temporary
    name and renamed over ``path``. Where the filesystem lacks ``O_TMPFILE``, a hidden
    temporary file is used instead.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.blockframe-{uuid.uuid4().hex[:8]}"
    anonymous = True
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:
        anonymous = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise OutputError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if anonymous:
                # A dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), which resolves the
                # /proc magic link to the anonymous inode (plain link() would not).
                dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.link(
                        f"/proc/self/fd/{f.fileno()}",
                        tmp.name,
                        dst_dir_fd=dirfd,
                        follow_symlinks=True,
                    )
                finally:
                    os.close(dirfd)
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)
