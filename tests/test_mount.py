"""Real FUSE mounts: every tier reads back exactly, through Python and through cmp, tail and
grep; damage is served clean and repaired on disk; damage beyond parity is EIO for that
range only; concurrency; writes refused; clean unmount on signals."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SMALL, Env, data

pytestmark = pytest.mark.skipif(
    not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse"
)

TEXT = "".join(f"line {i}: the quick brown fox\n" for i in range(500)).encode()
FILES = {
    "t1.bin": 15_000,  # tier 1
    "t2.bin": 50_000,  # tier 2
    "dir/sub/t3.bin": 300_017,  # tier 3, last block of one short segment
    "dir/notes.txt": len(TEXT),  # tier 1 text
}


def content(name: str) -> bytes:
    return TEXT if name.endswith(".txt") else data(FILES[name], seed=len(name))


class Mount:
    def __init__(self, env: Env, mnt: Path, proc: subprocess.Popen[bytes]) -> None:
        self.env = env
        self.mnt = mnt
        self.proc = proc

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, bytes]:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        finally:
            if os.path.ismount(self.mnt):
                subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


def start_mount(env: Env, mnt: Path) -> Mount:
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockframe", "mount", "-m", str(mnt)],
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mount did not come up: {proc.communicate()[1]!r}")
        time.sleep(0.05)
    return Mount(env, mnt, proc)


@pytest.fixture
def archive(env: Env) -> Env:
    for name in FILES:
        path = env.root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(name))
    r = env.run("commit", "-f", str(env.root / "src" / "t1.bin"))
    assert r.returncode == 0, r.stderr
    env.run("commit", "-f", str(env.root / "src" / "t2.bin"))
    r = env.run("commit", "-f", str(env.root / "src" / "dir"))
    assert r.returncode == 0, r.stderr
    tiers = {n: e.manifest.tier for n, e in env.archive.scan().entries.items()}
    # The folder's files are in one pack (tier 3), which every test below reads like any
    # object.
    assert tiers == {"t1.bin": 1, "t2.bin": 2, "dir/sub/t3.bin": 3, "dir/notes.txt": 3}
    return env


@pytest.fixture
def mounted(archive: Env) -> Iterator[Mount]:
    m = start_mount(archive, archive.root / "mnt")
    yield m
    code, err = m.stop()
    assert code == 0, err
    assert not os.path.ismount(m.mnt)


def test_tree_stat_and_whole_files(mounted: Mount) -> None:
    mnt = mounted.mnt
    assert sorted(os.listdir(mnt)) == ["dir", "t1.bin", "t2.bin"]
    assert sorted(os.listdir(mnt / "dir")) == ["notes.txt", "sub"]
    assert os.listdir(mnt / "dir" / "sub") == ["t3.bin"]
    for name in FILES:
        st = os.stat(mnt / name)
        assert st.st_size == len(content(name))
        assert st.st_mode & 0o777 == 0o444
        assert st.st_blksize >= 65536
        assert (mnt / name).read_bytes() == content(name)
    assert os.stat(mnt / "dir").st_mode & 0o777 == 0o555
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "nope")
    sv = os.statvfs(mnt)
    assert sv.f_files == len(FILES)


def test_random_ranges_across_edges(mounted: Mount) -> None:
    rng = random.Random(42)
    seg = SMALL.segment_size
    block = seg * SMALL.block_segments
    for name in ("t1.bin", "t2.bin", "dir/sub/t3.bin"):
        want = content(name)
        offsets = [0, len(want) - 1, seg - 1, seg, block - 3, block, len(want) - 5]
        offsets += [rng.randrange(len(want)) for _ in range(40)]
        with open(mounted.mnt / name, "rb", buffering=0) as f:
            for off in offsets:
                if off >= len(want) or off < 0:
                    continue
                for size in (1, 7, 4096, seg + 3, rng.randrange(1, 2**20)):
                    f.seek(off)
                    assert f.read(size) == want[off : off + size], (name, off, size)


def test_standard_tools(mounted: Mount) -> None:
    mnt = mounted.mnt
    src = mounted.env.root / "src"
    for name in FILES:
        assert subprocess.run(["cmp", str(mnt / name), str(src / name)]).returncode == 0
    tail = subprocess.run(["tail", "-c", "1000", str(mnt / "dir/sub/t3.bin")], capture_output=True)
    assert tail.stdout == content("dir/sub/t3.bin")[-1000:]
    grep = subprocess.run(
        ["grep", "-c", "line 39", str(mnt / "dir/notes.txt")], capture_output=True
    )
    assert grep.stdout.strip() == b"11"


def test_writes_are_refused(mounted: Mount) -> None:
    mnt = mounted.mnt
    for attempt in (
        lambda: (mnt / "t1.bin").open("r+b").close(),
        lambda: (mnt / "new.bin").open("wb").close(),
        lambda: os.mkdir(mnt / "newdir"),
        lambda: os.unlink(mnt / "t1.bin"),
        lambda: os.rename(mnt / "t1.bin", mnt / "t9.bin"),
        lambda: os.chmod(mnt / "t1.bin", 0o666),
    ):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert (mnt / "t1.bin").read_bytes() == content("t1.bin")


def wait_until(predicate: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_damage_before_and_during_the_mount_is_served_clean_and_repaired(archive: Env) -> None:
    t2 = archive.object_dir("t2.bin")
    t3 = archive.object_dir("dir/sub/t3.bin")
    seg1 = t2 / "segments/segment_1.dat"
    seg1_clean = seg1.read_bytes()
    raw = bytearray(seg1_clean)
    raw[100] ^= 0xFF
    seg1.write_bytes(bytes(raw))
    m = start_mount(archive, archive.root / "mnt")
    try:
        assert (m.mnt / "t2.bin").read_bytes() == content("t2.bin")
        wait_until(lambda: seg1.read_bytes() == seg1_clean)
        # Now damage while mounted: delete a data shard and truncate a parity shard of a
        # block nobody has read yet.
        victim = t3 / "blocks/block_5/segments/segment_2.dat"
        victim_clean = victim.read_bytes()
        victim.unlink()
        parity = t3 / "blocks/block_5/parity/parity_0.dat"
        parity_clean = parity.read_bytes()
        with open(parity, "r+b") as f:
            f.truncate(10)
        want = content("dir/sub/t3.bin")
        block = SMALL.segment_size * SMALL.block_segments
        with open(m.mnt / "dir/sub/t3.bin", "rb") as f:
            f.seek(5 * block)
            assert f.read(block) == want[5 * block : 6 * block]
        wait_until(lambda: victim.exists() and victim.read_bytes() == victim_clean)
        assert (m.mnt / "dir/sub/t3.bin").read_bytes() == want
    finally:
        code, err = m.stop()
    assert code == 0, err
    assert b"segment_1.dat is corrupt" in err and b"repaired" in err
    # The parity shard was not needed by any read; a scrub (health) rebuilds it.
    assert parity.stat().st_size in (10, len(parity_clean))


def test_damage_beyond_parity_is_eio_for_that_range_only(archive: Env) -> None:
    t3 = archive.object_dir("dir/sub/t3.bin")
    for rel in ("segments/segment_0.dat", "segments/segment_1.dat", "parity/parity_0.dat"):
        p = t3 / "blocks/block_2" / rel
        raw = bytearray(p.read_bytes())
        raw[50] ^= 0x01
        p.write_bytes(bytes(raw))
    before = {p: p.read_bytes() for p in t3.rglob("*.dat")}
    m = start_mount(archive, archive.root / "mnt")
    try:
        want = content("dir/sub/t3.bin")
        block = SMALL.segment_size * SMALL.block_segments
        with open(m.mnt / "dir/sub/t3.bin", "rb", buffering=0) as f:
            f.seek(2 * block)
            with pytest.raises(OSError) as e:
                f.read(100)
            assert e.value.errno == errno.EIO
            f.seek(0)
            assert f.read(2 * block) == want[: 2 * block]
            f.seek(3 * block)
            assert f.read() == want[3 * block :]
            # Same block, a page whose chunks are intact: still served. (EIO covers the
            # kernel's read request, at least the 4 KiB page holding a lost chunk.)
            intact = 2 * block + 4096
            f.seek(intact)
            assert f.read(100) == want[intact : intact + 100]
        assert (m.mnt / "t1.bin").read_bytes() == content("t1.bin")
    finally:
        code, err = m.stop()
    assert code == 0, err
    assert b"cannot be recovered" in err
    assert {p: p.read_bytes() for p in t3.rglob("*.dat")} == before


def test_eight_threads_and_two_processes(mounted: Mount) -> None:
    errors: list[str] = []
    names = list(FILES)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            name = rng.choice(names)
            want = content(name)
            off = rng.randrange(len(want))
            size = rng.randrange(1, 200_000)
            with open(mounted.mnt / name, "rb") as f:
                f.seek(off)
                if f.read(size) != want[off : off + size]:
                    errors.append(f"{name} {off}+{size}")

    procs = [
        subprocess.Popen(["cmp", str(mounted.mnt / n), str(mounted.env.root / "src" / n)])
        for n in ("dir/sub/t3.bin", "t2.bin")
    ]
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert errors == []


def test_sigint_unmounts_cleanly(archive: Env) -> None:
    m = start_mount(archive, archive.root / "mnt")
    assert (m.mnt / "t1.bin").read_bytes() == content("t1.bin")
    code, err = m.stop(signal.SIGINT)
    assert code == 0, err
    assert not os.path.ismount(m.mnt)
    assert b"unmounted" in err


def test_stale_mount_with_shell_characters_in_its_name_is_cleared(archive: Env) -> None:
    # A mount whose process was killed leaves "Transport endpoint is not connected"; the
    # next mount clears it. The name would run `touch pwned` if it reached a shell.
    mnt = archive.root / "mnt q'$(touch pwned)'q `touch pwned2`"
    m = start_mount(archive, mnt)
    try:
        assert (mnt / "t1.bin").read_bytes() == content("t1.bin")
        m.proc.kill()
        m.proc.wait(timeout=20)
        with pytest.raises(OSError) as stale:
            os.listdir(mnt)
        assert stale.value.errno == errno.ENOTCONN
        deadline = time.monotonic() + 10
        while os.path.ismount(mnt):  # answered from the kernel's attribute cache for ~1 s
            assert time.monotonic() < deadline
            time.sleep(0.05)
        m = start_mount(archive, mnt)
        assert (mnt / "dir/notes.txt").read_bytes() == TEXT
        code, err = m.stop()
        assert code == 0, err
        assert b"clearing a stale mount" in err
        assert not os.path.ismount(mnt)
        assert [p.name for p in archive.root.iterdir() if p.name.startswith("pwned")] == []
    finally:
        if m.proc.poll() is None:
            m.proc.kill()
        subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL, check=False)


def test_bad_entries_do_not_stop_the_mount(archive: Env) -> None:
    (archive.archive_dir / "stray.txt").write_bytes(b"x")
    bad = archive.object_dir("t2.bin")
    (bad / "manifest.json").write_bytes(b"{}")
    (bad / "manifest.replica.json").write_bytes(b"")
    m = start_mount(archive, archive.root / "mnt")
    try:
        assert sorted(os.listdir(m.mnt)) == ["dir", "t1.bin"]
        assert (m.mnt / "dir/sub/t3.bin").read_bytes() == content("dir/sub/t3.bin")
    finally:
        code, err = m.stop()
    assert code == 0
    assert b"skipped stray.txt" in err


def test_mount_errors_are_one_line(archive: Env) -> None:
    (archive.root / "afile").write_bytes(b"x")
    r = archive.run("mount", "-m", "afile")
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1, r.stderr
    r = archive.run("mount", "-m", "mnt", "-a", "missing")
    assert r.returncode == 1 and b"does not exist" in r.stderr
    r = archive.run("mount", "-m", "mnt", "-r", "http://127.0.0.1:1")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
    assert b"http://127.0.0.1:1" in r.stderr
    r = archive.run("mount", "-m", "mnt", "-r", "ftp://example")
    assert r.returncode == 2 and b"http://" in r.stderr
