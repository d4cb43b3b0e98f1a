"""Volumes as failure domains: shards of every stripe spread over directories so that any
one whole volume can be lost; reads, restore and the mount work with a volume gone;
`health` rebuilds a lost volume onto a replacement or onto the survivors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from test_mount import start_mount

from blockframe import _core
from blockframe.archive import ArchivedObject, open_archive_at
from blockframe.config import StorageConfig
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, parse
from blockframe.health import Health, Options
from blockframe.storage.volumes import adapted_storage, can_lose, place

from conftest import CONFIG_TOML, SMALL, data

FILES = {
    "t1.bin": 15_000,  # tier 1
    "t2.bin": 50_000,  # tier 2
    "dir/sub/t3.bin": 300_017,  # tier 3
    "dir/notes.txt": 3_000,  # tier 1
}

STORAGE = CONFIG_TOML[CONFIG_TOML.index("[storage]") :]  # the small test geometry


def content(name: str) -> bytes:
    return data(FILES[name], seed=len(name))


class Vols:
    """A working directory whose config spreads the archive over ``n`` volumes."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        self.vols = [root / f"disk{i}" / "bf" for i in range(n)]
        for v in self.vols:
            v.parent.mkdir(parents=True, exist_ok=True)
        listed = ", ".join(f'"{v}"' for v in self.vols)
        (root / "config.toml").write_text(f"[archive]\nvolumes = [{listed}]\n{STORAGE}")

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "BLOCKFRAME_CONFIG"}
        env["XDG_CONFIG_HOME"] = str(self.root / "xdg")
        return subprocess.run(
            [sys.executable, "-m", "blockframe", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            timeout=120,
        )

    def archive(self):  # type: ignore[no-untyped-def]
        return open_archive_at([str(v) for v in self.vols], SMALL)

    def commit_all(self) -> None:
        src = self.root / "src"
        for name in FILES:
            p = src / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content(name))
        for top in ("t1.bin", "t2.bin", "dir"):
            r = self.run("commit", "-f", str(src / top))
            assert r.returncode == 0, r.stderr

    def restore_all(self) -> None:
        for name in FILES:
            r = self.run("restore", name, "-o", "-")
            assert r.returncode == 0, (name, r.stderr)
            assert r.stdout == content(name), name

    def listing(self) -> dict[str, dict[str, object]]:
        r = self.run("list", "--json")
        assert r.returncode == 0, r.stderr
        return {o["name"]: o for o in json.loads(r.stdout)["objects"]}


@pytest.fixture
def four(tmp_path: Path) -> Vols:
    v = Vols(tmp_path, 4)
    v.commit_all()
    return v


def shard_files(vol: Path) -> list[Path]:
    return [p for p in vol.rglob("*.dat") if ".staging" not in p.parts and ".trash" not in p.parts]


# -- geometry ------------------------------------------------------------------------------


def test_geometry_adapts_so_no_volume_holds_more_than_parity() -> None:
    base = StorageConfig(block_segments=30, parity_shards=3)
    for volumes in range(2, 40):
        k = adapted_storage(base, volumes).block_segments
        assert k == min(30, (volumes - 1) * 3)
        for stripe in range(5):
            counts = Counter(place(stripe, k + 3, list(range(volumes))))
            assert max(counts.values()) <= 3
            assert sum(counts.values()) == k + 3
    assert adapted_storage(base, 1) == base


