"""The manifest: what an object holds, how it is cut into shards, and the hashes that prove
every byte. Stored as ``manifest.json`` with an identical replica ``manifest.replica.json``;
the format is specified in FORMAT.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blockframe import _core
from blockframe.errors import ManifestError
from blockframe.format.members import (
    FILE,
    KINDS,
    PACK,
    Member,
    check_mode,
    check_mtime,
    parse_members,
)

FORMAT = "blockframe-manifest"
VERSION = 1  # objects of a single-directory archive
VOLUMES_VERSION = 2  # objects spread over volumes: every shard names its volume
# Versions 3 and 4 are 1 and 2 plus what the object is ("kind"): a file with its mtime and
# mode, or a pack of a directory commit's small files with its table (FORMAT.md section 18).
META_VERSION = 3
META_VOLUMES_VERSION = 4
VERSIONS = (VERSION, VOLUMES_VERSION, META_VERSION, META_VOLUMES_VERSION)
MANIFEST = "manifest.json"
REPLICA = "manifest.replica.json"
# In an object directory of a volume archive while its commit is under way: the object is
# invisible (no manifest yet) and `health` may remove it once the commit is clearly dead.
COMMITTING = ".committing"
HASH_LEN = 32
# The largest manifest read or written (FORMAT.md, "Limits"): enough for an object of about
# 1.4 TiB at the default 64 KiB chunks, or 22 TiB at 1 MiB chunks. A bigger file is refused
# at commit, and nothing bigger is ever loaded into memory.
MAX_MANIFEST = 1 << 30
# Every shard of a stripe is padded (in memory) to one length that is a multiple of this
# before encoding, and parity is stored at that length (FORMAT.md, "Padding").
ALIGN: int = _core.CHUNK_ALIGN


def padded_size(lengths: Iterable[int]) -> int:
    """The common length the shards of a stripe are padded to: the longest, rounded up to
    a multiple of :data:`ALIGN`."""
    return -(-max(lengths) // ALIGN) * ALIGN


@dataclass(frozen=True)
class Shard:
    """One shard file: path relative to the object directory, size, chunk hashes, and
    the volume that holds it (always 0 in a single-directory archive)."""

    path: str
    size: int
    hashes: bytes  # concatenated 32-byte BLAKE3 digests, one per chunk
    volume: int = 0


@dataclass(frozen=True)
class Stripe:
    """The data shards (file bytes, in order) and parity shards of one Reed-Solomon stripe."""

    data: tuple[Shard, ...]
    parity: tuple[Shard, ...]

    @property
    def shards(self) -> tuple[Shard, ...]:
        """Data shards then parity shards: the numbering the core uses."""
        return self.data + self.parity

    @property
    def padded_size(self) -> int:
        return padded_size(s.size for s in self.data)


@dataclass(frozen=True)
class Manifest:
    """Everything needed to read, verify and repair one committed file."""

    name: str
    id: str
    size: int
    content_hash: str
    tier: int
    created: str
    chunk_size: int
    segment_size: int
    block_segments: int
    parity_shards: int
    stripes: tuple[Stripe, ...]
    merkle_root: str
    volumes: bool = False  # version 2: shards are placed on volumes
    kind: str = FILE  # FILE or PACK (version 3)
    mtime_ns: int | None = None  # a file's modification time (version 3; None before)
    mode: int | None = None  # a file's permission bits (version 3; None before)
    members: tuple[Member, ...] = ()  # a pack's table, in offset order

    @property
    def version(self) -> int:
        """The version this manifest is written with: 3 or 4 when it records a kind."""
        if self.kind == FILE and self.mtime_ns is None:
            return VOLUMES_VERSION if self.volumes else VERSION
        return META_VOLUMES_VERSION if self.volumes else META_VERSION

    @property
    def is_pack(self) -> bool:
        return self.kind == PACK

    def leaves(self) -> bytes:
        """All chunk hashes in layout order: the leaves of the Merkle tree."""
        return b"".join(sh.hashes for st in self.stripes for sh in st.shards)

    def shard_paths(self) -> list[str]:
        return [sh.path for st in self.stripes for sh in st.shards]

    def volume_counts(self, stripe: int) -> dict[int, int]:
        """How many shards of stripe ``stripe`` each volume holds."""
        counts: dict[int, int] = {}
        for sh in self.stripes[stripe].shards:
            counts[sh.volume] = counts.get(sh.volume, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        shard = _volume_shard_dict if self.volumes else _shard_dict
        body: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "name": self.name,
            "id": self.id,
            "size": self.size,
            "content_hash": self.content_hash,
            "tier": self.tier,
            "created": self.created,
            "chunk_size": self.chunk_size,
            "segment_size": self.segment_size,
            "block_segments": self.block_segments,
            "parity_shards": self.parity_shards,
            "stripes": [
                {
                    "data": [shard(s) for s in st.data],
                    "parity": [shard(s) for s in st.parity],
                }
                for st in self.stripes
            ],
            "merkle_root": self.merkle_root,
        }
        if self.version >= META_VERSION:
            body["kind"] = self.kind
            if self.is_pack:
                body["files"] = [member.to_dict() for member in self.members]
            else:
                body["mtime_ns"] = self.mtime_ns
                body["mode"] = self.mode
        body["checksum"] = checksum(body)
        return body

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n").encode()


def _shard_dict(s: Shard) -> dict[str, Any]:
    return {"path": s.path, "size": s.size, "chunks": base64.b64encode(s.hashes).decode()}


def _volume_shard_dict(s: Shard) -> dict[str, Any]:
    return {**_shard_dict(s), "volume": s.volume}


def canonical(body: Mapping[str, Any]) -> bytes:
    """The bytes the checksum covers: the manifest without ``checksum``, keys sorted,
    no whitespace, non-ASCII escaped."""
    rest = {k: v for k, v in body.items() if k != "checksum"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def checksum(body: Mapping[str, Any]) -> str:
    return _core.blake3(canonical(body)).hex()


def _get(d: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing field {key!r}")
    value = d[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ManifestError(f"{where}: field {key!r} must be an integer")
    if not isinstance(value, kind):
        raise ManifestError(f"{where}: field {key!r} must be a {kind.__name__}")
    return value


def _hex(d: Mapping[str, Any], key: str, length: int, where: str) -> str:
    value: str = _get(d, key, str, where)
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"{where}: field {key!r} must be {length} lowercase hex digits")
    return value


def safe_relpath(path: str, where: str) -> str:
    """Accept only normalized relative paths inside the object directory."""
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or posixpath.normpath(path) != path
        or path.split("/")[0] in ("..", ".")
    ):
        raise ManifestError(f"{where}: unsafe shard path {path!r}")
    return path


def _shard(d: Any, chunk_size: int, where: str, volumes: bool) -> Shard:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: shard entries must be objects")
    path = safe_relpath(_get(d, "path", str, where), where)
    size = _get(d, "size", int, where)
    if size < 0:
        raise ManifestError(f"{where}: negative shard size")
    try:
        hashes = base64.b64decode(_get(d, "chunks", str, where), validate=True)
    except binascii.Error:
        raise ManifestError(f"{where}: {path}: chunk hashes are not base64") from None
    if len(hashes) != -(-size // chunk_size) * HASH_LEN:
        raise ManifestError(f"{where}: {path}: wrong number of chunk hashes for {size} bytes")
    volume = 0
    if volumes:
        volume = _get(d, "volume", int, where)
        if not 0 <= volume < 65536:
            raise ManifestError(f"{where}: {path}: volume {volume} out of range")
    return Shard(path, size, hashes, volume)


def parse(raw: bytes, where: str) -> Manifest:
    """Parse and fully validate manifest bytes: format, version, checksum, geometry and the
    Merkle root. ``where`` names the file in errors."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ManifestError(f"{where}: not valid JSON") from None
    if not isinstance(body, dict):
        raise ManifestError(f"{where}: not a manifest object")
    if body.get("format") != FORMAT:
        raise ManifestError(f"{where}: not a BlockFrame manifest")
    version = _get(body, "version", int, where)
    if version not in VERSIONS:
        raise ManifestError(
            f"{where}: manifest version {version} is not supported "
            f"(this build reads {', '.join(map(str, VERSIONS))})"
        )
    volumes = version in (VOLUMES_VERSION, META_VOLUMES_VERSION)
    if _get(body, "checksum", str, where) != checksum(body):
        raise ManifestError(f"{where}: checksum mismatch (the manifest is damaged)")
    chunk_size = _get(body, "chunk_size", int, where)
    if chunk_size <= 0 or chunk_size % ALIGN or chunk_size > 2**20:
        raise ManifestError(f"{where}: invalid chunk_size {chunk_size}")
    kind, mtime, mode, members = _kind(body, version, where)
    stripes_raw = _get(body, "stripes", list, where)
    size = _get(body, "size", int, where)
    if not stripes_raw and not (kind == PACK and size == 0):
        raise ManifestError(f"{where}: no stripes")
    if kind == PACK:
        members = parse_members(members, size, where)
    stripes = []
    for i, st in enumerate(stripes_raw):
        w = f"{where}: stripe {i}"
        if not isinstance(st, dict):
            raise ManifestError(f"{w}: must be an object")
        data = tuple(_shard(s, chunk_size, w, volumes) for s in _get(st, "data", list, w))
        parity = tuple(_shard(s, chunk_size, w, volumes) for s in _get(st, "parity", list, w))
        if not data or not parity or any(s.size == 0 for s in data):
            raise ManifestError(f"{w}: needs non-empty data shards and parity shards")
        stripe = Stripe(data, parity)
        if any(p.size != stripe.padded_size for p in parity):
            raise ManifestError(f"{w}: parity size does not match the data shards")
        stripes.append(stripe)
    m = Manifest(
        name=_get(body, "name", str, where),
        id=_hex(body, "id", 16, where),
        size=size,
        content_hash=_hex(body, "content_hash", 64, where),
        tier=_get(body, "tier", int, where),
        created=_get(body, "created", str, where),
        chunk_size=chunk_size,
        segment_size=_get(body, "segment_size", int, where),
        block_segments=_get(body, "block_segments", int, where),
        parity_shards=_get(body, "parity_shards", int, where),
        stripes=tuple(stripes),
        merkle_root=_hex(body, "merkle_root", 64, where),
        volumes=volumes,
        kind=kind,
        mtime_ns=mtime,
        mode=mode,
        members=members,
    )
    _check_geometry(m, where)
    if not m.content_hash.startswith(m.id):
        raise ManifestError(f"{where}: id is not the start of the content hash")
    if sum(s.size for st in m.stripes for s in st.data) != m.size:
        raise ManifestError(f"{where}: data shard sizes do not add up to the file size")
    paths = m.shard_paths()
    if len(set(paths)) != len(paths) or {MANIFEST, REPLICA, COMMITTING} & set(paths):
        raise ManifestError(f"{where}: shard paths collide")
    if _core.merkle_root(m.leaves()).hex() != m.merkle_root:
        raise ManifestError(f"{where}: Merkle root does not match the chunk hashes")
    return m


