"""The package's Windows code paths, run on Linux: ``sys.platform`` is ``win32`` and the os
module loses what CPython on Windows lacks (the ``windows_os`` fixture), so a POSIX-only call
left outside a platform branch fails here as it would there. Covered: commit and
``restore -o FILE`` end to end through the CLI, directory restore, atomic output without
O_TMPFILE, positional reads without ``os.pread``, directory sync, health's state lock
through ``msvcrt.locking``; and the Windows mount's platform-free parts (finding WinFsp's
DLL in the registry, choosing the route, the extra that keeps winfspy optional), with fakes
that follow the real APIs (``winreg``, ``msvcrt``, an importer)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

from blockframe import cli
from blockframe.access import windows
from blockframe.access.view import ArchiveView
from blockframe.archive import Archive
from blockframe.archive.restore import atomic_output
from blockframe.archive.restore_tree import restore_tree, subtree
from blockframe.errors import UsageError
from blockframe.format.members import Member
from blockframe.health.state import State
from blockframe.storage.local import fsync_dir, read_at

from conftest import SMALL, Env, WindowsOS, data

ROOT = Path(__file__).resolve().parent.parent


# --- the package on Windows code paths -----------------------------------------------


def test_fixture_removes_what_windows_lacks(windows_os: WindowsOS) -> None:
    assert sys.platform == "win32"
    for name in ("pread", "O_TMPFILE", "O_DIRECTORY", "O_NOFOLLOW", "getuid"):
        assert not hasattr(os, name)
    assert os.O_BINARY == 0


def test_read_at_without_pread(tmp_path: Path, windows_os: WindowsOS) -> None:
    payload = data(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY | os.O_BINARY)
    try:
        assert read_at(fd, 10, 5) == payload[5:15]
        assert read_at(fd, 100, len(payload) - 10) == payload[-10:]
        assert read_at(fd, 100, len(payload)) == b""
        # Threads sharing the descriptor each get the bytes at their own offset.
        errors: list[str] = []

        def reader(start: int) -> None:
            for pos in range(start, len(payload) - 4096, 65_536):
                if read_at(fd, 4096, pos) != payload[pos : pos + 4096]:
                    errors.append(f"wrong bytes at {pos}")

        threads = [threading.Thread(target=reader, args=(s,)) for s in (0, 1000, 7777, 31)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    finally:
        os.close(fd)


def test_fsync_dir_is_a_no_op_on_windows(tmp_path: Path, windows_os: WindowsOS) -> None:
    fsync_dir(tmp_path)  # no O_DIRECTORY there: NTFS journals the rename itself


def test_atomic_output_without_o_tmpfile(tmp_path: Path, windows_os: WindowsOS) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with atomic_output(out) as f:
        f.write(b"new bytes\r\n\n")
        # Until the block completes the old file is untouched; the new bytes wait in a
        # hidden temporary file beside it.
        assert out.read_bytes() == b"old"
        assert [p.name.startswith(".out.bin.blockframe-") for p in tmp_path.iterdir()].count(
            True
        ) == 1
    assert out.read_bytes() == b"new bytes\r\n\n"  # binary: no newline translation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(RuntimeError), atomic_output(out) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert out.read_bytes() == b"new bytes\r\n\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_commit_and_restore_to_a_file_through_the_cli(
    env: Env, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`commit` and `restore -o FILE` in-process on Windows code paths (the issue: every
    `restore -o FILE` crashed with an AttributeError there)."""
    monkeypatch.chdir(env.root)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env.root / "xdg"))
    monkeypatch.delenv("BLOCKFRAME_CONFIG", raising=False)
    src = env.file("big.bin", 300_000, seed=3)
    assert cli.main(["commit", "-f", str(src), "-a", str(env.archive_dir)]) == 0
    out = env.root / "restored.bin"
    assert cli.main(["restore", "big.bin", "-a", str(env.archive_dir), "-o", str(out)]) == 0
    assert out.read_bytes() == src.read_bytes()
    # Over an existing file only with --force, which replaces it atomically.
    out.write_bytes(b"x")
    assert cli.main(["restore", "big.bin", "-a", str(env.archive_dir), "-o", str(out)]) == 1
    args = ["restore", "big.bin", "-a", str(env.archive_dir), "-o", str(out), "--force"]
    assert cli.main(args) == 0
    assert out.read_bytes() == src.read_bytes()
    assert not [p for p in env.root.iterdir() if p.name.startswith(".restored.bin")]


