"""The archive as a read-only directory tree, free of FUSE, WinFsp or HTTP types.

Object names become paths (``photos/2024/a.jpg`` -> ``/photos/2024/a.jpg``); every prefix
of a name is a directory. Reads are verified by the core and shards found bad on the way
are queued for repair on a background thread, so a reader never waits for a repair.
Errors are raised as :mod:`blockframe.errors` classes; each adapter maps them to its
platform's codes (errno, NTSTATUS, HTTP status).
"""

from __future__ import annotations

import itertools
import logging
import queue
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from blockframe import _core
from blockframe.archive import ArchivedObject, Entry, Index
from blockframe.errors import IsDirectoryError, NotDirectoryError, NotFoundError
from blockframe.format.names import normalize_path

log = logging.getLogger(__name__)

# Preferred I/O size reported to applications (st_blksize): large reads mean fewer
# round trips through the kernel, and a chunk is verified as a whole anyway.
BLKSIZE = 1 << 20


@dataclass(frozen=True)
class Stat:
    """What stat(2) reports for a path of the view."""

    is_dir: bool
    size: int
    mtime_ns: int
    nlink: int
    blksize: int = BLKSIZE

    @property
    def mode(self) -> int:
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | 0o444)


def _mtime_ns(entry: Entry) -> int:
    return int(datetime.fromisoformat(entry.manifest.created).timestamp() * 1_000_000_000)


class Source(Protocol):
    """What the view needs of an archive: a local :class:`blockframe.archive.Archive` or a
    :class:`blockframe.remote.RemoteArchive`."""

    @property
    def root(self) -> object: ...

    def scan(self) -> Index: ...

    def open_object(self, entry: Entry, cache: _core.Cache | None = None) -> ArchivedObject: ...