def _kind(
    body: Mapping[str, Any], version: int, where: str
) -> tuple[str, int | None, int | None, Any]:
    """What a version-3 manifest says the object is: kind, mtime and mode of a file, the
    raw table of a pack (checked against the size once that is known)."""
    if version < META_VERSION:
        return FILE, None, None, ()
    kind = _get(body, "kind", str, where)
    if kind not in KINDS:
        raise ManifestError(f"{where}: unknown kind {kind!r}")
    if kind == PACK:
        return PACK, None, None, _get(body, "files", list, where)
    return (
        FILE,
        check_mtime(body.get("mtime_ns"), f"{where}: "),
        check_mode(body.get("mode"), f"{where}: "),
        (),
    )


def _check_geometry(m: Manifest, where: str) -> None:
    """The stripes must be what the recorded tier and geometry produce."""
    try:
        datetime.fromisoformat(m.created)
    except ValueError:
        raise ManifestError(f"{where}: created is not an ISO 8601 time") from None
    if m.is_pack and m.size == 0:
        if m.tier != 0 or m.stripes:
            raise ManifestError(f"{where}: an empty pack is tier 0 without stripes")
        return
    if m.size <= 0:
        raise ManifestError(f"{where}: size must be positive")
    if m.tier not in (1, 2, 3):
        raise ManifestError(f"{where}: unknown tier {m.tier}")
    if any(len(st.parity) != m.parity_shards for st in m.stripes):
        raise ManifestError(f"{where}: stripes do not have parity_shards parity shards")
    ks = [len(st.data) for st in m.stripes]
    if m.tier == 1 and ks != [1]:
        raise ManifestError(f"{where}: a tier-1 object is one stripe of one data shard")
    if m.tier == 2 and set(ks) != {1}:
        raise ManifestError(f"{where}: tier-2 stripes hold one data shard each")
    if m.tier == 3 and max(ks) > m.block_segments:
        raise ManifestError(f"{where}: a block holds more than block_segments segments")
    if m.tier > 1 and any(s.size > m.segment_size for st in m.stripes for s in st.data):
        raise ManifestError(f"{where}: a segment is larger than segment_size")