def test_layout_manifests_everywhere_and_the_spreading_rule(four: Vols) -> None:
    entries = four.archive().scan().entries
    assert set(entries) == set(FILES)
    for name, e in entries.items():
        m = e.manifest
        for vol in four.vols:
            body = (vol / e.dirname / MANIFEST).read_bytes()
            assert parse(body, "x") == m
            assert (vol / e.dirname / REPLICA).read_bytes() == body
            assert not (vol / e.dirname / COMMITTING).exists()
        for si, st in enumerate(m.stripes):
            counts = m.volume_counts(si)
            assert max(counts.values()) <= len(st.parity), (name, si, counts)
            for sh in st.shards:
                # Each shard is a file on exactly its own volume.
                where = [v for v in four.vols if (v / e.dirname / sh.path).is_file()]
                assert where == [four.vols[sh.volume]]
        assert len({sh.volume for st in m.stripes for sh in st.shards}) > 1
    # Concatenating the data shards, wherever they live, gives the file back.
    e = entries["dir/sub/t3.bin"]
    joined = b"".join(
        (four.vols[sh.volume] / e.dirname / sh.path).read_bytes()
        for st in e.manifest.stripes
        for sh in st.data
    )
    assert joined == content("dir/sub/t3.bin")
    listing = four.listing()
    assert listing["t1.bin"]["volumes_can_lose"] == 2  # 3 shards on 3 volumes, 2 parity
    assert listing["dir/sub/t3.bin"]["volumes_can_lose"] == 1
    for vol in four.vols:
        label = json.loads((vol / ".blockframe" / "volume.json").read_text())
        assert label["index"] == four.vols.index(vol)
    r = four.run("list")
    assert r.returncode == 0 and b"CAN LOSE" in r.stdout


def test_can_lose_counts_absent_volumes_and_bad_shards(four: Vols) -> None:
    m = four.archive().get("dir/sub/t3.bin").manifest
    assert can_lose(m) == 1
    assert can_lose(m, {0}) == 0
    assert can_lose(m, {0, 1}) == -1
    assert can_lose(m, (), [1] * len(m.stripes)) == 0


# -- losing a volume -----------------------------------------------------------------------


def test_lose_a_volume_replace_it_then_lose_another(four: Vols) -> None:
    shutil.rmtree(four.vols[1])
    four.restore_all()
    assert all(o["volumes_can_lose"] in (0, 1) for o in four.listing().values())
    # A replacement: an empty directory where the lost volume was.
    four.vols[1].mkdir()
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads(r.stdout)
    assert report["status"] in ("repaired", "healthy")
    assert all(o["status"] == "repaired" for o in report["objects"])
    # t1 and t2 (tier 1 and 2) can lose 2; the folder's two packs (one per 32 KiB block of
    # this geometry: notes.txt, then t3.bin), tier-3 blocks spread over the four, can lose 1.
    assert sorted(o["volumes_can_lose"] for o in report["objects"]) == [1, 1, 2, 2]
    assert shard_files(four.vols[1])
    label = json.loads((four.vols[1] / ".blockframe" / "volume.json").read_text())
    assert label["index"] == 1
    r = four.run("health", "--json")
    assert r.returncode == 0
    assert {o["status"] for o in json.loads(r.stdout)["objects"]} == {"healthy"}
    shutil.rmtree(four.vols[2])
    four.restore_all()


def test_lost_volume_rebuilt_onto_the_survivors(four: Vols) -> None:
    before = {n: e.manifest for n, e in four.archive().scan().entries.items()}
    shutil.rmtree(four.vols[3])
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads(r.stdout)
    assert any("absent" in n for n in report["notes"])
    assert not four.vols[3].exists()  # health never creates a volume directory
    entries = four.archive().scan().entries
    for name, e in entries.items():
        m = e.manifest
        assert m.merkle_root == before[name].merkle_root
        assert all(sh.volume != 3 for st in m.stripes for sh in st.shards)
        for st in m.stripes:
            for sh in st.shards:
                assert (four.vols[sh.volume] / e.dirname / sh.path).is_file()
    four.restore_all()
    r = four.run("health", "--json")
    assert r.returncode == 0
    assert all(not o["shards"] for o in json.loads(r.stdout)["objects"])
    # Still every byte with one more volume gone, for the objects whose placement allows.
    for name, o in four.listing().items():
        assert o["status"] == "ok", name


def test_dry_run_changes_nothing_with_a_volume_gone(four: Vols) -> None:
    shutil.rmtree(four.vols[0])
    four.vols[0].mkdir()
    r = four.run("health", "--dry-run", "--json")
    assert r.returncode == 1
    assert list(four.vols[0].iterdir()) == []


def test_damage_on_two_volumes_of_one_stripe_is_still_repaired(four: Vols) -> None:
    e = four.archive().get("dir/sub/t3.bin")
    st = e.manifest.stripes[0]
    a, b = st.shards[0], st.shards[1]
    (four.vols[a.volume] / e.dirname / a.path).write_bytes(b"junk")
    (four.vols[b.volume] / e.dirname / b.path).unlink()
    four.restore_all()
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stdout
    assert (four.vols[a.volume] / e.dirname / a.path).read_bytes() == content("dir/sub/t3.bin")[
        : a.size
    ]


