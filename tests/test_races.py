"""Concurrent commands, interleaved at chosen points through the BLOCKFRAME_PAUSE_AT test
hook (blockframe/testhook.py): one command is held at a point while another runs whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blockframe.testhook import ENV, PAUSE_ENV

from conftest import data

CONFIG = """\
[archive]
directory = "archive"
[storage]
segment_size = "64KiB"
tier1_max = "100KB"
tier2_max = "1MB"
block_segments = 4
parity_shards = 2
chunk_size = "16KiB"
"""


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, PAUSE_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "blockframe", *args],
        cwd=root,
        capture_output=True,
        timeout=120,
        env=env,
    )


@contextmanager
def held(root: Path, point: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``blockframe *args`` until it reaches ``point``; the block runs while it waits
    there, and it goes on when the block ends."""
    meet = root / f"meet-{time.monotonic_ns()}"
    meet.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (ENV, PAUSE_ENV)}
    env[PAUSE_ENV] = f"{point}={meet}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockframe", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (meet / "reached").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"never reached {point}"
            time.sleep(0.01)
        yield proc
    finally:
        (meet / "go").touch()


def objects(root: Path) -> dict[str, dict[str, object]]:
    r = cli(root, "list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["problems"] == []
    return {o["name"]: o for o in doc["objects"]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "a.bin").write_bytes(data(300_000, seed=1))
    (tmp_path / "b.bin").write_bytes(data(300_000, seed=2))
    return tmp_path


def test_two_commits_of_one_name_with_different_content_one_wins(root: Path) -> None:
    with held(root, "commit:locking", "commit", "-f", "a.bin", "--name", "x") as first:
        r = cli(root, "commit", "-f", "b.bin", "--name", "x")
        assert r.returncode == 0, r.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 1, err
    assert b"already archived with different content" in err
    listed = objects(root)
    assert list(listed) == ["x"]
    r = cli(root, "restore", "x", "-o", "-")
    assert r.stdout == (root / "b.bin").read_bytes()
    # The loser left nothing behind: one object directory, an empty staging area.
    archive = root / "archive"
    assert [p.name for p in archive.iterdir() if not p.name.startswith(".")] == [
        f"x_{listed['x']['id']}"
    ]
    assert not any((archive / ".staging").iterdir())


def test_two_commits_of_one_name_with_the_same_content_both_succeed(root: Path) -> None:
    with held(root, "commit:locking", "commit", "-f", "a.bin", "--name", "x") as first:
        r = cli(root, "commit", "-f", "a.bin", "--name", "x")
        assert r.returncode == 0, r.stderr
        assert b"committed" in r.stdout
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert b"unchanged" in out + err
    assert list(objects(root)) == ["x"]
    assert not any((root / "archive" / ".staging").iterdir())


def test_the_commit_lock_holds_back_a_second_publisher(root: Path) -> None:
    """Held inside the lock, the first commit has not published; the second waits for it
    (it cannot publish meanwhile), then finds the name taken."""
    with held(root, "commit:locked", "commit", "-f", "a.bin", "--name", "x") as first:
        second = subprocess.Popen(
            [sys.executable, "-m", "blockframe", "commit", "-f", "b.bin", "--name", "x"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k not in (ENV, PAUSE_ENV)},
        )
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=3)  # still waiting for the lock (a lower bound, not a race)
        assert "x" not in objects(root)
    assert first.wait(timeout=120) == 0
    _, err = second.communicate(timeout=120)
    assert second.returncode == 1, err
    r = cli(root, "restore", "x", "-o", "-")
    assert r.stdout == (root / "a.bin").read_bytes()


def test_health_during_a_replace_reports_no_damage(root: Path) -> None:
    assert cli(root, "commit", "-f", "a.bin", "--name", "x").returncode == 0
    assert cli(root, "commit", "-f", "a.bin", "--name", "y").returncode == 0
    with held(root, "health:planned", "health", "--json") as checker:
        r = cli(root, "commit", "-f", "b.bin", "--name", "x", "--replace")
        assert r.returncode == 0, r.stderr
    out, err = checker.communicate(timeout=120)
    assert checker.returncode == 0, (out, err)
    report = json.loads(out)
    assert {o["status"] for o in report["objects"]} == {"healthy"}
    assert "y" in {o["name"] for o in report["objects"]}
    # What health planned to scrub and found gone is not recreated.
    archive = root / "archive"
    names = sorted(p.name for p in archive.iterdir() if not p.name.startswith("."))
    assert len(names) == 2 and names[0].startswith("x_") and names[1].startswith("y_")


def test_a_planted_link_at_the_lock_stops_the_commit_cleanly(root: Path) -> None:
    assert cli(root, "commit", "-f", "a.bin", "--name", "x").returncode == 0
    outside = root / "outside"
    outside.mkdir()
    lock = root / "archive" / ".blockframe" / "commit.lock"
    lock.unlink()
    lock.symlink_to(outside / "victim")
    r = cli(root, "commit", "-f", "b.bin", "--name", "y")
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert "cannot take the commit lock" in err and "symbolic link" in err
    assert len(err.splitlines()) == 1
    assert list(outside.iterdir()) == []
    assert list(objects(root)) == ["x"]
    assert not any((root / "archive" / ".staging").iterdir())
