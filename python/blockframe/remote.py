"""The client side of ``blockframe serve``: an archive read over HTTP.

Manifests are fetched and fully validated (checksum, Merkle root) on the client; shard
ranges are fetched raw and verified by the same Rust reader as local objects, which rebuilds
a range from other shards (remote parity included) when bytes fail verification. The server
is never trusted with an unverified byte. Sequential reads fetch ahead, several requests in
flight; a server that stops answering makes reads fail fast (EIO at the mount) instead of
hanging.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from blockframe import _core
from blockframe.archive import ArchivedObject, Entry, Index, Problem, dirname_for
from blockframe.errors import ArchiveError, ManifestError, NotFoundError, UsageError
from blockframe.manifest import parse

log = logging.getLogger(__name__)

TOKEN_ENV = "BLOCKFRAME_TOKEN"
BLOCK = 4 << 20  # a sequential reader's shard bytes are fetched in blocks this large
AHEAD_BLOCKS = 3  # blocks kept in flight ahead of a sequential reader
MAX_BLOCKS = 16  # fetched blocks held at once (bounds memory at 64 MiB)
DOWN_FOR = 2.0  # seconds a failed server is not asked again


class RemoteError(OSError):
    """A shard range could not be fetched (the reader then tries other shards)."""


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


class RemoteArchive:
    """An archive served by ``blockframe serve`` at ``url``.

    Offers what :class:`blockframe.mount.view.ArchiveView` needs from an archive:
    ``root``, ``scan()`` and ``open_object()``.
    """

    def __init__(
        self, url: str, token: str | None = None, timeout: float = 10.0, retries: int = 2
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{url}: a remote archive URL starts with http:// or https://")
        self.root = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self._client = httpx.Client(
            base_url=self.root,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self._ahead = FetchAhead(
            lambda stream, start, length: self._get_range(*stream, start, length)
        )
        self._down_until = 0.0

    # -- index ----------------------------------------------------------------------------

    def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._client.get(path, **kwargs)
        except httpx.HTTPError as e:
            raise ArchiveError(f"{self.root}: {type(e).__name__}: {e}") from None
        if r.status_code == 401:
            raise ArchiveError(f"{self.root}: unauthorized (set {TOKEN_ENV} or [server] token)")
        return r

    def scan(self) -> Index:
        """Fetch the listing and every manifest; objects whose manifest does not validate
        are skipped and reported, as for a local archive."""
        r = self._get("/api/files")
        if r.status_code != 200:
            raise ArchiveError(f"{self.root}: listing failed with HTTP {r.status_code}")
        index = Index()
        for item in r.json():
            name = str(item.get("name", ""))
            try:
                index.entries[name] = self._entry(name)
            except (ManifestError, ArchiveError, NotFoundError) as e:
                index.problems.append(Problem(name, str(e)))
        return index

    def _entry(self, name: str) -> Entry:
        r = self._get(f"/api/files/{quote(name)}/manifest")
        if r.status_code == 404:
            raise NotFoundError(f"no object named {name!r} at {self.root}")
        if r.status_code != 200:
            raise ArchiveError(f"{name}: manifest request failed with HTTP {r.status_code}")
        manifest = parse(r.content, f"{self.root} {name}")
        if manifest.name != name:
            raise ManifestError(f"{name}: the server sent the manifest of {manifest.name!r}")
        return Entry(name, Path(dirname_for(name, manifest.id)), manifest)

    def get(self, name: str) -> Entry:
        return self._entry(name)

    def open_object(self, entry: Entry, cache: _core.Cache | None = None) -> ArchivedObject:
        """Verified random access to a remote object."""
        name = entry.name
        sizes = [[s.size for s in st.shards] for st in entry.manifest.stripes]

        def fetch(stripe: int, shard: int, start: int, length: int) -> bytes | memoryview | None:
            return self._fetch(name, stripe, shard, start, length, sizes[stripe][shard])

        return ArchivedObject(entry, cache, fetch=fetch)

    def close(self) -> None:
        self._ahead.close()
        self._client.close()

    # -- shard ranges ---------------------------------------------------------------------

    def _fetch(
        self, name: str, stripe: int, shard: int, start: int, length: int, size: int
    ) -> bytes | memoryview | None:
        return self._ahead.fetch((name, stripe, shard), start, length, size)

    def _get_range(
        self, name: str, stripe: int, shard: int, start: int, length: int
    ) -> bytes | None:
        """Raw bytes of a shard range: shorter when the shard is, None when it is missing.
        Raises RemoteError when the server cannot be reached or answers oddly."""
        if time.monotonic() < self._down_until:
            raise RemoteError(f"{self.root}: server unreachable (retrying shortly)")
        path = f"/api/files/{quote(name)}/shards/{stripe}/{shard}"
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        for attempt in range(self.retries + 1):
            try:
                r = self._client.get(path, headers=headers)
            except httpx.HTTPError as e:
                if attempt < self.retries and not isinstance(e, httpx.TimeoutException):
                    time.sleep(0.05 * (attempt + 1))
                    continue
                self._down_until = time.monotonic() + DOWN_FOR
                log.error("%s: %s shard %d/%d: %s", self.root, name, stripe, shard, e)
                raise RemoteError(str(e)) from None
            if r.status_code == 206:
                return r.content[:length]
            if r.status_code == 200:
                return r.content[start : start + length]
            if r.status_code == 404:
                return None
            if r.status_code == 416:
                return b""
            if r.status_code >= 500 and attempt < self.retries:
                time.sleep(0.05 * (attempt + 1))
                continue
            log.error("%s: %s shard %d/%d: HTTP %d", self.root, name, stripe, shard, r.status_code)
            raise RemoteError(f"HTTP {r.status_code}")
        raise AssertionError("unreachable")
