"""What every commit does, whatever the archive's backend: check the source, turn core
errors into errors with meaning, clean up staging, and build the manifest of what the core
wrote."""

from __future__ import annotations

__all__ = [
    "ObjectMeta",
    "Progress",
    "Source",
    "Staged",
    "abandoning",
    "build_manifest",
    "check_manifest_fits",
    "check_source",
    "commit_errors",
    "hash_file",
    "plan_object",
    "source_path",
    "with_hashes",
    "write_shards",
]

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from blockframe import _core
from blockframe.archive.entry import Progress
from blockframe.config import StorageConfig
from blockframe.errors import ArchiveError, SourceError
from blockframe.format import layout
from blockframe.format.manifest import MAX_MANIFEST, Manifest, Shard, Stripe, padded_size
from blockframe.format.members import FILE, PACK, Member, mode_bits

# BLAKE3 of no bytes: the content hash of an empty file, and of an empty pack.
EMPTY_HASH = bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")


@dataclass(frozen=True)
class ObjectMeta:
    """What a new object is, beyond its bytes (FORMAT.md §18): a file with the mtime and
    permission bits it had, or a pack with its table. The default records nothing (a
    version 1 or 2 manifest)."""

    kind: str = FILE
    mtime_ns: int | None = None
    mode: int | None = None
    members: tuple[Member, ...] = ()

    @staticmethod
    def of_file(st: os.stat_result) -> ObjectMeta:
        """A file's metadata as ``stat`` gave it."""
        return ObjectMeta(FILE, st.st_mtime_ns, mode_bits(st.st_mode))


# What an object is written from: one file, or the member files of a pack (path, length),
# whose concatenation is the object's bytes.
Source = Path | Sequence[tuple[str, int]]


def source_path(source: Source) -> Path:
    """The file named in messages about ``source`` (a pack: its first member)."""
    if isinstance(source, Path):
        return source
    return Path(source[0][0]) if source else Path("(empty pack)")


@dataclass
class Staged:
    """An object written but not yet visible: what a backend's ``stage`` made and its
    ``publish`` makes visible (or :meth:`abandon` removes)."""

    name: str
    # What abandoning removes: staging directories not yet renamed into place.
    paths: list[Path]
    manifest: Manifest = field(init=False)
    member_hashes: list[bytes] = field(default_factory=list)
    # Volume archives: the staging directory of each volume, the volumes present.
    stages: dict[int, Path] = field(default_factory=dict)
    present: list[int] = field(default_factory=list)
    # Set once a bucket holds part of the object (its directory then names it).
    dirname: str | None = None

    def abandon(self) -> None:
        """Remove the local staging of an object that was not published (nothing once it
        was); what went up to a bucket stays marked ``.committing`` for health."""
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)
        self.paths.clear()


@contextlib.contextmanager
def abandoning(staged: Staged) -> Iterator[None]:
    """Abandon ``staged`` if the block fails."""
    try:
        yield
    except BaseException:
        staged.abandon()
        raise


def plan_object(size: int, storage: StorageConfig) -> tuple[int, list[layout.PlannedStripe]]:
    """Tier and stripes of a new object; an empty pack (size 0) is tier 0 without stripes
    (FORMAT.md §18.1)."""
    return layout.plan(size, storage) if size else (0, [])


def with_hashes(meta: ObjectMeta | None, member_hashes: list[bytes]) -> ObjectMeta | None:
    """``meta`` with the content hash of each file of a pack's table filled in from what the
    core computed while writing it (in table order; none at all for an empty pack)."""
    if meta is None or meta.kind != PACK:
        return meta
    files = iter(member_hashes)
    members = tuple(
        m._replace(content_hash=next(files, EMPTY_HASH).hex()) if m.type == "file" else m
        for m in meta.members
    )
    return replace(meta, members=members)


def write_shards(
    source: Source,
    size: int,
    roots: list[tuple[str, bool]],
    chunk_size: int,
    stripes: list[layout.PlannedStripe],
    progress: Progress | None,
    placement: list[list[int]] | None = None,
) -> tuple[bytes, list[list[bytes]], list[bytes]]:
    """Have the core write the shards of ``source`` (nothing for an empty pack): its
    content hash, the chunk hashes of every shard, and (for a pack) the content hash of
    each member."""
    if not size:
        return EMPTY_HASH, [], []
    plan = [([(p, n) for p, n in st.data], list(st.parity)) for st in stripes]
    if isinstance(source, Path):
        content, hashes = _core.commit(str(source), roots, chunk_size, plan, progress, placement)
        return content, hashes, [content]
    return _core.commit(list(source), roots, chunk_size, plan, progress, placement)


