"""Commands killed with SIGKILL at chosen points (the BLOCKFRAME_CRASH_AT test hook, see
blockframe/testhook.py): a commit leaves no object or a complete one, a restore leaves no
output, and health settles what is left. No wall-clock timing decides where a kill lands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from blockframe.testhook import ENV

from conftest import data

# A tier-3 geometry with several stripes.
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

SIZE = 20 * 2**20 + 12345
KILLED = -signal.SIGKILL


def cli(root: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop(ENV, None)
    if crash is not None:
        env[ENV] = crash
    return subprocess.run(
        [sys.executable, "-m", "blockframe", *args],
        cwd=root,
        capture_output=True,
        timeout=300,
        env=env,
    )


def listing(root: Path) -> tuple[dict[str, dict[str, object]], list[dict[str, str]]]:
    r = cli(root, "list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return {o["name"]: o for o in doc["objects"]}, doc["problems"]


def settle(root: Path, locations: list[str] | None = None, expect: str = "healthy") -> None:
    """Run health with no grace for left-overs; every object must come out ``expect``."""
    from blockframe.archive import Archive, open_archive_at
    from blockframe.config import load_config
    from blockframe.health import Health, Options

    storage = load_config(root / "config.toml").storage
    archive = (
        open_archive_at(locations, storage) if locations else Archive(root / "archive", storage)
    )
    checker = Health(archive, Options(leftover_grace=0))
    report = checker.run(checker.plan())
    assert report.exit_code == 0, [(o.name, o.status, o.problem) for o in report.objects]
    assert {o.status for o in report.objects} == {expect}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "big.bin").write_bytes(data(SIZE, seed=7))
    (tmp_path / "keep.bin").write_bytes(data(5000, seed=8))
    assert cli(tmp_path, "commit", "-f", "keep.bin").returncode == 0
    return tmp_path


@pytest.mark.parametrize(
    ("point", "listed"),
    [("commit:staged", False), ("commit:published", True)],
)
def test_a_killed_commit_leaves_nothing_or_a_complete_object(
    root: Path, point: str, listed: bool
) -> None:
    r = cli(root, "commit", "-f", "big.bin", "--name", "big", crash=point)
    assert r.returncode == KILLED, (point, r.stderr)
    objects, problems = listing(root)
    assert problems == []
    assert "keep.bin" in objects
    assert ("big" in objects) == listed
    visible = {p.name for p in (root / "archive").iterdir() if not p.name.startswith(".")}
    assert len(visible) == 1 + listed, visible
    if listed:
        r = cli(root, "restore", "big", "-o", "-")
        assert r.returncode == 0 and r.stdout == (root / "big.bin").read_bytes()
    else:
        # What was written is confined to the hidden staging area, which health clears.
        assert any((root / "archive" / ".staging").iterdir())
        settle(root)
        assert not any((root / "archive" / ".staging").iterdir())
    # The name is free (or taken by the complete object): the same commit now succeeds.
    r = cli(root, "commit", "-f", "big.bin", "--name", "big")
    assert r.returncode == 0, r.stderr
    assert (b"unchanged" in r.stderr + r.stdout) == listed


def test_a_replace_killed_before_removing_the_old_object_shows_the_new_one(root: Path) -> None:
    (root / "small.bin").write_bytes(data(70000, seed=9))
    assert cli(root, "commit", "-f", "small.bin", "--name", "big").returncode == 0
    r = cli(root, "commit", "-f", "big.bin", "--name", "big", "--replace", crash="commit:published")
    assert r.returncode == KILLED
    r = cli(root, "restore", "big", "-o", "-")
    assert r.returncode == 0 and r.stdout == (root / "big.bin").read_bytes()


@pytest.mark.parametrize("point", ["restore:writing", "restore:synced"])
@pytest.mark.parametrize("force", [False, True])
def test_a_killed_restore_leaves_no_output(root: Path, point: str, force: bool) -> None:
    assert cli(root, "commit", "-f", "big.bin").returncode == 0
    out = root / "out" / "r.bin"
    out.parent.mkdir()
    if force:
        out.write_bytes(b"previous")
    args = ["restore", "big.bin", "-o", str(out)] + (["--force"] if force else [])
    assert cli(root, *args, crash=point).returncode == KILLED
    assert sorted(p.name for p in out.parent.iterdir()) == (["r.bin"] if force else [])
    if force:
        assert out.read_bytes() == b"previous"
    assert cli(root, *args[:4], "--force").returncode == 0
    assert out.read_bytes() == (root / "big.bin").read_bytes()


@pytest.mark.parametrize("point", ["health:stripe@0", "health:repaired@0"])
def test_a_health_killed_after_a_repair_leaves_the_shard_rebuilt(root: Path, point: str) -> None:
    """Killed right after the scrub of a stripe, or right after the core renamed a rebuilt
    shard into place: the shard holds its original bytes, and the next health finds nothing
    to do."""
    (obj,) = [d for d in (root / "archive").iterdir() if not d.name.startswith(".")]
    shard = obj / "parity" / "parity_0.dat"
    original = shard.read_bytes()
    shard.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    assert cli(root, "health", crash=point).returncode == KILLED
    assert shard.read_bytes() == original
    r = cli(root, "health", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [o["status"] for o in doc["objects"]] == ["healthy"]
    assert not doc["leftovers"] and not doc["strays"]


# -- volume archives -----------------------------------------------------------------------
#
# The commit order (FORMAT.md §17): shards placed on each volume under a `.committing`
# marker, manifests written on every volume, then the markers removed. The object is
# published by the first marker removed; before that it is invisible, and health finishes
# it (every volume holds its manifests) or removes it.

VOLUME_POINTS = [
    # (kill point, listed right after the kill, present after health)
    ("volume-commit:placed@0", False, False),
    ("volume-commit:placed@2", False, False),
    ("volume-commit:manifests@0", False, False),
    ("volume-commit:manifests@1", False, False),
    ("volume-commit:manifests@2", False, True),
    ("volume-commit:marker-removed@0", True, True),
    ("volume-commit:marker-removed@1", True, True),
]


@pytest.fixture
def volumes(tmp_path: Path) -> list[Path]:
    vols = [tmp_path / f"disk{i}" for i in range(3)]
    listed = ", ".join(f'"{v}"' for v in vols)
    (tmp_path / "config.toml").write_text(
        CONFIG.replace('directory = "archive"', f"volumes = [{listed}]")
    )
    (tmp_path / "big.bin").write_bytes(data(SIZE, seed=7))
    (tmp_path / "keep.bin").write_bytes(data(5000, seed=8))
    assert cli(tmp_path, "commit", "-f", "keep.bin").returncode == 0
    return vols


def _visible(vols: list[Path]) -> list[set[str]]:
    return [{p.name for p in v.iterdir() if not p.name.startswith(".")} for v in vols]


@pytest.mark.parametrize(("point", "listed", "kept"), VOLUME_POINTS)
def test_a_killed_volume_commit_is_published_only_with_every_manifest(
    volumes: list[Path], point: str, listed: bool, kept: bool
) -> None:
    root = volumes[0].parent
    assert cli(root, "commit", "-f", "big.bin", "--name", "big", crash=point).returncode == KILLED
    objects, problems = listing(root)
    assert "keep.bin" in objects
    assert ("big" in objects) == listed
    assert all("incomplete" in p["reason"] for p in problems), problems
    if listed:
        r = cli(root, "restore", "big", "-o", "-")
        assert r.returncode == 0 and r.stdout == (root / "big.bin").read_bytes()
    settle(root, [str(v) for v in volumes])
    objects, problems = listing(root)
    assert problems == []
    assert ("big" in objects) == kept
    # Every volume holds exactly the surviving objects, each with both manifest copies and
    # no marker; nothing is left in staging.
    survivors = {str(o["id"]) for o in objects.values()}
    for v, names in zip(volumes, _visible(volumes), strict=True):
        assert {n.rsplit("_", 1)[1] for n in names} == survivors, (v, names)
        for n in names:
            assert not (v / n / ".committing").exists()
            assert (v / n / "manifest.json").is_file() and (
                v / n / "manifest.replica.json"
            ).is_file()
        assert not any((v / ".staging").iterdir())


def test_a_published_volume_object_survives_losing_the_volume_that_published_it(
    volumes: list[Path],
) -> None:
    """Killed right after the first marker was removed: the other volumes already hold
    the manifests, so losing volume 0 loses nothing."""
    import shutil

    root = volumes[0].parent
    point = "volume-commit:marker-removed@0"
    assert cli(root, "commit", "-f", "big.bin", "--name", "big", crash=point).returncode == KILLED
    shutil.rmtree(volumes[0])
    volumes[0].mkdir()  # an empty replacement disk
    settle(root, [str(v) for v in volumes], expect="repaired")
    r = cli(root, "restore", "big", "-o", "-")
    assert r.returncode == 0 and r.stdout == (root / "big.bin").read_bytes()


@pytest.mark.parametrize(("nth", "kept"), [(0, True), (2, False)])
def test_a_killed_volume_removal_is_finished_by_health(
    volumes: list[Path], nth: int, kept: bool
) -> None:
    """A replace killed while marking the old object for removal: with an unmarked volume
    left the old object is still published (the two are told apart by age, the newer
    wins); marked everywhere it is gone, and health removes what is left of it."""
    root = volumes[0].parent
    (root / "small.bin").write_bytes(data(70000, seed=9))
    assert cli(root, "commit", "-f", "small.bin", "--name", "big").returncode == 0
    old = listing(root)[0]["big"]["id"]
    r = cli(
        root,
        "commit",
        "-f",
        "big.bin",
        "--name",
        "big",
        "--replace",
        crash=f"volume-discard:marked@{nth}",
    )
    assert r.returncode == KILLED
    r = cli(root, "restore", "big", "-o", "-")
    assert r.returncode == 0 and r.stdout == (root / "big.bin").read_bytes()
    settle(root, [str(v) for v in volumes])
    r = cli(root, "restore", "big", "-o", "-")
    assert r.returncode == 0 and r.stdout == (root / "big.bin").read_bytes()
    held = {n.rsplit("_", 1)[1] for names in _visible(volumes) for n in names}
    assert (old in held) == kept
