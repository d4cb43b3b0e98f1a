"""Exclusive locks in an archive's ``.blockframe`` directory (FORMAT.md §3), taken without
ever following a symbolic link: ``lock`` serialises health's state file, ``commit.lock``
the publishing of new objects (one commit per name at a time)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["COMMIT_LOCK", "STATE_DIR", "check_state_dir", "commit_lock", "dir_lock"]

STATE_DIR = ".blockframe"
COMMIT_LOCK = "commit.lock"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def check_state_dir(path: Path) -> None:
    """An OSError unless ``path`` (a ``.blockframe``) is a real directory
    (FileNotFoundError when there is none)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise OSError(f"{STATE_DIR} is a symbolic link, not followed")
    if not stat.S_ISDIR(mode):
        raise OSError(f"{STATE_DIR} is not a directory")


@contextlib.contextmanager
def dir_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock ``<root>/.blockframe/<name>`` (waiting for it), creating
    ``.blockframe`` if need be; an OSError if it or the lock file is a link or not what we
    make there."""
    directory = root / STATE_DIR
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory)
    check_state_dir(directory)
    if sys.platform == "win32":
        import msvcrt

        # No O_NOFOLLOW or dir_fd on Windows: a link planted at the lock is refused before
        # it is opened.
        if (directory / name).is_symlink():
            raise OSError(f"{STATE_DIR}/{name} is a symbolic link, not followed")
        fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_BINARY, 0o644)
        try:
            while True:
                # LK_LOCK gives up after ten one-second attempts (EDEADLOCK): a long holder
                # keeps it longer, so wait on as flock does.
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError as e:
                    if e.errno != errno.EDEADLOCK:
                        raise
            try:
                check_state_dir(directory)  # files beside it are written by path
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(fd)
        return
    import fcntl

    # Opened as checked: the directory itself (not a link planted since) holds the lock.
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(f"{STATE_DIR}/{name} is a symbolic link, not followed") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Files beside the lock are written by path: it must still lead here.
            if not os.path.samestat(os.fstat(dfd), os.lstat(directory)):
                raise OSError(f"{STATE_DIR} was replaced while it was locked")
            yield
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def commit_lock(root: Path) -> Iterator[None]:
    """The commit lock of archive (or local volume) ``root``; an ArchiveError if it cannot
    be taken (a planted link, a read-only archive)."""
    from blockframe.errors import ArchiveError

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(dir_lock(root, COMMIT_LOCK))
        except OSError as e:
            raise ArchiveError(f"{root}: cannot take the commit lock: {e}") from None
        yield
