"""The Python API: :func:`open_archive` and the verified file objects it hands out.

::

    import blockframe

    with blockframe.open_archive("/data/archive") as archive:   # or "http://host:8080"
        for info in archive.list():
            print(info.name, info.size, info.tier)
        with archive.open("data.csv") as f:                       # io.BufferedReader
            df = pandas.read_csv(f)

A local archive (a directory) and a remote one (the URL of ``blockframe serve``) behave the
same for reading: every byte a file object returns has been verified against the manifest's
BLAKE3 chunk hashes on this machine, and chunks that fail are rebuilt from parity (the remote
server's parity for a remote archive). Reading a local archive remembers the damaged shards it
found and rewrites them on disk when the file is closed. ``commit`` and ``health`` need a
local archive.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from blockframe import _core
from blockframe.access.tree import NameTree
from blockframe.archive import Archive, ArchivedObject, Entry, Index, open_archive_at
from blockframe.config import StorageConfig
from blockframe.errors import IntegrityError, ReadOnlyError, UsageError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from blockframe.archive.remote import RemoteArchive
    from blockframe.health import HealthReport

__all__ = ["BlockFrameArchive", "FileInfo", "ObjectReader", "open_archive"]

log = logging.getLogger(__name__)

# Verified chunks shared by the file objects of one archive: small reads (a parquet footer,
# BufferedReader refills) then do not hash a whole chunk again.
CACHE_BYTES = 64 << 20
# At least this much is read per refill of the BufferedReader (and at least one chunk).
MIN_BUFFER = 256 << 10


@dataclass(frozen=True)
class FileInfo:
    """What the archive knows about one object (from its verified manifest)."""

    name: str
    size: int
    tier: int
    status: str
    id: str
    content_hash: str
    created: str
    mtime_ns: int = 0  # as committed (the commit time for objects that did not record it)
    mode: int = 0o644  # permission bits as committed

    @classmethod
    def from_entry(cls, entry: Entry) -> FileInfo:
        h = entry.head  # not the manifest: a listing reads no chunk hash
        return cls(
            entry.name,
            entry.size,
            h.tier,
            entry.status,
            h.id,
            entry.content_hash,
            h.created,
            entry.mtime_ns,
            entry.mode,
        )


class ObjectReader(io.RawIOBase):
    """A raw, read-only, seekable binary stream over one archived object.

    :meth:`readinto` has the core write verified bytes straight into the caller's buffer
    (no intermediate copy). Normally used through the :class:`io.BufferedReader` that
    :meth:`BlockFrameArchive.open` returns. Raises :class:`blockframe.errors.IntegrityError`
    (an ``Exception``, never returning unverified bytes) when damage exceeds parity.
    """

    def __init__(
        self,
        obj: ArchivedObject,
        on_close: Callable[[ArchivedObject], None] | None = None,
    ) -> None:
        super().__init__()
        self._obj = obj
        self._pos = 0
        self._on_close = on_close
        self.name = obj.entry.name
        self.mode = "rb"

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._obj.size

    @property
    def damaged(self) -> dict[tuple[int, int], str]:
        """Shards found damaged so far: ``(stripe, shard) -> damage``."""
        return self._obj.damaged

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def readinto(self, buffer: Buffer) -> int:
        self._check()
        with memoryview(buffer) as view, view.cast("B") as out:
            if self._pos >= self._obj.size or not len(out):
                return 0
            try:
                n = self._obj.read_into(out, self._pos)
            except IntegrityError:
                # Lost data somewhere in the range: return the verified bytes before the
                # first lost chunk (a short read), so the error is raised only by a read
                # that starts in a lost chunk, not by a buffer refill that reaches one.
                n = self._read_up_to_damage(out)
        self._pos += n
        return n

    def _read_up_to_damage(self, out: memoryview) -> int:
        chunk = self._obj.entry.manifest.chunk_size
        done = 0
        while done < len(out):
            start = self._pos + done
            step = min(len(out) - done, chunk - start % chunk)
            try:
                n = self._obj.read_into(out[done : done + step], start)
            except IntegrityError:
                if done:
                    return done
                raise
            if n == 0:
                break
            done += n
        return done

    def readall(self) -> bytes:
        self._check()
        remaining = max(0, self._obj.size - self._pos)
        out = bytearray(remaining)
        done = 0
        with memoryview(out) as view:
            while done < remaining:
                n = self._obj.read_into(view[done:], self._pos + done)
                if n == 0:
                    break
                done += n
        self._pos += done
        del out[done:]
        return bytes(out)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._obj.size + offset
        else:
            raise ValueError(f"invalid whence ({whence!r})")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._check()
        return self._pos

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._on_close is not None:
                self._on_close(self._obj)
        finally:
            super().close()


class BlockFrameArchive:
    """An archive opened with :func:`open_archive`: local (a directory) or remote (a URL).

    Use it as a context manager, or call :meth:`close`, to release the remote connection.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        token: str | None = None,
        storage: StorageConfig | None = None,
        pin: str | None = None,
    ) -> None:
        text = os.fspath(location)
        remote = text.startswith(("http://", "https://"))
        if pin is not None and not remote:
            raise UsageError("a pin is for a server URL, not a local archive")
        self.location = text
        self._local: Archive | None = None
        self._remote: RemoteArchive | None = None
        if remote:
            from blockframe.archive.remote import RemoteArchive

            self._remote = RemoteArchive(text, token=token, pin=pin)
        elif text.startswith("s3://"):
            self._local = open_archive_at([text], storage)
        else:
            self._local = Archive(text, storage)
        self._cache = _core.Cache(CACHE_BYTES)
        self._tree: tuple[Index, NameTree] | None = None

    @property
    def is_remote(self) -> bool:
        """True for an archive read from a ``blockframe serve`` URL."""
        return self._remote is not None

    def _index(self) -> Index:
        source = self._remote or self._local
        assert source is not None
        return source.scan()

    def _entries(self) -> dict[str, Entry]:
        return self._index().entries

    def _entry(self, name: str) -> Entry:
        if self._remote is not None:
            return self._remote.get(name)
        assert self._local is not None
        return self._local.get(name)

    def list(self) -> list[FileInfo]:
        """Every usable object, sorted by name (unusable entries are skipped)."""
        entries = self._entries()
        return [FileInfo.from_entry(entries[n]) for n in sorted(entries)]

    def tree(self) -> NameTree:
        """The usable objects as a directory tree (``a/b`` is the file ``b`` in the
        directory ``a``); scanned afresh at each call."""
        index = self._index()
        cached = self._tree
        if cached is not None and cached[0] is index:
            return cached[1]  # nothing changed since: the same scan
        tree = NameTree(index.entries, index.dirs, index.links)
        self._tree = (index, tree)
        return tree

    def stat(self, name: str) -> FileInfo:
        """The object called ``name``; :class:`blockframe.errors.NotFoundError` if none."""
        return FileInfo.from_entry(self._entry(name))

    def open(self, name: str, buffer_size: int | None = None) -> io.BufferedReader:
        """A verified, seekable, read-only binary file object for the object ``name``.

        ``buffer_size`` defaults to the larger of 256 KiB and the object's chunk size.
        """
        entry = self._entry(name)
        if self._remote is not None:
            obj = self._remote.open_object(entry, self._cache)
            raw = ObjectReader(obj)
        else:
            assert self._local is not None
            obj = self._local.open_object(entry, self._cache)
            raw = ObjectReader(obj, _repair)
        size = buffer_size or max(MIN_BUFFER, entry.head.chunk_size)
        return io.BufferedReader(raw, buffer_size=size)

    def commit(
        self, path: str | os.PathLike[str], name: str | None = None, *, replace: bool = False
    ) -> FileInfo:
        """Archive the regular file ``path`` as ``name`` (default: its base name).

        Identical content under an existing name is a no-op; different content raises
        :class:`blockframe.errors.ConflictError` unless ``replace``. Local archives only.
        """
        if self._local is None:
            raise ReadOnlyError(f"{self.location}: a remote archive is read-only (commit)")
        return FileInfo.from_entry(self._local.commit(path, name, replace).entry)

    def health(
        self,
        *,
        dry_run: bool = False,
        older_than: float | None = None,
        max_time: float | None = None,
    ) -> HealthReport:
        """Scrub the archive (see ``blockframe health``); local archives only.

        ``older_than`` and ``max_time`` are in seconds. Returns the report
        (``report.status``: ``healthy``, ``repaired`` or ``damaged``).
        """
        if self._local is None:
            raise UsageError(
                f"{self.location}: health scrubs a local archive; run it on the server"
            )
        from blockframe.health import Options, scrub

        options = Options(dry_run=dry_run, older_than=older_than, max_time=max_time)
        return scrub(self._local, options)

    def close(self) -> None:
        """Release the connection of a remote archive (file objects must be closed first)."""
        if self._remote is not None:
            self._remote.close()

    def __enter__(self) -> BlockFrameArchive:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"<BlockFrameArchive {self.location!r}>"


def _repair(obj: ArchivedObject) -> None:
    """Rewrite the shards of a local object that reads found damaged (on close)."""
    if not obj.damaged:
        return
    try:
        _, failed = obj.repair()
    except Exception:  # a failed repair must not make close() fail: the reads were fine
        log.exception("%s: repair failed", obj.entry.name)
        return
    for problem in failed:
        log.error("%s: cannot repair %s", obj.entry.name, problem)


def open_archive(
    location: str | os.PathLike[str],
    token: str | None = None,
    *,
    storage: StorageConfig | None = None,
    pin: str | None = None,
) -> BlockFrameArchive:
    """Open a local archive directory, or a remote one at the ``http(s)://`` URL of
    ``blockframe serve`` (``token``: its bearer token, default ``$BLOCKFRAME_TOKEN``).

    ``pin`` (remote only) is the archive's pin, as ``blockframe serve`` and ``list --json``
    print it: every listing and manifest the server sends must then match it, so the server
    alone cannot substitute other content (README, "Threat model"; FORMAT.md 10.7).

    ``storage`` is the geometry for new commits (default: the built-in one); existing
    objects keep their own. Nothing is read or created until a method is called.
    """
    return BlockFrameArchive(location, token, storage, pin)
