"""Archives on S3-compatible storage, tested against a real SeaweedFS on loopback: a whole
archive in a bucket, and a bucket as one volume among local directories (removed entirely,
it loses nothing). Commit, list, restore, mount, serve and health, with shards damaged in
the bucket."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import seaweed
from seaweed import SeaweedFS
from test_mount import start_mount
from test_remote import Server
from test_volumes import FILES, STORAGE, Vols, content

from blockframe.archive.remote import RemoteArchive
from blockframe.storage.s3 import S3Volume

seaweedfs = seaweed.seaweedfs


class S3Env(Vols):
    """A working directory whose config puts the archive on ``locations``."""

    def __init__(self, root: Path, server: SeaweedFS, locations: list[str]) -> None:
        self.root = root
        self.server = server
        self.locations = locations
        listed = ", ".join(f'"{loc}"' for loc in locations)
        (root / "config.toml").write_text(
            f"[archive]\nvolumes = [{listed}]\n{STORAGE}\n"
            f'[s3]\nendpoint = "{server.endpoint}"\n'
            f'access_key_id = "{server.access_key}"\n'
            f'secret_access_key = "{server.secret_key}"\n'
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        # Credentials from the config only; freshness state of bucket-only archives in
        # this test's cache directory.
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "BLOCKFRAME_CONFIG" and not k.startswith("AWS_")
        }
        env["XDG_CONFIG_HOME"] = str(self.root / "xdg")
        env["XDG_CACHE_HOME"] = str(self.root / "cache")
        return subprocess.run(
            [sys.executable, "-m", "blockframe", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            timeout=180,
        )

    def health(self, *flags: str) -> tuple[int, dict[str, object]]:
        r = self.run("health", "--json", *flags)
        assert r.returncode in (0, 1), r.stderr
        return r.returncode, json.loads(r.stdout)

    def manifest(self, name: str) -> tuple[str, dict[str, object]]:
        r = self.run("list", "--json")
        assert r.returncode == 0, r.stderr
        (obj,) = [o for o in json.loads(r.stdout)["objects"] if o["name"] == name]
        first = next(i for i, loc in enumerate(self.locations) if loc.startswith("s3://"))
        raw = self.volume(first).read(f"{obj['directory']}/manifest.json")
        assert raw is not None
        return str(obj["directory"]), json.loads(raw)

    def volume(self, i: int) -> S3Volume:
        return self.server.volume(self.locations[i])


def mount_and_read(env: S3Env) -> None:
    mount = start_mount(env, env.root / "mnt")  # type: ignore[arg-type]
    try:
        for name in FILES:
            assert (mount.mnt / name).read_bytes() == content(name), name
    finally:
        code, err = mount.stop()
    assert code == 0, err


fuse = pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse")


@pytest.fixture
def bucket_archive(tmp_path: Path, seaweedfs: SeaweedFS) -> S3Env:
    env = S3Env(tmp_path, seaweedfs, [seaweedfs.new_bucket() + "/archive"])
    env.commit_all()
    return env


def test_whole_archive_in_a_bucket(bucket_archive: S3Env) -> None:
    env = bucket_archive
    r = env.run("list", "--json")
    listing = {o["name"]: o for o in json.loads(r.stdout)["objects"]}
    assert set(listing) == set(FILES)
    assert {o["tier"] for o in listing.values()} == {1, 2, 3}
    assert all(o["volumes_can_lose"] == 0 for o in listing.values())
    vol = env.volume(0)
    d = listing["dir/sub/t3.bin"]["directory"]
    assert vol.size(f"{d}/manifest.json") and vol.size(f"{d}/manifest.replica.json")
    assert vol.size(f"{d}/.committing") is None
    # The per-volume layout is DESIGN's: the data shards concatenate to the file.
    files = dict(vol.files(d))
    assert "blocks/block_0/segments/segment_0.dat" in files
    env.restore_all()
    code, report = env.health()
    assert code == 0 and report["status"] == "healthy"


def test_damage_in_the_bucket_is_served_clean_and_repaired_in_place(
    bucket_archive: S3Env,
) -> None:
    env = bucket_archive
    vol = env.volume(0)
    d, _ = env.manifest("dir/sub/t3.bin")
    seg = "blocks/block_1/segments/segment_2.dat"
    par = "blocks/block_0/parity/parity_1.dat"
    original = vol.read(f"{d}/{seg}")
    original_parity = vol.read(f"{d}/{par}")
    assert original is not None and original_parity is not None
    bad = bytearray(original)
    bad[1500] ^= 0x10
    vol.write(f"{d}/{seg}", bytes(bad))
    vol.remove(f"{d}/{par}")
    d2, _ = env.manifest("t2.bin")
    vol.write(f"{d2}/segments/segment_1.dat", b"short")
    r = env.run("restore", "dir/sub/t3.bin", "-o", "-")
    assert r.returncode == 0 and r.stdout == content("dir/sub/t3.bin")
    # restore repaired what it found, in the bucket.
    assert vol.read(f"{d}/{seg}") == original
    assert vol.read(f"{d}/{par}") == original_parity
    code, report = env.health()
    assert code == 0, report
    (t2,) = [o for o in report["objects"] if o["name"] == "t2.bin"]
    assert t2["status"] == "repaired" and t2["shards"][0]["damage"] == "short"
    assert vol.size(f"{d2}/segments/segment_1.dat") == 8192
    env.restore_all()
    code, report = env.health()
    assert code == 0 and report["status"] == "healthy"


def test_damage_beyond_parity_in_the_bucket_is_an_error(bucket_archive: S3Env) -> None:
    env = bucket_archive
    vol = env.volume(0)
    d, _ = env.manifest("t1.bin")
    for p in ("data.dat", "parity/parity_0.dat", "parity/parity_1.dat"):
        vol.remove(f"{d}/{p}")
    r = env.run("restore", "t1.bin", "-o", "-")
    assert r.returncode == 1 and r.stdout == b""
    code, report = env.health()
    assert code == 1
    (t1,) = [o for o in report["objects"] if o["name"] == "t1.bin"]
    assert t1["status"] == "damaged" and t1["lost"]
    # The others are untouched by the bad one.
    for name in FILES:
        if name != "t1.bin":
            assert env.run("restore", name, "-o", "-").stdout == content(name)


@fuse
def test_mount_a_bucket_archive(bucket_archive: S3Env) -> None:
    mount_and_read(bucket_archive)


def test_interrupted_bucket_commit_is_cleaned(bucket_archive: S3Env) -> None:
    env = bucket_archive
    vol = env.volume(0)
    d = "ghost.bin_0123456789abcdef"
    vol.write(f"{d}/.committing", b"")
    vol.write(f"{d}/data.dat", b"x" * 100)
    r = env.run("list", "--json")
    assert "ghost.bin" not in {o["name"] for o in json.loads(r.stdout)["objects"]}
    # Just written: a commit may still be uploading, so it is kept.
    code, report = env.health()
    assert code == 0
    assert [(x["path"], x["action"]) for x in report["leftovers"]] == [(d, "kept-recent")]
    assert vol.files(d) != []
    newest = vol.newest(d)
    assert newest is not None and abs(newest - time.time()) < 120
    from blockframe.archive import open_archive_at
    from blockframe.config import load_config
    from blockframe.health import Health

    cfg = load_config(env.root / "config.toml")
    later = Health(
        open_archive_at(env.locations, cfg.storage, cfg.s3), clock=lambda: time.time() + 7200
    )
    report2 = later.run(later.plan())
    assert [(x.path, x.action) for x in report2.leftovers] == [(d, "removed")]
    assert vol.files(d) == []


# -- a bucket among local volumes ----------------------------------------------------------


def test_bucket_as_one_volume_removed_entirely_loses_nothing(
    tmp_path: Path, seaweedfs: SeaweedFS
) -> None:
    local = [tmp_path / f"disk{i}" / "bf" for i in range(3)]
    bucket = seaweedfs.new_bucket()
    env = S3Env(tmp_path, seaweedfs, [*map(str, local), bucket])
    env.commit_all()
    s3 = env.volume(3)
    assert any(True for _ in s3.listdir())
    placed = [
        sh["volume"]
        for st in env.manifest("dir/sub/t3.bin")[1]["stripes"]  # type: ignore[union-attr]
        for sh in st["data"] + st["parity"]
    ]
    assert 3 in placed
    # The whole bucket goes away.
    _drop_bucket(seaweedfs, bucket)
    assert not s3.present()
    env.restore_all()
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        mount_and_read(env)
    # An empty bucket in its place is a replacement: health rebuilds onto it.
    s3.create_bucket()
    code, report = env.health()
    assert code == 0, report
    assert s3.files("") != []
    code, report = env.health()
    assert code == 0 and report["status"] == "healthy"
    # Then a local volume is lost: still every byte.
    shutil.rmtree(local[0])
    env.restore_all()
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        mount_and_read(env)


def _drop_bucket(server: SeaweedFS, url: str) -> None:
    client = server.client()
    name = url.removeprefix("s3://").split("/")[0]
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


def test_archive_of_buckets_loses_one_replaces_it_then_loses_another(
    tmp_path: Path, seaweedfs: SeaweedFS
) -> None:
    buckets = [seaweedfs.new_bucket() for _ in range(4)]
    env = S3Env(tmp_path, seaweedfs, buckets)
    env.commit_all()
    listing = json.loads(env.run("list", "--json").stdout)["objects"]
    assert {o["name"]: o["volumes_can_lose"] for o in listing}["dir/sub/t3.bin"] == 1
    _drop_bucket(seaweedfs, buckets[1])
    env.restore_all()
    env.volume(1).create_bucket()
    code, report = env.health()
    assert code == 0, report
    assert all(o["status"] == "repaired" for o in report["objects"])
    _drop_bucket(seaweedfs, buckets[2])
    env.restore_all()
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        mount_and_read(env)


def test_serve_a_volume_archive_with_a_bucket(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    local = [tmp_path / f"disk{i}" / "bf" for i in range(2)]
    env = S3Env(tmp_path, seaweedfs, [*map(str, local), seaweedfs.new_bucket()])
    env.commit_all()
    server = Server(env)  # type: ignore[arg-type]
    try:
        d, m = env.manifest("t2.bin")
        stripe = m["stripes"][0]  # type: ignore[index]
        shards = stripe["data"] + stripe["parity"]
        (j,) = [j for j, sh in enumerate(shards) if sh["volume"] == 2][:1]
        r = httpx.get(
            f"{server.url}/api/files/t2.bin/shards/0/{j}", headers={"Range": "bytes=10-19"}
        )
        assert r.status_code == 206
        whole = env.volume(2).read(f"{d}/{shards[j]['path']}")
        assert whole is not None and r.content == whole[10:20]
        remote = RemoteArchive(server.url)
        try:
            index = remote.scan()
            for name in FILES:
                obj = remote.open_object(index.entries[name])
                assert obj.read(0, len(content(name))) == content(name)
        finally:
            remote.close()
        r = httpx.get(f"{server.url}/api/files/dir/sub/t3.bin")
        assert r.status_code == 200 and r.content == content("dir/sub/t3.bin")
    finally:
        server.stop()


def test_source_changed_during_a_bucket_commit_leaves_nothing_visible(
    tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockframe.archive import open_archive_at
    from blockframe.archive import volumes as volume_archive
    from blockframe.config import S3Config
    from blockframe.errors import SourceError
    from blockframe.health import Health, Options

    from conftest import SMALL

    s3 = S3Config(seaweedfs.endpoint, "", seaweedfs.access_key, seaweedfs.secret_key)
    url = seaweedfs.new_bucket()
    src = tmp_path / "f.bin"
    src.write_bytes(content("dir/sub/t3.bin"))
    # The content hash taken before the upload started no longer matches the bytes the
    # core committed: as if the file had been rewritten in between.
    monkeypatch.setattr(volume_archive, "hash_file", lambda p: "ab" * 32)
    archive = open_archive_at([url], SMALL, s3)
    with pytest.raises(SourceError, match="changed"):
        archive.commit(src)
    index = archive.scan()
    assert index.entries == {}
    assert index.problems and all("incomplete" in p.reason for p in index.problems)
    monkeypatch.undo()
    checker = Health(open_archive_at([url], SMALL, s3), Options(leftover_grace=0))
    report = checker.run(checker.plan())
    assert report.exit_code == 0 and [x.action for x in report.leftovers] == ["removed"]
    assert seaweedfs.volume(url).listdir() == [".blockframe"]  # just the volume label
    assert open_archive_at([url], SMALL, s3).commit(src).status == "committed"


# -- one commit at a time ------------------------------------------------------------------


def test_a_bucket_creates_a_key_only_if_it_is_not_there(bucket_archive: S3Env) -> None:
    vol = bucket_archive.volume(0)
    assert vol.create_new("probe/lock", b"first")
    assert not vol.create_new("probe/lock", b"second")
    assert vol.read("probe/lock") == b"first"


def test_commits_to_a_bucket_publish_one_at_a_time(bucket_archive: S3Env) -> None:
    from test_races import held

    env = bucket_archive
    lock = ".blockframe/commit.lock"
    (env.root / "new.bin").write_bytes(content("t2.bin")[::-1])
    (env.root / "other.bin").write_bytes(content("t1.bin")[::-1])
    with held(env.root, "commit:locked", "commit", "-f", "new.bin") as first:
        assert json.loads(env.volume(0).read(lock) or b"{}")["holder"]
        second = subprocess.Popen(
            [sys.executable, "-m", "blockframe", "commit", "-f", "other.bin"],
            cwd=env.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("BLOCKFRAME_")},
        )
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=3)  # waits for the bucket's lock
    assert first.wait(timeout=120) == 0
    assert second.wait(timeout=120) == 0, second.communicate()
    assert env.volume(0).read(lock) is None  # released
    assert {"new.bin", "other.bin"} <= set(env.listing())


def test_a_stale_bucket_lock_is_broken(bucket_archive: S3Env) -> None:
    env = bucket_archive
    left = {"holder": "dead", "host": "gone", "since": time.time() - 3600}
    env.volume(0).write(".blockframe/commit.lock", json.dumps(left).encode())
    (env.root / "new.bin").write_bytes(b"after a crash" * 100)
    r = env.run("commit", "-f", "new.bin")
    assert r.returncode == 0, r.stderr
    assert b"breaking a commit lock" in r.stderr and b"gone" in r.stderr
    assert env.volume(0).read(".blockframe/commit.lock") is None