def test_manifest_lost_on_some_volumes_is_restored_from_another(four: Vols) -> None:
    d = four.archive().get("t2.bin").dirname
    for vol in four.vols[:3]:
        (vol / d / MANIFEST).unlink()
        (vol / d / REPLICA).write_bytes(b"{}")
    good = (four.vols[3] / d / MANIFEST).read_bytes()
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stdout
    for vol in four.vols:
        assert (vol / d / MANIFEST).read_bytes() == good
        assert (vol / d / REPLICA).read_bytes() == good


def test_mount_reads_every_byte_with_a_volume_missing(four: Vols) -> None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/fuse")
    shutil.rmtree(four.vols[2])
    mount = start_mount(four, four.root / "mnt")  # type: ignore[arg-type]
    try:
        for name in FILES:
            assert (mount.mnt / name).read_bytes() == content(name), name
        time.sleep(0.5)
        # The mount never recreates an absent volume.
        assert not four.vols[2].exists()
    finally:
        code, err = mount.stop()
    assert code == 0, err


def test_serve_with_a_volume_missing(four: Vols) -> None:
    from test_remote import Server

    from blockframe.archive.remote import RemoteArchive

    shutil.rmtree(four.vols[0])
    server = Server(four)  # type: ignore[arg-type]
    try:
        for name in FILES:
            r = httpx.get(f"{server.url}/api/files/{name}")
            assert r.status_code == 200 and r.content == content(name), name
        remote = RemoteArchive(server.url)
        try:
            index = remote.scan()
            for name in FILES:
                obj = remote.open_object(index.entries[name])
                assert obj.read(0, FILES[name]) == content(name)
        finally:
            remote.close()
    finally:
        server.stop()
    assert not four.vols[0].exists()


# -- commits, replacements and left-overs --------------------------------------------------


def test_two_volumes_get_narrower_stripes(tmp_path: Path) -> None:
    v = Vols(tmp_path, 2)
    v.commit_all()
    m = v.archive().get("dir/sub/t3.bin").manifest
    assert m.block_segments == 2 and max(len(st.data) for st in m.stripes) == 2
    shutil.rmtree(v.vols[0])
    v.restore_all()


def test_replace_and_identical_recommit(four: Vols) -> None:
    src = four.root / "src" / "t1.bin"
    r = four.run("commit", "-f", str(src))
    assert r.returncode == 0 and b"unchanged" in r.stdout
    old = four.archive().get("t1.bin").dirname
    src.write_bytes(b"new content " * 1000)
    assert four.run("commit", "-f", str(src)).returncode == 1
    r = four.run("commit", "-f", str(src), "--replace")
    assert r.returncode == 0, r.stderr
    for vol in four.vols:
        assert not (vol / old).exists()
    r = four.run("restore", "t1.bin", "-o", "-")
    assert r.stdout == b"new content " * 1000


def test_interrupted_commit_is_invisible_and_cleaned(four: Vols) -> None:
    # What a commit killed before its manifests leaves: marked directories with shards.
    d = "ghost.bin_0123456789abcdef"
    for vol in four.vols[:2]:
        (vol / d / "parity").mkdir(parents=True)
        (vol / d / COMMITTING).write_bytes(b"")
        (vol / d / "data.dat").write_bytes(b"x" * 100)
    listing = json.loads(four.run("list", "--json").stdout)
    assert "ghost.bin" not in {o["name"] for o in listing["objects"]}
    assert any("incomplete" in p["reason"] for p in listing["problems"])
    report = Health(four.archive(), Options(leftover_grace=0)).run(
        Health(four.archive(), Options(leftover_grace=0)).plan()
    )
    assert [(x.path, x.action) for x in report.leftovers] == [(d, "removed")]
    assert report.exit_code == 0
    for vol in four.vols:
        assert not (vol / d).exists()


def test_volume_of_an_archive_is_not_a_plain_archive(four: Vols) -> None:
    r = four.run("list", "--archive", str(four.vols[0]))
    assert r.returncode == 1
    assert b"one volume of a volume archive" in r.stderr and len(r.stderr.splitlines()) == 1
    r = four.run("health", "--archive", str(four.vols[0]))
    assert r.returncode == 2


