"""Exclusive locks in an archive's ``.blockframe`` directory (FORMAT.md §3), taken without
ever following a symbolic link: ``lock`` serialises health's state file, ``commit.lock``
the publishing of new objects (one commit per name at a time)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from blockframe.storage.base import Volume

__all__ = [
    "COMMIT_LOCK",
    "STATE_DIR",
    "bucket_lock",
    "check_state_dir",
    "commit_lock",
    "dir_lock",
]

STATE_DIR = ".blockframe"
COMMIT_LOCK = "commit.lock"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

log = logging.getLogger(__name__)

# A bucket's lock held longer than this was left by a commit that died: publishing takes
# seconds, not minutes.
BUCKET_LOCK_STALE = 600.0
# How long a commit waits for a bucket's lock before giving up.
BUCKET_LOCK_WAIT = 900.0


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


@contextlib.contextmanager
def bucket_lock(
    vol: Volume,
    stale: float = BUCKET_LOCK_STALE,
    wait: float = BUCKET_LOCK_WAIT,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """The commit lock of a bucket: ``.blockframe/commit.lock`` created by a conditional
    put (``If-None-Match: *``), so that commits from different machines publish one at a
    time; removed when done. A lock older than ``stale`` seconds (its commit died) is
    broken; one held longer than ``wait`` seconds is an ArchiveError."""
    import socket  # here: only a bucket's lock names its host

    from blockframe.errors import ArchiveError

    rel = f"{STATE_DIR}/{COMMIT_LOCK}"
    me = uuid.uuid4().hex
    body = json.dumps({"holder": me, "host": socket.gethostname(), "since": clock()}).encode()
    deadline = clock() + wait
    while True:
        # A store that ignored the condition let the last writer win: only the holder whose
        # token is there holds the lock.
        if vol.create_new(rel, body) and vol.read(rel, 4096) == body:
            break
        held = _holder(vol.read(rel, 4096))
        since = held.get("since")
        if isinstance(since, int | float) and clock() - since > stale:
            log.warning(
                "%s: breaking a commit lock left %.0f s ago by %s",
                vol.location,
                clock() - since,
                held.get("host", "?"),
            )
            vol.remove(rel)
            continue
        if clock() > deadline:
            raise ArchiveError(
                f"{vol.location}: the commit lock is held by {held.get('host', '?')} "
                f"(remove {rel} if no commit is running)"
            )
        sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if vol.read(rel, 4096) == body:
                vol.remove(rel)


def _holder(raw: bytes | None) -> dict[str, object]:
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
