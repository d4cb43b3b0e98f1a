"""Local directories: the one atomic file write and directory sync of the package, and the
volume that is a directory of a local filesystem."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from blockframe.storage.base import READ_LIMIT, Volume, check_range, check_rel

# Open flags for new files: never through a symlink planted at the temporary name (O_EXCL
# already refuses any existing name; O_NOFOLLOW says so where the platform has it).
_NEW_FILE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)


# Opening a file to read it: never through a final symlink, never blocking on a FIFO or a
# device (O_NONBLOCK; only regular files are then accepted). Each flag only where the
# platform has it: Windows has none of the first three and needs O_BINARY instead (without
# it the C runtime translates CR LF).
READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def open_regular(path: Path) -> int:
    """A descriptor of the regular file at ``path``. A symlink, FIFO, device or directory
    there is an OSError (never followed, never waited on); a missing file is
    FileNotFoundError."""
    fd = os.open(path, READ_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


# Windows has no pread: a seek and a read under one lock stand in for it.
_SEEK_LOCK = threading.Lock()


def read_at(fd: int, n: int, pos: int) -> bytes:
    """Up to ``n`` bytes of ``fd`` at offset ``pos`` (``b""`` at the end). POSIX reads with
    ``pread``, which leaves the file position alone; Windows has no ``os.pread``, so the
    position is moved there and read under a lock shared by every caller of this function
    (whoever else moves the position of ``fd`` must not share the descriptor)."""
    if sys.platform != "win32":
        return os.pread(fd, n, pos)
    with _SEEK_LOCK:
        os.lseek(fd, pos, os.SEEK_SET)
        return os.read(fd, n)


def read_regular(path: Path, limit: int) -> bytes:
    """The content of the regular file ``path`` (see :func:`open_regular`), refusing one
    larger than ``limit`` bytes before reading it (a sparse 4 GiB file costs nothing)."""
    fd = open_regular(path)
    with open(fd, "rb") as f:
        if os.fstat(fd).st_size > limit:
            raise OSError(errno.EFBIG, f"{path}: larger than {limit} bytes")
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while we read
        raise OSError(errno.EFBIG, f"{path}: larger than {limit} bytes")
    return data


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename, a new file) durable."""
    # Windows cannot open a directory for fsync, and NTFS journals the rename itself.
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden, unpredictable sibling of ``path`` for its next version:
    ``.<name>.tmp-<12 hex>`` (FORMAT.md names it, so ``health`` knows it as ours)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, synced to disk."""
    fd = os.open(path, _NEW_FILE, 0o644)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_fill(path: Path, fill: Callable[[Path], None]) -> None:
    """Replace ``path`` atomically and durably with what ``fill(tmp)`` writes into a new
    temporary file ``tmp`` beside it: readers see the old or the new content, never a part,
    and a crash leaves at most a temporary file that ``health`` removes."""
    tmp = temp_name(path)
    try:
        fill(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically and durably (see :func:`atomic_fill`)."""
    atomic_fill(path, lambda tmp: write_new(tmp, data))


class LocalVolume(Volume):
    """A volume that is a directory of a local filesystem."""

    is_local = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path).absolute()
        self.location = str(self.root)

    def _path(self, rel: str, *, allow_root: bool = False) -> Path:
        check_rel(rel, allow_root=allow_root)
        return self.root / rel if rel else self.root

    def why_absent(self) -> str | None:
        """``None`` if the root is a directory, else why not."""
        try:
            if self.root.is_dir():
                return None
            if self.root.exists():
                return f"{self.root}: not a directory"
        except OSError as e:
            return f"{self.root}: {e.strerror}"
        return f"{self.root}: no such directory"

    def where(self, rel: str = "") -> str:
        """The local path of ``rel``."""
        return str(self._path(rel, allow_root=True))

    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names directly under ``rel``; ``[]`` if it is missing or not a directory."""
        try:
            return sorted(os.listdir(self._path(rel, allow_root=True)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, rel: str, limit: int = READ_LIMIT) -> bytes | None:
        """The whole file; ``None`` if missing (a link, FIFO or larger file: OSError)."""
        try:
            return read_regular(self._path(rel), limit)
        except FileNotFoundError:
            return None

    def _makedirs(self, directory: Path) -> None:
        # Created directories are fsynced into their parents: a file made durable inside a
        # directory whose own entry is not would still vanish in a crash.
        missing: list[Path] = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
            fsync_dir(d.parent)

    def _atomic(self, rel: str, fill: Callable[[Path], None]) -> None:
        path = self._path(rel)
        self._makedirs(path.parent)
        atomic_fill(path, fill)

    def write(self, rel: str, data: bytes) -> None:
        """Temporary file in the same directory, fsync, rename, fsync the directory."""
        self._atomic(rel, lambda tmp: write_new(tmp, data))

    def create_new(self, rel: str, data: bytes) -> bool:
        """``O_CREAT | O_EXCL``, never through a link."""
        path = self._path(rel)
        self._makedirs(path.parent)
        try:
            write_new(path, data)
        except FileExistsError:
            return False
        return True

    def get_range(self, rel: str, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)``; ``b""`` past the end; ``None`` if missing."""
        check_range(start, length)
        try:
            f = open(open_regular(self._path(rel)), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with f:
            f.seek(start)
            parts = []
            left = length
            # A regular file returns everything asked for but at its end; loop anyway so a
            # short read (network filesystems) is not mistaken for the end of the file.
            while left > 0:
                part = f.read(left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            return b"".join(parts)

    def size(self, rel: str) -> int | None:
        """The file's size; ``None`` if missing."""
        try:
            return self._path(rel).stat().st_size
        except FileNotFoundError:
            return None

    def files(self, rel: str) -> list[tuple[str, int]]:
        """Every file under ``rel`` with its size, sorted; ``[]`` if ``rel`` is missing."""
        top = self._path(rel, allow_root=True)
        if not top.is_dir():
            return []

        def fail(e: OSError) -> None:
            # A directory removed while we walk is simply not there; anything else is real.
            if not isinstance(e, FileNotFoundError):
                raise e

        out: list[tuple[str, int]] = []
        for dirpath, _dirs, names in os.walk(top, onerror=fail):
            base = Path(dirpath)
            for name in names:
                p = base / name
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((p.relative_to(top).as_posix(), st.st_size))
        return sorted(out)

    def newest(self, rel: str) -> float | None:
        """Newest mtime of ``rel`` and everything under it (it included)."""
        top = self._path(rel, allow_root=True)
        try:
            newest = top.stat().st_mtime
        except FileNotFoundError:
            return None
        for dirpath, dirs, names in os.walk(top):
            for name in dirs + names:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    continue
        return newest

    def remove(self, rel: str) -> None:
        """Unlink the file (missing is fine)."""
        path = self._path(rel)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def remove_tree(self, rel: str) -> None:
        """Delete the directory and everything in it (missing, or not a directory, is
        fine: the same as a prefix without keys on S3)."""
        path = self._path(rel)
        if path.is_symlink() or not path.is_dir():
            return
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def upload(self, rel: str, local_file: Path) -> None:
        """Copy ``local_file`` to a temporary file, fsync, rename, fsync the directory."""

        def fill(tmp: Path) -> None:
            # copyfile uses the kernel's copy (sendfile / copy_file_range) where it can.
            shutil.copyfile(local_file, tmp)

        self._atomic(rel, fill)

    def local_path(self, rel: str = "") -> Path:
        """The absolute path of ``rel``."""
        return self._path(rel, allow_root=True)