def test_directory_restore_on_windows_paths(
    env: Env, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(env.root)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env.root / "xdg"))
    tree = env.root / "photos"
    (tree / "2024").mkdir(parents=True)
    (tree / "a.jpg").write_bytes(data(5000, seed=1))
    (tree / "2024" / "b.jpg").write_bytes(data(70_000, seed=2))
    assert cli.main(["commit", "-f", str(tree), "-a", str(env.archive_dir)]) == 0
    out = env.root / "back"
    assert cli.main(["restore", "photos", "-a", str(env.archive_dir), "-o", str(out)]) == 0
    assert (out / "a.jpg").read_bytes() == data(5000, seed=1)
    assert (out / "2024" / "b.jpg").read_bytes() == data(70_000, seed=2)


def test_directory_restore_without_the_right_to_make_links(
    env: Env, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows refuses os.symlink to users without the privilege (WinError 1314, an
    OSError): the link is reported, everything else restored."""
    tree_dir = env.root / "docs"
    tree_dir.mkdir()
    (tree_dir / "a.txt").write_bytes(data(3000, seed=4))
    archive = env.archive
    archive.commit(tree_dir / "a.txt", "docs/a.txt")
    index = archive.scan()
    # A link as a pack records one (FORMAT.md section 18).
    index.links["docs/latest"] = Member("docs/latest", "symlink", 10**18, target="a.txt")

    why = "A required privilege is not held by the client"

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, why)

    monkeypatch.setattr(os, "symlink", refused)
    out = env.root / "back"
    report = restore_tree(index, subtree(index, "docs"), out)
    assert (out / "a.txt").read_bytes() == data(3000, seed=4)
    assert not (out / "latest").is_symlink()
    assert report.failed == [("docs/latest", f"cannot create the link: {why}")]
    assert (report.files, report.links) == (1, 0)


def test_health_state_lock_uses_msvcrt(env: Env, windows_os: WindowsOS) -> None:
    env.archive.commit(env.file("a.bin", 1000))
    windows_os.msvcrt.calls.clear()  # the commit's own lock
    state = State(env.archive_dir)
    windows_os.msvcrt.busy_attempts = 2  # another health run holds it for 20+ seconds
    state.save({}, set())
    lock, unlock = windows_os.msvcrt.LK_LOCK, windows_os.msvcrt.LK_UNLCK
    # Kept waiting past LK_LOCK's own ten-second give-up, then locked and unlocked byte 0.
    assert windows_os.msvcrt.calls == [(lock, 0, 1)] * 3 + [(unlock, 0, 1)]
    assert windows_os.msvcrt.held == {}
    assert (env.archive_dir / ".blockframe" / "state.json").is_file()


def test_health_state_lock_excludes_a_second_holder(env: Env, windows_os: WindowsOS) -> None:
    env.archive_dir.mkdir()
    state = State(env.archive_dir)
    entered: list[str] = []
    with state._locked():
        entered.append("first")
        fake = windows_os.msvcrt
        fd = os.open(env.archive_dir / ".blockframe" / "lock", os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                fake.locking(fd, fake.LK_NBLCK, 1)
            assert e.value.errno == errno.EDEADLOCK
        finally:
            os.close(fd)
    assert entered == ["first"] and windows_os.msvcrt.held == {}


def test_health_state_lock_refuses_a_link(env: Env, windows_os: WindowsOS) -> None:
    (env.archive_dir / ".blockframe").mkdir(parents=True)
    (env.archive_dir / ".blockframe" / "lock").symlink_to(env.root / "elsewhere")
    with pytest.raises(OSError, match="symbolic link"), State(env.archive_dir)._locked():
        pass
    assert not (env.root / "elsewhere").exists()


# --- finding WinFsp -------------------------------------------------------------------


class FakeWinreg(types.ModuleType):
    """The part of ``winreg`` the DLL finder uses, over a dict of HKLM keys. As on 64-bit
    Windows, ``KEY_WOW64_32KEY`` reads the 32-bit view: ``SOFTWARE\\X`` is then
    ``SOFTWARE\\WOW6432Node\\X``. Missing keys and values raise FileNotFoundError."""

    HKEY_LOCAL_MACHINE = 0x80000002
    KEY_READ = 0x20019
    KEY_WOW64_32KEY = 0x0200
    KEY_WOW64_64KEY = 0x0100
    REG_SZ = 1
    REG_EXPAND_SZ = 2
    REG_DWORD = 4

    def __init__(self, keys: dict[str, dict[str, tuple[Any, int]]], wow64: bool = True):
        super().__init__("winreg")
        self.keys = {k.lower(): v for k, v in keys.items()}
        self.wow64 = wow64
        self.open: list[str] = []

    def OpenKey(self, key: int, sub_key: str, reserved: int = 0, access: int = 0x20019) -> str:
        assert key == self.HKEY_LOCAL_MACHINE and reserved == 0
        assert access & self.KEY_READ == self.KEY_READ
        path = sub_key.lower()
        redirected = path.startswith("software\\") and not path.startswith(
            "software\\wow6432node\\"
        )
        if self.wow64 and access & self.KEY_WOW64_32KEY and redirected:
            path = "software\\wow6432node\\" + path[len("software\\") :]
        if path not in self.keys:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        self.open.append(path)
        return path

    def QueryValueEx(self, key: str, value_name: str) -> tuple[Any, int]:
        assert key in self.open
        try:
            return self.keys[key][value_name]
        except KeyError:
            raise FileNotFoundError(2, "The system cannot find the file specified") from None

    def CloseKey(self, hkey: str) -> None:
        self.open.remove(hkey)

    def ExpandEnvironmentStrings(self, s: str) -> str:
        return s.replace("%ProgramFiles(x86)%", "C:\\Program Files (x86)")


INSTALL = "C:\\Program Files (x86)\\WinFsp\\"
DLL = "C:\\Program Files (x86)\\WinFsp\\bin\\winfsp-x64.dll"


def installed(value: tuple[Any, int] = (INSTALL, 1)) -> FakeWinreg:
    # What WinFsp's (32-bit) installer writes on 64-bit Windows.
    return FakeWinreg({"SOFTWARE\\WOW6432Node\\WinFsp": {"InstallDir": value}})


def test_dll_found_through_the_wow6432node_key() -> None:
    reg = installed()
    assert windows.winfsp_dll(reg, is_file=lambda p: p == DLL) == DLL
    assert reg.open == []  # every key it opened is closed


def test_dll_found_on_32_bit_windows_through_the_32_bit_view() -> None:
    # 32-bit Windows has no WOW6432Node: the key is SOFTWARE\WinFsp itself.
    reg = FakeWinreg({"SOFTWARE\\WinFsp": {"InstallDir": (INSTALL, 1)}}, wow64=False)
    x86 = INSTALL + "bin\\winfsp-x86.dll"
    assert windows.winfsp_dll(reg, is_file=lambda p: p == x86, is_64bit=False) == x86


def test_dll_expandable_install_dir() -> None:
    reg = installed(("%ProgramFiles(x86)%\\WinFsp", 2))
    assert windows.winfsp_dll(reg, is_file=lambda p: p == DLL) == DLL


@pytest.mark.parametrize(
    "reg",
    [
        FakeWinreg({}),
        FakeWinreg({"SOFTWARE\\WOW6432Node\\WinFsp": {}}),
        installed(("", 1)),
        installed((1, 4)),  # a DWORD is no directory
    ],
    ids=["no-key", "no-value", "empty", "not-a-string"],
)
def test_missing_winfsp_is_one_clear_error(reg: FakeWinreg) -> None:
    with pytest.raises(UsageError, match=r"needs WinFsp.*winfsp\.dev"):
        windows.winfsp_dll(reg, is_file=lambda p: True)
    assert reg.open == []


def test_missing_dll_is_named() -> None:
    with pytest.raises(UsageError, match=r"winfsp-x64\.dll is missing"):
        windows.winfsp_dll(installed(), is_file=lambda p: False)


def test_dll_finder_refuses_other_systems() -> None:
    with pytest.raises(UsageError, match="not Windows"):
        windows.winfsp_dll()


def test_use_winfsp_dll_hands_mfusepy_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    environ: dict[str, str] = {}
    monkeypatch.setattr(os.path, "isfile", lambda p: p == DLL)
    assert windows.use_winfsp_dll(environ, installed()) == DLL
    assert environ == {"FUSE_LIBRARY_PATH": DLL}
    given = {"FUSE_LIBRARY_PATH": "D:\\fuse.dll"}
    assert windows.use_winfsp_dll(given, FakeWinreg({})) == "D:\\fuse.dll"


def test_mfusepy_reads_the_same_key_as_the_finder() -> None:
    """mfusepy (when not given FUSE_LIBRARY_PATH) opens SOFTWARE\\WinFsp with
    KEY_WOW64_32KEY: the key the finder reads, so both agree on the DLL."""
    import mfusepy

    source = Path(mfusepy.__file__).read_text()
    assert 'r"SOFTWARE\\WinFsp"' in source and "KEY_WOW64_32KEY" in source
    assert windows.WINFSP_KEY_32 == "SOFTWARE\\WinFsp"
    assert "FUSE_LIBRARY_PATH" in source


# --- the route ------------------------------------------------------------------------


def importer(outcome: type[BaseException] | None) -> Any:
    def load(name: str) -> types.ModuleType:
        assert name == "winfspy"
        if outcome is not None:
            raise outcome("winfspy")
        return types.ModuleType(name)

    return load


def test_route_is_winfspy_when_it_imports() -> None:
    assert windows.choose_route(importer(None)) == "winfspy"


def test_route_is_fuse_without_winfspy() -> None:
    assert windows.choose_route(importer(ModuleNotFoundError)) == "fuse"
    # winfspy installed but WinFsp missing: the FUSE route's finder says what to install.
    assert windows.choose_route(importer(RuntimeError)) == "fuse"


def test_route_really_without_winfspy_here() -> None:
    assert windows.choose_route() == "fuse"  # winfspy is not installed on this machine


@pytest.fixture
def view(env: Env) -> Any:
    arch = Archive(env.archive_dir, SMALL)
    arch.commit(env.file("a.bin", 1000))
    v = ArchiveView(arch, repair=False)
    yield v
    v.close()


def test_mount_takes_winfspy_when_it_imports(
    view: ArchiveView, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    native = types.ModuleType("blockframe.access.winfsp")
    native.mount = lambda v, m, allow_other=False: calls.append(("winfspy", m, allow_other))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "blockframe.access.winfsp", native)
    monkeypatch.setattr(windows, "choose_route", lambda: "winfspy")
    monkeypatch.setattr(windows, "use_winfsp_dll", lambda: pytest.fail("no DLL lookup"))
    windows.mount(view, Path("Z:"), allow_other=True)
    assert calls == [("winfspy", Path("Z:"), True)]


def test_mount_takes_fuse_with_the_dll_found_first(
    view: ArchiveView, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "choose_route", lambda: "fuse")
    monkeypatch.setitem(sys.modules, "winreg", installed())
    monkeypatch.setenv("FUSE_LIBRARY_PATH", "")  # so that undo removes what the route sets
    monkeypatch.delenv("FUSE_LIBRARY_PATH")
    monkeypatch.setattr(os.path, "isfile", lambda p: p == DLL)
    calls: list[tuple[Any, ...]] = []
    from blockframe.access import fuse

    def fake_mount(v: ArchiveView, m: Path, allow_other: bool = False) -> None:
        calls.append(("fuse", m, os.environ["FUSE_LIBRARY_PATH"]))

    monkeypatch.setattr(fuse, "mount", fake_mount)
    windows.mount(view, Path("Z:"))
    assert calls == [("fuse", Path("Z:"), DLL)]


def test_mount_without_winfsp_is_a_usage_error_and_closes_the_view(
    view: ArchiveView, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "choose_route", lambda: "fuse")
    monkeypatch.setitem(sys.modules, "winreg", FakeWinreg({}))
    monkeypatch.setenv("FUSE_LIBRARY_PATH", "")  # so that undo removes what the route sets
    monkeypatch.delenv("FUSE_LIBRARY_PATH")
    closed: list[bool] = []
    monkeypatch.setattr(view, "close", lambda: closed.append(True))
    with pytest.raises(UsageError, match="needs WinFsp"):
        windows.mount(view, Path("Z:"))
    assert closed == [True]


def test_cli_mount_on_windows_goes_through_the_route(
    env: Env, windows_os: WindowsOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(env.root)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env.root / "xdg"))
    env.archive.commit(env.file("a.bin", 1000))
    seen: list[str] = []

    def fake_mount(view: ArchiveView, mountpoint: Path, allow_other: bool = False) -> None:
        seen.append(str(mountpoint))
        view.close()

    monkeypatch.setattr(windows, "mount", fake_mount)
    assert cli.main(["mount", "-a", str(env.archive_dir), "-m", "Z:"]) == 0
    assert seen == ["Z:"]


# --- packaging ------------------------------------------------------------------------


def test_winfspy_is_an_optional_extra_for_old_pythons_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("winfspy")]
    assert any(d.startswith("mfusepy") for d in project["dependencies"])
    (spec,) = project["optional-dependencies"]["winfspy"]
    assert spec.startswith("winfspy")
    assert "sys_platform == 'win32'" in spec and "python_version < '3.12'" in spec


def test_importing_the_route_loads_neither_binding() -> None:
    code = (
        "import sys, blockframe.access.windows; "
        "assert 'winfspy' not in sys.modules and 'mfusepy' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
