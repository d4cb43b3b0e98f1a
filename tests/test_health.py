"""`blockframe health`: every damage class in every tier is repaired byte-exactly, damage
beyond parity is named (exact file ranges) and left untouched, --dry-run changes nothing,
--json follows the documented schema, and --older-than / --max-time scrub exactly what they
should (driven by state timestamps and an injected clock, never by sleeping)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from blockframe import _core
from blockframe.format.manifest import MANIFEST, REPLICA, Manifest
from blockframe.health import Health, Options, parse_duration, report_schema, scrub

from conftest import Env, flip, garbage, snapshot, truncate

M = 2  # parity shards of the test geometry
SIZES = {1: 15_000, 2: 50_000, 3: 150_001}  # tier 3: 5 blocks, the last of 3 segments
HOUR = 3600.0
SCHEMA = report_schema()


def commit_tiers(env: Env) -> dict[int, tuple[Path, Manifest]]:
    """One object per tier, committed through the API (the CLI is what is under test)."""
    out = {}
    for tier, size in SIZES.items():
        entry = env.archive.commit(env.file(f"t{tier}", size, seed=tier)).entry
        assert entry.manifest.tier == tier
        out[tier] = (entry.path, entry.manifest)
    return out


def health(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `health --json` through the real CLI; the report is checked against the schema."""
    r = env.run("health", "--json", *args)
    assert b"Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["exit_code"] == r.returncode
    return r.returncode, doc


def objects(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"] or o["directory"]: o for o in doc["objects"]}


def age(path: Path, seconds: float) -> None:
    """Make everything under ``path`` look untouched for ``seconds``."""
    t = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t), follow_symlinks=False)


def contents(directory: Path) -> dict[str, bytes]:
    return {p: v[0] for p, v in snapshot(directory).items()}


def archive_files(env: Env) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, inode and mtime of every file of the archive but health's own state."""
    return {p: v for p, v in snapshot(env.archive_dir).items() if not p.startswith(".blockframe/")}


# -- each damage class in each tier ----------------------------------------------------

Damage = Callable[[Env, Path, Manifest], list[str]]


