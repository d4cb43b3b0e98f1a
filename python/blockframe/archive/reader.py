"""Verified random access to one object: the core's reader over its shards (files of its
directory, of its volumes, or ranges fetched from elsewhere), the damaged shards found on
the way, and their repair."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

from blockframe import _core
from blockframe.archive.entry import Entry, Progress
from blockframe.errors import IntegrityError, UsageError
from blockframe.format.manifest import Manifest, Shard

log = logging.getLogger(__name__)

READ_PIECE = 4 * 2**20
PARITY_WORKERS = 3

Fetch = Callable[[int, int, int, int], bytes | memoryview | None]


class ArchivedObject:
    """Verified random access to one file (every byte returned matches the manifest): an
    object, or a file of a pack, which is a window onto the pack's bytes.

    Shards found bad during reads are remembered in :attr:`damaged`; :meth:`repair` rebuilds
    them on disk. Both are counted in :mod:`blockframe.metrics`.
    """

    def __init__(
        self,
        entry: Entry,
        cache: _core.Cache | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self.entry = entry
        # An empty pack has no stripes and nothing to read.
        self._core = core_object(entry, cache, fetch) if entry.manifest.stripes else None
        self.damaged: dict[tuple[int, int], str] = {}
        self._start = entry.offset

    def window(self, entry: Entry) -> ArchivedObject:
        """Another file of the same object (a file of this pack, or the pack itself),
        sharing this one's reader: opening many small files of one pack then costs no
        more than opening the pack once."""
        if entry.dirname != self.entry.dirname or entry.manifest.id != self.entry.manifest.id:
            raise UsageError(f"{entry.name} is not in {self.entry.dirname}")
        other = object.__new__(ArchivedObject)
        other.entry = entry
        other._core = self._core
        other.damaged = {}
        other._start = entry.offset
        return other

    @property
    def size(self) -> int:
        return self.entry.size

    def _span(self, offset: int, size: int) -> int:
        """How many of ``size`` bytes from ``offset`` lie inside the file."""
        return max(0, min(size, self.size - offset))

    def shard(self, stripe: int, shard: int) -> Shard:
        return self.entry.manifest.stripes[stripe].shards[shard]

    def _note(self, bad: list[tuple[int, int, str]]) -> None:
        for stripe, shard, damage in bad:
            if (stripe, shard) not in self.damaged:
                log.warning("%s: %s is %s", self.entry.name, self.shard(stripe, shard).path, damage)
                _metrics().reads_repaired.inc()
            self.damaged[(stripe, shard)] = damage

    def read(self, offset: int, size: int) -> bytes:
        """Verified bytes at ``offset`` (fewer at the end of the file)."""
        if offset < 0 or size < 0:
            raise UsageError("offset and size must not be negative")
        size = self._span(offset, size)
        if size == 0 or self._core is None:
            return b""
        try:
            data, bad = self._core.read(self._start + offset, size)
        except _core.UnrecoverableError as e:
            raise IntegrityError(f"{self.entry.name}: {e}") from None
        except _core.CoreError as e:
            raise IntegrityError(f"{self.entry.name}: {e}") from None
        self._note(bad)
        return data

    def read_into(self, buffer: memoryview, offset: int) -> int:
        """Fill ``buffer`` with verified bytes from ``offset``; returns how many (fewer at
        the end of the file). Nothing else may touch ``buffer`` during the call."""
        if offset < 0:
            raise UsageError("offset must not be negative")
        span = self._span(offset, len(buffer))
        if span == 0 or self._core is None:
            return 0
        if span < len(buffer):
            buffer = buffer[:span]
        try:
            n, bad = self._core.read_into(buffer, self._start + offset)
        except _core.CoreError as e:
            raise IntegrityError(f"{self.entry.name}: {e}") from None
        if bad:
            self._note(bad)
        return n

    def verify_parity(self) -> None:
        """Verify every parity shard, remembering bad ones in :attr:`damaged`. A few at a
        time: the core releases the GIL, and remote shards are latency-bound."""
        wanted = self.stripes()
        todo = [
            (si, len(st.data) + j)
            for si, st in enumerate(self.entry.manifest.stripes)
            if si in wanted
            for j in range(len(st.parity))
        ]
        if self._core is None:
            return
        core = self._core
        with ThreadPoolExecutor(PARITY_WORKERS, thread_name_prefix="parity") as pool:
            checks = list(pool.map(lambda t: core.verify_shard(*t)[1], todo))
        for (si, shard), damage in zip(todo, checks, strict=True):
            if damage is not None:
                self._note([(si, shard, damage)])

    def stripes(self) -> range:
        """The stripes holding the file's bytes: all of an object's, those a file of a
        pack overlaps (an empty file: none)."""
        if self.entry.member is None:
            return range(len(self.entry.manifest.stripes))
        start, end = self._start, self._start + self.size
        first = last = None
        at = 0
        for si, st in enumerate(self.entry.manifest.stripes):
            n = sum(s.size for s in st.data)
            if at < end and start < at + n:
                first = si if first is None else first
                last = si
            at += n
        return range(0) if first is None or last is None else range(first, last + 1)

    def repair(self) -> tuple[list[str], list[str]]:
        """Rebuild every shard in :attr:`damaged`; returns (repaired, failed) descriptions."""
        repaired: list[str] = []
        failed: list[str] = []
        pending = dict(self.damaged)
        vs = self.entry.volumes
        absent: set[int] = set()
        while pending:
            (stripe, shard), damage = pending.popitem()
            path = self.shard(stripe, shard).path
            volume = self.shard(stripe, shard).volume
            if vs is not None and volume not in vs.present:
                # A lost volume is health's to rebuild (onto a replacement or the
                # survivors); reads were served from the other volumes.
                absent.add(volume)
                continue
            if vs is not None:
                vs.prepare_object_dir(self.entry.dirname, volume)
            if self._core is None:
                break
            try:
                chunks, more = self._core.repair_shard(stripe, shard)
            except _core.CoreError as e:
                failed.append(f"{path} ({damage}): {e}")
                continue
            self.damaged.pop((stripe, shard), None)
            if chunks:
                log.warning("%s: repaired %s (%s)", self.entry.name, path, damage)
                _metrics().shards_repaired.inc()
                repaired.append(f"{path} ({damage})")
            for s2, sh2, d2 in more:
                if (s2, sh2) not in self.damaged:
                    self.damaged[(s2, sh2)] = d2
                    pending[(s2, sh2)] = d2
        for volume in sorted(absent):
            log.warning(
                "%s: volume %d is absent; `blockframe health` rebuilds its shards",
                self.entry.name,
                volume,
            )
        return repaired, failed

    def chunks(self, progress: Progress | None = None) -> Iterator[bytes]:
        """The whole file as verified pieces, in order."""
        done = 0
        while done < self.size:
            piece = self.read(done, READ_PIECE)
            done += len(piece)
            if progress:
                progress(done)
            yield piece


def core_object(
    entry: Entry,
    cache: _core.Cache | None = None,
    fetch: Fetch | None = None,
    manifest: Manifest | None = None,
) -> _core.Object:
    """The core's verified reader over ``entry`` (or over ``manifest``, a new placement of
    the same object): shard files of its directory, of its volumes, or ``fetch``."""
    m = manifest or entry.manifest
    vs = entry.volumes
    store = None
    root = str(entry.path)

    def shard(si: int, j: int) -> _core.ShardArg:
        s = m.stripes[si].shards[j]
        return (s.path, s.size, s.hashes)

    if vs is not None and fetch is None:
        if vs.all_local(m):

            def shard(si: int, j: int) -> _core.ShardArg:
                # Relative to the object's directory on the shard's volume.
                s = m.stripes[si].shards[j]
                return (s.path, s.size, s.hashes, vs.object_dir(entry.dirname, s.volume))
        else:
            fetch, store = vs.fetcher(entry.dirname, m)
    return _core.Object(
        root,
        m.chunk_size,
        [
            (
                [shard(si, j) for j in range(len(st.data))],
                [shard(si, len(st.data) + j) for j in range(len(st.parity))],
            )
            for si, st in enumerate(m.stripes)
        ],
        cache,
        fetch,
        store,
    )


def _metrics() -> ModuleType:
    """The counters, imported on the first damage found: prometheus_client costs every
    CLI start ~25 ms, and most commands never find damage."""
    from blockframe import metrics

    return metrics
