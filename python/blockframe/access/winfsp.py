"""The WinFsp adapter (Windows): translates :class:`ArchiveView` to winfspy.

Written against winfspy 0.8.x (``winfspy/operations.py``, ``winfspy/file_system.py``) but
not exercised on Windows here. winfspy loads the WinFsp DLL when imported, so it is imported
only inside :func:`mount`; everything else in this module is plain Python over the view
(status mapping, FILETIME conversion, drive-letter checks, directory listings with markers,
file-info dicts) and is tested on Linux.

Errors cross the boundary twice: the view raises :mod:`blockframe.errors` classes,
:class:`ReadOnlyFS` turns them into :class:`StatusError` (an NTSTATUS by name), and the
winfspy shim turns those into ``winfspy.NTStatusError`` carrying the numeric code from
winfspy's own ``NTSTATUS`` enum, so the codes come from the library that sends them.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import posixpath
import re
import signal
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from blockframe.access.view import ArchiveView, Stat
from blockframe.errors import (
    BlockFrameError,
    IntegrityError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    UsageError,
)
from blockframe.format.names import normalize_path

log = logging.getLogger(__name__)

# FILETIME counts 100 ns intervals since 1601-01-01 UTC; this is 1970-01-01 in those units
# (the same constant as winfspy/plumbing/win32_filetime.py's EPOCH_AS_FILETIME).
EPOCH_AS_FILETIME = 116_444_736_000_000_000

# winfspy/plumbing/file_attribute.py values (the documented Win32 constants).
FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_DIRECTORY = 0x10

# Volume geometry: 4 KiB allocation units, so Explorer's "size on disk" is plausible.
SECTOR_SIZE = 4096
SECTORS_PER_ALLOCATION_UNIT = 1
ALLOCATION_UNIT = SECTOR_SIZE * SECTORS_PER_ALLOCATION_UNIT
VOLUME_LABEL = "BlockFrame"  # winfspy refuses labels over 64 bytes of UTF-16
FILE_SYSTEM_NAME = "BlockFrame"  # FSP_FSCTL_VOLUME_PARAMS.FileSystemName is WCHAR[16]

# Owner and group Administrators; a protected DACL that lets everyone read and traverse and
# nobody write. WinFsp checks the access each open asks for against this descriptor before
# calling open, so the ACL tells the same story as the read-only volume flag.
SECURITY_SDDL = "O:BAG:BAD:P(A;;FRFX;;;SY)(A;;FRFX;;;BA)(A;;FRFX;;;WD)"

STATUS_OBJECT_NAME_NOT_FOUND = "STATUS_OBJECT_NAME_NOT_FOUND"
STATUS_FILE_IS_A_DIRECTORY = "STATUS_FILE_IS_A_DIRECTORY"
STATUS_NOT_A_DIRECTORY = "STATUS_NOT_A_DIRECTORY"
STATUS_MEDIA_WRITE_PROTECTED = "STATUS_MEDIA_WRITE_PROTECTED"
STATUS_DEVICE_DATA_ERROR = "STATUS_DEVICE_DATA_ERROR"
STATUS_END_OF_FILE = "STATUS_END_OF_FILE"
# What winfspy itself answers for an exception it did not expect (operations.py).
STATUS_UNEXPECTED_IO_ERROR = "STATUS_UNEXPECTED_IO_ERROR"

# Checked in order; the classes are siblings, so order only matters for future subclasses.
_STATUS: list[tuple[type[BlockFrameError], str]] = [
    (NotFoundError, STATUS_OBJECT_NAME_NOT_FOUND),
    (IsDirectoryError, STATUS_FILE_IS_A_DIRECTORY),
    (NotDirectoryError, STATUS_NOT_A_DIRECTORY),
    (ReadOnlyError, STATUS_MEDIA_WRITE_PROTECTED),
    # Shown by Windows as "Data error (cyclic redundancy check)", the message of a bad disk.
    (IntegrityError, STATUS_DEVICE_DATA_ERROR),
]

_DRIVE = re.compile(r"^([A-Za-z]):?[\\/]?$")

FileInfo = dict[str, int]
DirEntry = dict[str, int | str]
F = TypeVar("F", bound=Callable[..., Any])


class StatusError(Exception):
    """An NTSTATUS to answer with, named as in winfspy's ``NTSTATUS`` enum."""

    def __init__(self, status: str, message: str = "") -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def status_of(e: BaseException) -> str:
    """The NTSTATUS name an exception becomes at the WinFsp edge: a generic I/O error
    unless it is one of ours that says otherwise."""
    if isinstance(e, StatusError):
        return e.status
    for cls, status in _STATUS:
        if isinstance(e, cls):
            return status
    return STATUS_UNEXPECTED_IO_ERROR


