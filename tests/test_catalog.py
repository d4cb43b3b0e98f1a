"""The catalog (FORMAT.md, "The catalog"): a cache of what manifests say about names, kept
in ``<archive>/.blockframe/catalog.sqlite``. Reused without reading manifests, revalidated
against them, rebuilt when damaged or foreign, never followed through a symbolic link, and
never needed: a read-only archive is listed and read all the same."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockframe import _core
from blockframe.archive import Archive, Index, open_archive_at
from blockframe.archive import catalog as catalog_mod
from blockframe.errors import ManifestError
from blockframe.format import manifest as manifest_mod
from blockframe.format.manifest import MANIFEST, REPLICA, checksum
from blockframe.format.names import dirname_for
from blockframe.storage.volumes import can_lose

from conftest import SMALL, Env, data, garbage

CATALOG = Path(".blockframe") / "catalog.sqlite"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every manifest copy parsed from now on."""
    seen: list[str] = []
    real = manifest_mod.parse

    def counting(raw: bytes, where: str) -> manifest_mod.Manifest:
        seen.append(where)
        return real(raw, where)

    monkeypatch.setattr(manifest_mod, "parse", counting)
    return seen


def commit_some(env: Env, n: int = 4) -> Archive:
    archive = env.archive
    for i in range(n):
        archive.commit(env.file(f"f{i}.bin", 1000 + 37 * i, seed=i), f"dir/f{i}.bin")
    return archive


def view(index: Index) -> dict[str, Any]:
    """Everything a listing or a mount shows of an index."""
    return {
        "entries": {
            n: (e.size, e.offset, e.content_hash, e.mtime_ns, e.mode, e.dirname, e.head)
            for n, e in index.entries.items()
        },
        "dirs": dict(index.dirs),
        "links": dict(index.links),
        "problems": sorted((p.path, p.reason) for p in index.problems),
    }


def fresh(env: Env, monkeypatch: pytest.MonkeyPatch) -> Index:
    """A scan that reads every manifest (no catalog)."""
    with monkeypatch.context() as m:
        # The archive imports it from the catalog module when it first lists.
        m.setattr(catalog_mod, "open_catalog", lambda backend, create=True: None)
        return Archive(env.archive_dir, SMALL).scan()


def read_all(archive: Archive, name: str) -> bytes:
    return archive.open_object(archive.scan().entries[name]).read(0, 1 << 30)