class ArchiveView:
    """A read-only tree over an archive's usable objects.

    ``cache_bytes`` bounds the shared cache of verified chunks. With ``repair`` (the
    default), shards found damaged by reads are rebuilt on disk in the background.
    """

    def __init__(self, archive: Source, cache_bytes: int = 256 << 20, repair: bool = True):
        self.archive = archive
        self.cache = _core.Cache(cache_bytes)
        self._files: dict[str, Entry] = {}
        self._dirs: dict[str, dict[str, bool]] = {"/": {}}
        self._objects: dict[str, ArchivedObject] = {}
        self._handles: dict[int, ArchivedObject] = {}
        self._next_handle = itertools.count(1)
        self._lock = threading.Lock()
        self._repairs: queue.Queue[ArchivedObject | None] = queue.Queue()
        self._queued: set[str] = set()
        self._worker: threading.Thread | None = None
        if repair:
            self._worker = threading.Thread(target=self._repair_loop, name="repair", daemon=True)
            self._worker.start()
        self.refresh()

    # -- tree -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the archive index (new commits appear, removed objects disappear)."""
        index = self.archive.scan()
        files: dict[str, Entry] = {}
        dirs: dict[str, dict[str, bool]] = {"/": {}}
        for name, entry in sorted(index.entries.items()):
            parts = name.split("/")
            parent = "/"
            for part in parts[:-1]:
                here = f"{parent.rstrip('/')}/{part}"
                dirs.setdefault(parent, {})[part] = True
                dirs.setdefault(here, {})
                parent = here
            dirs.setdefault(parent, {}).setdefault(parts[-1], False)
            files["/" + name] = entry
        for path in [p for p in files if p in dirs]:
            # "a" and "a/b" both committed: the directory wins so "a/b" stays reachable.
            log.warning("%s is both a file and a directory; the file is hidden", path)
            del files[path]
        for problem in index.problems:
            log.warning("skipped %s: %s", problem.path, problem.reason)
        with self._lock:
            self._files = files
            self._dirs = dirs
            self._objects = {p: o for p, o in self._objects.items() if files.get(p) is o.entry}

    def stat(self, path: str) -> Stat:
        path = normalize_path(path)
        entry = self._files.get(path)
        if entry is not None:
            return Stat(False, entry.manifest.size, _mtime_ns(entry), 1)
        children = self._dirs.get(path)
        if children is None:
            raise NotFoundError(f"{path}: no such file or directory")
        subdirs = sum(1 for is_dir in children.values() if is_dir)
        return Stat(True, 0, self._dir_mtime(path), 2 + subdirs)

    def _dir_mtime(self, path: str) -> int:
        prefix = "/" if path == "/" else path + "/"
        times = [_mtime_ns(e) for p, e in self._files.items() if p.startswith(prefix)]
        return max(times, default=0)

    def listdir(self, path: str) -> list[str]:
        path = normalize_path(path)
        children = self._dirs.get(path)
        if children is None:
            if path in self._files:
                raise NotDirectoryError(f"{path}: not a directory")
            raise NotFoundError(f"{path}: no such file or directory")
        return sorted(children)

    def totals(self) -> tuple[int, int]:
        """(number of files, total bytes)."""
        files = list(self._files.values())
        return len(files), sum(e.manifest.size for e in files)

    # -- files ----------------------------------------------------------------------------

    def _object(self, path: str) -> ArchivedObject:
        path = normalize_path(path)
        with self._lock:
            obj = self._objects.get(path)
            if obj is not None:
                return obj
            entry = self._files.get(path)
            if entry is None:
                if path in self._dirs:
                    raise IsDirectoryError(f"{path}: is a directory")
                raise NotFoundError(f"{path}: no such file or directory")
            obj = self.archive.open_object(entry, self.cache)
            self._objects[path] = obj
            return obj

    def open(self, path: str) -> int:
        """A handle for reading ``path``."""
        obj = self._object(path)
        handle = next(self._next_handle)
        self._handles[handle] = obj
        return handle

    def release(self, handle: int) -> None:
        self._handles.pop(handle, None)

    def _by_handle(self, handle: int) -> ArchivedObject:
        obj = self._handles.get(handle)
        if obj is None:
            raise NotFoundError(f"stale file handle {handle}")
        return obj

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Verified bytes of an open file (fewer at its end)."""
        obj = self._by_handle(handle)
        try:
            return obj.read(offset, size)
        finally:
            self._queue_repair(obj)

    def read_into(self, handle: int, offset: int, buffer: memoryview) -> int:
        """Fill ``buffer`` with verified bytes of an open file; returns how many."""
        obj = self._by_handle(handle)
        try:
            return obj.read_into(buffer, offset)
        finally:
            self._queue_repair(obj)

    def read_path(self, path: str, offset: int, size: int) -> bytes:
        """Verified bytes of ``path`` without an open handle (for the HTTP server)."""
        obj = self._object(path)
        try:
            return obj.read(offset, size)
        finally:
            self._queue_repair(obj)

    # -- repair ---------------------------------------------------------------------------

    def _queue_repair(self, obj: ArchivedObject) -> None:
        if not obj.damaged or self._worker is None:
            return
        key = obj.entry.path.name
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._repairs.put(obj)

    def _repair_loop(self) -> None:
        while True:
            obj = self._repairs.get()
            try:
                if obj is None:
                    return
                with self._lock:
                    self._queued.discard(obj.entry.path.name)
                _, failed = obj.repair()
                for problem in failed:
                    log.error("%s: cannot repair %s", obj.entry.name, problem)
            except Exception:
                log.exception("repair failed")
            finally:
                self._repairs.task_done()

    def wait_for_repairs(self) -> None:
        """Block until every queued repair has run (for tests and clean shutdown)."""
        self._repairs.join()

    def close(self) -> None:
        """Finish queued repairs and stop the repair thread."""
        if self._worker is not None:
            self._repairs.put(None)
            self._worker.join()
            self._worker = None
