"""One name tree for the mount view, the HTTP catalog and fsspec: directories from names,
the directory winning over a file of the same path, per-directory times computed once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from blockframe.access.api import BlockFrameArchive
from blockframe.access.fsspec import BlockFrameFileSystem
from blockframe.access.http.catalog import ArchiveChanged, Catalog
from blockframe.access.tree import Directory, NameTree, mtime_ns
from blockframe.access.view import ArchiveView
from blockframe.archive import Index
from blockframe.errors import IsDirectoryError, NotDirectoryError, NotFoundError, UsageError
from blockframe.format.manifest import MANIFEST, REPLICA, checksum
from blockframe.format.names import dirname_for

from conftest import Env, data


def fake(second: int, size: int = 10) -> Any:
    """What the tree reads of an entry: its size and modification time."""
    return SimpleNamespace(size=size, mtime_ns=ns(second))


def ns(second: int) -> int:
    return (1_700_000_000 + second) * 1_000_000_000


def test_directories_files_times_and_the_directory_winning() -> None:
    entries = {
        "z.bin": fake(1),
        "a": fake(9, size=1000),  # also a directory: hidden
        "a/b": fake(2),
        "a/c/d": fake(3),
        "a/c/e": fake(5),
        "b/x": fake(4),
    }
    tree = NameTree(entries)
    assert list(tree.files) == ["a/b", "a/c/d", "a/c/e", "b/x", "z.bin"]  # name order
    assert list(tree.hidden) == ["a"]
    assert len(tree) == 5 and tree.size == 50
    assert tree.file("a") is None and tree.file("a/c/e") is entries["a/c/e"]
    # The hidden file's time counts nowhere; a directory has its newest file's time.
    assert tree.directory("") == Directory(("a", "b", "z.bin"), 2, ns(5))
    assert tree.directory("a") == Directory(("b", "c"), 1, ns(5))
    assert tree.directory("a/c") == Directory(("d", "e"), 0, ns(5))
    assert tree.directory("b") == Directory(("x",), 0, ns(4))
    assert tree.directory("z.bin") is None and tree.directory("nope") is None
    assert NameTree().directory("") == Directory((), 0, 0)
    assert mtime_ns(entries["b/x"]) == ns(4)


class FakeSource:
    root = "fake"

    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries = entries

    def scan(self) -> Index:
        return Index(self.entries)  # type: ignore[arg-type]

    def open_object(self, entry: Any, cache: Any = None) -> Any:
        raise AssertionError("not read here")


def test_stat_and_listdir_do_not_scan_every_file() -> None:
    # 60,000 files in 300 directories: scanning all files for each directory stat (as
    # before) takes seconds; a lookup takes microseconds.
    entries = {f"d{d:03}/sub/f{f:03}": fake(d * 1000 + f) for d in range(300) for f in range(200)}
    view = ArchiveView(FakeSource(entries), repair=False)  # type: ignore[arg-type]
    try:
        started = time.monotonic()
        for _ in range(10):
            for d in range(300):
                st = view.stat(f"/d{d:03}")
                assert st.is_dir and st.nlink == 3 and st.mtime_ns == ns(d * 1000 + 199)
                assert view.listdir(f"/d{d:03}/sub")[-1] == "f199"
        assert view.stat("/").mtime_ns == ns(299_199)
        assert time.monotonic() - started < 1  # here: ~0.01 s now, ~9 s before
        assert view.totals() == (60_000, 600_000)
    finally:
        view.close()


@pytest.fixture
def clash(env: Env) -> Env:
    """An archive where "a" is both a file and the directory of "a/b", and "c\\d" has a
    backslash (a separator in mounted and served paths)."""
    for name, size in {"a": 100, "a/b": 200, "c_d": 300, "e": 400}.items():
        env.archive.commit(env.file(name.replace("/", "_"), size, seed=size), name)
    rename_object(env.archive_dir, "c_d", "c\\d")
    return env


def rename_object(root: Path, old: str, new: str) -> None:
    """Give an object a name commit now refuses, as an older version could: rewrite both
    manifest copies (checksum included) and rename the object directory."""
    (src,) = root.glob(f"{old}_*")
    doc = json.loads((src / MANIFEST).read_bytes())
    doc["name"] = new
    doc["checksum"] = checksum(doc)
    for copy in (MANIFEST, REPLICA):
        (src / copy).write_text(json.dumps(doc))
    src.rename(root / dirname_for(new, src.name.rpartition("_")[2]))


def test_commit_refuses_a_name_no_path_can_reach(env: Env) -> None:
    with pytest.raises(UsageError, match=r"invalid object name 'c\\d'"):
        env.archive.commit(env.file("x", 10), "c\\d")
    assert not list(env.archive_dir.glob("*_*"))


def test_mount_view_serve_catalog_and_fsspec_see_one_tree(clash: Env) -> None:
    view = ArchiveView(clash.archive, repair=False)
    try:
        assert view.listdir("/") == ["a", "e"]
        with pytest.raises(NotFoundError):
            view.stat("/c\\d")
        assert view.stat("/a").is_dir and view.listdir("/a") == ["b"]
        with pytest.raises(IsDirectoryError):
            view.open("/a")
        with pytest.raises(NotDirectoryError):
            view.listdir("/e")
        with pytest.raises(NotFoundError):
            view.stat("/a/x")
        h = view.open("/a/b")
        assert view.read(h, 0, 1000) == data(200, seed=200)
        view.release(h)
    finally:
        view.close()

    catalog = Catalog(clash.archive)
    try:
        assert [e.name for e in catalog.entries()] == ["a/b", "e"]
        assert catalog.count == 2
        with pytest.raises(NotFoundError):
            catalog.resolve("a")
        target = catalog.resolve("a/b")
        h = catalog.open(target.entry)
        assert catalog.view.read(h, 0, 1000) == data(200, seed=200)
        catalog.view.release(h)
    finally:
        catalog.close()

    fs = BlockFrameFileSystem(archive=str(clash.archive_dir))
    assert fs.info("a") == {"name": "a", "size": 0, "type": "directory"}
    assert fs.ls("", detail=False) == ["a", "e"]
    assert fs.ls("a", detail=False) == ["a/b"]
    assert fs.info("a/b")["size"] == 200 and fs.cat_file("a/b") == data(200, seed=200)
    with pytest.raises(FileNotFoundError):
        fs.info("a/x")
    tree = BlockFrameArchive(str(clash.archive_dir)).tree()
    assert list(tree.files) == ["a/b", "e"] and list(tree.hidden) == ["a", "c\\d"]
    # The object stays in the archive: listed, and restored by its exact name.
    out = clash.root / "restored"
    r = clash.run("restore", "c\\d", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data(300, seed=300)
    assert b"c\\d" in clash.run("list").stdout


def test_serve_catalog_follows_replaced_objects(env: Env) -> None:
    env.archive.commit(env.file("x", 100, seed=1), "x")
    catalog = Catalog(env.archive)
    try:
        old = catalog.resolve("x").entry
        env.archive.commit(env.file("x2", 200, seed=2), "x", replace=True)
        catalog.rescan(force=True)
        # A request that looked up the old version must not be given the new one's bytes
        # under the old one's size and hash.
        with pytest.raises(ArchiveChanged):
            catalog.open(old)
        new = catalog.resolve("x").entry
        h = catalog.open(new)
        assert catalog.view.read(h, 0, 1000) == data(200, seed=2)
        catalog.view.release(h)
    finally:
        catalog.close()
