"""The archive as a read-only directory tree, free of FUSE, WinFsp or HTTP types.

Object names become paths (``photos/2024/a.jpg`` -> ``/photos/2024/a.jpg``) of a
:class:`~blockframe.access.tree.NameTree`; every prefix of a name is a directory. Reads are
verified by the core and shards found bad on the way are queued for repair on a background
thread, so a reader never waits for a repair. Errors are raised as :mod:`blockframe.errors`
classes; each adapter maps them to its platform's codes (errno, NTSTATUS, HTTP status).
"""

from __future__ import annotations

import itertools
import logging
import queue
import stat
import threading
from dataclasses import dataclass
from typing import Protocol

from blockframe import _core
from blockframe.access.tree import NameTree
from blockframe.archive import ArchivedObject, Entry, Index
from blockframe.errors import IsDirectoryError, NotALinkError, NotDirectoryError, NotFoundError
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
    perm: int | None = None  # permission bits as committed (None: not recorded)
    is_link: bool = False

    @property
    def mode(self) -> int:
        """File type and permission bits, write bits cleared: the view is read-only."""
        if self.is_link:
            return stat.S_IFLNK | 0o777
        kind = stat.S_IFDIR if self.is_dir else stat.S_IFREG
        default = 0o555 if self.is_dir else 0o444
        perm = default if self.perm is None else self.perm & ~0o222
        return kind | perm


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
    ``index``: a scan of ``archive`` just made, to start from (else the view scans).
    """

    def __init__(
        self,
        archive: Source,
        cache_bytes: int = 256 << 20,
        repair: bool = True,
        index: Index | None = None,
    ) -> None:
        self.archive = archive
        self.cache = _core.Cache(cache_bytes)
        self.tree = NameTree()
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
        self.refresh(index)

    # -- tree -----------------------------------------------------------------------------

    def refresh(self, index: Index | None = None) -> NameTree:
        """Re-read the archive index, or take ``index``, a scan just made (new commits
        appear, removed objects disappear). Returns the new tree."""
        if index is None:
            index = self.archive.scan()
        tree = NameTree(index.entries, index.dirs, index.links)
        for name in tree.hidden:
            log.warning("/%s is both a file and a directory; the file is hidden", name)
        for problem in index.problems:
            log.warning("skipped %s: %s", problem.path, problem.reason)
        with self._lock:
            self.tree = tree
            self._objects = {p: o for p, o in self._objects.items() if tree.file(p) is o.entry}
        return tree

    def stat(self, path: str) -> Stat:
        tree = self.tree
        key = normalize_path(path)[1:]
        entry = tree.file(key)
        if entry is not None:
            return Stat(False, entry.size, entry.mtime_ns, 1, perm=entry.mode)
        link = tree.link(key)
        if link is not None:
            return Stat(False, len(link.target.encode()), link.mtime_ns, 1, is_link=True)
        directory = tree.directory(key)
        if directory is None:
            raise NotFoundError(f"/{key}: no such file or directory")
        return Stat(True, 0, directory.mtime_ns, 2 + directory.subdirs, perm=directory.mode)

    def readlink(self, path: str) -> str:
        """The text of the symbolic link at ``path`` (never resolved here)."""
        key = normalize_path(path)[1:]
        link = self.tree.link(key)
        if link is None:
            self.stat(path)  # NotFoundError when there is nothing at all
            raise NotALinkError(f"/{key}: not a symbolic link")
        return link.target

    def listdir(self, path: str) -> list[str]:
        tree = self.tree
        key = normalize_path(path)[1:]
        directory = tree.directory(key)
        if directory is None:
            if tree.file(key) is not None or tree.link(key) is not None:
                raise NotDirectoryError(f"/{key}: not a directory")
            raise NotFoundError(f"/{key}: no such file or directory")
        return list(directory.children)

    def totals(self) -> tuple[int, int]:
        """(number of files, total bytes)."""
        tree = self.tree
        return len(tree), tree.size

    # -- files ----------------------------------------------------------------------------

    def _object(self, path: str) -> ArchivedObject:
        key = normalize_path(path)[1:]
        with self._lock:
            obj = self._objects.get(key)
            if obj is not None:
                return obj
            entry = self.tree.file(key)
            if entry is None:
                if self.tree.directory(key) is not None:
                    raise IsDirectoryError(f"/{key}: is a directory")
                raise NotFoundError(f"/{key}: no such file or directory")
            obj = self.archive.open_object(entry, self.cache)
            self._objects[key] = obj
            return obj

    def open(self, path: str) -> int:
        """A handle for reading ``path``."""
        obj = self._object(path)
        handle = next(self._next_handle)
        self._handles[handle] = obj
        return handle

    def release(self, handle: int) -> None:
        self._handles.pop(handle, None)

    def entry(self, handle: int) -> Entry:
        """The object an open handle reads."""
        return self._by_handle(handle).entry

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
