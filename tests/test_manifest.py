"""The manifest parser: round trips, and hostile or damaged input always gives a
ManifestError (never another exception, never a wrong manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockframe.archive import Archive
from blockframe.errors import ManifestError
from blockframe.format.manifest import MANIFEST, checksum, parse

from conftest import SMALL, data


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root: Path = tmp_path_factory.mktemp("m")
    src = root / "f"
    src.write_bytes(data(150_001))
    entry = Archive(root / "a", SMALL).commit(src).entry
    return (entry.path / MANIFEST).read_bytes()


def resigned(doc: dict[str, Any]) -> bytes:
    doc["checksum"] = checksum(doc)
    return json.dumps(doc).encode()


def test_round_trip(raw: bytes) -> None:
    m = parse(raw, "m")
    assert parse(m.to_json(), "m") == m
    assert m.to_json() == raw


@pytest.mark.parametrize(
    "field",
    ["format", "version", "name", "id", "size", "content_hash", "tier", "created",
     "chunk_size", "segment_size", "block_segments", "parity_shards", "stripes",
     "merkle_root", "checksum"],
)  # fmt: skip
def test_every_field_is_required(raw: bytes, field: str) -> None:
    doc = json.loads(raw)
    del doc[field]
    with pytest.raises(ManifestError):
        parse(resigned(doc) if field != "checksum" else json.dumps(doc).encode(), "m")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=5), "version 5 is not supported"),
        (lambda d: d.update(version=2), "missing field .volume."),
        (lambda d: d.update(tier=1), "tier-1"),
        (lambda d: d.update(parity_shards=3), "parity_shards"),
        (lambda d: d.update(block_segments=2), "block_segments"),
        (lambda d: d.update(segment_size=100), "segment_size"),
        (lambda d: d.update(size=d["size"] + 1), "add up"),
        (lambda d: d.update(id="0" * 16), "id"),
        (lambda d: d.update(created="yesterday"), "ISO 8601"),
        (lambda d: d.update(chunk_size=100), "chunk_size"),
        (lambda d: d["stripes"][0]["data"][0].update(path="../../etc/passwd"), "unsafe"),
        (lambda d: d["stripes"][0]["data"][0].update(path="/etc/passwd"), "unsafe"),
        (
            lambda d: d["stripes"][0]["data"][1].update(path=d["stripes"][0]["data"][0]["path"]),
            "collide",
        ),
        (lambda d: d["stripes"][0]["parity"][0].update(size=5), "chunk hashes"),
        (lambda d: d["stripes"][0]["data"][0].update(chunks="!!"), "base64"),
        (lambda d: d["stripes"][0]["data"][0].update(chunks=""), "number of chunk hashes"),
        (lambda d: d.update(stripes=[]), "no stripes"),
        (lambda d: d.update(size="12"), "integer"),
        (lambda d: d.update(size=True), "integer"),
    ],
)
def test_inconsistent_manifests_are_rejected(raw: bytes, edit: Any, message: str) -> None:
    doc = json.loads(raw)
    edit(doc)
    with pytest.raises(ManifestError, match=message):
        parse(resigned(doc), "m")


def test_changed_hash_with_fixed_checksum_fails_on_merkle_root(raw: bytes) -> None:
    doc = json.loads(raw)
    chunks = doc["stripes"][1]["parity"][0]["chunks"]
    doc["stripes"][1]["parity"][0]["chunks"] = ("B" if chunks[0] == "A" else "A") + chunks[1:]
    with pytest.raises(ManifestError, match="Merkle root"):
        parse(resigned(doc), "m")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_bytes_never_crash_the_parser(raw: bytes, d: st.DataObject) -> None:
    mutated = bytearray(raw)
    for _ in range(d.draw(st.integers(1, 8))):
        op = d.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = d.draw(st.integers(0, max(0, len(mutated) - 1)))
        if op == "flip" and mutated:
            mutated[pos] ^= 1 << d.draw(st.integers(0, 7))
        elif op == "cut":
            del mutated[pos : pos + d.draw(st.integers(1, 50))]
        else:
            mutated[pos:pos] = d.draw(st.binary(min_size=1, max_size=20))
    try:
        m = parse(bytes(mutated), "m")
    except ManifestError:
        return
    # Accepted only if it means exactly the same manifest (e.g. whitespace changed).
    assert m == parse(raw, "m")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.floats(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_rejected_cleanly(value: object) -> None:
    with pytest.raises(ManifestError):
        parse(json.dumps(value).encode(), "m")
