"""Version-3 manifests (FORMAT.md section 18): a file's mtime and mode, and a pack's table
of files, directories and links. Round trips, and every inconsistency is a ManifestError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blockframe import _core
from blockframe.archive import Archive
from blockframe.errors import ManifestError
from blockframe.format.manifest import MANIFEST, checksum, parse
from blockframe.format.members import Member, is_pack_name

from conftest import SMALL, data

SIZE = 150_001
PACK = ".pack/" + "ab" * 16


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root: Path = tmp_path_factory.mktemp("m")
    src = root / "f"
    src.write_bytes(data(SIZE))
    entry = Archive(root / "a", SMALL).commit(src).entry
    doc: dict[str, Any] = json.loads((entry.path / MANIFEST).read_bytes())
    return doc


def signed(doc: dict[str, Any]) -> bytes:
    doc["checksum"] = checksum(doc)
    return json.dumps(doc).encode()


def as_file(v1: dict[str, Any]) -> dict[str, Any]:
    return {
        **json.loads(json.dumps(v1)),
        "version": 3,
        "kind": "file",
        "mtime_ns": -5,
        "mode": 0o644,
    }


def table(size: int = SIZE) -> list[dict[str, Any]]:
    def file(name: str, mtime: int, offset: int, size: int, mode: int) -> dict[str, Any]:
        return {
            "name": name,
            "type": "file",
            "mtime_ns": mtime,
            "offset": offset,
            "size": size,
            "content_hash": "0" * 64,
            "mode": mode,
        }

    return [
        {"name": "d", "type": "dir", "mtime_ns": 1, "mode": 0o755},
        file("d/a", 2, 0, 100, 0o600),
        file("d/empty", 3, 100, 0, 0o644),
        {"name": "d/link", "type": "symlink", "mtime_ns": 4, "target": "../outside/x"},
        file("d/b", 5, 100, size - 100, 0o4755),
    ]


def as_pack(v1: dict[str, Any]) -> dict[str, Any]:
    return {
        **json.loads(json.dumps(v1)),
        "version": 3,
        "name": PACK,
        "kind": "pack",
        "files": table(),
    }


def test_a_file_round_trips_with_its_mtime_and_mode(v1: dict[str, Any]) -> None:
    m = parse(signed(as_file(v1)), "m")
    assert (m.kind, m.mtime_ns, m.mode, m.version, m.members) == ("file", -5, 0o644, 3, ())
    assert parse(m.to_json(), "m") == m
    assert json.loads(m.to_json())["version"] == 3


def test_a_pack_round_trips_with_its_table(v1: dict[str, Any]) -> None:
    m = parse(signed(as_pack(v1)), "m")
    assert m.is_pack and is_pack_name(m.name) and m.mtime_ns is None
    assert [x.name for x in m.members] == ["d", "d/a", "d/empty", "d/link", "d/b"]
    assert m.members[3] == Member("d/link", "symlink", 4, target="../outside/x")
    assert m.members[4].offset == 100 and m.members[4].mode == 0o4755
    assert parse(m.to_json(), "m") == m
    assert json.loads(m.to_json())["files"] == table()


def test_a_volume_manifest_becomes_version_4(v1: dict[str, Any]) -> None:
    doc = as_file(v1)
    doc["version"] = 4
    for st in doc["stripes"]:
        for s in st["data"] + st["parity"]:
            s["volume"] = 0
    m = parse(signed(doc), "m")
    assert m.volumes and m.version == 4 and parse(m.to_json(), "m") == m


def test_an_empty_pack_holds_only_directories_and_links(v1: dict[str, Any]) -> None:
    empty = _core.blake3(b"").hex()
    doc = as_pack(v1)
    doc.update(
        size=0, tier=0, stripes=[], content_hash=empty, id=empty[:16], merkle_root=empty,
        files=[{"name": "e", "type": "dir", "mtime_ns": 0, "mode": 0o700}],
    )  # fmt: skip
    m = parse(signed(doc), "m")
    assert m.size == 0 and m.stripes == () and m.members[0].type == "dir"
    doc["tier"] = 3
    with pytest.raises(ManifestError, match="empty pack is tier 0"):
        parse(signed(doc), "m")


def _edit_member(i: int, **changes: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        d["files"][i].update(changes)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("files"), "missing field 'files'"),
        (lambda d: d.update(files=[]), "non-empty array"),
        (lambda d: d.update(kind="tarball"), "unknown kind"),
        (lambda d: d.pop("kind"), "missing field 'kind'"),
        (_edit_member(1, offset=1), "offset 1 should be 0"),
        (_edit_member(4, size=5), "add up to 105 bytes"),
        (_edit_member(1, name="d"), "appears twice"),
        (_edit_member(1, name="../x"), "invalid name"),
        (_edit_member(1, type="fifo"), "type must be one of"),
        (_edit_member(1, mode=0o10644), "mode must be"),
        (_edit_member(1, mode=True), "mode must be"),
        (_edit_member(1, mtime_ns=1.5), "mtime_ns"),
        (_edit_member(1, content_hash="zz"), "content_hash"),
        (_edit_member(1, size=-1), "negative"),
        (_edit_member(3, target=""), "link target"),
        (_edit_member(3, target="a\x00b"), "link target"),
        (lambda d: d["files"].__setitem__(0, "d"), "must be an object"),
    ],
)
def test_an_inconsistent_table_is_rejected(v1: dict[str, Any], edit: Any, message: str) -> None:
    doc = as_pack(v1)
    edit(doc)
    with pytest.raises(ManifestError, match=message):
        parse(signed(doc), "m")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("mtime_ns"), "mtime_ns"),
        (lambda d: d.update(mode=-1), "mode"),
        (lambda d: d.update(mtime_ns="now"), "mtime_ns"),
        (lambda d: d.update(size=0), "add up|positive"),
    ],
)
def test_an_inconsistent_file_is_rejected(v1: dict[str, Any], edit: Any, message: str) -> None:
    doc = as_file(v1)
    edit(doc)
    with pytest.raises(ManifestError, match=message):
        parse(signed(doc), "m")
