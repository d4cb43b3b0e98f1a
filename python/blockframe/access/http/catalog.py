"""The archive as the server sees it: its usable objects, rescanned as commits come and
go, and what a path under ``/api/files/`` names (an object, its manifest or a shard)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from blockframe.access.view import ArchiveView
from blockframe.archive import Archive, Entry, Index
from blockframe.errors import ArchiveError, NotFoundError
from blockframe.format.names import check_name

RESCAN_INTERVAL = 1.0  # seconds: how often a listing or an unknown name may rescan the archive
_SHARD_ROUTE = re.compile(r"(.+)/shards/(\d{1,9})/(\d{1,9})")


def _layout(index: Index) -> dict[str, str]:
    return {name: e.path.name for name, e in index.entries.items()}


class ArchiveChanged(ArchiveError):
    """An object was replaced between looking it up and opening it (a 503: retry)."""


@dataclass(frozen=True)
class Target:
    """What a path under ``/api/files/`` names."""

    kind: str  # "file", "manifest" or "shard"
    entry: Entry
    stripe: int = 0
    shard: int = 0


class Catalog:
    """The archive's servable objects: the files of the tree of the ArchiveView that reads
    them, less names no URL reaches (a backslash, which the view reads as "/").

    The index is rescanned at most once per :data:`RESCAN_INTERVAL` when a listing is
    asked for or an unknown name is looked up, so new commits appear and replaced
    objects are followed. A scan whose set of objects changed becomes the view's new
    tree, so the catalog and the view always see the same one, and everything listed can
    be read (a name that is also a directory of other names is not a file of the tree).
    """

    def __init__(self, archive: Archive, cache_bytes: int = 256 << 20) -> None:
        self.archive = archive
        self._lock = threading.Lock()
        index = self.archive.scan()
        self.view = ArchiveView(archive, cache_bytes=cache_bytes, index=index)
        self._adopt(index)

    def _adopt(self, index: Index) -> None:
        # The tree's files are in name order and servable names only, and so is this.
        self._entries = dict(self.view.tree.files)
        self._layout = _layout(index)
        self._index = index
        self.problems = len(index.problems)
        self._scanned = time.monotonic()

    def rescan(self, force: bool = False) -> None:
        """Rescan the archive unless that was done within :data:`RESCAN_INTERVAL`."""
        with self._lock:
            if force or time.monotonic() - self._scanned >= RESCAN_INTERVAL:
                index = self.archive.scan()
                if index is self._index:
                    # Nothing changed (the archive reused its last scan): nothing to redo.
                    self._scanned = time.monotonic()
                    return
                if _layout(index) != self._layout:
                    self.view.refresh(index)
                self._adopt(index)

    @property
    def count(self) -> int:
        """Objects known since the last scan (no rescan)."""
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """Every servable object, sorted by name (rescanning first if due)."""
        self.rescan()
        return list(self._entries.values())

    def find(self, name: str) -> Entry | None:
        entry = self._entries.get(name)
        if entry is None or (entry.volumes is None and not entry.path.is_dir()):
            self.rescan(force=entry is not None)
            entry = self._entries.get(name)
        return entry

    def resolve(self, rest: str) -> Target:
        """Map the part of a path after ``/api/files/`` to an object, its manifest or one
        of its shards. Object names win over the suffix routes."""
        check_name(rest)
        entry = self.find(rest)
        if entry is not None:
            return Target("file", entry)
        prefix, _, last = rest.rpartition("/")
        if prefix and last == "manifest" and (entry := self.find(prefix)) is not None:
            return Target("manifest", entry)
        m = _SHARD_ROUTE.fullmatch(rest)
        if m and (entry := self.find(m.group(1))) is not None:
            return Target("shard", entry, int(m.group(2)), int(m.group(3)))
        raise NotFoundError("no such object")

    def open(self, entry: Entry) -> int:
        """A view handle on exactly ``entry`` (the version whose size and hash the
        response headers announce), not on a newer object of the same name."""
        handle = self.view.open("/" + entry.name)
        if self.view.entry(handle).path != entry.path:
            self.view.release(handle)
            raise ArchiveChanged("the archive changed during the request; retry")
        return handle

    def scrub_results(self) -> dict[str, dict[str, Any]]:
        """The latest `blockframe health` outcome per object directory: {at, status,
        margin}."""
        from blockframe.health.state import State

        objects, _ = State(self.archive.state_root).load()
        return {d: f.last.to_dict() for d, f in objects.items() if f.last is not None}

    def last_scrub(self) -> str | None:
        """When ``blockframe health`` last verified an object of this archive, if ever."""
        from blockframe.health.state import State

        objects, _ = State(self.archive.state_root).load()
        times = [t for f in objects.values() for t in (f.verified, f.damaged) if t is not None]
        if not times:
            return None
        return datetime.fromtimestamp(max(times), UTC).isoformat(timespec="seconds")

    def close(self) -> None:
        self.view.close()
