"""The client side of ``blockframe serve``: an archive read over HTTP.

Manifests are fetched and fully validated (checksum, Merkle root) on the client; shard
ranges are fetched raw and verified by the same Rust reader as local objects, which rebuilds
a range from other shards (remote parity included) when bytes fail verification. The server
is never trusted with an unverified byte. Sequential reads fetch ahead, several requests in
flight; a server that stops answering makes reads fail fast (EIO at the mount) instead of
hanging.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from blockframe import _core
from blockframe.archive.entry import Entry, Index, Problem
from blockframe.archive.reader import ArchivedObject
from blockframe.config import TOKEN_ENV, token_from
from blockframe.errors import ArchiveError, ManifestError, NotFoundError, UsageError
from blockframe.format.manifest import MAX_MANIFEST, parse
from blockframe.format.names import (
    dirname_for,
    display_name,
    validate_name,
)
from blockframe.format.pin import check_pin, pin_of
from blockframe.storage.http import BoundedClient, TooLarge
from blockframe.storage.readahead import FetchAhead

log = logging.getLogger(__name__)

DOWN_FOR = 2.0  # seconds a failed server is not asked again
LISTING_MAX = 256 << 20  # bytes of a listing: about a million objects


class RemoteError(OSError):
    """A shard range could not be fetched (the reader then tries other shards)."""


class RemoteArchive:
    """An archive served by ``blockframe serve`` at ``url``.

    Offers what :class:`blockframe.access.view.ArchiveView` needs from an archive:
    ``root``, ``scan()`` and ``open_object()``.

    Every request ends within ``deadline`` seconds and every body is capped (listings at
    :data:`LISTING_MAX`, manifests at :data:`blockframe.format.manifest.MAX_MANIFEST`,
    shard ranges at what was asked). Every byte read is verified against the manifests,
    but manifests come from the server: with ``pin`` (the archive's pin, which
    ``blockframe serve`` prints and ``blockframe list --json`` shows) the whole catalog
    must match it, so the server alone cannot forge an object, hide one or add one.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        deadline: float = 60.0,
        pin: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{url}: a remote archive URL starts with http:// or https://")
        self.root = url.rstrip("/")
        self.location = self.root
        self.pin = check_pin(pin) if pin else None
        token = token if token is not None else token_from("")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self._client = BoundedClient(self.root, headers, timeout=timeout, deadline=deadline)
        self._ahead = FetchAhead(
            lambda stream, start, length: self._get_range(*stream, start, length)
        )
        self._down_until = 0.0
        self._pinned: dict[str, Entry] | None = None

    # -- index ----------------------------------------------------------------------------

    def _get(self, path: str, limit: int) -> tuple[int, bytes]:
        try:
            status, body = self._client.get(path, limit)
        except (httpx.HTTPError, TooLarge) as e:
            raise ArchiveError(f"{self.root}: {type(e).__name__}: {e}") from None
        if status == 401:
            raise ArchiveError(f"{self.root}: unauthorized (set {TOKEN_ENV} or [server] token)")
        return status, body

    def _listing(self) -> list[str]:
        status, body = self._get("/api/files", LISTING_MAX)
        if status != 200:
            raise ArchiveError(f"{self.root}: listing failed with HTTP {status}")
        try:
            items = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ArchiveError(f"{self.root}: the listing is not JSON") from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ArchiveError(f"{self.root}: the listing is not a list of objects")
        return [i.get("name") for i in items]

    def scan(self) -> Index:
        """Fetch the listing and every manifest; objects whose manifest does not validate
        are skipped and reported, as for a local archive. With a pin, the catalog must
        match it exactly (ArchiveError otherwise)."""
        index = Index()
        for name in self._listing():
            if not isinstance(name, str) or not _valid(name):
                index.problems.append(Problem(display(name), "invalid object name (skipped)"))
                continue
            if name in index.entries:
                continue  # a file of a pack whose manifest came with an earlier name
            try:
                index.add(name, self._entry(name))
            except (ManifestError, ArchiveError, NotFoundError) as e:
                index.problems.append(Problem(name, str(e)))
        if self.pin is not None:
            self._check_pin(index)
        return index

    def _check_pin(self, index: Index) -> None:
        assert self.pin is not None
        got = pin_of(e.manifest for e in index.entries.values())
        if index.problems or got != self.pin:
            why = f"; {len(index.problems)} object(s) unusable" if index.problems else ""
            raise ArchiveError(
                f"{self.root}: the archive does not match its pin {self.pin[:16]}... "
                f"(it pins to {got[:16]}...{why}): refusing to trust it"
            )
        self._pinned = dict(index.entries)

    def _entry(self, name: str) -> Entry:
        status, body = self._get(f"/api/files/{quote(name)}/manifest", MAX_MANIFEST)
        if status == 404:
            raise NotFoundError(f"no object named {name!r} at {self.root}")
        if status != 200:
            raise ArchiveError(f"{name}: manifest request failed with HTTP {status}")
        manifest = parse(body, f"{self.root} {name}")
        entry = Entry(manifest.name, Path(dirname_for(manifest.name, manifest.id)), manifest)
        if manifest.is_pack:
            # A file of a pack: the pack's manifest, whose table must hold the file.
            for m in manifest.members:
                if m.name == name and m.type == "file":
                    return entry.member_entry(m)
        elif manifest.name == name:
            return entry
        raise ManifestError(f"{name}: the server sent the manifest of {manifest.name!r}")

    def get(self, name: str) -> Entry:
        """The object called ``name`` (with a pin: as the verified catalog has it)."""
        if self.pin is None:
            if not _valid(name):
                raise NotFoundError(f"no object named {name!r} at {self.root}")
            return self._entry(name)
        if self._pinned is None:
            self.scan()
        assert self._pinned is not None
        entry = self._pinned.get(name)
        if entry is None:
            raise NotFoundError(f"no object named {name!r} at {self.root}")
        return entry

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
                # A server that ignores Range answers 200 with the shard from its start.
                status, body = self._client.get(path, start + length, headers)
            except (httpx.HTTPError, TooLarge) as e:
                retry = not isinstance(e, httpx.TimeoutException | TooLarge)
                if attempt < self.retries and retry:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                self._down_until = time.monotonic() + DOWN_FOR
                log.error("%s: %s shard %d/%d: %s", self.root, name, stripe, shard, e)
                raise RemoteError(str(e)) from None
            if status == 206:
                return body[:length]
            if status == 200:
                return body[start : start + length]
            if status == 404:
                return None
            if status == 416:
                return b""
            if status >= 500 and attempt < self.retries:
                time.sleep(0.05 * (attempt + 1))
                continue
            log.error("%s: %s shard %d/%d: HTTP %d", self.root, name, stripe, shard, status)
            raise RemoteError(f"HTTP {status}")
        raise AssertionError("unreachable")


def _valid(name: str) -> bool:
    """A name the server may list: one a commit could have made and the mount can show."""
    try:
        validate_name(name)
    except UsageError:
        return False
    return True


def display(name: object) -> str:
    """A listed name (anything the server sent) for a message."""
    return display_name(name) if isinstance(name, str) else repr(name)
