"""Type stubs for the Rust core (``rust/src/lib.rs``)."""

from collections.abc import Callable
from typing import overload

from typing_extensions import Buffer

CHUNK_ALIGN: int

class CoreError(Exception): ...
class UnrecoverableError(CoreError): ...
class CancelledError(CoreError): ...
class SourceChangedError(CoreError): ...

# (stripe, shard index: data first then parity,
#  damage: "missing" | "short" | "oversized" | "unreadable" | "corrupt")
BadShard = tuple[int, int, str]

# A shard: (path, size, concatenated 32-byte chunk hashes), or the same followed by the
# shard's own object directory (on another volume) that the path is relative to.
ShardArg = tuple[str, int, bytes] | tuple[str, int, bytes, str]

class Cache:
    """A bounded cache of verified chunks, shared by the readers it is given to. Chunks are
    keyed by their content (their hash), so every reader of an object, reopenings included,
    shares what another kept."""

    def __init__(self, max_bytes: int) -> None: ...
    def stats(self) -> tuple[int, int, int, int, int]:
        """(entries, bytes held, byte budget, hits, misses)"""

class Object:
    """A verified reader over one committed object."""

    def __init__(
        self,
        root: str,
        chunk_size: int,
        stripes: list[tuple[list[ShardArg], list[ShardArg]]],
        cache: Cache | None = None,
        fetch: Callable[[int, int, int, int], bytes | memoryview | None] | None = None,
        store: Callable[[int, int, bytes], object] | None = None,
    ) -> None:
        """Shard paths are relative to ``root``, or to the shard's own object directory when
        its tuple names one (a shard on another volume), or absolute. No link below that
        directory is followed: a link, FIFO or other non-file in place of a shard or of a
        directory on the way makes the shard unreadable, and repair replaces it with a real
        file (and real directories) inside the object. The object directory itself is never
        created: repairing an object whose directory is gone raises CoreError.

        With ``fetch(stripe, shard, start, length)``, shard bytes come from that callable
        (bytes or a contiguous buffer, shorter when the shard is shorter; None when missing;
        raise an Exception when unreadable) instead of files under ``root``; they are
        verified all the same. Whole-shard verification asks it for one byte past a shard's
        end to detect an oversized shard.

        ``store(stripe, shard, data)`` (only with ``fetch``; a local object is repaired in
        place) receives the complete, verified bytes of each repaired shard and should
        replace the shard with them atomically; an Exception from it fails the repair with
        a CoreError carrying its message.

        A BaseException that is not an Exception (KeyboardInterrupt, SystemExit) raised by
        ``fetch`` or ``store`` stops the read, verification or repair that called it and is
        re-raised from that method unchanged."""
    @property
    def size(self) -> int: ...
    def merkle_root(self) -> bytes: ...
    def read(self, offset: int, size: int) -> tuple[bytes, list[BadShard]]: ...
    def read_into(self, buffer: Buffer, offset: int) -> tuple[int, list[BadShard]]: ...
    def verify_shard(self, stripe: int, shard: int) -> tuple[list[int], str | None]:
        """(bad chunk indices, damage or None), for local and fetched objects alike."""
    def repair_shard(self, stripe: int, shard: int) -> tuple[int, list[BadShard]]:
        """Rebuild a damaged shard: (chunks rebuilt, other shards found bad). In place for a
        local object, through ``store`` for a fetched one (CoreError without a store)."""

# Per stripe: its data shards (path, length) in file order and its parity shard paths.
PlanArg = list[tuple[list[tuple[str, int]], list[str]]]

@overload
def commit(
    source: str,
    roots: list[tuple[str, bool]],
    chunk_size: int,
    stripes: PlanArg,
    progress: Callable[[int], object] | None = None,
    placement: list[list[int]] | None = None,
) -> tuple[bytes, list[list[bytes]]]:
    """Write the shards of the file ``source`` under ``roots``, a list of (directory,
    durable).

    ``stripes`` gives, per stripe, its data shards (path, length) in file order and its
    parity shard paths; paths are relative to their root. ``placement[stripe]`` gives the
    root index of each shard of that stripe, data then parity; None puts every shard under
    ``roots[0]``. Shards under a durable root are fsynced with the directories created for
    them; shards under a non-durable root (temporary files to upload elsewhere) are only
    written. ``progress(bytes_done)`` is called a few times a second; an exception from it
    (or Ctrl+C) cancels. Returns the BLAKE3 hash of the file and, per stripe, the
    concatenated chunk hashes of each shard (data then parity). Raises SourceChangedError
    when the file's length is not the plan's or the file changes during the commit."""

@overload
def commit(
    source: list[tuple[str, int]],
    roots: list[tuple[str, bool]],
    chunk_size: int,
    stripes: PlanArg,
    progress: Callable[[int], object] | None = None,
    placement: list[list[int]] | None = None,
) -> tuple[bytes, list[list[bytes]], list[bytes]]:
    """Write the shards of a pack: the concatenation of the member files ``source``, each
    (path, length) in order (zero lengths allowed), otherwise as for a single file. Returns
    also the BLAKE3 hash of each member, in order.

    Members are opened one after another as the commit reaches them (only a few are open
    at a time), never through a symbolic link in the last component of their path, and
    only if they are regular files (a FIFO is refused, not waited on). A member that is a
    link or not a regular file, is missing, does not have the length given, or changes
    (length, modification time, or replaced by another file) before it has been read
    raises SourceChangedError naming it. Lengths that do not add up to the plan's raise
    CoreError before anything is written. After an error, as after a file found changed,
    no stripe being written was synced, no directory was synced, and the caller removes
    the shards written (it commits into a staging directory)."""

def merkle_root(leaves: bytes) -> bytes: ...
def blake3(data: bytes) -> bytes: ...
def hash_file(path: str | list[str]) -> bytes:
    """BLAKE3 of a file's content, or of several files' concatenated (a pack's bytes),
    read in 1 MiB pieces."""

def prefetch(dir: str, budget: int, background: bool = True) -> int:
    """Ask the OS to read the files below object directory ``dir`` into its cache, up to
    ``budget`` bytes: files before subdirectories, names in natural order. Links and
    anything but regular files are skipped. In the background by default (returns 0 at
    once); with ``background=False`` returns the bytes hinted. Only a hint: Linux only,
    errors ignored."""
