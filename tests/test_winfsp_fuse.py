"""The FUSE adapter on WinFsp's FUSE layer, as far as Linux can exercise it: the mount
point (a free drive letter or a directory that does not exist yet), the options handed to
WinFsp (checked against the options WinFsp parses), the errno of each error and the NTSTATUS
WinFsp turns it into, and the adapter's Windows code paths (no getuid, no O_ACCMODE, no
readahead tuning) driven through the real mfusepy with a stand-in for ``fuse_main_real``.
A real WinFsp mount runs only in CI on Windows (.github/workflows/mount_check.py)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mfusepy
import pytest

from blockframe.access import fuse
from blockframe.access.view import ArchiveView
from blockframe.access.windows import fuse_mountpoint
from blockframe.archive import Archive
from blockframe.errors import (
    IntegrityError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    UsageError,
)

from conftest import SMALL, Env, WindowsOS, data

# The -o options WinFsp's FUSE layer parses (winfsp src/dll/fuse/fuse.c, fsp_fuse_core_opts,
# at e7c7ccc), of those this adapter could use. Any other option is kept and ignored.
WINFSP_OPTIONS = {
    "uid",
    "gid",
    "umask",
    "create_umask",
    "volname",
    "FileSystemName",
    "ExactFileSystemName",
    "FileInfoTimeout",
    "DirInfoTimeout",
    "VolumeInfoTimeout",
    "ThreadCount",
    "rellinks",
    "dothidden",
}

# WinFsp's errno -> NTSTATUS table for a Windows (MSVC C runtime) environment, the one its
# fuse_* exports use (winfsp src/dll/fuse/errno.i, FSP_FUSE_ERRNO == 87), for the codes the
# adapter answers with.
WINFSP_NTSTATUS = {
    2: "STATUS_OBJECT_NAME_NOT_FOUND",
    5: "STATUS_IO_DEVICE_ERROR",
    20: "STATUS_NOT_A_DIRECTORY",
    21: "STATUS_FILE_IS_A_DIRECTORY",
    30: "STATUS_MEDIA_WRITE_PROTECTED",
}
# The MSVC C runtime's errno.h values of those codes (what Python's errno is on Windows).
MSVC_ERRNO = {"ENOENT": 2, "EIO": 5, "ENOTDIR": 20, "EISDIR": 21, "EROFS": 30}


# --- mount point ----------------------------------------------------------------------


def none_exist(path: str) -> bool:
    return False


@pytest.mark.parametrize("given", ["Z:", "z:", "Z:\\", "Z:/", "Z", " z: "])
def test_drive_letter(given: str) -> None:
    assert fuse_mountpoint(given, none_exist) == "Z:"


def test_drive_letter_in_use() -> None:
    with pytest.raises(UsageError, match="already in use"):
        fuse_mountpoint("C:", lambda p: p == "C:\\")


def test_new_directory_under_an_existing_parent() -> None:
    exists = {"C:\\mnt"}.__contains__
    assert fuse_mountpoint("C:\\mnt\\archive", exists) == "C:\\mnt\\archive"
    assert fuse_mountpoint("C:/mnt/archive", exists) == "C:\\mnt\\archive"


def test_existing_directory_refused() -> None:
    # WinFsp creates the directory (a reparse point) itself and refuses an existing one.
    with pytest.raises(UsageError, match="must not exist"):
        fuse_mountpoint("C:\\mnt", {"C:\\mnt"}.__contains__)


def test_directory_with_a_missing_parent_refused() -> None:
    with pytest.raises(UsageError, match="no such directory"):
        fuse_mountpoint("C:\\nowhere\\archive", none_exist)


@pytest.mark.parametrize("given", ["", "   "])
def test_empty_mountpoint_refused(given: str) -> None:
    with pytest.raises(UsageError, match="Z:"):
        fuse_mountpoint(given, none_exist)


# --- options --------------------------------------------------------------------------


def option_string(options: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``-o`` options as mfusepy builds them against WinFsp (which reports FUSE 2.8)."""
    monkeypatch.setattr(mfusepy, "fuse_version_major", 2)
    rest = {k: v for k, v in options.items() if k != "foreground"}
    rest.setdefault("fsname", "BlockFrameFS")  # mfusepy adds it; WinFsp ignores it
    return list(mfusepy.FUSE._normalize_fuse_options(**rest))


