"""The pin of an archive: one BLAKE3 digest over everything that decides which bytes each
object reads back as (names, sizes, content hashes, Merkle roots, chunk size and the shard
sizes of every stripe). Where shards are placed and when objects were created are left
out, so repairs and re-placements keep the pin; any commit, removal or forged manifest
changes it. FORMAT.md ("The pin") defines the bytes hashed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from blockframe import _core
from blockframe.errors import UsageError
from blockframe.format.manifest import META_VERSION, Manifest

_PIN = re.compile(r"[0-9a-f]{64}")


def pin_of(manifests: Iterable[Manifest]) -> str:
    """The pin of an archive whose usable objects have these manifests (each object
    counted once, however many of its files are given)."""
    unique = {m.name: m for m in manifests}
    return pin_of_docs({name: pin_doc(m) for name, m in unique.items()})


def pin_doc(m: Manifest) -> str:
    """One object's part of the pin, serialized as the pin hashes it (a catalog keeps
    it, so that listing an archive with its pin reads no manifest)."""
    return json.dumps(_pinned(m), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def pin_of_docs(docs: Mapping[str, str]) -> str:
    """The pin from each object's :func:`pin_doc`, by object name: the same bytes as
    serializing the list of documents in name order."""
    raw = ("[" + ",".join(docs[name] for name in sorted(docs)) + "]").encode()
    return _core.blake3(b"blockframe-pin-v1\n" + raw).hex()


def _pinned(m: Manifest) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": m.name,
        "size": m.size,
        "content_hash": m.content_hash,
        "merkle_root": m.merkle_root,
        "chunk_size": m.chunk_size,
        "stripes": [[[s.size for s in st.data], [s.size for s in st.parity]] for st in m.stripes],
    }
    if m.version >= META_VERSION:
        # What a file is and, for a pack, which name reads which bytes: a forged table
        # must change the pin as a forged hash does.
        doc["kind"] = m.kind
        if m.is_pack:
            doc["files"] = [member.to_dict() for member in m.members]
        else:
            doc["mtime_ns"], doc["mode"] = m.mtime_ns, m.mode
    return doc


def check_pin(pin: str) -> str:
    """``pin`` if it is one (64 lowercase hex digits), else UsageError."""
    pin = pin.strip().lower()
    if _PIN.fullmatch(pin) is None:
        raise UsageError(f"invalid pin {pin!r}: 64 hex digits, as `blockframe serve` prints it")
    return pin
