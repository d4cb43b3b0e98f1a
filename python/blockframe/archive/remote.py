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
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from blockframe import _core
from blockframe.archive.entry import Entry, Index, Problem
from blockframe.archive.reader import ArchivedObject
from blockframe.config import TOKEN_ENV, token_from
from blockframe.errors import ArchiveError, ManifestError, NotFoundError, UsageError
from blockframe.format.manifest import parse
from blockframe.format.names import dirname_for
from blockframe.storage.readahead import FetchAhead

log = logging.getLogger(__name__)

DOWN_FOR = 2.0  # seconds a failed server is not asked again


class RemoteError(OSError):
    """A shard range could not be fetched (the reader then tries other shards)."""


class RemoteArchive:
    """An archive served by ``blockframe serve`` at ``url``.

    Offers what :class:`blockframe.access.view.ArchiveView` needs from an archive:
    ``root``, ``scan()`` and ``open_object()``.
    """

    def __init__(
        self, url: str, token: str | None = None, timeout: float = 10.0, retries: int = 2
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{url}: a remote archive URL starts with http:// or https://")
        self.root = url.rstrip("/")
        token = token if token is not None else token_from("")
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
