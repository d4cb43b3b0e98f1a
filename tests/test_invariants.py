"""DESIGN §6 invariants that the other test files do not already pin down: parity verified
before decoding, bounded memory, concurrent readers during repair."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blockframe.archive import Archive
from blockframe.config import StorageConfig
from blockframe.errors import IntegrityError

from conftest import Env, data


def test_damaged_parity_is_never_fed_to_the_decoder(tmp_path: Path) -> None:
    """RS(1,1): a corrupt data chunk plus a corrupt parity chunk at the same place must
    fail. A decoder fed the unverified parity would return wrong bytes instead."""
    geometry = StorageConfig(tier1_max=10**6, parity_shards=1, chunk_size=1024)
    src = tmp_path / "f"
    src.write_bytes(data(5000))
    arch = Archive(tmp_path / "a", geometry)
    obj_dir = arch.commit(src).entry.path
    for rel in ("data.dat", "parity/parity_0.dat"):
        raw = bytearray((obj_dir / rel).read_bytes())
        raw[100] ^= 0xFF
        (obj_dir / rel).write_bytes(bytes(raw))
    obj = arch.open("f")
    with pytest.raises(IntegrityError, match="cannot be recovered"):
        obj.read(0, 200)
    # The untouched chunks still read.
    assert obj.read(2048, 1000) == data(5000)[2048:3048]


RSS_SCRIPT = """
import sys
from blockframe.archive import Archive
from blockframe.config import StorageConfig
arch = Archive(sys.argv[2], StorageConfig(segment_size=2**20, tier1_max=2**20, tier2_max=2**21,
                                           block_segments=16, parity_shards=3))
arch.commit(sys.argv[1])
with open(sys.argv[3], "wb") as out:
    arch.restore("src.bin", out)
# VmHWM belongs to this program's memory map; ru_maxrss would also count the pytest
# process this child was forked from (Linux keeps it across execve).
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]))
"""


def peak_rss_kib(tmp: Path, size: int) -> int:
    src = tmp / "src.bin"
    with open(src, "wb") as f:
        for i in range(size // 2**20):
            f.write(data(2**20, i))
    r = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(src), str(tmp / f"a{size}"), str(tmp / "out")],
        capture_output=True,
        check=True,
        text=True,
    )
    assert (tmp / "out").stat().st_size == size
    src.unlink()
    return int(r.stdout)


def test_commit_and_restore_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    # Three stripes vs fifteen: the pipeline's pool and encoder are fully in use in both.
    small = peak_rss_kib(tmp_path, 48 * 2**20)
    large = peak_rss_kib(tmp_path, 240 * 2**20)
    # Five times the data may cost a little allocator noise, never the data itself.
    assert large - small < 16 * 1024, (small, large)
    assert large < 200 * 1024, large


def test_concurrent_readers_while_repairing(env: Env) -> None:
    src = env.file("c.bin", 150_001, seed=5)
    original = src.read_bytes()
    arch = env.archive
    obj_dir = arch.commit(src).entry.path
    for rel in ("blocks/block_0/segments/segment_1.dat", "blocks/block_1/parity/parity_0.dat"):
        raw = bytearray((obj_dir / rel).read_bytes())
        raw[777] ^= 0x42
        (obj_dir / rel).write_bytes(bytes(raw))
    (obj_dir / "blocks/block_2/segments/segment_3.dat").unlink()
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        obj = arch.open("c.bin")
        for _ in range(150):
            off = rng.randrange(len(original))
            n = rng.randrange(1, 20_000)
            got = obj.read(off, n)
            if got != original[off : off + n]:
                errors.append(f"wrong bytes at {off}+{n}")

    def repairer() -> None:
        for _ in range(5):
            obj = arch.open("c.bin")
            obj.read(0, len(original))
            obj.verify_parity()
            _, failed = obj.repair()
            errors.extend(failed)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=repairer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert env.archive.open("c.bin").read(0, len(original)) == original
    assert (obj_dir / "blocks/block_2/segments/segment_3.dat").exists()


def test_two_processes_read_the_same_object(env: Env) -> None:
    src = env.file("p.bin", 150_001, seed=6)
    env.run("commit", "-f", str(src))
    obj_dir = env.object_dir("p.bin")
    (obj_dir / "blocks/block_0/segments/segment_0.dat").unlink()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "blockframe", "restore", "p.bin", "-o", "-"],
            cwd=env.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out == src.read_bytes()