def _flip_data(env: Env, obj: Path, m: Manifest) -> list[str]:
    victims = {m.stripes[-1].data[0].path, m.stripes[0].data[-1].path}
    for v in victims:
        flip(obj / v, (obj / v).stat().st_size // 2, 3)
    return sorted(victims)


def _truncate_data(env: Env, obj: Path, m: Manifest) -> list[str]:
    v = m.stripes[-1].data[0].path
    truncate(obj / v)
    return [v]


def _delete_data(env: Env, obj: Path, m: Manifest) -> list[str]:
    victims = [st.data[0].path for st in m.stripes]  # one per stripe
    for v in victims:
        (obj / v).unlink()
    return victims


def _delete_parity(env: Env, obj: Path, m: Manifest) -> list[str]:
    victims = [p.path for p in m.stripes[0].parity]  # all of one stripe's parity
    for v in victims:
        (obj / v).unlink()
    return victims


def _damage_parity(env: Env, obj: Path, m: Manifest) -> list[str]:
    first, second = m.stripes[-1].parity
    garbage(obj / first.path)
    flip(obj / second.path, 7, 1)
    return [first.path, second.path]


def _data_and_parity_at_the_limit(env: Env, obj: Path, m: Manifest) -> list[str]:
    st = m.stripes[-1]
    (obj / st.data[-1].path).unlink()
    (obj / st.parity[0].path).write_bytes(b"")
    return [st.data[-1].path, st.parity[0].path]


def _damage_manifest(env: Env, obj: Path, m: Manifest) -> list[str]:
    flip(obj / MANIFEST, 200, 0)
    return [MANIFEST]


def _delete_manifest(env: Env, obj: Path, m: Manifest) -> list[str]:
    (obj / MANIFEST).unlink()
    return [MANIFEST]


def _damage_replica(env: Env, obj: Path, m: Manifest) -> list[str]:
    truncate(obj / REPLICA)
    return [REPLICA]


def _delete_replica(env: Env, obj: Path, m: Manifest) -> list[str]:
    (obj / REPLICA).unlink()
    return [REPLICA]


def _leftovers(env: Env, obj: Path, m: Manifest) -> list[str]:
    """What interrupted commits, replaces and repairs leave behind (old enough to be dead)."""
    stage = env.archive_dir / ".staging" / os.urandom(16).hex()
    (stage / "parity").mkdir(parents=True)
    (stage / "parity" / "parity_0.dat").write_bytes(b"half a shard")
    age(stage, 2 * HOUR)
    trash = env.archive_dir / ".trash" / os.urandom(16).hex()
    (trash / "segments").mkdir(parents=True)
    (trash / "segments" / "segment_0.dat").write_bytes(b"old")
    shard = obj / m.stripes[0].parity[0].path
    temp = shard.with_name(f".{shard.name}.repair-4242-0")
    temp.write_bytes(b"partial rebuild")
    mtemp = obj / f".{MANIFEST}.tmp-4242"
    mtemp.write_bytes(b"{")
    for p in (temp, mtemp):
        age(p, 2 * HOUR)
    return []


def _stray_dir(env: Env, obj: Path, m: Manifest) -> list[str]:
    (env.archive_dir / "stray_dir" / "sub").mkdir(parents=True, exist_ok=True)
    (env.archive_dir / "stray_dir" / "sub" / "keep.txt").write_bytes(b"not ours")
    (obj / "extra_dir").mkdir()
    (env.archive_dir / ".staging" / "not-hex").mkdir(parents=True, exist_ok=True)
    return []


def _stray_file(env: Env, obj: Path, m: Manifest) -> list[str]:
    (env.archive_dir / "stray.txt").write_bytes(b"not ours")
    (obj / "notes.txt").write_bytes(b"not ours")
    # Named like a repair temporary, but of no shard of this directory: not provably ours.
    (obj / ".nothing.dat.repair-1-0").write_bytes(b"not ours")
    return []


DAMAGES: dict[str, Damage] = {
    "flip-data": _flip_data,
    "truncate-data": _truncate_data,
    "delete-data": _delete_data,
    "delete-parity": _delete_parity,
    "damage-parity": _damage_parity,
    "data+parity-at-limit": _data_and_parity_at_the_limit,
    "damage-manifest": _damage_manifest,
    "delete-manifest": _delete_manifest,
    "damage-replica": _damage_replica,
    "delete-replica": _delete_replica,
    "leftovers": _leftovers,
    "stray-dir": _stray_dir,
    "stray-file": _stray_file,
}


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_damage_is_repaired_byte_exactly(env: Env, kind: str) -> None:
    objs = commit_tiers(env)
    before = snapshot(env.archive_dir)
    victims: dict[int, list[str]] = {}
    for tier, (obj, m) in objs.items():
        victims[tier] = DAMAGES[kind](env, obj, m)
    added = {p for p in contents(env.archive_dir) if p not in before}

    code, doc = health(env)
    assert code == 0, doc
    after = snapshot(env.archive_dir)
    # Every file of the committed archive holds its original bytes again; files that were
    # not damaged were not even rewritten (same inode and mtime).
    for tier, (obj, _) in objs.items():
        damaged = {f"{obj.name}/{v}" for v in victims[tier]}
        for path, (raw, ino, mtime) in before.items():
            if not path.startswith(obj.name + "/"):
                continue
            assert after[path][0] == raw, f"{path} differs after health"
            if path not in damaged:
                assert after[path][1:] == (ino, mtime), f"healthy {path} was rewritten"
    # Left-overs of ours are gone; anything else is still there, and reported.
    remaining = {p for p in after if p not in before and not p.startswith(".blockframe/")}
    if kind == "leftovers":
        assert added and remaining == set()
        assert {x["kind"] for x in doc["leftovers"]} == {
            "staging",
            "trash",
            "repair-temp",
            "manifest-temp",
        }
        assert all(x["action"] == "removed" for x in doc["leftovers"])
        assert os.listdir(env.archive_dir / ".staging") == []
        assert os.listdir(env.archive_dir / ".trash") == []
    else:
        assert remaining == added
    if kind.startswith("stray"):
        reported = {s["path"] for s in doc["strays"]}
        if kind == "stray-dir":
            assert (env.archive_dir / "stray_dir" / "sub" / "keep.txt").exists()
            assert reported >= {"stray_dir", ".staging/not-hex"}
            assert {f"{obj.name}/extra_dir" for obj, _ in objs.values()} <= reported
        else:
            assert reported >= {"stray.txt"} | {f"{obj.name}/notes.txt" for obj, _ in objs.values()}
    # What was done is reported per object.
    by_name = objects(doc)
    for tier in objs:
        o = by_name[f"t{tier}"]
        assert o["margin"] == M and o["lost"] == [] and o["complete"]
        if kind in ("leftovers", "stray-dir", "stray-file"):
            assert o["status"] == "healthy"
            continue
        assert o["status"] == "repaired"
        manifest_copies = [v for v in victims[tier] if v in (MANIFEST, REPLICA)]
        assert o["manifest"]["repaired"] == manifest_copies
        repaired_shards = {s["path"] for s in o["shards"] if s["repaired"]}
        assert repaired_shards == set(victims[tier]) - {MANIFEST, REPLICA}
    assert doc["status"] == ("healthy" if not any(v for v in victims.values()) else "repaired")

    # A second run finds nothing to do.
    code, doc = health(env)
    assert code == 0 and doc["status"] == "healthy"
    assert {o["status"] for o in doc["objects"]} == {"healthy"}
    assert doc["leftovers"] == []
    assert {p: v[0] for p, v in snapshot(env.archive_dir).items() if p in before} == {
        p: v[0] for p, v in before.items()
    }


# -- beyond repair -----------------------------------------------------------------------


def test_beyond_repair_names_exact_lost_ranges_and_changes_nothing(env: Env) -> None:
    objs = commit_tiers(env)
    t1, _ = objs[1]
    t3, _ = objs[3]
    # Tier 1 (one stripe, 1+2): data.dat cut at 5000 and both parity shards gone; the cut
    # chunk (4096..5119) fails its hash, so bytes 4096..14999 are lost.
    truncate(t1 / "data.dat", 5000)
    for j in range(M):
        (t1 / f"parity/parity_{j}.dat").unlink()
    # Tier 3, block 1 (file bytes 32768..65535, segments of 8192, chunks of 1024): chunk 1
    # of segments 1 and 2 and of parity 0 flipped: three bad shards at one position, one
    # more than parity covers.
    for rel in ("segments/segment_1.dat", "segments/segment_2.dat", "parity/parity_0.dat"):
        flip(t3 / "blocks/block_1" / rel, 2000, 4)
    # Tier 3, block 4 (segments of 8192, 8192, 2545: file bytes 131072..150000): its short
    # last segment and both parity shards gone.
    for rel in ("segments/segment_2.dat", "parity/parity_0.dat", "parity/parity_1.dat"):
        (t3 / "blocks/block_4" / rel).unlink()
    before = archive_files(env)

    code, doc = health(env)
    assert code == 1
    assert doc["status"] == "damaged"
    by_name = objects(doc)
    assert by_name["t1"]["lost"] == [{"start": 4096, "end": 15_000, "shards_needed": 1}]
    assert by_name["t3"]["lost"] == [
        {"start": 40960 + 1024, "end": 40960 + 2048, "shards_needed": 1},
        {"start": 49152 + 1024, "end": 49152 + 2048, "shards_needed": 1},
        {"start": 147_456, "end": 150_001, "shards_needed": 1},
    ]
    for name in ("t1", "t3"):
        o = by_name[name]
        assert o["status"] == "damaged" and o["margin"] == -1 and o["shards_needed"] == 1
        assert all(not s["repaired"] and not s["repairable"] for s in o["shards"])
    assert by_name["t2"]["status"] == "healthy"
    # Riskiest first.
    assert [o["name"] for o in doc["objects"]][-1] == "t2"
    assert doc["totals"]["damaged"] == 2 and doc["totals"]["bytes_repaired"] == 0
    # Nothing anywhere changed (the state file aside), not even the damaged shards.
    assert archive_files(env) == before
    # The people's report names the ranges too.
    r = env.run("health")
    assert r.returncode == 1
    assert b"LOST bytes 147456-150000 (needs 1 more shard)" in r.stdout
    assert b"DAMAGE REMAINS" in r.stdout


def test_repairable_shards_next_to_lost_ones_are_repaired(env: Env) -> None:
    objs = commit_tiers(env)
    t3, _ = objs[3]
    clean = contents(env.archive_dir)
    block = t3 / "blocks/block_1"
    # Chunk 1 of block 1 is lost (three bad shards) ...
    for rel in ("segments/segment_1.dat", "segments/segment_2.dat", "parity/parity_0.dat"):
        flip(block / rel, 2000, 4)
    lost = {
        f"{t3.name}/blocks/block_1/{r}"
        for r in ("segments/segment_1.dat", "segments/segment_2.dat", "parity/parity_0.dat")
    }
    # ... while segment 0 is bad only in chunk 5, in the same 1 MiB window, and another
    # block lost a whole parity shard: both are repairable.
    flip(block / "segments/segment_0.dat", 5 * 1024 + 9, 2)
    (t3 / "blocks/block_3/parity/parity_1.dat").unlink()
    damaged = contents(env.archive_dir)

    code, doc = health(env)
    assert code == 1
    o = objects(doc)["t3"]
    assert o["margin"] == -1
    assert {s["path"]: s["repaired"] for s in o["shards"]} == {
        "blocks/block_1/segments/segment_0.dat": True,
        "blocks/block_1/segments/segment_1.dat": False,
        "blocks/block_1/segments/segment_2.dat": False,
        "blocks/block_1/parity/parity_0.dat": False,
        "blocks/block_3/parity/parity_1.dat": True,
    }
    assert o["bytes_repaired"] == 1024 + 8192
    after = contents(env.archive_dir)
    for path, raw in clean.items():
        assert after[path] == (damaged[path] if path in lost else raw), path


def test_unusable_and_superseded_objects(env: Env) -> None:
    objs = commit_tiers(env)
    t2, _ = objs[2]
    (t2 / MANIFEST).write_bytes(b"{}")
    (t2 / REPLICA).unlink()
    # An interrupted replace: two complete objects of the same name.
    other = Env(env.root / "other")
    other.root.mkdir()
    older = env.archive.commit(env.file("dup", 3000, seed=1)).entry.path
    newer = other.archive.commit(env.file("dup", 4000, seed=2)).entry.path
    newer = newer.rename(env.archive_dir / newer.name)

    code, doc = health(env)
    assert code == 1
    by_dir = {o["directory"]: o for o in doc["objects"]}
    assert by_dir[t2.name]["status"] == "unusable"
    assert by_dir[t2.name]["name"] is None and by_dir[t2.name]["margin"] is None
    assert "no usable manifest" in by_dir[t2.name]["problem"]
    assert doc["objects"][0]["directory"] == t2.name  # riskiest first
    assert by_dir[older.name]["superseded_by"] == newer.name
    assert by_dir[newer.name]["superseded_by"] is None
    assert by_dir[older.name]["status"] == by_dir[newer.name]["status"] == "healthy"
    assert older.exists() and newer.exists()


@pytest.mark.parametrize("tier", [1, 2, 3])
def test_object_without_any_manifest_is_unusable_not_a_stray(env: Env, tier: int) -> None:
    """Found by the torture suite (seed 1000): with both manifest copies deleted, the
    shards can no longer be verified; health must say so and exit 1."""
    objs = commit_tiers(env)
    path, _ = objs[tier]
    (path / MANIFEST).unlink()
    (path / REPLICA).unlink()
    before = archive_files(env)
    code, doc = health(env)
    assert code == 1
    by_dir = {o["directory"]: o for o in doc["objects"]}
    assert by_dir[path.name]["status"] == "unusable"
    assert "no usable manifest" in by_dir[path.name]["problem"]
    assert path.name not in {s["path"] for s in doc["strays"]}
    assert archive_files(env) == before  # nothing written, nothing removed
    # A directory that is not shaped like an object is still only a stray.
    (env.archive_dir / "holiday_photos").mkdir()
    code, doc = health(env)
    assert "holiday_photos" in {s["path"] for s in doc["strays"]}


# -- dry run ---------------------------------------------------------------------------


def test_dry_run_changes_nothing(env: Env) -> None:
    objs = commit_tiers(env)
    code, doc = health(env, "--dry-run")
    assert code == 0 and doc["status"] == "healthy" and doc["dry_run"]
    (t1, _), (t2, m2), (t3, _) = objs[1], objs[2], objs[3]
    flip(t1 / "data.dat", 100, 1)
    (t2 / m2.stripes[3].parity[1].path).unlink()
    (t2 / MANIFEST).unlink()
    garbage(t3 / REPLICA)
    _leftovers(env, t3, objs[3][1])
    fresh = env.archive_dir / ".staging" / ("ab" * 16)
    fresh.mkdir()
    (env.archive_dir / "stray.txt").write_bytes(b"x")

    def everything() -> tuple[set[str], dict[str, tuple[bytes, int, int]]]:
        names = {p.relative_to(env.archive_dir).as_posix() for p in env.archive_dir.rglob("*")}
        return names, snapshot(env.archive_dir)

    before = everything()
    code, doc = health(env, "--dry-run")
    assert code == 1 and doc["status"] == "damaged"
    assert everything() == before
    # No state file either (commits made .blockframe for their lock, nothing else).
    assert sorted(os.listdir(env.archive_dir / ".blockframe")) == ["commit.lock"]
    by_name = objects(doc)
    assert by_name["t1"]["shards"][0]["repairable"] and not by_name["t1"]["shards"][0]["repaired"]
    assert by_name["t1"]["margin"] == M - 1
    assert by_name["t2"]["manifest"]["damaged"] == [{"copy": MANIFEST, "problem": "missing"}]
    assert [c["copy"] for c in by_name["t3"]["manifest"]["damaged"]] == [REPLICA]
    assert {o["status"] for o in doc["objects"]} == {"damaged"}
    actions = {x["path"]: x["action"] for x in doc["leftovers"]}
    assert actions[f".staging/{'ab' * 16}"] == "kept-recent"
    assert sorted(set(actions.values())) == ["kept-recent", "would-remove"]
    assert {s["path"] for s in doc["strays"]} == {"stray.txt"}
    # The people's table says so too, and still changes nothing.
    r = env.run("health", "--dry-run")
    assert r.returncode == 1 and b"dry run: nothing changed" in r.stdout
    assert everything() == before
    # Then a real run repairs it all (the fresh staging directory is kept: it may be a
    # commit in progress).
    code, doc = health(env)
    assert code == 0 and doc["status"] == "repaired"
    assert fresh.exists()
    code, doc = health(env, "--dry-run")
    assert code == 0 and doc["status"] == "healthy"


# -- the report ------------------------------------------------------------------------


def test_json_report_follows_the_documented_schema(env: Env) -> None:
    objs = commit_tiers(env)
    code, doc = health(env)
    assert code == 0
    assert doc["format"] == "blockframe-health" and doc["version"] == 1
    totals = doc["totals"]
    shard_bytes = sum(s.size for _, m in objs.values() for st in m.stripes for s in st.shards)
    assert totals["bytes_verified"] == shard_bytes
    assert totals["objects"] == totals["scrubbed"] == totals["healthy"] == 3
    assert totals["never_verified"] == 0
    assert totals["oldest_verified"]["age_seconds"] >= 0
    for o in doc["objects"]:
        assert o["stripes_scrubbed"] == [0, o["stripes"]]
        assert o["verified_at"] is not None
    # The schema is strict: unknown or missing fields fail.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "extra": 1}, SCHEMA)
    broken = json.loads(json.dumps(doc))
    del broken["objects"][0]["margin"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_readme_documents_every_report_field() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## health --json") :]
    fields: set[str] = set()

    def walk(schema: dict[str, Any]) -> None:
        for name, sub in schema.get("properties", {}).items():
            fields.add(name)
            walk(sub)
        for key in ("items", "oneOf"):
            subs = schema.get(key)
            for sub in subs if isinstance(subs, list) else [subs] if subs else []:
                walk(sub)

    walk(SCHEMA)
    spans = " ".join(re.findall(r"`([^`]+)`", section))
    missing = sorted(f for f in fields if not re.search(rf"(?<![\w$]){re.escape(f)}(?!\w)", spans))
    assert not missing, f"README's health --json section lacks {missing}"


def test_table_for_people_and_quiet_when_piped(env: Env) -> None:
    objs = commit_tiers(env)
    (objs[2][0] / objs[2][1].stripes[0].parity[0].path).unlink()
    r = env.run("health")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert re.search(r"t2\s+repaired\s+2", out)
    assert "repaired parity/segment_0_parity_0.dat (missing)" in out
    assert "all damage repaired" in out
    assert r.stderr == b""  # no progress bar, no log noise when piped
    r = env.run("-q", "health")
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""


def test_usage_errors_exit_2(env: Env) -> None:
    commit_tiers(env)
    for args in (
        ["--older-than", "7 days"],
        ["--older-than", "-1d"],
        ["--max-time", "soon"],
        ["--max-time", "0"],
        ["--bogus"],
        ["-a", str(env.root / "nowhere")],
    ):
        r = env.run("health", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(b"blockframe: error: ") and b"Traceback" not in r.stderr


def test_parse_duration() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("12h") == 12 * HOUR
    assert parse_duration("30m") == 1800
    assert parse_duration("45s") == 45
    assert parse_duration("1w") == 7 * 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("90") == 90
    for bad in ("", "d", "7x", "h7", "1h 30m", "-5m", "7d!"):
        with pytest.raises(Exception, match="cannot read duration"):
            parse_duration(bad)


# -- freshness ---------------------------------------------------------------------------


def write_state(env: Env, entries: dict[str, str | None]) -> None:
    """The state file as FORMAT.md documents it: directory -> last full verification."""
    state = env.archive_dir / ".blockframe"
    state.mkdir(exist_ok=True)
    doc = {
        "format": "blockframe-health-state",
        "version": 1,
        "objects": {d: {"verified": t} for d, t in entries.items()},
    }
    (state / "state.json").write_text(json.dumps(doc))


def read_state(env: Env) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((env.archive_dir / ".blockframe/state.json").read_text())
    assert doc["format"] == "blockframe-health-state" and doc["version"] == 1
    objs: dict[str, Any] = doc["objects"]
    return objs


def iso_ago(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time.time() - seconds, UTC).isoformat()


def test_older_than_scrubs_only_stale_objects(env: Env) -> None:
    objs = commit_tiers(env)
    d1, d2, d3 = (objs[t][0].name for t in (1, 2, 3))
    write_state(env, {d1: iso_ago(10 * 86400), d2: iso_ago(HOUR)})  # t3: never verified
    # Damage the fresh object: a run that skips it must not notice or touch it.
    victim = objs[2][0] / objs[2][1].stripes[1].parity[0].path
    victim.unlink()

    code, doc = health(env, "--older-than", "7d")
    assert code == 0
    assert sorted(o["directory"] for o in doc["objects"]) == sorted([d1, d3])
    assert doc["skipped"] == [
        {"directory": d2, "reason": "fresh", "verified_at": read_state(env)[d2]["verified"]}
    ]
    assert not victim.exists()
    state = read_state(env)
    for d in (d1, d3):
        verified = state[d]["verified"]
        assert verified is not None
        assert time.time() - _ts(verified) < 60
    assert time.time() - _ts(state[d2]["verified"]) > HOUR - 60
    assert doc["totals"]["oldest_verified"]["directory"] == d2
    assert doc["totals"]["never_verified"] == 0

    # Everything is fresh now within a week; within 30 minutes only t2 is stale.
    code, doc = health(env, "--older-than", "7d")
    assert code == 0 and doc["objects"] == [] and len(doc["skipped"]) == 3
    code, doc = health(env, "--older-than", "30m")
    assert code == 0
    assert [o["directory"] for o in doc["objects"]] == [d2]
    assert objects(doc)["t2"]["status"] == "repaired" and victim.exists()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_objects_left_damaged_are_always_rechecked(env: Env) -> None:
    objs = commit_tiers(env)
    t1 = objs[1][0]
    code, _ = health(env)
    assert code == 0
    for j in range(M):
        (t1 / f"parity/parity_{j}.dat").unlink()
    flip(t1 / "data.dat", 50, 0)
    code, _ = health(env, "--older-than", "0")
    assert code == 1
    assert read_state(env)[t1.name]["damaged"] is not None
    # Verified a moment ago, but left damaged: a week's freshness does not hide it.
    code, doc = health(env, "--older-than", "7d")
    assert code == 1
    assert [o["directory"] for o in doc["objects"]] == [t1.name]


def test_unusable_state_file_is_replaced(env: Env) -> None:
    commit_tiers(env)
    (env.archive_dir / ".blockframe").mkdir(exist_ok=True)
    (env.archive_dir / ".blockframe/state.json").write_text("{not json")
    code, doc = health(env, "--older-than", "7d")
    assert code == 0 and doc["totals"]["scrubbed"] == 3
    assert any("not a usable state file" in n for n in doc["notes"])
    assert len(read_state(env)) == 3
    assert not [p for p in (env.archive_dir / ".blockframe").iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("planted", [".blockframe", ".blockframe/lock", ".blockframe/state.json"])
def test_planted_symlinks_never_take_health_outside_the_archive(env: Env, planted: str) -> None:
    """Whoever can write into the archive must not make health write anywhere else: a
    symbolic link where its state directory or files belong is never followed."""
    commit_tiers(env)
    outside = env.root / "outside"
    outside.mkdir()
    (outside / "state.json").write_bytes(b"someone else's file")
    state_dir = env.archive_dir / ".blockframe"
    shutil.rmtree(state_dir)  # the commits' lock
    if planted == ".blockframe":
        state_dir.symlink_to(outside, target_is_directory=True)
    else:
        state_dir.mkdir()
        (env.archive_dir / planted).symlink_to(outside / Path(planted).name)
    before = contents(outside)

    code, doc = health(env)
    assert code == 0 and {o["status"] for o in doc["objects"]} == {"healthy"}
    assert contents(outside) == before  # nothing written, created or removed out there
    assert sorted(os.listdir(outside)) == ["state.json"]
    if planted == ".blockframe/state.json":
        # The link is replaced by the archive's own state file; its target is untouched.
        assert not (env.archive_dir / planted).is_symlink()
        assert len(read_state(env)) == 3
    else:
        assert any("symbolic link" in n for n in doc["notes"]), doc["notes"]
        assert (env.archive_dir / planted).is_symlink()
        if planted == ".blockframe/lock":
            assert sorted(os.listdir(state_dir)) == ["lock"]  # no state written beside it


class FakeClock:
    """Time that passes only as bytes are verified: ``seconds_per_byte`` per byte reported
    through the progress callback. Each run starts where the last one ended."""

    def __init__(self, seconds_per_byte: float, start: float = 1_900_000_000.0) -> None:
        self.rate = seconds_per_byte
        self.base = start
        self.done = 0

    def __call__(self) -> float:
        return self.base + self.done * self.rate

    def progress(self, done: int) -> None:
        self.done = done

    def next_run(self, idle: float = 0.0) -> None:
        self.base = self() + idle
        self.done = 0


def run_with(env: Env, clock: FakeClock, **options: Any) -> Any:
    clock.next_run()
    report = scrub(env.archive_dir, Options(**options), clock=clock, progress=clock.progress)
    jsonschema.validate(report.to_dict(), SCHEMA)
    return report


def test_max_time_scrubs_the_stalest_first_and_covers_the_archive(env: Env) -> None:
    dirs = []
    for i in range(5):  # tier 1, 15000 bytes: 15000 + 2 * 15040 bytes of shards each
        dirs.append(env.archive.commit(env.file(f"f{i}", 15_000, seed=10 + i)).entry.path.name)
    per_object = 15_000 + 2 * 15_040
    clock = FakeClock(10 / per_object)  # 10 s per object
    # f3 verified long ago, f1 more recently; the rest never.
    write_state(
        env, {dirs[3]: iso_at(clock.base - 30 * 86400), dirs[1]: iso_at(clock.base - 86400)}
    )

    # 25 s: objects start at 0, 10 and 20 s; the fourth would start at 30 s.
    report = run_with(env, clock, max_time=25)
    assert report.exit_code == 0
    never = sorted([dirs[0], dirs[2], dirs[4]])
    assert [o.directory for o in _in_scrub_order(report)] == never
    assert [(s.directory, s.reason) for s in report.skipped] == [
        (dirs[3], "time-budget"),
        (dirs[1], "time-budget"),
    ]
    assert report.seconds == pytest.approx(30)
    # The next night, 15 s: the two stale ones, oldest first; the whole archive is covered.
    report = run_with(env, clock, max_time=15)
    assert [o.directory for o in _in_scrub_order(report)] == [dirs[3], dirs[1]]
    assert [s.reason for s in report.skipped] == ["time-budget"] * 3
    state = read_state(env)
    assert all(state[d]["verified"] is not None for d in dirs)
    # After that, each run starts again with the object verified longest ago.
    report = run_with(env, clock, max_time=5)
    assert [o.directory for o in report.objects] == [never[0]]
    oldest = report.oldest()
    assert oldest is not None and oldest[0] == never[1]


def _in_scrub_order(report: Any) -> list[Any]:
    """Objects in the order they were scrubbed (the report sorts by risk): by their
    verification time, which the fake clock makes strictly increasing."""
    return sorted(report.objects, key=lambda o: o.verified_at)


def iso_at(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()


def test_max_time_stops_between_stripes_and_resumes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = env.archive.commit(env.file("big", SIZES[3], seed=3)).entry
    m = entry.manifest
    stripe_bytes = [sum(s.size for s in st.shards) for st in m.stripes]
    assert stripe_bytes[:4] == [6 * 8192] * 4  # blocks 0-3: 4 segments + 2 parity
    clock = FakeClock(1 / (6 * 8192))  # one second per full stripe
    flip(entry.path / "blocks/block_4/segments/segment_0.dat", 10, 0)
    started = clock()
    read_ahead = read_ahead_calls(monkeypatch)

    # Stripes start at 0, 1 and 2 s; at 3 s the 2.5 s budget is spent.
    report = run_with(env, clock, max_time=2.5)
    (o,) = report.objects
    assert (o.complete, o.stripes_scrubbed, o.status) == (False, (0, 3), "healthy")
    assert o.bytes_verified == sum(stripe_bytes[:3])
    state = read_state(env)[entry.path.name]
    assert state["verified"] is None
    assert state["resume"]["stripe"] == 3 and _ts(state["resume"]["since"]) == pytest.approx(
        started
    )
    assert [d for d, _ in read_ahead] == [str(entry.path)]
    # The next run goes on from stripe 3, finds and repairs the damage in block 4, and
    # records the object as verified when the pass began (its oldest part).
    report = run_with(env, clock, max_time=2.5)
    (o,) = report.objects
    assert (o.complete, o.stripes_scrubbed, o.status) == (True, (3, 5), "repaired")
    assert [s.path for s in o.shards] == ["blocks/block_4/segments/segment_0.dat"]
    state = read_state(env)[entry.path.name]
    assert _ts(state["verified"]) == pytest.approx(started) and "resume" not in state
    assert o.verified_at == pytest.approx(started)
    # Resuming at stripe 3, the object's first bytes are not read ahead again.
    assert len(read_ahead) == 1
    # A full pass from the start when nothing is left to resume.
    report = run_with(env, clock)
    assert report.objects[0].stripes_scrubbed == (0, 5)
    assert len(read_ahead) == 2


def test_state_survives_an_interrupted_run(env: Env) -> None:
    commit_tiers(env)
    calls = []

    def progress(done: int) -> None:
        calls.append(done)
        if len(calls) == 5:  # in the middle of the second object
            raise KeyboardInterrupt

    checker = Health(env.archive_dir, Options())
    plan = checker.plan()
    with pytest.raises(KeyboardInterrupt):
        checker.run(plan, progress)
    state = read_state(env)
    assert sum(1 for v in state.values() if v["verified"]) == 1


# -- read-ahead ---------------------------------------------------------------------------


def test_read_ahead_counts_regular_files_only_and_keeps_to_its_budget(
    env: Env, tmp_path: Path
) -> None:
    """The read-ahead health starts for an object asks the OS for its regular files only:
    never a link's target (a 1 MB file outside the archive) or a FIFO, and no more than
    its budget."""
    path, _ = commit_tiers(env)[3]
    regular = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1_000_000)
    (path / "blocks" / "planted.dat").symlink_to(outside)
    (path / "linked-dir").symlink_to(tmp_path)
    os.mkfifo(path / "blocks" / "fifo.dat")
    assert _core.prefetch(str(path), 1 << 40, background=False) == regular
    assert _core.prefetch(str(path), 1000, background=False) == 1000
    assert _core.prefetch(str(path), 1 << 40) == 0  # in the background: returns at once


def test_health_reads_each_object_ahead(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = commit_tiers(env)
    calls = read_ahead_calls(monkeypatch, every=False)
    # These objects' manifests are small: reading them ahead would cost more than it saves.
    assert scrub(env.archive_dir).status == "healthy"
    assert calls == []
    calls = read_ahead_calls(monkeypatch)
    report = scrub(env.archive_dir)
    assert report.status == "healthy"
    budget = sys.modules["blockframe.health.scrub"].PREFETCH
    assert sorted(calls) == sorted((str(p), budget) for p, _ in objs.values())


def read_ahead_calls(monkeypatch: pytest.MonkeyPatch, every: bool = True) -> list[tuple[str, int]]:
    """Record the read-ahead health asks for (and skip it); with ``every``, for objects
    whatever the size of their manifest."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(_core, "prefetch", lambda d, budget: calls.append((d, budget)) or 0)
    if every:
        monkeypatch.setattr(sys.modules["blockframe.health.scrub"], "PREFETCH_FROM", 0)
    return calls
