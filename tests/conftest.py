"""Shared fixtures: a small-geometry archive, the CLI as a subprocess, and shard damage."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockframe.archive import Archive
from blockframe.config import StorageConfig

# Small geometry so every tier appears with kilobytes of data:
# tier 1 < 20 KB <= tier 2 < 100 KB <= tier 3; 8 KiB segments, 4 per block, 2 parity.
SMALL = StorageConfig(
    segment_size=8 * 1024,
    tier1_max=20_000,
    tier2_max=100_000,
    block_segments=4,
    parity_shards=2,
    chunk_size=1024,
)

CONFIG_TOML = """\
[archive]
directory = "archive"

[storage]
segment_size = "8KiB"
tier1_max = "20KB"
tier2_max = "100KB"
block_segments = 4
parity_shards = 2
chunk_size = "1KiB"
"""


def data(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (no two segments alike)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest()
        counter += 1
    return bytes(out[:size])


@dataclass
class Env:
    """A temporary working directory with config.toml and an archive next to it."""

    root: Path

    @property
    def archive_dir(self) -> Path:
        return self.root / "archive"

    @property
    def archive(self) -> Archive:
        return Archive(self.archive_dir, SMALL)

    def file(self, name: str, size: int, seed: int = 0) -> Path:
        path = self.root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(size, seed))
        return path

    def run(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the real CLI in this directory (it finds ./config.toml)."""
        env = {k: v for k, v in os.environ.items() if k != "BLOCKFRAME_CONFIG"}
        env["XDG_CONFIG_HOME"] = str(self.root / "xdg")
        return subprocess.run(
            [sys.executable, "-m", "blockframe", *args],
            cwd=self.root,
            env=env,
            input=input,
            capture_output=True,
            timeout=120,
        )

    def object_dir(self, name: str) -> Path:
        return self.archive.get(name).path


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's cache directory (catalogs of volume archives, health state of buckets)
    is the test's own, for the CLI it runs too."""
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "config.toml").write_text(CONFIG_TOML)
    return Env(tmp_path)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, inode and mtime of every file under ``directory``."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(directory).as_posix()] = (p.read_bytes(), st.st_ino, st.st_mtime_ns)
    return out


# -- damage --------------------------------------------------------------------------------


def flip(path: Path, offset: int = 0, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 1 << bit
    path.write_bytes(bytes(raw))


def truncate(path: Path, keep: int | None = None) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 if keep is None else keep)


def delete(path: Path) -> None:
    path.unlink()


def zero(path: Path, offset: int = 0, length: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * min(length, max(0, path.stat().st_size - offset)))


def garbage(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), 7):
        raw[i] ^= 0xA5
    path.write_bytes(bytes(raw))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flip": lambda p: flip(p, p.stat().st_size // 3, 5),
    "truncate": truncate,
    "delete": delete,
    "zero": lambda p: zero(p, 10, 3000),
    "garbage": garbage,
}


# What the os module of CPython on Windows lacks, of what the package could reach for: a
# test that runs a Windows code path with these removed fails as Windows would (an
# AttributeError) if such a call is not behind a platform branch.
POSIX_ONLY_OS = (
    "pread",
    "pwrite",
    "O_TMPFILE",
    "O_DIRECTORY",
    "O_NOFOLLOW",
    "O_CLOEXEC",
    "O_NONBLOCK",
    "O_ACCMODE",
    "getuid",
    "getgid",
    "geteuid",
    "sync",
    "major",
    "minor",
    "posix_fadvise",
)


class FakeMsvcrt(types.ModuleType):
    """``msvcrt.locking`` as the C runtime documents ``_locking``: it locks ``nbytes``
    from the descriptor's current position; LK_LOCK retries ten times, a second apart,
    then fails with EDEADLOCK; unlocking what is not locked fails with EACCES. Locks are
    per open file, so two descriptors of one file exclude each other."""

    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

    def __init__(self) -> None:
        super().__init__("msvcrt")
        self.held: dict[tuple[int, int, int], int] = {}  # (dev, ino, offset) -> fd
        self.calls: list[tuple[int, int, int]] = []  # (mode, offset, nbytes)
        self.busy_attempts = 0  # LK_LOCK calls to fail with EDEADLOCK first

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        st = os.fstat(fd)
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.calls.append((mode, offset, nbytes))
        key = (st.st_dev, st.st_ino, offset)
        if mode == self.LK_UNLCK:
            if self.held.get(key) != fd:
                raise OSError(errno.EACCES, "Permission denied")
            del self.held[key]
            return
        if self.busy_attempts > 0 or key in self.held:
            self.busy_attempts = max(0, self.busy_attempts - 1)
            raise OSError(errno.EDEADLOCK, "Resource deadlock avoided")
        self.held[key] = fd


@dataclass
class WindowsOS:
    msvcrt: FakeMsvcrt


@pytest.fixture
def windows_os(monkeypatch: pytest.MonkeyPatch) -> WindowsOS:
    """Windows code paths on this machine: ``sys.platform`` is ``win32``, the os module
    loses what Windows does not have and gains ``O_BINARY``, and ``msvcrt`` is a fake."""
    monkeypatch.setattr(sys, "platform", "win32")
    for name in POSIX_ONLY_OS:
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(os, "O_BINARY", 0, raising=False)
    fake = FakeMsvcrt()
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    return WindowsOS(fake)