def test_a_planted_label_directory_link_is_never_followed(four: Vols) -> None:
    # `.blockframe` of the first volume holds its label and health's state: a symbolic link
    # there must not make the volume look unlabelled, nor health write a label or its
    # state wherever the link points.
    outside = four.root / "outside"
    outside.mkdir()
    state_dir = four.vols[0] / ".blockframe"
    shutil.rmtree(state_dir)
    state_dir.symlink_to(outside, target_is_directory=True)
    r = four.run("health", "--json")
    assert r.returncode == 1
    assert b"symbolic link" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert list(outside.iterdir()) == []
    assert state_dir.is_symlink()


def test_volumes_of_different_archives_are_refused(tmp_path: Path) -> None:
    a, b = Vols(tmp_path / "a", 2), Vols(tmp_path / "b", 2)
    a.commit_all()
    b.commit_all()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.toml").write_text(
        f'[archive]\nvolumes = ["{a.vols[0]}", "{b.vols[1]}"]\n{STORAGE}'
    )
    r = subprocess.run(
        [sys.executable, "-m", "blockframe", "list"], cwd=mixed, capture_output=True, timeout=60
    )
    assert r.returncode == 1
    assert b"different archives" in r.stderr


def test_volumes_config_errors(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[archive]\nvolumes = ["a", "a"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "blockframe", "list"], cwd=tmp_path, capture_output=True
    )
    assert r.returncode == 2 and b"listed twice" in r.stderr
    (tmp_path / "config.toml").write_text("[archive]\nvolumes = []\n")
    r = subprocess.run(
        [sys.executable, "-m", "blockframe", "list"], cwd=tmp_path, capture_output=True
    )
    assert r.returncode == 2 and b"non-empty list" in r.stderr


def test_a_volume_added_later_gets_new_objects_and_every_manifest(four: Vols) -> None:
    fifth = four.root / "disk4" / "bf"
    fifth.mkdir(parents=True)
    four.vols.append(fifth)
    listed = ", ".join(f'"{v}"' for v in four.vols)
    (four.root / "config.toml").write_text(f"[archive]\nvolumes = [{listed}]\n{STORAGE}")
    src = four.root / "src" / "late.bin"
    src.write_bytes(data(300_000, seed=99))
    assert four.run("commit", "-f", str(src)).returncode == 0
    m = four.archive().get("late.bin").manifest
    assert 4 in {sh.volume for st in m.stripes for sh in st.shards}
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stdout
    for e in four.archive().scan().entries.values():
        assert (fifth / e.dirname / MANIFEST).is_file()
    shutil.rmtree(four.vols[4])
    four.restore_all()
    assert four.run("restore", "late.bin", "-o", "-").stdout == src.read_bytes()


def test_an_emptied_object_directory_on_one_volume_is_rebuilt_not_a_stray(
    four: Vols,
) -> None:
    # Found by the torture suite (seed 5 on three volumes): a tier-1 object has one shard
    # per volume, so one volume's directory can lose everything recognisable at once.
    e = four.archive().get("t1.bin")
    (sh,) = [sh for st in e.manifest.stripes for sh in st.shards if sh.volume == 1]
    d = four.vols[1] / e.dirname
    shutil.rmtree(d)
    d.mkdir()
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stdout
    report = json.loads(r.stdout)
    assert report["strays"] == []
    (obj,) = [o for o in report["objects"] if o["name"] == "t1.bin"]
    assert obj["status"] == "repaired"
    assert (d / MANIFEST).is_file() and (d / sh.path).stat().st_size == sh.size
    four.restore_all()


def test_a_marked_object_with_damaged_manifests_is_unusable_not_a_leftover(
    four: Vols,
) -> None:
    # Found by the torture suite (seed 2012 on three volumes): a commit killed while it
    # wrote manifests leaves markers; if every manifest copy is then damaged, the copies
    # prove the commit got that far, so the object is reported, never removed.
    d = four.archive().get("t2.bin").dirname
    for vol in four.vols:
        (vol / d / COMMITTING).write_bytes(b"")
        for copy in (MANIFEST, REPLICA):
            (vol / d / copy).write_bytes(b"garbage")
    report = Health(four.archive(), Options(leftover_grace=0)).run(
        Health(four.archive(), Options(leftover_grace=0)).plan()
    )
    assert report.exit_code == 1 and report.leftovers == []
    (obj,) = [o for o in report.objects if o.directory == d]
    assert obj.status == "unusable"
    assert all((vol / d).is_dir() for vol in four.vols)


