"""SIGKILL at random moments: during commit the archive shows either no object or a complete
one; during restore no output file appears."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import data

# Bigger geometry than the other tests so a commit lasts long enough to be interrupted.
CONFIG = """\
[archive]
directory = "archive"
[storage]
segment_size = "1MiB"
tier1_max = "1MB"
tier2_max = "16MB"
block_segments = 8
parity_shards = 3
chunk_size = "64KiB"
"""

SIZE = 48 * 2**20 + 12345


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "blockframe", *args], cwd=root, capture_output=True, timeout=120
    )


def kill_after(root: Path, delay: float, *args: str) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockframe", *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "big.bin").write_bytes(data(SIZE, seed=7))
    (tmp_path / "keep.bin").write_bytes(data(5000, seed=8))
    assert cli(tmp_path, "commit", "-f", "keep.bin").returncode == 0
    return tmp_path


def listing(root: Path) -> dict[str, dict[str, object]]:
    r = cli(root, "list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["problems"] == [], doc["problems"]
    return {o["name"]: o for o in doc["objects"]}


def test_sigkill_during_commit_leaves_nothing_or_a_complete_object(root: Path) -> None:
    t = time.perf_counter()
    assert cli(root, "commit", "-f", "big.bin", "--name", "timing").returncode == 0
    full = time.perf_counter() - t
    rng = random.Random(1234)
    outcomes = set()
    for attempt in range(6):
        name = f"big-{attempt}"
        delay = rng.uniform(0.05, full * 1.1)
        code = kill_after(root, delay, "commit", "-f", "big.bin", "--name", name)
        objects = listing(root)
        assert "keep.bin" in objects
        if name in objects:
            outcomes.add("complete")
            out = root / "out.bin"
            r = cli(root, "restore", name, "-o", str(out), "--force")
            assert r.returncode == 0, (attempt, delay, r.stderr)
            assert out.read_bytes() == (root / "big.bin").read_bytes()
        else:
            outcomes.add("absent" if code == -signal.SIGKILL else "finished-late")
            # Whatever was written is confined to the hidden staging area.
            visible = [p.name for p in (root / "archive").iterdir() if not p.name.startswith(".")]
            assert not [v for v in visible if v.startswith(name)], (attempt, delay, visible)
    # The seeded delays span the whole commit: at least one kill landed mid-way.
    assert "absent" in outcomes


def test_sigkill_during_restore_leaves_no_output(root: Path) -> None:
    assert cli(root, "commit", "-f", "big.bin").returncode == 0
    t = time.perf_counter()
    assert cli(root, "restore", "big.bin", "-o", "timing.out").returncode == 0
    full = time.perf_counter() - t
    rng = random.Random(99)
    for attempt in range(4):
        out = root / f"r{attempt}.out"
        code = kill_after(root, rng.uniform(0.05, full * 0.9), "restore", "big.bin", "-o", str(out))
        if code == -signal.SIGKILL:
            assert not out.exists()
            leftovers = [p.name for p in root.iterdir() if p.name.startswith(f".{out.name}")]
            assert leftovers == [], leftovers
        else:
            assert out.read_bytes() == (root / "big.bin").read_bytes()


def test_sigkill_during_a_volume_commit_leaves_nothing_or_a_complete_object(
    tmp_path: Path,
) -> None:
    """The same over three volumes: killed commits are invisible (their marked directories
    are reported as incomplete, never listed) and health removes them from every volume."""
    from blockframe.archive import open_archive_at
    from blockframe.config import load_config
    from blockframe.health import Health, Options

    vols = [tmp_path / f"disk{i}" for i in range(3)]
    listed = ", ".join(f'"{v}"' for v in vols)
    (tmp_path / "config.toml").write_text(
        CONFIG.replace('directory = "archive"', f"volumes = [{listed}]")
    )
    (tmp_path / "big.bin").write_bytes(data(SIZE, seed=7))
    t = time.perf_counter()
    assert cli(tmp_path, "commit", "-f", "big.bin", "--name", "timing").returncode == 0
    full = time.perf_counter() - t
    rng = random.Random(4321)
    outcomes = set()
    for attempt in range(6):
        name = f"big-{attempt}"
        code = kill_after(
            tmp_path, rng.uniform(0.05, full * 1.1), "commit", "-f", "big.bin", "--name", name
        )
        r = cli(tmp_path, "list", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        names = {o["name"] for o in doc["objects"]}
        assert all("incomplete" in p["reason"] for p in doc["problems"]), doc["problems"]
        if name in names:
            outcomes.add("complete")
            r = cli(tmp_path, "restore", name, "-o", "-")
            assert r.returncode == 0 and r.stdout == (tmp_path / "big.bin").read_bytes()
        else:
            outcomes.add("absent" if code == -signal.SIGKILL else "finished-late")
    assert "absent" in outcomes
    storage = load_config(tmp_path / "config.toml").storage
    checker = Health(open_archive_at([str(v) for v in vols], storage), Options(leftover_grace=0))
    report = checker.run(checker.plan())
    assert report.exit_code == 0
    assert all(o.status == "healthy" for o in report.objects)
    survivors = {e.dirname for e in open_archive_at([str(v) for v in vols]).scan().entries.values()}
    for v in vols:
        visible = {p.name for p in v.iterdir() if not p.name.startswith(".")}
        assert visible == survivors, (v, visible - survivors)
        assert not any((v / ".staging").iterdir())