def test_windows_options(monkeypatch: pytest.MonkeyPatch) -> None:
    options = fuse.mount_options("win32", allow_other=False, fuse_major=2)
    assert options["foreground"] is True
    opts = option_string(options, monkeypatch)
    assert "uid=-1" in opts and "gid=-1" in opts  # the mounting user owns every file
    assert "umask=0222" in opts  # every file and directory shows read-only (0555)
    # No uid/gid of this process, no readahead, no libfuse3 thread tuning, nothing
    # WinFsp does not parse but the name mfusepy always adds.
    assert not [o for o in opts if o.startswith(("max_", "default_permissions", "ro"))]
    unknown = {o.split("=")[0] for o in opts} - WINFSP_OPTIONS
    assert unknown == {"fsname"}
    # FSP_FSCTL_VOLUME_PARAMS.FileSystemName is WCHAR[16]: "FUSE-" + ours + NUL must fit.
    assert len("FUSE-" + options["FileSystemName"]) < 16
    # The volume label is WCHAR[32].
    assert len(options["volname"]) <= 32


def test_windows_ignores_allow_other(caplog: pytest.LogCaptureFixture) -> None:
    options = fuse.mount_options("win32", allow_other=True, fuse_major=2)
    assert "allow_other" not in options
    assert "ignored on Windows" in caplog.text


@pytest.mark.parametrize("major", [2, 3])
def test_linux_options_unchanged(major: int) -> None:
    options = fuse.mount_options("linux", allow_other=True, fuse_major=major)
    assert options["ro"] is True and options["default_permissions"] is True
    assert options["allow_other"] is True
    assert ("max_threads" in options) == (major == 3)
    assert "uid" not in options and "umask" not in options


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFoundError("x"), "STATUS_OBJECT_NAME_NOT_FOUND"),
        (IsDirectoryError("x"), "STATUS_FILE_IS_A_DIRECTORY"),
        (NotDirectoryError("x"), "STATUS_NOT_A_DIRECTORY"),
        (ReadOnlyError("x"), "STATUS_MEDIA_WRITE_PROTECTED"),
        (IntegrityError("x"), "STATUS_IO_DEVICE_ERROR"),
        (RuntimeError("unexpected"), "STATUS_IO_DEVICE_ERROR"),
    ],
)
def test_errors_become_the_right_ntstatus(error: Exception, status: str) -> None:
    code = fuse.errno_of(error)
    # The errno is one whose number is the same in the MSVC runtime as here...
    name = errno.errorcode[code]
    assert MSVC_ERRNO[name] == code
    # ...and WinFsp answers it with the NTSTATUS a Windows program expects.
    assert WINFSP_NTSTATUS[code] == status


# --- the adapter on Windows code paths ------------------------------------------------


@pytest.fixture
def view(env: Env) -> Iterator[ArchiveView]:
    arch = Archive(env.archive_dir, SMALL)
    src = env.root / "src" / "a.bin"
    src.parent.mkdir(parents=True)
    src.write_bytes(data(200_000, seed=5))
    arch.commit(src, "dir/a.bin")
    v = ArchiveView(arch, repair=False)
    yield v
    v.close()