def test_bad_volume_locations_are_one_line_errors(tmp_path: Path) -> None:
    def run(config: str) -> subprocess.CompletedProcess[bytes]:
        (tmp_path / "config.toml").write_text(config)
        return subprocess.run(
            [sys.executable, "-m", "blockframe", "list"], cwd=tmp_path, capture_output=True
        )

    r = run('[archive]\ndirectory = "s3://ab"\n')
    assert r.returncode == 2 and b"invalid S3 bucket name" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    r = run(f'[archive]\nvolumes = ["{tmp_path}/a", "{tmp_path}/b"]\n')
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert f"{tmp_path}/a: no such directory".encode() in r.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_a_linked_directory_in_an_object_on_a_volume_is_not_followed(four: Vols) -> None:
    # The core opens a volume's shards below that volume's object directory, following no
    # link there: a parity directory moved behind a link is unreadable, and repaired in
    # place of the link, never through it.
    e = four.archive().get("dir/sub/t3.bin")
    st = e.manifest.stripes[0]
    sh = st.parity[0]
    parity_dir = (four.vols[sh.volume] / e.dirname / sh.path).parent
    outside = four.root / "outside"
    outside.mkdir()
    parity_dir.rename(outside / "parity")
    parity_dir.symlink_to(outside / "parity", target_is_directory=True)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    r = four.run("health", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    (obj,) = [o for o in report["objects"] if o["directory"] == e.dirname]
    assert obj["status"] == "repaired"
    assert {s["damage"] for s in obj["shards"]} == {"unreadable"}
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    assert not parity_dir.is_symlink() and parity_dir.is_dir()
    four.restore_all()


def test_restore_rebuilds_shards_onto_an_empty_replacement_volume(four: Vols) -> None:
    # The core never creates an object directory; the archive makes it on a replacement
    # volume while the object still exists, so restore can put the rebuilt shards there.
    shutil.rmtree(four.vols[1])
    four.vols[1].mkdir()
    e = four.archive().get("t1.bin")
    (sh,) = [sh for st in e.manifest.stripes for sh in st.shards if sh.volume == 1]
    r = four.run("restore", "t1.bin", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout == content("t1.bin")
    assert (four.vols[1] / e.dirname / sh.path).stat().st_size == sh.size


def test_repair_after_a_replace_leaves_no_zombie_on_any_volume(four: Vols) -> None:
    e = four.archive().get("t1.bin")
    obj = ArchivedObject(e)
    for st in e.manifest.stripes:
        for sh in st.parity:
            (four.vols[sh.volume] / e.dirname / sh.path).unlink()
    obj.verify_parity()
    assert obj.damaged
    src = four.root / "new.bin"
    src.write_bytes(b"other content" * 1000)
    four.archive().commit(src, "t1.bin", replace=True)
    assert not any((v / e.dirname).exists() for v in four.vols)
    repaired, failed = obj.repair()
    assert repaired == [] and len(failed) == len(e.manifest.stripes[0].parity), failed
    assert all("gone" in f for f in failed), failed
    assert not any((v / e.dirname).exists() for v in four.vols), "a zombie directory"


def test_health_reads_ahead_on_each_present_volume(
    four: Vols, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health's read-ahead of an object covers its directory on every present volume, the
    budget shared among them; an absent volume is not asked for."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(_core, "prefetch", lambda d, budget: calls.append((d, budget)) or 0)
    monkeypatch.setattr(sys.modules["blockframe.health.scrub"], "PREFETCH_FROM", 0)
    shutil.rmtree(four.vols[3])
    archive = four.archive()
    report = Health(archive, Options(dry_run=True)).run(Health(archive).plan())
    assert report.objects
    share = sys.modules["blockframe.health.scrub"].PREFETCH // 3
    expected = {(str(v / o.directory), share) for o in report.objects for v in four.vols[:3]}
    assert sorted(calls) == sorted(expected)
