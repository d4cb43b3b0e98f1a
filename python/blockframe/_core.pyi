"""Type stubs for the Rust core (``rust/src/lib.rs``)."""

from collections.abc import Callable

from typing_extensions import Buffer

CHUNK_ALIGN: int

class CoreError(Exception): ...
class UnrecoverableError(CoreError): ...
class CancelledError(CoreError): ...
class SourceChangedError(CoreError): ...

# (stripe, shard index: data first then parity,
#  damage: "missing" | "short" | "oversized" | "unreadable" | "corrupt")
BadShard = tuple[int, int, str]

class Cache:
    """A bounded cache of verified chunks, shared by the readers it is given to."""

    def __init__(self, max_bytes: int) -> None: ...
    def stats(self) -> tuple[int, int, int, int, int]:
        """(entries, bytes held, byte budget, hits, misses)"""

class Object:
    """A verified reader over one committed object."""

    def __init__(
        self,
        root: str,
        chunk_size: int,
        stripes: list[tuple[list[tuple[str, int, bytes]], list[tuple[str, int, bytes]]]],
        cache: Cache | None = None,
        fetch: Callable[[int, int, int, int], bytes | memoryview | None] | None = None,
    ) -> None:
        """With ``fetch(stripe, shard, start, length)``, shard bytes come from that callable
        (bytes or a contiguous buffer, shorter when the shard is shorter; None when missing;
        raise when unreadable)
        instead of files under ``root``; they are verified all the same."""
    @property
    def size(self) -> int: ...
    def merkle_root(self) -> bytes: ...
    def read(self, offset: int, size: int) -> tuple[bytes, list[BadShard]]: ...
    def read_into(self, buffer: Buffer, offset: int) -> tuple[int, list[BadShard]]: ...
    def verify_shard(self, stripe: int, shard: int) -> tuple[list[int], str | None]: ...
    def repair_shard(self, stripe: int, shard: int) -> tuple[int, list[BadShard]]: ...

def commit(
    source: str,
    root: str,
    chunk_size: int,
    stripes: list[tuple[list[tuple[str, int]], list[str]]],
    progress: object | None = None,
) -> tuple[bytes, list[list[bytes]]]: ...
def merkle_root(leaves: bytes) -> bytes: ...
def blake3(data: bytes) -> bytes: ...
def hash_file(path: str) -> bytes: ...