def test_the_catalog_is_made_then_reused_without_reading_a_manifest(
    env: Env, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_some(env)
    first = Archive(env.archive_dir, SMALL).scan()
    assert (env.archive_dir / CATALOG).is_file()
    parses.clear()
    archive = Archive(env.archive_dir, SMALL)
    second = archive.scan()
    assert parses == []  # every row was current: no manifest read
    assert view(second) == view(first) == view(fresh(env, monkeypatch))
    # The manifest is read when bytes are, and the bytes are the committed ones.
    entry = second.entries["dir/f2.bin"]
    assert archive.open_object(entry).read(0, 1 << 20) == data(1000 + 74, seed=2)
    assert parses and entry.manifest.content_hash == entry.content_hash


def test_a_folder_commit_leaves_rows_so_the_next_listing_reads_no_manifest(
    env: Env, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    top = env.root / "album"
    for i in range(30):
        (top / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (top / f"d{i % 3}" / f"{i}.jpg").write_bytes(data(500 + i, seed=i))
    (top / "big.bin").write_bytes(data(3 * SMALL.pack_max, seed=99))  # an object of its own
    results, failures = env.archive.commit_tree(top)
    assert not failures and len(results) == 31
    parses.clear()
    index = Archive(env.archive_dir, SMALL).scan()
    assert parses == []  # every row was written by the commit, and is current
    assert view(index) == view(fresh(env, monkeypatch))
    assert index.entries["album/d1/4.jpg"].member is not None
    assert index.entries["album/big.bin"].member is None


def test_changes_behind_its_back_are_noticed(
    env: Env, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = commit_some(env)
    archive.scan()
    # Added, removed, replaced, a manifest copy damaged, and one made unusable.
    archive.commit(env.file("new.bin", 500, seed=9), "new.bin")
    shutil.rmtree(archive.get("dir/f0.bin").path)
    archive.commit(env.file("f1b.bin", 777, seed=7), "dir/f1.bin", replace=True)
    garbage(archive.get("dir/f2.bin").path / MANIFEST)
    broken = archive.get("dir/f3.bin").path
    garbage(broken / MANIFEST)
    garbage(broken / REPLICA)
    parses.clear()
    index = Archive(env.archive_dir, SMALL).scan()
    # Only the changed objects were read: the new one and the replacement (a replica equal
    # to its primary is not parsed again), the damaged ones (both copies).
    assert {p.split(":")[0] for p in parses} == {MANIFEST, REPLICA}
    assert len(parses) == 1 + 1 + 2 + 2
    assert sorted(index.entries) == ["dir/f1.bin", "dir/f2.bin", "new.bin"]
    assert index.entries["dir/f1.bin"].size == 777
    assert index.entries["dir/f2.bin"].status == "manifest restored"
    assert [p.path for p in index.problems] == [broken.name]
    assert "no usable manifest" in index.problems[0].reason
    # The damaged object is still reported on every scan, as without a catalog.
    again = Archive(env.archive_dir, SMALL).scan()
    assert view(again) == view(fresh(env, monkeypatch))
    assert again.entries["dir/f2.bin"].status == "ok"  # repaired by the scan before
    assert read_all(Archive(env.archive_dir, SMALL), "dir/f1.bin") == data(777, seed=7)


def _rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT dirname, size FROM objects ORDER BY dirname").fetchall()
    finally:
        conn.close()


def _expected_rows(index: Index) -> list[tuple[Any, ...]]:
    return sorted((e.dirname, e.head.size) for e in index.objects.values())


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for s in statements:
            conn.execute(s)
    conn.close()


@pytest.mark.parametrize(
    "damage",
    ["garbage", "empty", "truncated", "version", "schema", "row", "stamp", "identity", "foreign"],
)
def test_a_damaged_or_foreign_catalog_is_rebuilt_from_the_manifests(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, parses: list[str]
) -> None:
    commit_some(env)
    truth = fresh(env, monkeypatch)
    Archive(env.archive_dir, SMALL).scan()
    cat = env.archive_dir / CATALOG
    if damage == "garbage":
        cat.write_bytes(os.urandom(5000))
    elif damage == "empty":
        cat.write_bytes(b"")
    elif damage == "truncated":
        raw = cat.read_bytes()
        cat.write_bytes(raw[: len(raw) // 2])
    elif damage == "version":
        _sql(cat, "UPDATE meta SET value = '99' WHERE key = 'version'")
    elif damage == "schema":
        _sql(cat, "CREATE TABLE extra (x)")
    elif damage == "row":
        _sql(cat, "UPDATE objects SET size = 999999, name = 'evil'")
    elif damage == "stamp":
        _sql(cat, "UPDATE objects SET stamp = 'x'")
    elif damage == "identity":
        # Rows that would all match, in a catalog made for another archive.
        _sql(cat, "UPDATE meta SET value = 'directory 0:0' WHERE key = 'archive'")
    else:
        # The catalog of another archive, planted in this one.
        other = Env(tmp_path / "other")
        other.root.mkdir()
        a = other.archive
        a.commit(other.file("x.bin", 300), "dir/f0.bin")
        a.scan()
        shutil.copyfile(other.archive_dir / CATALOG, cat)
    parses.clear()
    archive = Archive(env.archive_dir, SMALL)
    index = archive.scan()
    assert view(index) == view(truth)
    assert len(parses) == 4  # nothing in it was trusted (identical replicas: parsed once)
    assert _rows(cat) == _expected_rows(truth)
    conn = sqlite3.connect(cat)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert meta["archive"] == catalog_mod.identity_of(archive.backend)
    assert read_all(Archive(env.archive_dir, SMALL), "dir/f1.bin") == data(1037, seed=1)


def test_a_catalog_row_for_a_vanished_object_is_dropped(env: Env) -> None:
    archive = commit_some(env)
    archive.scan()
    cat = env.archive_dir / CATALOG
    assert len(_rows(cat)) == 4
    shutil.rmtree(archive.get("dir/f3.bin").path)
    assert sorted(Archive(env.archive_dir, SMALL).scan().entries) == [
        "dir/f0.bin",
        "dir/f1.bin",
        "dir/f2.bin",
    ]
    assert len(_rows(cat)) == 3


@pytest.mark.parametrize("where", ["dir", "file", "journal"])
def test_symbolic_links_in_blockframe_are_never_followed(
    env: Env, tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    commit_some(env)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    state = env.archive_dir / ".blockframe"
    shutil.rmtree(state)  # the commits' lock
    if where == "dir":
        state.symlink_to(outside)
        (outside / "catalog.sqlite").symlink_to(victim)
    elif where == "file":
        state.mkdir()
        (state / "catalog.sqlite").symlink_to(victim)
    else:
        state.mkdir()
        (state / "catalog.sqlite-journal").symlink_to(victim)
    before = sorted(p.name for p in outside.iterdir())
    for _ in range(2):
        index = Archive(env.archive_dir, SMALL).scan()
        assert view(index) == view(fresh(env, monkeypatch))
    assert read_all(Archive(env.archive_dir, SMALL), "dir/f1.bin") == data(1037, seed=1)
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == before
    # The links are left as they are; the catalog went to the user's cache instead.
    if where == "dir":
        assert state.is_symlink()
    elif where == "file":
        assert (state / "catalog.sqlite").is_symlink()
    assert list(cache_home.rglob("catalog.sqlite"))


@pytest.fixture
def read_only(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An archive (some objects committed) whose directory cannot be written; root ignores
    modes, so creating the catalog there is refused for it too."""
    commit_some(env)
    root = env.archive_dir
    real_makedirs, real_open = os.makedirs, os.open

    def inside(path: object) -> bool:
        return str(path).startswith(str(root))

    def makedirs(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            raise PermissionError(errno.EACCES, "read-only", str(path))
        real_makedirs(path, *args, **kwargs)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        dir_fd = kwargs.get("dir_fd")
        if (
            dir_fd is not None
            and flags & os.O_CREAT
            and inside(os.readlink(f"/proc/self/fd/{dir_fd}"))
        ):
            raise PermissionError(errno.EACCES, "read-only", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(catalog_mod.os, "makedirs", makedirs)
    monkeypatch.setattr(catalog_mod.os, "open", open_)
    mode = root.stat().st_mode
    root.chmod(0o555)
    try:
        yield root
    finally:
        root.chmod(mode)


def test_a_read_only_archive_is_listed_and_read(
    env: Env, read_only: Path, parses: list[str], cache_home: Path
) -> None:
    first = Archive(read_only, SMALL).scan()
    assert sorted(first.entries) == [f"dir/f{i}.bin" for i in range(4)]
    assert not (read_only / CATALOG).exists()
    parses.clear()
    second = Archive(read_only, SMALL).scan()
    assert parses == []  # the user's cache held the catalog
    assert view(second) == view(first)
    assert read_all(Archive(read_only, SMALL), "dir/f3.bin") == data(1000 + 111, seed=3)
    assert not (read_only / CATALOG).exists()


def test_with_no_catalog_anywhere_reads_still_work(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commit_some(env)
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    shutil.rmtree(env.archive_dir / ".blockframe")  # the commits' lock
    (env.archive_dir / ".blockframe").write_bytes(b"not a directory")
    index = Archive(env.archive_dir, SMALL).scan()
    assert view(index) == view(fresh(env, monkeypatch))


def test_a_volume_archive_keeps_its_catalog_in_the_users_cache(
    env: Env, tmp_path: Path, parses: list[str], cache_home: Path
) -> None:
    vols = [str(tmp_path / f"vol{i}") for i in range(3)]
    archive = open_archive_at(vols, SMALL)
    for i in range(3):
        archive.commit(env.file(f"v{i}", 20_000 * (i + 1), seed=i), f"v/{i}.bin")
    first = open_archive_at(vols, SMALL).scan()
    parses.clear()
    again = open_archive_at(vols, SMALL)
    second = again.scan()
    assert parses == []
    assert view(second) == view(first)
    margins = [can_lose(e.manifest) for e in first.entries.values()]
    assert [e.can_lose() for e in second.entries.values()] == margins
    assert min(margins) > 0
    assert list(cache_home.rglob("catalog.sqlite"))
    assert not list(tmp_path.glob("vol*/.blockframe/catalog.sqlite"))
    entry = second.entries["v/2.bin"]
    assert again.open_object(entry).read(0, 1 << 20) == data(60_000, seed=2)
    # A volume gone: its objects say so without a manifest being read.
    shutil.rmtree(vols[2])
    parses.clear()
    third = open_archive_at(vols, SMALL).scan()
    left = [can_lose(e.manifest, {2}) for e in first.entries.values()]
    assert [e.can_lose() for e in third.entries.values()] == left
    assert left != margins


def test_lookups_do_not_create_a_catalog(env: Env) -> None:
    archive = commit_some(env)
    assert archive.find("dir/f1.bin") is not None
    assert not (env.archive_dir / CATALOG).exists()


# -- packs --------------------------------------------------------------------------------

PACK = ".pack/" + "cd" * 16
FILES = {"p/a.txt": 300, "p/sub/b.bin": 4000, "p/empty": 0, "p/sub/c": 1234}


def make_pack(env: Env) -> dict[str, bytes]:
    """A pack written by hand (no pack writer on this branch): a committed object whose
    manifest is rewritten as a pack of FILES, with a directory and a link."""
    contents = {n: data(size, seed=i) for i, (n, size) in enumerate(FILES.items())}
    blob = b"".join(contents.values())
    src = env.root / "blob"
    src.write_bytes(blob)
    entry = env.archive.commit(src, "blob").entry
    doc: dict[str, Any] = json.loads((entry.path / MANIFEST).read_bytes())
    table: list[dict[str, Any]] = [
        {"name": "p", "type": "dir", "mtime_ns": 11, "mode": 0o750},
        {"name": "p/sub", "type": "dir", "mtime_ns": 12, "mode": 0o700},
        {"name": "p/emptydir", "type": "dir", "mtime_ns": 13, "mode": 0o755},
        {"name": "p/link", "type": "symlink", "mtime_ns": 14, "target": "sub/b.bin"},
    ]
    offset = 0
    for i, (name, raw) in enumerate(contents.items()):
        table.append(
            {
                "name": name,
                "type": "file",
                "mtime_ns": 1_000_000 * (i + 1),
                "offset": offset,
                "size": len(raw),
                "content_hash": _core.blake3(raw).hex(),
                "mode": 0o640 + i,
            }
        )
        offset += len(raw)
    doc.update(version=3, name=PACK, kind="pack", files=table)
    doc.pop("mtime_ns", None)
    doc.pop("mode", None)
    doc.pop("checksum", None)
    doc["checksum"] = checksum(doc)
    body = json.dumps(doc).encode()
    (entry.path / MANIFEST).write_bytes(body)
    (entry.path / REPLICA).write_bytes(body)
    entry.path.rename(env.archive_dir / dirname_for(PACK, doc["id"]))
    return contents


def test_pack_members_dirs_and_links_come_from_the_catalog_as_from_manifests(
    env: Env, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_some(env, 2)
    contents = make_pack(env)
    truth = fresh(env, monkeypatch)
    assert set(truth.entries) >= set(FILES) and set(truth.dirs) == {"p", "p/sub", "p/emptydir"}
    Archive(env.archive_dir, SMALL).scan()
    parses.clear()
    archive = Archive(env.archive_dir, SMALL)
    index = archive.scan()
    assert parses == []
    assert view(index) == view(truth)
    assert index.links["p/link"].target == "sub/b.bin"
    for name, raw in contents.items():
        entry = index.entries[name]
        assert entry.member is not None and entry.dirname.startswith("%2Epack")
        assert archive.open_object(entry).read(0, 1 << 20) == raw
    # One manifest read (its identical replica not parsed again) served every file.
    assert len(parses) == 1


def test_list_json_is_the_same_from_the_catalog(env: Env) -> None:
    commit_some(env, 3)
    make_pack(env)
    first = env.run("list", "--json")
    assert first.returncode == 0, first.stderr
    assert (env.archive_dir / CATALOG).is_file()
    second = env.run("list", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    (env.archive_dir / CATALOG).unlink()
    third = env.run("list", "--json")
    assert json.loads(third.stdout) == json.loads(first.stdout)


def test_a_remote_archive_is_listed_from_a_local_cache(
    env: Env, monkeypatch: pytest.MonkeyPatch, cache_home: Path
) -> None:
    from test_remote import Server

    from blockframe.archive.remote import RemoteArchive
    from blockframe.format.pin import pin_of

    commit_some(env, 3)
    contents = make_pack(env)
    pin = pin_of(e.manifest for e in fresh(env, monkeypatch).entries.values())
    fetched: list[str] = []
    real = RemoteArchive._entry

    def counting(self: RemoteArchive, name: str) -> Any:
        fetched.append(name)
        return real(self, name)

    monkeypatch.setattr(RemoteArchive, "_entry", counting)
    server = Server(env)
    try:
        first = RemoteArchive(server.url).scan()
        assert len(fetched) == 3 + 1  # every object once, the pack by its first file
        assert list(cache_home.rglob("catalog.sqlite"))
        fetched.clear()
        remote = RemoteArchive(server.url, pin=pin)
        second = remote.scan()
        assert fetched == []  # the cache described every listed file: no manifest fetched
        assert view(second) == view(first)
        for name, raw in contents.items():
            assert remote.open_object(remote.get(name)).read(0, 1 << 20) == raw
        assert len(fetched) == 1  # one manifest for the whole pack, fetched to read it
        assert remote.open_object(second.entries["dir/f1.bin"]).read(0, 5000) == data(1037, 1)
        remote.close()
    finally:
        server.stop()


def test_the_mount_view_and_fsspec_start_from_rows_and_read_on_demand(
    env: Env, parses: list[str]
) -> None:
    from blockframe.access.fsspec import BlockFrameFileSystem
    from blockframe.access.view import ArchiveView

    commit_some(env, 3)
    contents = make_pack(env)
    Archive(env.archive_dir, SMALL).scan()
    parses.clear()
    view_ = ArchiveView(Archive(env.archive_dir, SMALL), repair=False)
    try:
        assert view_.stat("/p/sub/b.bin").size == FILES["p/sub/b.bin"]
        assert view_.stat("/p/sub").is_dir and view_.stat("/p/emptydir").perm == 0o755
        assert view_.readlink("/p/link") == "sub/b.bin"
        assert sorted(view_.listdir("/p")) == ["a.txt", "empty", "emptydir", "link", "sub"]
        assert view_.stat("/dir/f1.bin").size == 1037
        assert parses == []  # start-up, stat, readdir: rows only
        handle = view_.open("/p/sub/c")
        assert view_.read(handle, 0, 1 << 20) == contents["p/sub/c"]
        assert len(parses) == 1  # the pack's manifest, read for its bytes
    finally:
        view_.close()
    fs = BlockFrameFileSystem(archive=str(env.archive_dir))
    parses.clear()
    assert fs.info("p/a.txt")["size"] == 300
    assert sorted(fs.ls("dir", detail=False)) == [f"dir/f{i}.bin" for i in range(3)]
    assert parses == []
    assert fs.cat_file("dir/f0.bin") == data(1000, seed=0)


def test_a_manifest_changed_between_listing_and_reading_is_refused_then_relisted(
    env: Env,
) -> None:
    commit_some(env, 2)
    Archive(env.archive_dir, SMALL).scan()
    archive = Archive(env.archive_dir, SMALL)
    entry = archive.scan().entries["dir/f1.bin"]  # from its row
    # Another valid manifest in its place (a different commit time): the row is stale.
    doc: dict[str, Any] = json.loads((entry.path / MANIFEST).read_bytes())
    doc["created"] = "2001-01-01T00:00:00+00:00"
    doc.pop("checksum")
    doc["checksum"] = checksum(doc)
    for copy in (MANIFEST, REPLICA):
        (entry.path / copy).write_bytes(json.dumps(doc).encode())
    with pytest.raises(ManifestError, match="changed since"):
        archive.open_object(entry)
    again = Archive(env.archive_dir, SMALL).scan().entries["dir/f1.bin"]
    assert again.head.created == "2001-01-01T00:00:00+00:00"
    assert Archive(env.archive_dir, SMALL).open_object(again).read(0, 5000) == data(1037, 1)


def test_a_catalog_damaged_while_open_is_dropped_and_reads_go_on(env: Env) -> None:
    archive = commit_some(env, 2)
    archive.scan()  # the archive holds its catalog open from now on
    (env.archive_dir / CATALOG).write_bytes(b"\0garbage" * 1000)
    archive.commit(env.file("late.bin", 321, seed=5), "late.bin")
    index = archive.scan()
    assert sorted(index.entries) == ["dir/f0.bin", "dir/f1.bin", "late.bin"]
    assert archive.open_object(index.entries["late.bin"]).read(0, 1000) == data(321, seed=5)
    # The next opening makes a sound one.
    again = Archive(env.archive_dir, SMALL)
    assert sorted(again.scan().entries) == sorted(index.entries)
    assert _rows(env.archive_dir / CATALOG) == _expected_rows(index)


def test_a_lost_manifest_copy_that_cannot_be_restored_is_reported_at_every_listing(
    env: Env, parses: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import blockframe.archive.directory as directory_mod

    archive = commit_some(env)
    (archive.get("dir/f1.bin").path / REPLICA).unlink()

    def refused(path: Path, data: bytes) -> None:
        raise PermissionError(errno.EROFS, "read-only file system", str(path))

    # The archive cannot be written (root ignores modes): the copy is not restored.
    monkeypatch.setattr(directory_mod, "atomic_write", refused)
    for attempt in range(3):
        caplog.clear()
        parses.clear()
        index = Archive(env.archive_dir, SMALL).scan()
        assert sorted(index.entries) == [f"dir/f{i}.bin" for i in range(4)]
        assert f"{REPLICA}: missing" in caplog.text
        if attempt:
            assert parses == [MANIFEST]  # only that object is read again
