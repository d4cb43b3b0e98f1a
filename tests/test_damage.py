"""Damage to shards and manifests: restore returns the original bytes and puts damaged
shards back exactly, or fails cleanly without output and without touching healthy shards."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from blockframe.format.manifest import MANIFEST, REPLICA

from conftest import DAMAGE, SMALL, Env, snapshot

M = SMALL.parity_shards
SIZES = {1: 15_000, 2: 50_000, 3: 150_001}  # one object per tier


def commit(env: Env, tier: int) -> tuple[Path, bytes, list[list[str]]]:
    src = env.file(f"t{tier}", SIZES[tier], seed=tier)
    assert env.run("commit", "-f", str(src)).returncode == 0
    entry = env.archive.get(f"t{tier}")
    assert entry.manifest.tier == tier
    stripes = [[s.path for s in st.shards] for st in entry.manifest.stripes]
    return entry.path, src.read_bytes(), stripes


def restore(env: Env, name: str) -> tuple[int, bytes, Path]:
    out = env.root / f"{name}.out"
    r = env.run("restore", name, "-o", str(out))
    return r.returncode, r.stderr, out


@pytest.mark.parametrize("tier", [1, 2, 3])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_within_parity_is_repaired(env: Env, tier: int, kind: str) -> None:
    obj, original, stripes = commit(env, tier)
    before = snapshot(obj)
    # Damage `M` shards of the last stripe: its first data shard and then parity shards,
    # so data and parity are both hit.
    stripe = stripes[-1]
    victims = [stripe[0], *stripe[-(M - 1) :]]
    for v in victims:
        DAMAGE[kind](obj / v)
    code, err, out = restore(env, f"t{tier}")
    assert code == 0, err
    assert out.read_bytes() == original
    after = snapshot(obj)
    for path, (raw, ino, mtime) in before.items():
        assert after[path][0] == raw, f"{path} not restored to its original bytes"
        if path not in victims:
            assert after[path][1:] == (ino, mtime), f"healthy {path} was rewritten"
    for v in victims:
        assert v.encode() in err


@pytest.mark.parametrize("tier", [1, 3])
def test_every_erasure_pattern_up_to_parity(env: Env, tier: int) -> None:
    obj, original, stripes = commit(env, tier)
    clean = snapshot(obj)
    stripe = stripes[0]
    for n in range(1, M + 1):
        for combo in itertools.combinations(stripe, n):
            for v in combo:
                (obj / v).unlink()
            code, err, out = restore(env, f"t{tier}")
            assert code == 0, (combo, err)
            assert out.read_bytes() == original
            out.unlink()
            assert {p: v[0] for p, v in snapshot(obj).items()} == {
                p: v[0] for p, v in clean.items()
            }


@pytest.mark.parametrize("tier", [1, 2, 3])
def test_damage_beyond_parity_fails_cleanly(env: Env, tier: int) -> None:
    obj, _original, stripes = commit(env, tier)
    # Corrupt M + 1 shards of the first stripe, at the same offset so a chunk is lost.
    victims = stripes[0][: M + 1]
    for v in victims:
        raw = bytearray((obj / v).read_bytes())
        raw[5] ^= 0xFF
        (obj / v).write_bytes(bytes(raw))
    damaged = snapshot(obj)
    code, err, out = restore(env, f"t{tier}")
    assert code == 1
    assert err.startswith(b"blockframe: error: ") and b"cannot be recovered" in err
    assert b"Traceback" not in err
    assert not out.exists()
    assert not [p for p in env.root.iterdir() if p.name.startswith(f".{out.name}")]
    # Nothing on disk changed: damaged shards are left as they were, healthy ones untouched.
    assert snapshot(obj) == damaged


def test_beyond_parity_in_one_stripe_other_stripes_still_read(env: Env) -> None:
    obj, original, stripes = commit(env, 2)
    for v in stripes[0]:  # every shard of the first segment
        (obj / v).unlink()
    arch = env.archive
    o = arch.open("t2")
    seg = SMALL.segment_size
    assert o.read(seg, 1000) == original[seg : seg + 1000]
    assert o.read(len(original) - 10, 10) == original[-10:]
    with pytest.raises(Exception, match="cannot be recovered"):
        o.read(0, 10)


@pytest.mark.parametrize("copy", [MANIFEST, REPLICA])
@pytest.mark.parametrize("how", ["delete", "corrupt", "truncate", "edit"])
def test_damaged_manifest_restored_from_replica(env: Env, copy: str, how: str) -> None:
    obj, original, _ = commit(env, 3)
    good = (obj / MANIFEST).read_bytes()
    target = obj / copy
    if how == "delete":
        target.unlink()
    elif how == "corrupt":
        raw = bytearray(good)
        raw[len(raw) // 2] ^= 0x01
        target.write_bytes(bytes(raw))
    elif how == "truncate":
        target.write_bytes(good[: len(good) // 2])
    else:
        # Valid JSON with a changed size: only the checksum catches it.
        doc = json.loads(good)
        doc["size"] += 1
        target.write_bytes(json.dumps(doc).encode())
    code, err, out = restore(env, "t3")
    assert code == 0, err
    assert out.read_bytes() == original
    assert (obj / MANIFEST).read_bytes() == good
    assert (obj / REPLICA).read_bytes() == good


def test_merkle_root_is_checked_on_load(env: Env) -> None:
    """A manifest whose chunk hashes were changed and whose checksum was recomputed (so it
    is self-consistent) still fails: the Merkle root no longer matches."""
    from blockframe.format.manifest import checksum

    obj, _, _ = commit(env, 1)
    doc = json.loads((obj / MANIFEST).read_bytes())
    chunks = doc["stripes"][0]["data"][0]["chunks"]
    doc["stripes"][0]["data"][0]["chunks"] = ("A" if chunks[0] != "A" else "B") + chunks[1:]
    doc["checksum"] = checksum(doc)
    raw = json.dumps(doc).encode()
    (obj / MANIFEST).write_bytes(raw)
    (obj / REPLICA).write_bytes(raw)
    r = env.run("list", "--json")
    problems = json.loads(r.stdout)["problems"]
    assert len(problems) == 1 and "Merkle root" in problems[0]["reason"]


def test_bad_entries_do_not_break_the_others(env: Env) -> None:
    _obj, original, _ = commit(env, 2)
    a = env.archive_dir
    (a / "stray.txt").write_bytes(b"hello")
    (a / "stray_dir").mkdir()
    (a / "garbage_0123456789abcdef").mkdir()
    (a / "garbage_0123456789abcdef" / MANIFEST).write_bytes(b"{not json")
    (a / "nomanifest_0123456789abcdef").mkdir()
    (a / "nomanifest_0123456789abcdef" / "data.dat").write_bytes(b"x")
    staging = a / ".staging" / "deadbeef"
    staging.mkdir(parents=True)
    (staging / "data.dat").write_bytes(b"half")
    # A second, complete object whose manifests are both damaged.
    other = env.file("other", 3000)
    env.run("commit", "-f", str(other))
    o2 = env.object_dir("other")
    (o2 / MANIFEST).write_bytes(b"")
    (o2 / REPLICA).write_bytes(b"[]")
    r = env.run("list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [o["name"] for o in doc["objects"]] == ["t2"]
    assert {p["path"] for p in doc["problems"]} == {
        "stray.txt",
        "stray_dir",
        "garbage_0123456789abcdef",
        "nomanifest_0123456789abcdef",
        o2.name,
    }
    r = env.run("list")
    assert r.returncode == 0 and b"t2" in r.stdout and b"skipped stray.txt" in r.stderr
    code, err, out = restore(env, "t2")
    assert code == 0, err
    assert out.read_bytes() == original
    # Nothing that cannot be proven ours was removed.
    assert (a / "stray.txt").exists() and staging.exists()
