"""The FUSE adapter (Linux, macOS, and Windows through WinFsp's FUSE layer): translates
:class:`ArchiveView` to mfusepy, preferring libfuse3 on Linux (it sends larger read requests
than libfuse2).

On Windows mfusepy loads WinFsp's ``winfsp-x64.dll``, found by
:mod:`blockframe.access.windows`; the mount point is a free drive letter (``Z:``) or a
directory that does not exist yet, owners come from WinFsp's ``uid=-1,gid=-1`` (the
mounting user) and there is no readahead to tune. :func:`mount_options` and
:func:`check_mountpoint` hold what differs, as plain functions tested on Linux.

Reads go straight into libfuse's request buffer: the Rust core fills it with verified bytes
while the GIL is released, so FUSE worker threads hash in parallel and no Python bytes
object is allocated per request.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from ctypes.util import find_library
from pathlib import Path
from typing import Any, TypeVar, cast

from blockframe.access.view import BLKSIZE, ArchiveView
from blockframe.access.windows import fuse_mountpoint, use_winfsp_dll
from blockframe.errors import (
    BlockFrameError,
    IntegrityError,
    IsDirectoryError,
    NotALinkError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    UsageError,
)

# mfusepy loads libfuse when imported and takes libfuse2 if both are present; choose first.
# On Windows it loads WinFsp's DLL, found here through WinFsp's registry key.
if sys.platform == "win32":
    use_winfsp_dll()
elif not (
    os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME")
) and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024
MAX_THREADS = 16
UNMOUNT_TIMEOUT = 10  # seconds for one attempt at clearing a stale mount
# Windows has no O_ACCMODE; the access mode is the same two low bits everywhere.
_ACCMODE = getattr(os, "O_ACCMODE", os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
VOLUME_LABEL = "BlockFrame"
_ERRNO: list[tuple[type[BlockFrameError], int]] = [
    (NotFoundError, errno.ENOENT),
    (IsDirectoryError, errno.EISDIR),
    (NotDirectoryError, errno.ENOTDIR),
    (ReadOnlyError, errno.EROFS),
    (IntegrityError, errno.EIO),
    (NotALinkError, errno.EINVAL),  # what readlink(2) answers for anything but a link
]

F = TypeVar("F", bound=Callable[..., Any])


def errno_of(e: BaseException) -> int:
    """The errno an exception becomes at the FUSE edge: EIO unless it says otherwise.
    (mfusepy would answer EINVAL for unexpected exceptions, which misleads callers.)"""
    if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
        return e.errno
    for cls, code in _ERRNO:
        if isinstance(e, cls):
            return code
    return errno.EIO


def _translated(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except IntegrityError as e:
            log.error("%s", e)
            raise mfusepy.FuseOSError(errno.EIO) from None
        except BlockFrameError as e:
            raise mfusepy.FuseOSError(errno_of(e)) from None
        except Exception as e:
            log.exception("unexpected error in %s", func.__name__)
            raise mfusepy.FuseOSError(errno_of(e)) from None

    return cast(F, wrapper)


def _read_only(*_: Any) -> Any:
    raise mfusepy.FuseOSError(errno.EROFS)


class BlockFrameFS(mfusepy.Operations):
    """mfusepy operations over a view. Every write-like operation fails with EROFS."""

    use_ns = True

    def __init__(self, view: ArchiveView, mountpoint: Path) -> None:
        self.view = view
        self.mountpoint = mountpoint
        if sys.platform == "win32":
            # Owners are set by WinFsp from the uid=-1,gid=-1 options (mount_options).
            self.uid = self.gid = 0
        else:
            self.uid = os.getuid()
            self.gid = os.getgid()
        self.mounted = False

    def init(self, path: str) -> None:
        # Raising the bdi readahead makes the kernel send 1 MiB read requests instead of
        # 128-256 KiB ones (measured: DESIGN §7). It needs the mount to exist, so it runs
        # beside the FUSE loop rather than in this callback.
        self.mounted = True
        threading.Thread(target=self._tune, name="tune", daemon=True).start()

    def _tune(self) -> None:
        if sys.platform == "linux":
            try:
                dev = os.stat(self.mountpoint).st_dev
                bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
                bdi.write_text(str(READ_AHEAD_KB))
            except OSError as e:
                log.debug("readahead not raised: %s", e)
        files, _ = self.view.totals()
        where = getattr(self.view.archive, "location", self.view.archive.root)
        print(
            f"blockframe: mounted {where} at {self.mountpoint} ({files} files); Ctrl+C to unmount",
            file=sys.stderr,
            flush=True,
        )

    @_translated
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = self.view.stat(path)
        return {
            "st_mode": st.mode,
            "st_nlink": st.nlink,
            "st_size": st.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": st.mtime_ns,
            "st_mtime": st.mtime_ns,
            "st_ctime": st.mtime_ns,
            "st_blksize": st.blksize,
            "st_blocks": (st.size + 511) // 512,
        }

    @_translated
    def readlink(self, path: str) -> str:
        # The recorded text, never resolved: a link may point anywhere, outside included.
        return self.view.readlink(path)

    @_translated
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.view.listdir(path)]

    @_translated
    def open(self, path: str, flags: int) -> int:
        if flags & _ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise ReadOnlyError(f"{path}: read-only file system")
        return self.view.open(path)

    @_translated
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.view.read(fh, offset, size)

    @_translated
    def read_into(self, fh: int, buf: Any, size: int, offset: int) -> int:
        """Fill libfuse's buffer ``buf`` (a C pointer of ``size`` bytes) directly."""
        if size == 0:
            return 0
        address = ctypes.cast(buf, ctypes.c_void_p).value
        target = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")  # type: ignore[arg-type]
        return self.view.read_into(fh, offset, target)

    @_translated
    def release(self, path: str, fh: int) -> int:
        self.view.release(fh)
        return 0

    @_translated
    def statfs(self, path: str) -> dict[str, int]:
        files, size = self.view.totals()
        return {
            "f_bsize": BLKSIZE,
            "f_frsize": 4096,
            "f_blocks": (size + 4095) // 4096,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": files,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    create = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    chmod = chown = truncate = write = utimens = setxattr = removexattr = _read_only


class _FUSE(mfusepy.FUSE):
    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # Replaces mfusepy's read, which copies a returned bytes object into `buf`.
        ops = cast(BlockFrameFS, self.operations)
        return ops.read_into(fip.contents.fh, buf, size, offset)


def _clear_stale(mountpoint: Path) -> None:
    """A FUSE mount whose process died leaves "Transport endpoint is not connected";
    unmount it so the new mount can take its place. The path is passed as one argument,
    never through a shell (a mount point may be named anything, quotes and ``$(...)``
    included), and absolute, so it cannot be read as an option."""
    try:
        # Opening it asks the dead connection (a stat may be answered from the kernel's
        # attribute cache for a second after the process died).
        with os.scandir(mountpoint):
            return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    log.warning("%s: clearing a stale mount left by a process that died", mountpoint)
    target = os.path.abspath(mountpoint)
    for cmd in (["fusermount3", "-uz"], ["fusermount", "-uz"], ["umount", "-l"]):
        try:
            done = subprocess.run(
                [*cmd, target],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=UNMOUNT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue  # not installed, or hung: try the next way
        if done.returncode == 0:
            return


def mount_options(
    platform: str = sys.platform, allow_other: bool = False, fuse_major: int = 2
) -> dict[str, Any]:
    """The options mfusepy passes to libfuse (or WinFsp's FUSE layer) for a read-only
    mount in the foreground. Every write is refused by the operations themselves (EROFS,
    which WinFsp answers as STATUS_MEDIA_WRITE_PROTECTED)."""
    if platform == "win32":
        # WinFsp ignores ro, fsname and default_permissions; it takes the owner from
        # uid/gid (-1: the user who mounts), and umask=0222 shows every file and
        # directory read-only (mode 0555), so Explorer offers no write.
        if allow_other:
            log.warning("--allow-other is ignored on Windows")
        return {
            "foreground": True,
            "uid": -1,
            "gid": -1,
            "umask": "0222",
            "volname": VOLUME_LABEL,
            "FileSystemName": "BlockFrame",
        }
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "fsname": "blockframe",
        "subtype": "blockframe",
        "default_permissions": True,
    }
    if allow_other:
        options["allow_other"] = True
    if fuse_major == 3:
        # Without both, libfuse 3.14 warns about an unset idle-thread limit at every mount.
        options["max_threads"] = MAX_THREADS
        options["max_idle_threads"] = MAX_THREADS
    return options


def _prepare_posix(mountpoint: Path) -> str:
    _clear_stale(mountpoint)
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{mountpoint}: cannot create mount point: {e.strerror}") from None
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint}: mount point is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint}: something is already mounted there")
    if sys.platform == "linux" and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageError("/dev/fuse is not available (is the fuse module loaded?)")
    return str(mountpoint)