@contextlib.contextmanager
def commit_errors(src: Path) -> Iterator[None]:
    """Turn what a commit of ``src`` can raise into errors with meaning for the user."""
    try:
        yield
    except _core.SourceChangedError as e:
        raise SourceError(str(e)) from None
    except _core.CoreError as e:
        raise ArchiveError(f"commit of {src} failed: {e}") from None
    except OSError as e:
        raise ArchiveError(f"commit of {src} failed: {e}") from None


def check_source(src: Path) -> int:
    """Size of a committable file, or a SourceError saying why it is not one."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise SourceError(f"{src}: no such file") from None
    except OSError as e:
        raise SourceError(f"{src}: cannot read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{src}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{src}: not a regular file")
    if st.st_size == 0:
        raise SourceError(f"{src}: file is empty (nothing to archive)")
    try:
        with open(src, "rb"):
            pass
    except OSError as e:
        raise SourceError(f"{src}: cannot read: {e.strerror}") from None
    return st.st_size


# Bytes of manifest JSON per chunk hash (44 characters of base64 and a little slack) and
# per shard (its path, size and keys), for the estimate below.
_PER_CHUNK = 45
_PER_SHARD = 160


def check_manifest_fits(src: Path, size: int, storage: StorageConfig) -> None:
    """Refuse, before writing anything, a file whose manifest would exceed the 1 GiB every
    reader refuses to load (FORMAT.md 10.6)."""
    _, stripes = layout.plan(size, storage)
    chunk = storage.chunk_size
    chunks = shards = 0
    for st in stripes:
        padded = padded_size(n for _, n in st.data)
        chunks += sum(-(-n // chunk) for _, n in st.data) + len(st.parity) * -(-padded // chunk)
        shards += len(st.data) + len(st.parity)
    estimate = 4096 + chunks * _PER_CHUNK + shards * _PER_SHARD
    if estimate > MAX_MANIFEST:
        raise SourceError(
            f"{src}: too large for one object at chunk_size {chunk} (its manifest would "
            f"exceed {MAX_MANIFEST >> 30} GiB); use a larger [storage] chunk_size"
        )


def hash_file(path: Path) -> str:
    """BLAKE3 hex digest of a file's content."""
    try:
        return _core.hash_file(str(path)).hex()
    except _core.CoreError as e:
        raise SourceError(str(e)) from None


def build_manifest(
    name: str,
    size: int,
    tier: int,
    storage: StorageConfig,
    stripes: list[layout.PlannedStripe],
    content: bytes,
    hashes: list[list[bytes]],
    placement: list[list[int]] | None = None,
    meta: ObjectMeta | None = None,
) -> Manifest:
    """The manifest of a just-written object; ``placement`` (per stripe, the volume of
    each shard) makes it a volume archive's manifest, ``meta`` says what it is (a file
    with its mtime and mode, or a pack with its table: version 3 or 4)."""
    meta = meta or ObjectMeta()
    built = []
    for si, (st, shard_hashes) in enumerate(zip(stripes, hashes, strict=True)):
        k = len(st.data)
        vol = placement[si] if placement is not None else [0] * (k + len(st.parity))
        data = tuple(
            Shard(p, n, h, vol[i])
            for i, ((p, n), h) in enumerate(zip(st.data, shard_hashes[:k], strict=True))
        )
        padded = padded_size(n for _, n in st.data)
        parity = tuple(
            Shard(p, padded, h, vol[k + j])
            for j, (p, h) in enumerate(zip(st.parity, shard_hashes[k:], strict=True))
        )
        built.append(Stripe(data, parity))
    leaves = b"".join(h for shard_hashes in hashes for h in shard_hashes)
    return Manifest(
        name=name,
        id=content.hex()[:16],
        size=size,
        content_hash=content.hex(),
        tier=tier,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        chunk_size=storage.chunk_size,
        segment_size=storage.segment_size,
        block_segments=storage.block_segments,
        parity_shards=storage.parity_shards,
        stripes=tuple(built),
        merkle_root=_core.merkle_root(leaves).hex(),
        volumes=placement is not None,
        kind=meta.kind,
        mtime_ns=meta.mtime_ns,
        mode=meta.mode,
        members=meta.members,
    )
