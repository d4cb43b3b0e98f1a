"""Fetch-ahead for slow shard sources (a BlockFrame server, an S3 bucket): random reads are
fetched as asked; a reader that continues where it stopped is served from large blocks with
the next ones already in flight, so requests are few and large and the network never waits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

BLOCK = 4 << 20  # a sequential reader's shard bytes are fetched in blocks this large
AHEAD_BLOCKS = 3  # blocks kept in flight ahead of a sequential reader
MAX_BLOCKS = 16  # fetched blocks held at once (bounds memory at 64 MiB)


Stream = tuple[str, int, int]  # (object, stripe, shard) or any other key of one shard


class FetchAhead:
    """Shard ranges for the core from a slow source (``get_range(stream, start, length)``:
    bytes, shorter at the end, None when missing). Random reads are fetched as asked; a
    reader that continues where it stopped is served from whole blocks, with the next ones
    already in flight, so requests are few and large and the network never waits."""

    def __init__(
        self,
        get_range: Callable[[Stream, int, int], bytes | None],
        block: int = BLOCK,
        ahead: int = AHEAD_BLOCKS,
        held: int = MAX_BLOCKS,
    ) -> None:
        self._get_range = get_range
        self.block, self.ahead, self.held = block, ahead, held
        self._pool = ThreadPoolExecutor(max_workers=ahead + 1, thread_name_prefix="fetch")
        self._blocks: OrderedDict[tuple[Stream, int], Future[bytes | None]] = OrderedDict()
        self._last_end: dict[Stream, int] = {}
        self._lock = threading.Lock()

    def fetch(
        self, stream: Stream, start: int, length: int, size: int
    ) -> bytes | memoryview | None:
        """Bytes ``[start, start + length)`` of a shard of ``size`` bytes."""
        block = self.block
        first, last = start // block, (start + length - 1) // block
        with self._lock:
            sequential = self._last_end.get(stream) == start
            self._last_end[stream] = start + length
            fetched = (stream, first) in self._blocks
        if not (sequential or fetched):
            return self._get_range(stream, start, length)
        for b in range(last + 1, last + 1 + self.ahead):
            if b * block < size:
                self._block(stream, b, size)
        parts: list[memoryview] = []
        for b in range(first, last + 1):
            future = self._block(stream, b, size)
            try:
                data = future.result()
            except OSError:
                with self._lock:
                    if self._blocks.get((stream, b)) is future:
                        del self._blocks[(stream, b)]
                raise
            if data is None:
                return None
            lo = max(start, b * block) - b * block
            hi = min(start + length, (b + 1) * block) - b * block
            parts.append(memoryview(data)[lo:hi])
            if len(data) < hi:
                break
        # One part (the usual case) goes back as a view: the core copies it once.
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block(self, stream: Stream, b: int, size: int) -> Future[bytes | None]:
        """The (possibly still running) fetch of block ``b`` of a shard."""
        with self._lock:
            future = self._blocks.get((stream, b))
            if future is not None:
                self._blocks.move_to_end((stream, b))
                return future
            length = max(0, min(self.block, size - b * self.block))
            future = self._pool.submit(self._get_range, stream, b * self.block, length)
            self._blocks[(stream, b)] = future
            while len(self._blocks) > self.held:
                self._blocks.popitem(last=False)[1].cancel()
            return future

    def forget(self, stream: Stream) -> None:
        """Drop the fetched blocks of one shard (after it was rewritten)."""
        with self._lock:
            for key in [k for k in self._blocks if k[0] == stream]:
                del self._blocks[key]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
