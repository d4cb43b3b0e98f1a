"""Commit, list and restore through the real CLI: tiers, layout, re-commit, bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from blockframe.format.manifest import MANIFEST, REPLICA

from conftest import SMALL, Env, data


def shard_files(obj: Path) -> set[str]:
    return {p.relative_to(obj).as_posix() for p in obj.rglob("*") if p.is_file()} - {
        MANIFEST,
        REPLICA,
    }


def data_shards_in_order(env: Env, name: str) -> list[Path]:
    entry = env.archive.get(name)
    return [entry.path / s.path for st in entry.manifest.stripes for s in st.data]


@pytest.mark.parametrize(
    ("size", "tier"),
    [
        (1, 1),
        (SMALL.tier1_max - 1, 1),
        (SMALL.tier1_max, 2),
        (SMALL.tier1_max + 1, 2),
        (SMALL.tier2_max - 1, 2),
        (SMALL.tier2_max, 3),
        (SMALL.tier2_max + 1, 3),
        # Last block of one short segment.
        (SMALL.segment_size * SMALL.block_segments * 4 + 17, 3),
    ],
)
def test_tiers_at_thresholds_round_trip(env: Env, size: int, tier: int) -> None:
    src = env.file("f.bin", size, seed=size)
    r = env.run("commit", "-f", str(src))
    assert r.returncode == 0, r.stderr
    assert b"committed: f.bin" in r.stdout
    entry = env.archive.get("f.bin")
    assert entry.manifest.tier == tier
    assert entry.path.name == f"f.bin_{entry.manifest.content_hash[:16]}"
    # Emergency recovery: data shards concatenated in order are the file.
    assert b"".join(p.read_bytes() for p in data_shards_in_order(env, "f.bin")) == src.read_bytes()
    out = env.root / "out.bin"
    r = env.run("restore", "f.bin", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()


def test_layout_names_per_tier(env: Env) -> None:
    m = SMALL.parity_shards
    env.run("commit", "-f", str(env.file("t1", 5000)))
    env.run("commit", "-f", str(env.file("t2", 3 * 8192 + 5)))
    size3 = 5 * 8192 + 100  # 6 segments: block 0 holds 4, block 1 holds 2
    size3 = max(size3, SMALL.tier2_max + 100)
    env.run("commit", "-f", str(env.file("t3", size3)))
    assert shard_files(env.object_dir("t1")) == {"data.dat"} | {
        f"parity/parity_{j}.dat" for j in range(m)
    }
    assert shard_files(env.object_dir("t2")) == {f"segments/segment_{i}.dat" for i in range(4)} | {
        f"parity/segment_{i}_parity_{j}.dat" for i in range(4) for j in range(m)
    }
    nseg = -(-size3 // SMALL.segment_size)
    expect = set()
    for i in range(nseg):
        b, local = divmod(i, SMALL.block_segments)
        expect.add(f"blocks/block_{b}/segments/segment_{local}.dat")
    for b in range(-(-nseg // SMALL.block_segments)):
        expect |= {f"blocks/block_{b}/parity/parity_{j}.dat" for j in range(m)}
    assert shard_files(env.object_dir("t3")) == expect
    # Parity is stored at the stripe's padded length: a multiple of 64 covering the longest
    # data shard.
    obj = env.object_dir("t3")
    last_block = (nseg - 1) // SMALL.block_segments
    assert (obj / "blocks/block_0/parity/parity_0.dat").stat().st_size == SMALL.segment_size
    last_seg = size3 - (nseg - 1) * SMALL.segment_size
    longest = SMALL.segment_size if nseg % SMALL.block_segments != 1 else last_seg
    want = -(-longest // 64) * 64
    assert (obj / f"blocks/block_{last_block}/parity/parity_0.dat").stat().st_size == want
    # The manifest and its replica are identical and name the object.
    assert (obj / MANIFEST).read_bytes() == (obj / REPLICA).read_bytes()
    doc = json.loads((obj / MANIFEST).read_bytes())
    assert doc["name"] == "t3" and doc["tier"] == 3 and doc["size"] == size3


def test_identical_recommit_is_a_noop(env: Env) -> None:
    src = env.file("a.bin", 30_000)
    assert env.run("commit", "-f", str(src)).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in env.archive_dir.rglob("*")}
    r = env.run("commit", "-f", str(src))
    assert r.returncode == 0
    assert b"unchanged" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in env.archive_dir.rglob("*")} == before


def test_different_content_refused_then_replaced(env: Env) -> None:
    src = env.file("a.bin", 30_000, seed=1)
    env.run("commit", "-f", str(src))
    old_dir = env.object_dir("a.bin")
    src.write_bytes(data(40_000, seed=2))
    r = env.run("commit", "-f", str(src))
    assert r.returncode == 1
    assert b"already archived with different content" in r.stderr
    assert r.stderr.count(b"\n") == 1
    assert old_dir.is_dir() and env.object_dir("a.bin") == old_dir
    r = env.run("commit", "-f", str(src), "--replace")
    assert r.returncode == 0, r.stderr
    assert b"replaced: a.bin" in r.stdout
    assert not old_dir.exists()
    out = env.root / "out"
    assert env.run("restore", "a.bin", "-o", str(out)).returncode == 0
    assert out.read_bytes() == data(40_000, seed=2)
    assert [e.name for e in env.archive.scan().entries.values()] == ["a.bin"]


def test_directory_commit_keeps_relative_paths(env: Env) -> None:
    tree = env.root / "src" / "photos"
    (tree / "2020" / "jan").mkdir(parents=True)
    (tree / "2020" / "jan" / "a.jpg").write_bytes(data(3000, 1))
    (tree / "2020" / "b.jpg").write_bytes(data(25_000, 2))
    (tree / "c.txt").write_bytes(data(120_000, 3))
    (tree / "empty").write_bytes(b"")
    r = env.run("commit", "-f", str(tree))
    # An empty file cannot be an object of its own, but a folder's go into its pack.
    assert r.returncode == 0, r.stderr
    names = set(env.archive.scan().entries)
    assert names == {"photos/2020/jan/a.jpg", "photos/2020/b.jpg", "photos/c.txt", "photos/empty"}
    out = env.root / "restored"
    out.mkdir()
    r = env.run("restore", "photos/2020/jan/a.jpg", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "a.jpg").read_bytes() == data(3000, 1)
    listing = json.loads(env.run("list", "--json").stdout)
    assert sorted(o["name"] for o in listing["objects"]) == sorted(names)


def test_list_shows_names_sizes_tiers_status(env: Env) -> None:
    env.run("commit", "-f", str(env.file("one", 100)))
    env.run("commit", "-f", str(env.file("two", 50_000)))
    r = env.run("list")
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "TIER", "STATUS"]
    assert lines[1].split() == ["one", "100", "B", "1", "ok"]
    assert lines[2].split() == ["two", "48.8", "KiB", "2", "ok"]
    doc = json.loads(env.run("list", "--json").stdout)
    assert [(o["name"], o["size"], o["tier"], o["status"]) for o in doc["objects"]] == [
        ("one", 100, 1, "ok"),
        ("two", 50_000, 2, "ok"),
    ]
    assert doc["problems"] == []


def test_restore_to_stdout(env: Env) -> None:
    src = env.file("s.bin", 150_000)
    env.run("commit", "-f", str(src))
    r = env.run("restore", "s.bin", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout == src.read_bytes()


def test_restore_to_a_device_or_fifo_writes_into_it_and_never_replaces_it(env: Env) -> None:
    src = env.file("s.bin", 150_000)
    env.run("commit", "-f", str(src))
    for flags in ((), ("--force",)):
        r = env.run("restore", "s.bin", "-o", "/dev/null", *flags)
        assert r.returncode == 0, r.stderr
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = env.root / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    r = env.run("restore", "s.bin", "-o", str(fifo))
    assert r.returncode == 0, r.stderr
    assert reader.communicate(timeout=30)[0] == src.read_bytes()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_restore_refuses_to_overwrite_without_force(env: Env) -> None:
    src = env.file("s.bin", 1000)
    env.run("commit", "-f", str(src))
    out = env.root / "out"
    out.write_bytes(b"precious")
    r = env.run("restore", "s.bin", "-o", str(out))
    assert r.returncode == 1 and b"already exists" in r.stderr
    assert out.read_bytes() == b"precious"
    assert env.run("restore", "s.bin", "-o", str(out), "--force").returncode == 0
    assert out.read_bytes() == src.read_bytes()


def one_line_error(r: object, code: int, fragment: bytes) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)  # type: ignore[attr-defined]
    err: bytes = r.stderr  # type: ignore[attr-defined]
    assert err.startswith(b"blockframe: error: "), err
    assert err.count(b"\n") == 1, err
    assert fragment in err
    assert b"Traceback" not in err


def test_bad_input_gives_one_line_errors(env: Env) -> None:
    one_line_error(env.run("commit", "-f", "nope.bin"), 2, b"no such file")
    (env.root / "empty.bin").write_bytes(b"")
    one_line_error(env.run("commit", "-f", "empty.bin"), 2, b"empty")
    one_line_error(env.run("commit", "-f", "/dev/null"), 2, b"not a regular file")
    fifo = env.root / "fifo"
    os.mkfifo(fifo)
    one_line_error(env.run("commit", "-f", str(fifo)), 2, b"not a regular file")
    one_line_error(env.run("restore", "ghost"), 1, b"archive directory does not exist")
    env.run("commit", "-f", str(env.file("present", 10)))
    one_line_error(env.run("restore", "ghost"), 2, b"no object named 'ghost'")
    one_line_error(env.run("list", "-a", str(env.root / "missing")), 1, b"does not exist")
    one_line_error(env.run("commit", "-f", "x", "--bogus"), 2, b"unrecognized arguments")
    one_line_error(env.run("commit"), 2, b"--file")
    src = env.file("x", 10)
    one_line_error(env.run("commit", "-f", str(src), "--name", "../x"), 2, b"invalid object name")
    assert list(env.archive.scan().entries) == ["present"]


def test_archive_path_is_a_file(env: Env) -> None:
    (env.root / "notadir").write_bytes(b"x")
    src = env.file("a", 100)
    one_line_error(env.run("commit", "-f", str(src), "-a", "notadir"), 1, b"cannot create archive")
    one_line_error(env.run("list", "-a", "notadir"), 1, b"does not exist")


def test_config_errors(env: Env) -> None:
    (env.root / "config.toml").write_text("[storage]\nsegment_size = \n")
    r = env.run("list")
    one_line_error(r, 2, b"config.toml")
    assert b"line 2" in r.stderr
    (env.root / "config.toml").write_text('[storage]\nparity_shards = "three"\n')
    one_line_error(env.run("list"), 2, b"storage.parity_shards")
    (env.root / "config.toml").write_text('[storage]\nsegment_size = "12 parsecs"\n')
    one_line_error(env.run("list"), 2, b"cannot read size")
    one_line_error(env.run("--config", "missing.toml", "list"), 2, b"config file not found")


def test_failed_commit_leaves_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that fails after writing shards leaves no object and no staging data."""
    from blockframe.archive import directory as archive_mod

    src = env.file("a.bin", 50_000)
    arch = env.archive

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive_mod, "fsync_dir", boom)
    with pytest.raises(archive_mod.ArchiveError, match="No space left"):
        arch.commit(src)
    monkeypatch.undo()
    assert arch.scan().entries == {}
    assert list((env.archive_dir / ".staging").iterdir()) == []