def check_mountpoint(mountpoint: Path) -> str:
    """The mount point to hand libfuse, made ready: on Windows a free drive letter or a
    directory path that does not exist yet (WinFsp creates it); elsewhere a directory,
    created if need be, with no mount on it (a stale one is cleared)."""
    if sys.platform == "win32":
        return fuse_mountpoint(mountpoint, os.path.exists)
    return _prepare_posix(mountpoint)


def mount(view: ArchiveView, mountpoint: Path, allow_other: bool = False) -> None:
    """Mount ``view`` read-only at ``mountpoint`` and serve until SIGINT/SIGTERM/SIGHUP
    (libfuse's handlers), ``fusermount3 -u`` or Ctrl+C on Windows; then unmount and finish
    queued repairs."""
    try:
        target = check_mountpoint(mountpoint)
        options = mount_options(sys.platform, allow_other, mfusepy.fuse_version_major)
        ops = BlockFrameFS(view, Path(target))
        try:
            _FUSE(ops, target, **options)
        except RuntimeError as e:
            # libfuse's main returns non-zero when its loop ended on a signal, too; that is
            # the normal way to stop a mount that was up.
            if not ops.mounted:
                raise UsageError(f"{target}: mount failed (libfuse returned {e})") from None
    finally:
        view.close()
