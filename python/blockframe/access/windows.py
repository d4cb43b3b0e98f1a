"""The mount on Windows: which adapter serves it, and where WinFsp is.

Two routes reach WinFsp:

- **native**: the winfspy adapter (:mod:`blockframe.access.winfsp`), used when the optional
  ``winfspy`` package imports (``pip install blockframe[winfspy]``; winfspy ships wheels for
  CPython 3.11 and older only);
- **fuse**: the FUSE adapter (:mod:`blockframe.access.fuse`) on WinFsp's FUSE compatibility
  layer through mfusepy, a hard dependency: with nothing but WinFsp installed,
  ``blockframe mount -m Z:`` works on every supported Python.

mfusepy loads ``winfsp-x64.dll`` when it is imported; this module finds that DLL in WinFsp's
registry key first and hands mfusepy its path (``FUSE_LIBRARY_PATH``), so a missing WinFsp
is one clear error instead of mfusepy's "Unable to find libfuse".

Everything here but :func:`mount` is plain Python over injected modules (the registry, an
importer) and is tested on Linux with fakes (tests/test_platform_windows.py).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path, PureWindowsPath
from types import ModuleType
from typing import Any, Literal

from blockframe.access.view import ArchiveView
from blockframe.errors import UsageError

# WinFsp's installer is 32-bit: on 64-bit Windows its key is under WOW6432Node.
WINFSP_KEY = r"SOFTWARE\WOW6432Node\WinFsp"
# The same key as a 32-bit view (32-bit Windows has no WOW6432Node); mfusepy reads this one.
WINFSP_KEY_32 = r"SOFTWARE\WinFsp"
INSTALL_DIR = "InstallDir"
INSTALL_HINT = (
    "install WinFsp from https://winfsp.dev/rel/ (or `winget install WinFsp.WinFsp`, "
    "`choco install winfsp`)"
)

Route = Literal["winfspy", "fuse"]

_DRIVE = re.compile(r"^([A-Za-z]):[\\/]?$")


def dll_name(is_64bit: bool = sys.maxsize > 2**32) -> str:
    """The WinFsp DLL for this Python: ``winfsp-x64.dll`` or ``winfsp-x86.dll``."""
    return "winfsp-x64.dll" if is_64bit else "winfsp-x86.dll"


def _query(registry: Any, key: str, access: int) -> str | None:
    """``InstallDir`` under ``HKLM\\key``, or None where there is no such key or value."""
    try:
        handle = registry.OpenKey(registry.HKEY_LOCAL_MACHINE, key, 0, access)
    except OSError:
        return None
    try:
        value, kind = registry.QueryValueEx(handle, INSTALL_DIR)
    except OSError:
        return None
    finally:
        registry.CloseKey(handle)
    if kind not in (registry.REG_SZ, registry.REG_EXPAND_SZ) or not isinstance(value, str):
        return None
    return registry.ExpandEnvironmentStrings(value) if kind == registry.REG_EXPAND_SZ else value


def winfsp_dll(
    registry: Any = None,
    is_file: Callable[[str], bool] | None = None,
    is_64bit: bool = sys.maxsize > 2**32,
) -> str:
    """The path of WinFsp's DLL (``<InstallDir>bin\\winfsp-x64.dll``), read from
    ``HKLM\\SOFTWARE\\WOW6432Node\\WinFsp`` (or that key's 32-bit view). ``registry`` is the
    ``winreg`` module (a fake in tests). A UsageError that says how to install WinFsp when
    the key, its ``InstallDir`` or the DLL is missing."""
    if registry is None:
        if sys.platform != "win32":
            raise UsageError("WinFsp is a Windows file system; this is not Windows")
        import winreg as registry
    install_dir = _query(registry, WINFSP_KEY, registry.KEY_READ) or _query(
        registry, WINFSP_KEY_32, registry.KEY_READ | registry.KEY_WOW64_32KEY
    )
    if not install_dir:
        raise UsageError(
            f"mounting on Windows needs WinFsp, and it is not installed "
            f"(no {INSTALL_DIR} under HKLM\\{WINFSP_KEY}): {INSTALL_HINT}"
        )
    dll = str(PureWindowsPath(install_dir, "bin", dll_name(is_64bit)))
    if not (is_file or os.path.isfile)(dll):
        raise UsageError(
            f"WinFsp is installed at {install_dir} but {dll} is missing: {INSTALL_HINT}"
        )
    return dll


def use_winfsp_dll(environ: MutableMapping[str, str] = os.environ, registry: Any = None) -> str:
    """Point mfusepy at WinFsp's DLL before it is imported (it loads the library at import
    time); an explicit ``FUSE_LIBRARY_PATH`` wins. Returns the path used."""
    given = environ.get("FUSE_LIBRARY_PATH")
    if given:
        return given
    dll = winfsp_dll(registry)
    environ["FUSE_LIBRARY_PATH"] = dll
    return dll


def choose_route(importer: Callable[[str], ModuleType] = importlib.import_module) -> Route:
    """``"winfspy"`` when the winfspy package imports, else ``"fuse"``. winfspy raises
    RuntimeError on import when WinFsp itself is missing: the FUSE route then gives the
    clear error (its DLL finder reads the same registry key)."""
    try:
        importer("winfspy")
    except ImportError:
        return "fuse"
    except RuntimeError:
        return "fuse"
    return "winfspy"


def fuse_mountpoint(mountpoint: str | os.PathLike[str], exists: Callable[[str], bool]) -> str:
    """The mount point as WinFsp's FUSE layer takes it: a drive letter ``Z:`` not in use,
    or a directory path that does not exist yet (WinFsp creates it) under an existing
    parent. ``exists`` tells whether a path exists (``os.path.exists`` on Windows)."""
    text = os.fspath(mountpoint).strip()
    if not text:
        raise UsageError("give a mount point: a free drive letter such as Z: (use -m Z:)")
    drive = _DRIVE.match(text)
    if drive is not None:
        letter = drive.group(1).upper() + ":"
        if exists(letter + "\\"):
            raise UsageError(f"cannot mount on {letter}: the drive letter is already in use")
        return letter
    if re.fullmatch(r"[A-Za-z]", text):
        return fuse_mountpoint(text + ":", exists)
    path = PureWindowsPath(text)
    if exists(str(path)):
        raise UsageError(
            f"{text}: the mount point must not exist yet on Windows (WinFsp creates it); "
            "give a free drive letter such as Z: or a new directory path"
        )
    parent = str(path.parent)
    if parent != str(path) and not exists(parent):
        raise UsageError(f"{path.parent}: no such directory")
    return str(path)


def mount(view: ArchiveView, mountpoint: Path, allow_other: bool = False) -> None:
    """Mount ``view`` read-only on Windows through the route :func:`choose_route` picks."""
    if choose_route() == "winfspy":
        from blockframe.access.winfsp import mount as native_mount

        native_mount(view, mountpoint, allow_other=allow_other)
        return
    try:
        use_winfsp_dll()
    except UsageError:
        view.close()
        raise
    from blockframe.access.fuse import mount as fuse_mount

    fuse_mount(view, mountpoint, allow_other=allow_other)