@dataclass(frozen=True)
class Loaded:
    """A manifest read from an object directory, and what had to be done to read it."""

    manifest: Manifest
    repaired: tuple[str, ...]  # copies rewritten from the good one, e.g. ("manifest.json",)
    problems: tuple[str, ...]  # why a copy was bad


def load_from(
    read: Callable[[str], bytes | None],
    write: Callable[[str, bytes], None] | None,
    label: str,
) -> Loaded:
    """:func:`load` over any storage: ``read(copy)`` gives a copy's bytes (None when
    missing, OSError when unreadable); ``write(copy, data)``, when given, restores a bad
    copy from the good one (failures to write are skipped)."""
    copies: dict[str, Manifest] = {}
    problems: list[str] = []
    raws: dict[str, bytes] = {}
    for name in (MANIFEST, REPLICA):
        try:
            raw = read(name)
        except OSError as e:
            problems.append(f"{name}: unreadable ({e.strerror or e})")
            continue
        if raw is None:
            problems.append(f"{name}: missing")
            continue
        if name == REPLICA and raws.get(MANIFEST) == raw:
            # Byte for byte the primary, which verified: the same manifest, parsed once.
            copies[name] = copies[MANIFEST]
            raws[name] = raw
            continue
        try:
            copies[name] = parse(raw, name)
            raws[name] = raw
        except ManifestError as e:
            problems.append(str(e))
    if not copies:
        raise ManifestError(f"{label}: no usable manifest ({'; '.join(problems)})")
    primary = copies.get(MANIFEST)
    replica = copies.get(REPLICA)
    if primary and replica and primary is not replica and primary != replica:
        # Both verify but differ: never guess which is right.
        raise ManifestError(f"{label}: manifest and replica disagree")
    good_name, good = next(iter(copies.items()))
    repaired: list[str] = []
    if write is not None:
        for name in (MANIFEST, REPLICA):
            if name not in copies:
                try:
                    write(name, raws[good_name])
                    repaired.append(name)
                except OSError:
                    pass
    return Loaded(good, tuple(repaired), tuple(problems))