def test_operations_without_posix_calls(
    view: ArchiveView, windows_os: WindowsOS, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = fuse.BlockFrameFS(view, Path("Z:"))
    assert (ops.uid, ops.gid) == (0, 0)  # WinFsp sets owners from uid=-1,gid=-1
    st = ops.getattr("/dir/a.bin")
    assert st["st_size"] == 200_000 and stat.S_ISREG(st["st_mode"])
    assert stat.S_ISDIR(ops.getattr("/dir")["st_mode"])
    assert ops.readdir("/", 0) == [".", "..", "dir"]
    fh = ops.open("/dir/a.bin", os.O_RDONLY | os.O_BINARY)
    assert ops.read("/dir/a.bin", 100, 1000, fh) == data(200_000, seed=5)[1000:1100]
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(mfusepy.FuseOSError) as e:
            ops.open("/dir/a.bin", flags)
        assert e.value.errno == errno.EROFS
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.getattr("/missing")
    assert e.value.errno == errno.ENOENT
    ops.release("/dir/a.bin", fh)
    ops._tune()  # no /sys, no os.major on Windows: only the message
    assert "mounted" in capsys.readouterr().err
    assert ops.statfs("/")["f_frsize"] == 4096  # WinFsp's sector size comes from here


class Recorded:
    argv: list[str]
    stat_size: int
    read: bytes


def test_mount_hands_winfsp_a_drive_letter_and_its_options(
    view: ArchiveView, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fuse.mount on Windows code paths through the real mfusepy.FUSE, with WinFsp's
    fuse_main_real replaced by a stand-in that records argv and calls back into the
    operations as WinFsp would: init, getattr, open, read (into a C buffer), release.
    (The callbacks have the signatures of the libfuse mfusepy loaded here; WinFsp's are
    FUSE 2.8's, which mfusepy picks on Windows.)"""
    three = mfusepy.fuse_version_major == 3
    fi_arg: tuple[None, ...] = (None,) if three else ()
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    monkeypatch.setattr(fuse, "_clear_stale", lambda m: pytest.fail("no stale mounts on Windows"))
    got = Recorded()

    def fake_main(argc: int, argv: Any, ops_p: Any, size: int, data_p: Any) -> int:
        got.argv = [argv[i].decode() for i in range(argc)]
        ops = ops_p.contents
        ops.init(None, *fi_arg)
        st = mfusepy.c_stat()
        assert ops.getattr(b"/dir/a.bin", ctypes.byref(st), *fi_arg) == 0
        got.stat_size = st.st_size
        fi = mfusepy.fuse_file_info()
        fi.flags = os.O_RDONLY
        assert ops.open(b"/dir/a.bin", ctypes.byref(fi)) == 0
        raw = (ctypes.c_byte * 4096)()
        buf = ctypes.cast(raw, ctypes.POINTER(ctypes.c_byte))
        n = ops.read(b"/dir/a.bin", buf, 4096, 8192, ctypes.byref(fi))
        got.read = bytes(raw)[:n]
        assert ops.write(b"/dir/a.bin", buf, 1, 0, ctypes.byref(fi)) == -errno.EROFS
        assert ops.release(b"/dir/a.bin", ctypes.byref(fi)) == 0
        return 0

    monkeypatch.setattr(mfusepy, "fuse_main_real", fake_main)
    closed: list[bool] = []
    monkeypatch.setattr(view, "close", lambda: closed.append(True))
    fuse.mount(view, Path("z:"))
    assert got.argv[0] == "fuse" and "-f" in got.argv and got.argv[-1] == "Z:"
    opts = got.argv[got.argv.index("-o") + 1].split(",")
    assert {"uid=-1", "gid=-1", "umask=0222"} <= set(opts)
    assert got.stat_size == 200_000
    assert got.read == data(200_000, seed=5)[8192 : 8192 + 4096]
    assert closed == [True]


def test_mount_on_a_letter_in_use_closes_the_view(
    view: ArchiveView, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os.path, "exists", lambda p: p == "Z:\\")
    monkeypatch.setattr(mfusepy, "fuse_main_real", lambda *a: pytest.fail("not mounted"))
    closed: list[bool] = []
    monkeypatch.setattr(view, "close", lambda: closed.append(True))
    with pytest.raises(UsageError, match="already in use"):
        fuse.mount(view, Path("Z:"))
    assert closed == [True]