def filetime(mtime_ns: int) -> int:
    """Nanoseconds since the Unix epoch as a Windows FILETIME (100 ns since 1601)."""
    return max(0, EPOCH_AS_FILETIME + mtime_ns // 100)


def drive_letter(mountpoint: str | os.PathLike[str]) -> str:
    """``"Z:"`` from ``Z``, ``z:``, ``Z:\\`` or ``Z:/``; anything else is a UsageError
    (this adapter mounts on drive letters only)."""
    text = os.fspath(mountpoint).strip()
    match = _DRIVE.match(text)
    if match is None:
        raise UsageError(
            f"{text or '(empty)'}: on Windows the mount point must be a free drive letter "
            "such as Z: (use -m Z:)"
        )
    return match.group(1).upper() + ":"


def file_info(st: Stat) -> FileInfo:
    """The winfspy file-info dict for a view stat: files are read-only, every time is
    the commit time (the archive keeps no other)."""
    t = filetime(st.mtime_ns)
    if st.is_dir:
        attributes, size, allocation = FILE_ATTRIBUTE_DIRECTORY, 0, 0
    else:
        attributes, size = FILE_ATTRIBUTE_READONLY, st.size
        allocation = -(-size // ALLOCATION_UNIT) * ALLOCATION_UNIT
    return {
        "file_attributes": attributes,
        "allocation_size": allocation,
        "file_size": size,
        "creation_time": t,
        "last_access_time": t,
        "last_write_time": t,
        "change_time": t,
        "index_number": 0,
    }


def list_directory(view: ArchiveView, path: str, marker: str | None = None) -> list[DirEntry]:
    """Entries of directory ``path`` after ``marker`` (all when None), in one fixed order:
    "." and ".." first (not for the root, as WinFsp requires), then names sorted by code
    point. WinFsp resumes a listing that did not fit its buffer by passing back the last
    name it took, so the order must not change between calls."""
    path = normalize_path(path)
    children = view.listdir(path)  # raises NotDirectoryError / NotFoundError
    if marker is None:
        start_dots, start = 0, 0
    elif marker == ".":
        start_dots, start = 1, 0
    elif marker == "..":
        start_dots, start = 2, 0
    else:
        # Strictly greater: bisect_right also works if the marker has since disappeared.
        start_dots, start = 2, bisect.bisect_right(children, marker)
    entries: list[DirEntry] = []
    if path != "/":
        dots = [(".", path), ("..", posixpath.dirname(path))]
        for name, target in dots[start_dots:]:
            entries.append({"file_name": name, **file_info(view.stat(target))})
    for name in children[start:]:
        try:
            st = view.stat(posixpath.join(path, name))
        except NotFoundError:
            continue  # removed by a refresh between listdir and stat
        if st.is_link:
            # winfspy has no symbolic links (they would need reparse points): not shown
            # rather than shown as files that cannot be opened.
            continue
        entries.append({"file_name": name, **file_info(st)})
    return entries


def volume_params(view: ArchiveView) -> dict[str, Any]:
    """Keyword arguments for ``winfspy.FileSystem`` (its ``_volume_params_factory``)."""
    return {
        "sector_size": SECTOR_SIZE,
        "sectors_per_allocation_unit": SECTORS_PER_ALLOCATION_UNIT,
        "max_component_length": 255,
        "volume_creation_time": filetime(time.time_ns()),
        # Stable per archive, so Windows sees the same volume across mounts.
        "volume_serial_number": zlib.crc32(str(view.archive.root).encode()) & 0xFFFFFFFF,
        "file_info_timeout": 1000,
        # Object names are case-sensitive: "A.txt" and "a.txt" may both be archived.
        "case_sensitive_search": 1,
        "case_preserved_names": 1,
        "unicode_on_disk": 1,
        "persistent_acls": 1,
        "read_only_volume": 1,
        "post_cleanup_when_modified_only": 1,
        # One file context per open (UserContext2), not per file: each open holds its own
        # view handle, released by its own close.
        "um_file_context_is_user_context2": 1,
        "file_system_name": FILE_SYSTEM_NAME,
        "prefix": "",
    }


@dataclass(frozen=True)
class OpenFile:
    """What one open of a path holds: its stat at open time and, for files, a view handle."""

    path: str
    stat: Stat
    handle: int | None


def _translated(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StatusError:
            raise
        except IntegrityError as e:
            log.error("%s", e)
            raise StatusError(STATUS_DEVICE_DATA_ERROR, str(e)) from None
        except BlockFrameError as e:
            raise StatusError(status_of(e), str(e)) from None
        except Exception as e:
            # Never let an exception reach winfspy: it would log it as unhandled.
            log.exception("unexpected error in %s", func.__name__)
            raise StatusError(STATUS_UNEXPECTED_IO_ERROR, str(e)) from None

    return cast(F, wrapper)


class ReadOnlyFS:
    """The file system's behaviour, free of winfspy types: every method either returns
    what winfspy expects or raises :class:`StatusError`."""

    def __init__(self, view: ArchiveView) -> None:
        self.view = view

    @_translated
    def volume_info(self) -> dict[str, Any]:
        """Size and label for Explorer; nothing is ever free on a write-once volume."""
        _, size = self.view.totals()
        return {"total_size": size, "free_size": 0, "volume_label": VOLUME_LABEL}

    @_translated
    def attributes(self, file_name: str) -> int:
        """File attributes of a path (for get_security_by_name)."""
        return file_info(self.view.stat(file_name))["file_attributes"]

    @_translated
    def open(self, file_name: str) -> OpenFile:
        """Open a file (taking a view handle) or a directory (for listing)."""
        # WinFsp already compared FILE_DIRECTORY_FILE / FILE_NON_DIRECTORY_FILE and the
        # requested access with what get_security_by_name reported, so any existing path
        # can be opened here.
        path = normalize_path(file_name)
        st = self.view.stat(path)
        handle = None if st.is_dir else self.view.open(path)
        return OpenFile(path, st, handle)

    def close(self, f: OpenFile) -> None:
        """Release the view handle. Never raises: winfspy forgets the context only when
        close returns normally."""
        if f.handle is not None:
            self.view.release(f.handle)

    @_translated
    def info(self, f: OpenFile) -> FileInfo:
        """File info of an open path (as of its open)."""
        return file_info(f.stat)

    @_translated
    def read(self, f: OpenFile, offset: int, length: int) -> bytes:
        """Verified bytes of an open file (fewer at its end)."""
        if f.handle is None:
            raise IsDirectoryError(f"{f.path}: is a directory")
        if offset >= f.stat.size:
            # WinFsp expects this status, not an empty read, at or past the end.
            raise StatusError(STATUS_END_OF_FILE)
        return self.view.read(f.handle, offset, length)

    @_translated
    def read_directory(self, f: OpenFile, marker: str | None) -> list[DirEntry]:
        """Entries of an open directory after ``marker`` (see :func:`list_directory`)."""
        if not f.stat.is_dir:
            raise NotDirectoryError(f"{f.path}: not a directory")
        return list_directory(self.view, f.path, marker)

    @_translated
    def dir_info_by_name(self, f: OpenFile, name: str) -> DirEntry:
        """One entry of an open directory, looked up by name."""
        if not f.stat.is_dir:
            raise NotDirectoryError(f"{f.path}: not a directory")
        st = self.view.stat(posixpath.join(f.path, name))
        return {"file_name": name, **file_info(st)}


def _load_winfspy() -> tuple[Any, Any]:
    """(winfspy, winfspy.plumbing), or a UsageError saying what is missing."""
    try:
        import winfspy
        import winfspy.plumbing
    except ImportError as e:
        raise UsageError(
            f"mounting on Windows needs the winfspy package ({e}); "
            "install it with `pip install winfspy`"
        ) from None
    except RuntimeError as e:
        # winfspy raises RuntimeError when the WinFsp DLL or its registry key is missing.
        raise UsageError(
            f"WinFsp is not usable ({e}); install it from https://winfsp.dev"
        ) from None
    return winfspy, winfspy.plumbing


def operations_class(winfspy: Any, plumbing: Any) -> type[Any]:
    """A ``winfspy.BaseFileSystemOperations`` subclass over :class:`ReadOnlyFS`.

    Method names and positional parameters are those winfspy 0.8's ``ll_*`` wrappers call
    (winfspy/operations.py). ``set_delete`` is left alone so WinFsp falls back to
    ``can_delete``; reparse points, streams and device control are off in the volume
    parameters, so their operations are never called.
    """
    ntstatus = plumbing.NTSTATUS
    nt_error = winfspy.NTStatusError

    def answer(e: StatusError) -> Any:
        # NTStatusError.value is args[0]: any NTSTATUS can be raised this way.
        return nt_error(getattr(ntstatus, e.status))

    def refuse(self: Any, *_: Any) -> NoReturn:
        raise answer(StatusError(STATUS_MEDIA_WRITE_PROTECTED))

    def nt(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except StatusError as e:
                raise answer(e) from None

        return cast(F, wrapper)

    class BlockFrameOperations(winfspy.BaseFileSystemOperations):
        """winfspy operations over a view. Every write-like operation fails with
        STATUS_MEDIA_WRITE_PROTECTED."""

        def __init__(self, view: ArchiveView) -> None:
            super().__init__()
            self.fs = ReadOnlyFS(view)
            # winfspy's SecurityDescriptor frees its memory when collected; keep it for
            # the life of the mount.
            self.security = plumbing.SecurityDescriptor.from_string(SECURITY_SDDL)

        @nt
        def get_volume_info(self) -> dict[str, Any]:
            return self.fs.volume_info()

        @nt
        def get_security_by_name(self, file_name: str) -> tuple[int, Any, int]:
            return self.fs.attributes(file_name), self.security.handle, self.security.size

        def get_security(self, file_context: OpenFile) -> tuple[Any, int]:
            return self.security.handle, self.security.size

        @nt
        def open(self, file_name: str, create_options: int, granted_access: int) -> OpenFile:
            return self.fs.open(file_name)

        def close(self, file_context: OpenFile) -> None:
            self.fs.close(file_context)

        def cleanup(self, file_context: OpenFile, file_name: str | None, flags: int) -> None:
            # Called only after modifications (post_cleanup_when_modified_only), which a
            # read-only volume never has; nothing to do either way.
            return None

        @nt
        def get_file_info(self, file_context: OpenFile) -> FileInfo:
            return self.fs.info(file_context)

        @nt
        def read(self, file_context: OpenFile, offset: int, length: int) -> bytes:
            return self.fs.read(file_context, offset, length)

        @nt
        def read_directory(self, file_context: OpenFile, marker: str | None) -> list[DirEntry]:
            return self.fs.read_directory(file_context, marker)

        @nt
        def get_dir_info_by_name(self, file_context: OpenFile, file_name: str) -> DirEntry:
            return self.fs.dir_info_by_name(file_context, file_name)

        def flush(self, file_context: OpenFile) -> None:
            # Nothing is ever dirty, so a flush has nothing to lose: succeed, as the FUSE
            # adapter does (mfusepy's default flush).
            return None

        create = overwrite = write = set_basic_info = set_file_size = refuse
        can_delete = rename = set_security = set_volume_label = refuse

    return BlockFrameOperations


def _serve_forever() -> None:
    # The dispatcher runs on WinFsp's threads; the main thread only waits for Ctrl+C, in
    # short sleeps because a sleep is where Python on Windows delivers KeyboardInterrupt.
    while True:
        time.sleep(1)


def _ctrl_break_interrupts() -> Callable[[], None]:
    """Make Ctrl+Break (SIGBREAK: how a console or CI stops a process group) stop the mount
    as Ctrl+C does; Python leaves it at the default, which ends the process without
    stopping WinFsp's dispatcher or finishing queued repairs. Returns the undo."""
    if sys.platform != "win32":
        return lambda: None
    previous = signal.signal(signal.SIGBREAK, signal.default_int_handler)

    def undo() -> None:
        signal.signal(signal.SIGBREAK, previous)

    return undo


def mount(view: ArchiveView, mountpoint: str | os.PathLike[str], allow_other: bool = False) -> None:
    """Mount ``view`` read-only on a drive letter (``Z:``) and serve until Ctrl+C; then
    stop the file system and finish queued repairs."""
    try:
        drive = drive_letter(mountpoint)
        if allow_other:
            log.warning("--allow-other is ignored on Windows (the volume's ACL lets everyone read)")
        winfspy, plumbing = _load_winfspy()
        if Path(f"{drive}\\").exists():
            raise UsageError(f"cannot mount on {drive}: the drive letter is already in use")
        ops = operations_class(winfspy, plumbing)(view)
        try:
            fs = winfspy.FileSystem(drive, ops, **volume_params(view))
        except winfspy.WinFSPyError as e:
            raise UsageError(f"cannot mount on {drive}: WinFsp refused the volume ({e})") from None
        try:
            fs.start()
        except (winfspy.WinFSPyError, OSError) as e:
            # OSError: winfspy's start() stats the new drive to wait until it answers.
            raise UsageError(f"cannot mount on {drive} ({e})") from None
        restore_ctrl_break = _ctrl_break_interrupts()
        try:
            files, _ = view.totals()
            print(
                f"blockframe: mounted {view.archive.root} at {drive} "
                f"({files} files); Ctrl+C to unmount",
                file=sys.stderr,
                flush=True,
            )
            _serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            fs.stop()
            restore_ctrl_break()
    finally:
        view.close()
