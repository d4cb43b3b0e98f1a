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
from blockframe.archive.catalog import Catalog, open_cache_catalog
from blockframe.archive.entry import Entry, Head, Index, ManifestRef, Problem
from blockframe.archive.reader import ArchivedObject
from blockframe.config import TOKEN_ENV, token_from
from blockframe.errors import ArchiveError, ManifestError, NotFoundError, UsageError
from blockframe.format.manifest import MAX_MANIFEST, Manifest, parse
from blockframe.format.names import (
    dirname_for,
    display_name,
    validate_name,
)
from blockframe.format.pin import check_pin, pin_doc, pin_of_docs
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
        self._cat: Catalog | None = None

    # -- index ----------------------------------------------------------------------------

    def _get(self, path: str, limit: int) -> tuple[int, bytes]:
        try:
            status, body = self._client.get(path, limit)
        except (httpx.HTTPError, TooLarge) as e:
            raise ArchiveError(f"{self.root}: {type(e).__name__}: {e}") from None
        if status == 401:
            raise ArchiveError(f"{self.root}: unauthorized (set {TOKEN_ENV} or [server] token)")
        return status, body

    def _listing(self) -> list[dict[str, object]]:
        status, body = self._get("/api/files", LISTING_MAX)
        if status != 200:
            raise ArchiveError(f"{self.root}: listing failed with HTTP {status}")
        try:
            items = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ArchiveError(f"{self.root}: the listing is not JSON") from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ArchiveError(f"{self.root}: the listing is not a list of objects")
        return items

    def _catalog(self) -> Catalog:
        if self._cat is None:
            self._cat = open_cache_catalog(f"remote {self.root}")
        return self._cat

    def scan(self) -> Index:
        """Fetch the listing, and the manifest of every object the local cache of this
        server's catalog does not already describe as listed; objects whose manifest does
        not validate are skipped and reported, as for a local archive. Entries from the
        cache fetch their manifest when first read, and it must then be the object (and,
        with a pin, the very manifest) the cache described. With a pin, the catalog must
        match it exactly (ArchiveError otherwise)."""
        index = Index()
        cat = self._catalog()
        rows = cat.rows()
        put: list[tuple[str, str, Head]] = []
        kept: set[str] = set()
        for item in self._listing():
            name = item.get("name")
            if not isinstance(name, str) or not _valid(name):
                index.problems.append(Problem(display(name), "invalid object name (skipped)"))
                continue
            if name in index.entries:
                continue  # a file of a pack whose manifest came with an earlier name
            listed = _listed(name, item)
            row = rows.get(listed[0]) if listed is not None else None
            if (
                listed is not None
                and row is not None
                and row[0] == listed[1]
                and _agrees(row[1], name, item)
            ):
                kept.add(listed[0])
                index.add(name, self._lazy(name, listed[0], row[1]))
                continue
            try:
                entry = self._entry(name)
            except (ManifestError, ArchiveError, NotFoundError) as e:
                index.problems.append(Problem(name, str(e)))
                continue
            m = entry.manifest
            head = Head.of(m, pin_doc(m))
            index.add(name, Entry(m.name, entry.path, head=head, ref=ManifestRef(m)))
            if listed is not None and listed[0] == entry.dirname:
                kept.add(entry.dirname)
                put.append((entry.dirname, listed[1], head))
        if put or set(rows) - kept:
            cat.update(put, [d for d in rows if d not in kept])
        if self.pin is not None:
            self._check_pin(index)
        return index

    def _lazy(self, name: str, dirname: str, head: Head) -> Entry:
        """An object known from the cache: its manifest is fetched (by ``name``, one of
        its files) when its bytes are first read."""

        def load() -> Manifest:
            m = self._entry(name).manifest
            if not Head.of(m).same_object(head) or pin_doc(m) != head.pin:
                raise ManifestError(f"{name}: the server's manifest changed since it was listed")
            return m

        return Entry(head.name, Path(dirname), head=head, ref=ManifestRef(load=load))

    def _check_pin(self, index: Index) -> None:
        assert self.pin is not None
        docs: dict[str, str] = {}
        for e in index.entries.values():
            if e.head.name not in docs:
                docs[e.head.name] = e.pin_doc()
        got = pin_of_docs(docs)
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
        if self._cat is not None:
            self._cat.close()

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


def _listed(name: str, item: dict[str, object]) -> tuple[str, str] | None:
    """The directory a listed file is in and the stamp of what the listing says of it:
    a cached row of that directory with that stamp describes the same manifest. None when
    the item lacks what that needs (then its manifest is fetched)."""
    created, id_, pack = item.get("created"), item.get("id"), item.get("pack")
    if not isinstance(created, str) or not isinstance(id_, str):
        return None
    if pack is not None:
        return (pack, f"pack|{created}|{id_}") if isinstance(pack, str) and pack else None
    fields = [item.get(k) for k in ("content_hash", "size", "mtime_ns", "mode")]
    try:
        dirname = dirname_for(name, id_)
    except (UsageError, ValueError):
        return None
    return dirname, "file|" + "|".join(map(str, (created, id_, *fields)))


def _agrees(head: Head, name: str, item: dict[str, object]) -> bool:
    """Whether a cached head says of ``name`` what the listing item says."""
    said = (item.get("size"), item.get("content_hash"), item.get("mtime_ns"), item.get("mode"))
    if not head.is_pack:
        h = head
        mtime = h.mtime_ns if h.mtime_ns is not None else said[2]
        mode = h.mode if h.mode is not None else said[3]
        return head.name == name and (h.size, h.content_hash, mtime, mode) == said
    for m in head.members:
        if m.name == name:
            return m.type == "file" and (m.size, m.content_hash, m.mtime_ns, m.mode) == said
    return False


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
