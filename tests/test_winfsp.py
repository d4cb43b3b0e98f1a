"""The WinFsp adapter, as far as Linux can exercise it: status mapping, FILETIME, drive
letters, directory listings with markers and file info over a real archive, the winfspy
operations class and mount lifecycle against a stand-in for winfspy (real WinFsp needs
Windows), and that importing the adapter never imports winfspy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest

from blockframe.access import winfsp
from blockframe.access.view import ArchiveView
from blockframe.archive import Archive
from blockframe.errors import (
    ArchiveError,
    IntegrityError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    UsageError,
)

from conftest import SMALL, Env, WindowsOS, data

# The NTSTATUS values of winfspy 0.8.4's winfspy/plumbing/status.py for every name the
# adapter answers with; a misspelt name would be an AttributeError only on Windows.
WINFSPY_NTSTATUS = {
    "STATUS_SUCCESS": 0x0,
    "STATUS_OBJECT_NAME_NOT_FOUND": 0xC0000034,
    "STATUS_FILE_IS_A_DIRECTORY": 0xC00000BA,
    "STATUS_NOT_A_DIRECTORY": 0xC0000103,
    "STATUS_MEDIA_WRITE_PROTECTED": 0xC00000A2,
    "STATUS_DEVICE_DATA_ERROR": 0xC000009C,
    "STATUS_END_OF_FILE": 0xC0000011,
    "STATUS_UNEXPECTED_IO_ERROR": 0xC00000E9,
}

# Parameters of winfspy 0.8.4's file_system._volume_params_factory (FileSystem passes
# its keyword arguments there; an unknown one is a TypeError at mount time).
WINFSPY_VOLUME_PARAMS = {
    "sector_size",
    "sectors_per_allocation_unit",
    "max_component_length",
    "volume_creation_time",
    "volume_serial_number",
    "transact_timeout",
    "irp_timeout",
    "irp_capacity",
    "file_info_timeout",
    "case_sensitive_search",
    "case_preserved_names",
    "unicode_on_disk",
    "persistent_acls",
    "reparse_points",
    "reparse_points_access_check",
    "named_streams",
    "hard_links",
    "extended_attributes",
    "read_only_volume",
    "post_cleanup_when_modified_only",
    "pass_query_directory_pattern",
    "always_use_double_buffering",
    "pass_query_directory_file_name",
    "flush_and_purge_on_cleanup",
    "device_control",
    "um_file_context_is_user_context2",
    "um_file_context_is_full_context",
    "um_reserved_flags",
    "allow_open_in_kernel_mode",
    "case_preserved_extended_attributes",
    "wsl_features",
    "directory_marker_as_next_offset",
    "reject_irp_prior_to_transact0",
    "km_reserved_flags",
    "prefix",
    "file_system_name",
    "volume_info_timeout_valid",
    "dir_info_timeout_valid",
    "security_timeout_valid",
    "stream_info_timeout_valid",
    "km_additional_reserved_flags",
    "volume_info_timeout",
    "dir_info_timeout",
    "security_timeout",
    "stream_info_timeout",
}

FILES = {
    "t1.bin": 15_000,
    "Upper.txt": 10,
    "upper.txt": 11,  # differs from Upper.txt only in case: the volume is case-sensitive
    "dir/-dash.txt": 12,  # sorts before "." by code point
    "dir/notes.txt": 3000,
    "dir/sub/t3.bin": 150_001,
    "extra/one.bin": 1,
}


def content(name: str) -> bytes:
    return data(FILES[name], seed=len(name))


@pytest.fixture
def view(env: Env) -> Iterator[ArchiveView]:
    arch = Archive(env.archive_dir, SMALL)
    for name in FILES:
        src = env.root / "src" / name.replace("/", "_")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(content(name))
        arch.commit(src, name)
    v = ArchiveView(arch, repair=False)
    yield v
    v.close()


# -- pure helpers ---------------------------------------------------------------------------


def test_status_names_and_mapping() -> None:
    for name in (
        winfsp.STATUS_OBJECT_NAME_NOT_FOUND,
        winfsp.STATUS_FILE_IS_A_DIRECTORY,
        winfsp.STATUS_NOT_A_DIRECTORY,
        winfsp.STATUS_MEDIA_WRITE_PROTECTED,
        winfsp.STATUS_DEVICE_DATA_ERROR,
        winfsp.STATUS_END_OF_FILE,
        winfsp.STATUS_UNEXPECTED_IO_ERROR,
    ):
        assert name in WINFSPY_NTSTATUS
    assert winfsp.status_of(NotFoundError("x")) == "STATUS_OBJECT_NAME_NOT_FOUND"
    assert winfsp.status_of(IsDirectoryError("x")) == "STATUS_FILE_IS_A_DIRECTORY"
    assert winfsp.status_of(NotDirectoryError("x")) == "STATUS_NOT_A_DIRECTORY"
    assert winfsp.status_of(ReadOnlyError("x")) == "STATUS_MEDIA_WRITE_PROTECTED"
    assert winfsp.status_of(IntegrityError("x")) == "STATUS_DEVICE_DATA_ERROR"
    assert winfsp.status_of(winfsp.StatusError("STATUS_END_OF_FILE")) == "STATUS_END_OF_FILE"
    # Anything else, ours or not, is a generic I/O error rather than a crash.
    for e in (ArchiveError("x"), UsageError("x"), ValueError("x"), OSError(5, "x"), KeyError()):
        assert winfsp.status_of(e) == "STATUS_UNEXPECTED_IO_ERROR"


def test_filetime() -> None:
    assert winfsp.filetime(0) == 116_444_736_000_000_000
    # The doctest value of winfspy's dt_to_filetime for 2009-07-25 23:00 UTC.
    ns = int(datetime(2009, 7, 25, 23, 0, tzinfo=UTC).timestamp()) * 10**9
    assert winfsp.filetime(ns) == 128_930_364_000_000_000
    assert winfsp.filetime(ns + 199) == 128_930_364_000_000_001  # 100 ns units, truncated
    assert winfsp.filetime(-(10**30)) == 0  # before 1601: clamped, never negative


@pytest.mark.parametrize(
    ("given", "drive"),
    [("Z:", "Z:"), ("z:", "Z:"), ("Z", "Z:"), ("Z:\\", "Z:"), ("Z:/", "Z:"), (Path("q:"), "Q:")],
)
def test_drive_letter_accepted(given: str | Path, drive: str) -> None:
    assert winfsp.drive_letter(given) == drive


@pytest.mark.parametrize(
    "given", ["", "ZZ:", "1:", "Z:\\mnt", "C:/Users/x", "./mnt/blockframe", "/mnt/x", "\\\\srv\\s"]
)
def test_drive_letter_refused(given: str) -> None:
    with pytest.raises(UsageError, match="drive letter"):
        winfsp.drive_letter(given)


def test_volume_params_are_winfspy_parameters(view: ArchiveView) -> None:
    params = winfsp.volume_params(view)
    assert set(params) <= WINFSPY_VOLUME_PARAMS
    assert params["read_only_volume"] == 1
    assert params["case_sensitive_search"] == 1
    assert params["um_file_context_is_user_context2"] == 1
    assert params["prefix"] == ""  # a disk volume, not a network share
    assert len(params["file_system_name"]) < 16
    assert 0 <= params["volume_serial_number"] < 2**32
    assert params["volume_serial_number"] == winfsp.volume_params(view)["volume_serial_number"]
    assert len(winfsp.VOLUME_LABEL.encode("utf-16-le")) <= 64


# -- listings and file info over a real archive ---------------------------------------------


def names(entries: list[winfsp.DirEntry]) -> list[str | int]:
    return [e["file_name"] for e in entries]


def test_file_info_of_files_and_directories(view: ArchiveView) -> None:
    st = view.stat("/dir/notes.txt")
    info = winfsp.file_info(st)
    assert info["file_attributes"] == winfsp.FILE_ATTRIBUTE_READONLY
    assert info["file_size"] == 3000
    assert info["allocation_size"] == 4096
    t = winfsp.filetime(st.mtime_ns)
    assert t > winfsp.EPOCH_AS_FILETIME
    for key in ("creation_time", "last_access_time", "last_write_time", "change_time"):
        assert info[key] == t
    assert set(info) == {
        "file_attributes",
        "allocation_size",
        "file_size",
        "creation_time",
        "last_access_time",
        "last_write_time",
        "change_time",
        "index_number",
    }
    d = winfsp.file_info(view.stat("/dir"))
    assert d["file_attributes"] == winfsp.FILE_ATTRIBUTE_DIRECTORY
    assert d["file_size"] == d["allocation_size"] == 0
    assert winfsp.file_info(view.stat("/t1.bin"))["allocation_size"] == 4 * 4096
    assert winfsp.file_info(view.stat("/dir/sub/t3.bin"))["allocation_size"] == 37 * 4096


def test_listing_root_and_subdirectory(view: ArchiveView) -> None:
    root = winfsp.list_directory(view, "\\")
    # No "." or ".." at the root; both spellings of "upper.txt" are there.
    assert names(root) == ["Upper.txt", "dir", "extra", "t1.bin", "upper.txt"]
    by_name = {e["file_name"]: e for e in root}
    assert by_name["dir"]["file_attributes"] == winfsp.FILE_ATTRIBUTE_DIRECTORY
    assert by_name["t1.bin"]["file_size"] == 15_000
    assert by_name["upper.txt"]["file_size"] == 11

    sub = winfsp.list_directory(view, "\\dir")
    assert names(sub) == [".", "..", "-dash.txt", "notes.txt", "sub"]
    assert sub[0] == {"file_name": ".", **winfsp.file_info(view.stat("/dir"))}
    assert sub[1] == {"file_name": "..", **winfsp.file_info(view.stat("/"))}
    deep = winfsp.list_directory(view, "/dir/sub")
    assert names(deep) == [".", "..", "t3.bin"]
    assert deep[1] == {"file_name": "..", **winfsp.file_info(view.stat("/dir"))}


@pytest.mark.parametrize("path", ["/", "/dir", "/dir/sub"])
def test_listing_resumes_after_every_marker(view: ArchiveView, path: str) -> None:
    full = winfsp.list_directory(view, path)
    for i, entry in enumerate(full):
        marker = entry["file_name"]
        assert isinstance(marker, str)
        assert winfsp.list_directory(view, path, marker) == full[i + 1 :], marker
    assert winfsp.list_directory(view, path, None) == full


def test_listing_marker_that_is_not_an_entry(view: ArchiveView) -> None:
    # A marker that has disappeared (or never existed) resumes at the next greater name.
    assert names(winfsp.list_directory(view, "/", "e")) == [
        "extra",
        "t1.bin",
        "upper.txt",
    ]
    assert names(winfsp.list_directory(view, "/dir", "m")) == ["notes.txt", "sub"]
    assert winfsp.list_directory(view, "/", "\U0010ffff") == []


def test_listing_errors(view: ArchiveView) -> None:
    with pytest.raises(NotDirectoryError):
        winfsp.list_directory(view, "/t1.bin")
    with pytest.raises(NotFoundError):
        winfsp.list_directory(view, "/nope")


# -- ReadOnlyFS: the operations without winfspy types ------------------------------------


def status(excinfo: pytest.ExceptionInfo[winfsp.StatusError]) -> str:
    return excinfo.value.status


def test_open_read_close(view: ArchiveView) -> None:
    fs = winfsp.ReadOnlyFS(view)
    f = fs.open("\\dir\\sub\\t3.bin")
    assert f.path == "/dir/sub/t3.bin" and f.handle is not None
    want = content("dir/sub/t3.bin")
    assert fs.info(f) == winfsp.file_info(view.stat("/dir/sub/t3.bin"))
    for offset, length in [(0, 1), (0, 65536), (8191, 3), (32768, 40000), (150_000, 4096)]:
        assert fs.read(f, offset, length) == want[offset : offset + length]
    for offset in (150_001, 10**12):
        with pytest.raises(winfsp.StatusError) as e:
            fs.read(f, offset, 10)
        assert status(e) == "STATUS_END_OF_FILE"
    fs.close(f)
    # The handle is gone: a late read is an error answer, not a crash.
    with pytest.raises(winfsp.StatusError) as e:
        fs.read(f, 0, 10)
    assert status(e) == "STATUS_OBJECT_NAME_NOT_FOUND"
    fs.close(f)  # closing twice is harmless


def test_open_directory_and_lookups(view: ArchiveView) -> None:
    fs = winfsp.ReadOnlyFS(view)
    d = fs.open("\\dir")
    assert d.handle is None and d.stat.is_dir
    assert fs.info(d)["file_attributes"] == winfsp.FILE_ATTRIBUTE_DIRECTORY
    assert names(fs.read_directory(d, None)) == [".", "..", "-dash.txt", "notes.txt", "sub"]
    assert names(fs.read_directory(d, "-dash.txt")) == ["notes.txt", "sub"]
    entry = fs.dir_info_by_name(d, "notes.txt")
    assert entry == {"file_name": "notes.txt", **winfsp.file_info(view.stat("/dir/notes.txt"))}
    with pytest.raises(winfsp.StatusError) as e:
        fs.dir_info_by_name(d, "Notes.txt")
    assert status(e) == "STATUS_OBJECT_NAME_NOT_FOUND"
    with pytest.raises(winfsp.StatusError) as e:
        fs.read(d, 0, 10)
    assert status(e) == "STATUS_FILE_IS_A_DIRECTORY"
    fs.close(d)

    f = fs.open("\\t1.bin")
    for call in (lambda: fs.read_directory(f, None), lambda: fs.dir_info_by_name(f, "x")):
        with pytest.raises(winfsp.StatusError) as e:
            call()
        assert status(e) == "STATUS_NOT_A_DIRECTORY"
    fs.close(f)

    root = fs.open("\\")
    assert root.path == "/" and names(fs.read_directory(root, None))[0] == "Upper.txt"
    assert fs.attributes("\\dir") == winfsp.FILE_ATTRIBUTE_DIRECTORY
    assert fs.attributes("\\Upper.txt") == winfsp.FILE_ATTRIBUTE_READONLY
    for missing in ("\\nope", "\\UPPER.TXT", "\\t1.bin\\below"):
        with pytest.raises(winfsp.StatusError) as e:
            fs.attributes(missing)
        assert status(e) == "STATUS_OBJECT_NAME_NOT_FOUND"
        with pytest.raises(winfsp.StatusError) as e:
            fs.open(missing)
        assert status(e) == "STATUS_OBJECT_NAME_NOT_FOUND"
    _, total = view.totals()
    assert fs.volume_info() == {"total_size": total, "free_size": 0, "volume_label": "BlockFrame"}


def test_damage_beyond_parity_is_a_data_error(env: Env, view: ArchiveView) -> None:
    entry = env.archive.get("dir/sub/t3.bin")
    first_stripe = [s.path for s in entry.manifest.stripes[0].shards]
    for shard in first_stripe[: SMALL.parity_shards + 1]:
        raw = bytearray((entry.path / shard).read_bytes())
        raw[5] ^= 0xFF
        (entry.path / shard).write_bytes(bytes(raw))
    fs = winfsp.ReadOnlyFS(view)
    f = fs.open("\\dir\\sub\\t3.bin")
    with pytest.raises(winfsp.StatusError) as e:
        fs.read(f, 0, 100)
    assert status(e) == "STATUS_DEVICE_DATA_ERROR"
    # Other stripes still read.
    seg = SMALL.segment_size * SMALL.block_segments
    assert fs.read(f, seg, 100) == content("dir/sub/t3.bin")[seg : seg + 100]


def test_unexpected_errors_become_io_errors(
    view: ArchiveView, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = winfsp.ReadOnlyFS(view)
    f = fs.open("\\t1.bin")

    def broken(*_: Any) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr(view, "read", broken)
    with pytest.raises(winfsp.StatusError) as e:
        fs.read(f, 0, 10)
    assert status(e) == "STATUS_UNEXPECTED_IO_ERROR"


# -- the winfspy edge, against a stand-in with winfspy 0.8's shapes --------------------------


def fake_winfspy() -> tuple[types.ModuleType, types.ModuleType]:
    """Just enough of winfspy's API (as read in 0.8.4's sources) to drive the adapter."""
    top = types.ModuleType("winfspy")
    plumbing = types.ModuleType("winfspy.plumbing")

    class WinFSPyError(Exception):
        pass

    class NTStatusError(WinFSPyError):  # winfspy/plumbing/exceptions.py
        @property
        def value(self) -> Any:
            return self.args[0]

    class BaseFileSystemOperations:  # winfspy/operations.py
        def __init__(self) -> None:
            self._opened_objs: dict[Any, Any] = {}

    class FileSystem:  # winfspy/file_system.py
        instances: ClassVar[list[FileSystem]] = []
        fail_start = False

        def __init__(
            self, mountpoint: str, operations: Any, debug: bool = False, **params: Any
        ) -> None:
            assert isinstance(operations, BaseFileSystemOperations)
            assert set(params) <= WINFSPY_VOLUME_PARAMS
            self.mountpoint, self.operations, self.params = mountpoint, operations, params
            self.events: list[str] = []
            FileSystem.instances.append(self)

        def start(self) -> None:
            if FileSystem.fail_start:
                raise WinFSPyError("Cannot mount file system: STATUS_OBJECT_NAME_COLLISION")
            self.events.append("start")

        def stop(self) -> None:
            self.events.append("stop")

    class SecurityDescriptor(NamedTuple):  # winfspy/plumbing/security_descriptor.py
        handle: Any
        size: int

        @classmethod
        def from_string(cls, sddl: str) -> SecurityDescriptor:
            return cls(("sd", sddl), len(sddl))

    top.WinFSPyError = WinFSPyError  # type: ignore[attr-defined]
    top.NTStatusError = NTStatusError  # type: ignore[attr-defined]
    top.BaseFileSystemOperations = BaseFileSystemOperations  # type: ignore[attr-defined]
    top.FileSystem = FileSystem  # type: ignore[attr-defined]
    top.plumbing = plumbing  # type: ignore[attr-defined]
    # winfspy's NTSTATUS is an IntEnum; the adapter only reads members by name.
    plumbing.NTSTATUS = types.SimpleNamespace(**WINFSPY_NTSTATUS)  # type: ignore[attr-defined]
    plumbing.SecurityDescriptor = SecurityDescriptor  # type: ignore[attr-defined]
    return top, plumbing


def nt_value(call: Any) -> int:
    with pytest.raises(Exception) as e:
        call()
    assert type(e.value).__name__ == "NTStatusError"
    value: int = e.value.value  # type: ignore[attr-defined]
    return value


def test_operations_class(view: ArchiveView) -> None:
    top, plumbing = fake_winfspy()
    ops = winfsp.operations_class(top, plumbing)(view)
    nt = WINFSPY_NTSTATUS
    assert ops._opened_objs == {}  # the base class was initialised

    attributes, sd, sd_size = ops.get_security_by_name("\\dir")
    assert attributes == winfsp.FILE_ATTRIBUTE_DIRECTORY
    assert sd == ("sd", winfsp.SECURITY_SDDL) and sd_size == len(winfsp.SECURITY_SDDL)
    assert ops.get_security_by_name("\\t1.bin")[0] == winfsp.FILE_ATTRIBUTE_READONLY
    assert (
        nt_value(lambda: ops.get_security_by_name("\\nope")) == nt["STATUS_OBJECT_NAME_NOT_FOUND"]
    )
    assert ops.get_volume_info()["volume_label"] == "BlockFrame"

    # open(file_name, create_options, granted_access), as ll_open calls it.
    f = ops.open("\\dir\\notes.txt", 0x40, 0x120089)
    assert ops.get_security(f) == (sd, sd_size)
    assert ops.get_file_info(f)["file_size"] == 3000
    assert ops.read(f, 0, 5000) == content("dir/notes.txt")
    assert nt_value(lambda: ops.read(f, 3000, 1)) == nt["STATUS_END_OF_FILE"]
    assert nt_value(lambda: ops.read_directory(f, None)) == nt["STATUS_NOT_A_DIRECTORY"]
    assert ops.flush(f) is None
    assert ops.cleanup(f, "\\dir\\notes.txt", 0) is None

    # Every write-like operation, with the positional arguments winfspy 0.8 passes.
    writes = {
        "create": ("\\new", 0, 0x12019F, 0x80, None, 0),
        "overwrite": (f, 0x80, True, 0),
        "write": (f, b"x", 0, False, False),
        "set_basic_info": (f, 0x80, 0, 0, 0, 0, None),
        "set_file_size": (f, 0, False),
        "can_delete": (f, "\\dir\\notes.txt"),
        "rename": (f, "\\dir\\notes.txt", "\\dir\\moved.txt", False),
        "set_security": (f, 4, None),
        "set_volume_label": ("NEW",),
    }
    for name, args in writes.items():
        method = getattr(ops, name)
        assert nt_value(lambda m=method, a=args: m(*a)) == nt["STATUS_MEDIA_WRITE_PROTECTED"], name
    assert ops.read(f, 0, 10) == content("dir/notes.txt")[:10]  # still open and readable
    ops.close(f)
    assert nt_value(lambda: ops.read(f, 0, 1)) == nt["STATUS_OBJECT_NAME_NOT_FOUND"]

    d = ops.open("\\dir", 0x1, 0x120089)
    listing = ops.read_directory(d, None)
    assert [e["file_name"] for e in listing] == [".", "..", "-dash.txt", "notes.txt", "sub"]
    assert ops.read_directory(d, "notes.txt") == listing[-1:]
    assert ops.get_dir_info_by_name(d, "sub")["file_attributes"] == winfsp.FILE_ATTRIBUTE_DIRECTORY
    assert nt_value(lambda: ops.get_dir_info_by_name(d, "x")) == nt["STATUS_OBJECT_NAME_NOT_FOUND"]
    assert nt_value(lambda: ops.read(d, 0, 1)) == nt["STATUS_FILE_IS_A_DIRECTORY"]
    ops.close(d)


@pytest.fixture
def winfspy_stub(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    top, plumbing = fake_winfspy()
    monkeypatch.setitem(sys.modules, "winfspy", top)
    monkeypatch.setitem(sys.modules, "winfspy.plumbing", plumbing)
    return top


def test_mount_serves_until_ctrl_c(
    view: ArchiveView,
    winfspy_stub: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted() -> None:
        (fs,) = winfspy_stub.FileSystem.instances
        assert fs.events == ["start"]
        raise KeyboardInterrupt

    closed: list[bool] = []
    monkeypatch.setattr(winfsp, "_serve_forever", interrupted)
    monkeypatch.setattr(view, "close", lambda: closed.append(True))
    winfsp.mount(view, Path("z:"))
    (fs,) = winfspy_stub.FileSystem.instances
    assert fs.mountpoint == "Z:"
    assert fs.events == ["start", "stop"]
    assert fs.params["read_only_volume"] == 1
    assert closed == [True]
    assert "mounted" in capsys.readouterr().err


def test_ctrl_break_stops_the_mount_like_ctrl_c(
    view: ArchiveView,
    winfspy_stub: types.ModuleType,
    windows_os: WindowsOS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SIGBREAK exists on Windows only: SIGUSR1 stands in for it.
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    before = signal.getsignal(signal.SIGUSR1)

    def break_pressed() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)  # interrupted by the handler, as Python delivers it in a sleep
        raise AssertionError("Ctrl+Break did not interrupt the mount")

    monkeypatch.setattr(winfsp, "_serve_forever", break_pressed)
    winfsp.mount(view, Path("z:"))
    (fs,) = winfspy_stub.FileSystem.instances
    assert fs.events == ["start", "stop"]
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is put back


def test_mount_failure_is_a_usage_error(
    view: ArchiveView, winfspy_stub: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    winfspy_stub.FileSystem.fail_start = True
    closed: list[bool] = []
    monkeypatch.setattr(view, "close", lambda: closed.append(True))
    with pytest.raises(UsageError, match=r"cannot mount on Z: \(Cannot mount file system"):
        winfsp.mount(view, "Z:")
    assert closed == [True]


def test_mount_refuses_paths_before_touching_winfspy(
    view: ArchiveView, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A winfspy that explodes on import proves the check comes first.
    monkeypatch.setitem(sys.modules, "winfspy", None)
    with pytest.raises(UsageError, match="drive letter"):
        winfsp.mount(view, Path("./mnt/blockframe"))


@pytest.mark.skipif(sys.platform == "win32", reason="winfspy may be installed on Windows")
def test_mount_without_winfspy_says_so(view: ArchiveView) -> None:
    assert "winfspy" not in sys.modules
    with pytest.raises(UsageError, match="needs the winfspy package"):
        winfsp.mount(view, "Z:")


def test_import_does_not_import_winfspy() -> None:
    code = (
        "import sys; import blockframe.access.winfsp; "
        "import blockframe.access.view; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'winfspy'))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_recorded_links_are_left_out_of_a_native_listing(tmp_path: Path) -> None:
    """winfspy has no symbolic links: a folder's recorded link is not listed (it could not
    be opened), its files and directories are."""
    from blockframe.access.view import ArchiveView
    from blockframe.access.winfsp import list_directory
    from blockframe.archive import Archive

    top = tmp_path / "src" / "f"
    (top / "d").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"a" * 100)
    (top / "ln").symlink_to("a.txt")
    archive = Archive(tmp_path / "archive")
    results, failures = archive.commit_tree(top)
    assert not failures and [r.name for r in results] == ["f/a.txt"]
    view = ArchiveView(archive)
    assert view.stat("/f/ln").is_link
    assert [e["file_name"] for e in list_directory(view, "/f", None)] == [".", "..", "a.txt", "d"]
