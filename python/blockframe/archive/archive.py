"""The archive: names of committed objects over a storage backend (one directory, or
volumes), and what users do with them: scan, find, open, commit, restore.

The backend knows where an object's directory, manifests and shards are; the archive knows
what a name means: the rules for names, identical re-commits, refusing or performing a
replace, and which of two copies of a name wins.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from blockframe import _core
from blockframe.archive.commit import (
    ObjectMeta,
    Source,
    Staged,
    check_manifest_fits,
    check_source,
    hash_file,
)
from blockframe.archive.directory import DirectoryBackend
from blockframe.archive.entry import (
    CommitResult,
    Entry,
    Head,
    Index,
    Listing,
    ManifestRef,
    Problem,
    Progress,
    RestoreReport,
)
from blockframe.archive.reader import ArchivedObject
from blockframe.config import Config, S3Config, StorageConfig, check_storage, is_url
from blockframe.errors import (
    BlockFrameError,
    ConflictError,
    ManifestError,
    NotFoundError,
    SourceError,
)
from blockframe.format.manifest import Manifest
from blockframe.format.members import PACK_PREFIX
from blockframe.format.names import ID_LEN, dirname_prefix, encode, validate_name
from blockframe.format.pin import pin_doc
from blockframe.storage.volumes import VolumeSet
from blockframe.testhook import crash_point

if TYPE_CHECKING:
    from blockframe.archive.catalog import Catalog

# What the directory of every pack starts with (FORMAT.md §18).
PACKS = encode(PACK_PREFIX)

log = logging.getLogger(__name__)

# Held while an archive opens its catalog (once per Archive).
_CATALOGS = threading.Lock()


class Backend(Protocol):
    """Where an archive's objects live: :class:`DirectoryBackend` or
    :class:`blockframe.archive.volumes.VolumeBackend`."""

    # The volumes of a spread archive, None for one directory.
    @property
    def volumes(self) -> VolumeSet | None: ...

    # A local directory naming the archive (for one directory: the archive itself).
    @property
    def root(self) -> Path: ...

    @property
    def location(self) -> str: ...

    @property
    def state_root(self) -> Path: ...

    def check(self) -> None: ...

    def exists(self) -> bool: ...

    # The entries whose names pass ``only`` (all when None), sorted out: objects, strays,
    # left-overs. The rules for what is an object directory live here and nowhere else.
    def listing(self, only: Callable[[str], bool] | None = None) -> Listing: ...

    # The entry of a top-level name (None: not a directory, in one directory), its manifest
    # checked and restored; ManifestError or OSError when it is not a usable object.
    def load(self, dirname: str) -> Entry | None: ...

    # The manifest of an object directory, changing and checking nothing.
    def peek(self, dirname: str) -> Manifest: ...

    def prepare(self) -> None: ...

    # Write an object (shards and manifests, durable) where nothing sees it yet.
    def stage(
        self,
        source: Source,
        size: int,
        name: str,
        storage: StorageConfig,
        progress: Progress | None,
        meta: ObjectMeta | None = None,
    ) -> Staged: ...

    # Make a staged object visible (under the commit lock, its name checked).
    def publish(self, staged: Staged) -> Entry: ...

    # The archive's commit lock.
    def locked(self) -> AbstractContextManager[None]: ...

    def discard(self, entry: Entry) -> None: ...


class Archive:
    """An archive. Read-only operations never create it; commit does.

    ``location``: an archive directory, or a backend (see :func:`open_location` for
    volumes and buckets). ``storage``: the geometry of new commits.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Backend,
        storage: StorageConfig | None = None,
    ) -> None:
        if isinstance(location, str | os.PathLike):
            # Absolute: a mount serves from libfuse threads that may not share our cwd.
            location = DirectoryBackend(location)
        self.backend: Backend = location
        self.storage = storage or StorageConfig()
        check_storage(self.storage)

    @property
    def root(self) -> Path:
        """The archive directory (for volumes: the first local volume)."""
        return self.backend.root

    @property
    def volumes(self) -> VolumeSet | None:
        """The volumes of a spread archive; None for an archive that is one directory."""
        return self.backend.volumes

    @property
    def location(self) -> str:
        """How the archive is named in messages."""
        return self.backend.location

    @property
    def state_root(self) -> Path:
        """The directory whose ``.blockframe/`` holds health's freshness state."""
        return self.backend.state_root

    # -- index ----------------------------------------------------------------------------

    def scan(self) -> Index:
        """Every object of the archive, from the catalog where its rows are current and
        from manifests where they are not (the catalog is then brought up to date). Bad
        entries (stray files and directories, damaged manifests, names that do not match)
        are recorded in ``problems`` and skipped."""
        # Strays are loaded too, so that each is reported with what is wrong with it.
        return self._index(self._listing().top(), self._catalog(create=True), whole=True)

    def _listing(self, only: Callable[[str], bool] | None = None) -> Listing:
        listing = self.backend.listing(only)
        for why in listing.unlisted:
            log.warning("%s", why)
        return listing

    def _catalog(self, create: bool) -> Catalog | None:
        """The archive's catalog, opened once (with ``create`` false: only if one exists)."""
        with _CATALOGS:
            cat: Catalog | None = getattr(self, "_cat", None)
            if cat is None:
                # Imported here: health and commit never list through the catalog, and
                # sqlite is a tenth of a cold start.
                from blockframe.archive.catalog import open_catalog

                cat = open_catalog(self.backend, create)
                if cat is not None:
                    self._cat = cat
            return cat

    def _index(
        self, dirnames: Iterable[str], cat: Catalog | None = None, whole: bool = False
    ) -> Index:
        """The index of ``dirnames`` (``whole``: every directory of the archive, so rows
        of any other directory are dropped from the catalog).

        Entries of the previous scan whose stamp is unchanged are reused as they are (the
        view keeps the readers it opened on them), and when nothing at all changed since
        the previous whole scan, so is its index: a rescan then costs a few ``lstat`` per
        object."""
        wanted = list(dirnames)
        if cat is None:
            return self._load_all(wanted)
        from blockframe.archive.catalog import stamp_of

        stamps = {d: stamp_of(self.backend, d) for d in wanted}
        memo: dict[str, tuple[str, Entry]] = getattr(self, "_memo", {})
        last: tuple[dict[str, str | None], Index] | None = getattr(self, "_last", None)
        if whole and last is not None and last[0] == stamps and None not in stamps.values():
            return last[1]
        missing = [d for d in wanted if not (d in memo and memo[d][0] == stamps[d])]
        rows = cat.rows(None if whole and len(missing) == len(wanted) else missing)
        index = Index()
        put: list[tuple[str, str, Head]] = []
        kept: set[str] = set()
        fresh: dict[str, tuple[str, Entry]] = {}
        for dirname in wanted:
            stamp = stamps[dirname]
            held = memo.get(dirname)
            if stamp is not None and held is not None and held[0] == stamp:
                kept.add(dirname)
                fresh[dirname] = held
                index.add(dirname, held[1])
                continue
            row = rows.get(dirname)
            if stamp is not None and row is not None and row[0] == stamp:
                kept.add(dirname)
                entry = self._lazy(dirname, row[1])
                fresh[dirname] = (stamp, entry)
                index.add(dirname, entry)
                continue
            try:
                loaded = self.backend.load(dirname)
            except (ManifestError, OSError) as e:
                index.problems.append(Problem(dirname, str(e)))
                continue
            if loaded is None:
                index.add(dirname, None)
                continue
            m = loaded.manifest
            head = Head.of(m, pin_doc(m))
            entry = Entry(
                loaded.name,
                loaded.path,
                None,
                loaded.manifest_repaired,
                loaded.volumes,
                head=head,
                ref=ManifestRef(m),
            )
            if entry.manifest_repaired:
                # The copies were just rewritten: the stamp is theirs now.
                stamp = stamps[dirname] = stamp_of(self.backend, dirname)
            if stamp is not None and not self._copy_lost(stamp):
                kept.add(dirname)
                put.append((dirname, stamp, head))
                fresh[dirname] = (stamp, entry)
            index.add(dirname, entry)
        known = set(rows) | (set(memo) & set(wanted) if not whole else set(memo))
        if put or known - kept:
            cat.update(put, [d for d in known if d not in kept])
        if whole:
            self._memo = fresh
            self._last = (stamps, index)
        return index

    def remember(self, entries: Iterable[Entry]) -> None:
        """Put objects just published by this process in the catalog (when it is open), so
        that the next listing reads their rows instead of parsing their manifests: after a
        folder commit of 100,000 files, that first listing would take twice as long. The
        stamp is taken now, from the published files, as a scan would."""
        cat = getattr(self, "_cat", None)
        if cat is None:
            return
        from blockframe.archive.catalog import stamp_of

        put: list[tuple[str, str, Head]] = []
        for e in entries:
            stamp = stamp_of(self.backend, e.dirname)
            if stamp is not None and not self._copy_lost(stamp):
                m = e.manifest
                put.append((e.dirname, stamp, Head.of(m, pin_doc(m))))
        cat.update(put, [])

    def _copy_lost(self, stamp: str) -> bool:
        """Whether a one-directory object's stamp shows a manifest copy missing or not a
        file (a read-only archive, where it could not be restored): such an object is
        read again, and its lost copy reported, at every listing, as without a catalog."""
        return self.backend.volumes is None and any(p in ("-", "x") for p in stamp.split("|"))

    def _load_all(self, dirnames: list[str]) -> Index:
        """The index of ``dirnames`` from their manifests (no catalog)."""
        index = Index()
        for dirname in dirnames:
            try:
                entry = self.backend.load(dirname)
            except (ManifestError, OSError) as e:
                index.problems.append(Problem(dirname, str(e)))
                continue
            index.add(dirname, entry)
        return index

    def _lazy(self, dirname: str, head: Head) -> Entry:
        """The entry of a catalog row: its manifest is read when its bytes are, and must
        still be the object the row describes."""
        backend = self.backend

        def load() -> Manifest:
            entry = backend.load(dirname)
            if entry is None or not Head.of(entry.manifest).same_object(head):
                raise ManifestError(f"{dirname}: changed since the archive was listed")
            return entry.manifest

        return Entry(
            head.name,
            backend.root / dirname,
            volumes=backend.volumes,
            head=head,
            ref=ManifestRef(load=load),
        )

    def find(self, name: str) -> Entry | None:
        """The file called ``name``, looking only at directories that could hold it:
        objects of that name, and packs (not the whole archive); from the catalog when
        there is one."""
        prefix = dirname_prefix(name)

        def candidate(d: str) -> bool:
            return d.startswith(PACKS) or (d.startswith(prefix) and len(d) == len(prefix) + ID_LEN)

        listing = self._listing(candidate)
        last: tuple[dict[str, str | None], Index] | None = getattr(self, "_last", None)
        if last is not None:
            from blockframe.archive.catalog import stamp_of

            # The last whole scan still holds: the same candidates, none changed.
            then = {d: s for d, s in last[0].items() if candidate(d)}
            if set(then) == set(listing.objects) and all(
                s is not None and stamp_of(self.backend, d) == s for d, s in then.items()
            ):
                return last[1].entries.get(name)
        return self._index(listing.objects, self._catalog(create=False)).entries.get(name)

    def get(self, name: str) -> Entry:
        """Like :meth:`find`, but a missing name is a NotFoundError."""
        entry = self.find(name)
        if entry is None:
            raise NotFoundError(f"no object named {name!r} in {self.location}")
        return entry

    def open(self, name: str) -> ArchivedObject:
        """Verified random access to the object called ``name``."""
        return ArchivedObject(self.get(name))

    def open_object(self, entry: Entry, cache: _core.Cache | None = None) -> ArchivedObject:
        """Verified random access to an entry of :meth:`scan`, sharing ``cache``."""
        return ArchivedObject(entry, cache)

    # -- commit ---------------------------------------------------------------------------

    def commit(
        self,
        source: str | os.PathLike[str],
        name: str | None = None,
        replace: bool = False,
        progress: Progress | None = None,
        meta: ObjectMeta | None = None,
    ) -> CommitResult:
        """Archive one regular file under ``name`` (default: its base name); ``meta``
        records what it is beyond its bytes (its mtime and mode).

        Identical content under an existing name is a no-op ("unchanged"); different
        content is refused unless ``replace``, in which case the new object is sealed
        first and the old one removed after. The name is checked again under the
        archive's commit lock before the new object is published, so concurrent commits
        of one name end as one committed and the others unchanged or refused.
        """
        src = Path(source)
        size = check_source(src)
        check_manifest_fits(src, size, self.storage)
        name = validate_name(name if name is not None else src.name)
        existing = self.find(name) if self.backend.exists() else None
        if existing is not None:
            same_size = existing.size == size
            if same_size and hash_file(src) == existing.content_hash:
                return CommitResult(name, "unchanged", existing)
            if not replace:
                raise ConflictError(
                    f"{name!r} is already archived with different content "
                    "(use --replace to replace it)"
                )
        self.backend.prepare()
        staged = self.backend.stage(src, size, name, self.storage, progress, meta)
        try:
            crash_point("commit:locking")
            with self.backend.locked():
                crash_point("commit:locked")
                return self._publish(staged, replace)
        finally:
            staged.abandon()

    def _publish(self, staged: Staged, replace: bool) -> CommitResult:
        """Publish ``staged`` under the commit lock, its name checked again: a commit of
        the same name that finished meanwhile makes this one unchanged or a conflict."""
        name, m = staged.name, staged.manifest
        existing = self.find(name)
        if existing is not None:
            if existing.size == m.size and existing.content_hash == m.content_hash:
                return CommitResult(name, "unchanged", existing)
            if not replace:
                raise ConflictError(
                    f"{name!r} is already archived with different content "
                    "(use --replace to replace it)"
                )
        entry = self.backend.publish(staged)
        if existing is None:
            return CommitResult(name, "committed", entry)
        if existing.member is None and existing.dirname != entry.dirname:
            self.backend.discard(existing)
        return CommitResult(name, "replaced", entry)

    def commit_tree(
        self,
        directory: str | os.PathLike[str],
        replace: bool = False,
        progress: Callable[[str, int], Progress | None] | None = None,
    ) -> tuple[list[CommitResult], list[tuple[str, BlockFrameError]]]:
        """Commit the folder ``directory`` as ``<basename>/<relative path>``, with its
        files' times and modes, its directories (empty ones too) and its symbolic links
        (never followed); small files go into packs (see :mod:`.group`).

        Returns the results and the per-file failures (other files still go in)."""
        from blockframe.archive.group import commit_folder

        top = Path(directory)
        if not top.is_dir():
            raise SourceError(f"{top}: not a directory")
        return commit_folder(self, top, replace, progress)

    # -- restore --------------------------------------------------------------------------

    def restore(
        self, name: str | Entry, out: BinaryIO, progress: Progress | None = None
    ) -> RestoreReport:
        """Write the verified bytes of ``name`` to ``out``; verify its parity too and
        repair every damaged shard found on the way. Raises IntegrityError (after writing
        nothing unverified) if damage exceeds what parity can rebuild."""
        obj = ArchivedObject(name if isinstance(name, Entry) else self.get(name))
        report = RestoreReport(obj.entry.name, obj.size)
        for piece in obj.chunks(progress):
            out.write(piece)
            crash_point("restore:writing")
        obj.verify_parity()
        report.damaged = sorted(
            f"{obj.shard(st, sh).path} ({d})" for (st, sh), d in obj.damaged.items()
        )
        report.repaired, report.unrepaired = obj.repair()
        return report


def open_archive_at(
    locations: Sequence[str],
    storage: StorageConfig | None = None,
    s3: S3Config | None = None,
) -> Archive:
    """An archive spread over ``locations`` (directories and ``s3://`` URLs)."""
    from blockframe.archive.volumes import VolumeBackend
    from blockframe.storage.volumes import open_volumes

    return Archive(VolumeBackend(open_volumes(locations, s3)), storage)


def open_location(location: str | None, cfg: Config) -> Archive:
    """The archive at ``location`` (a directory or an ``s3://`` URL) or, when None, the
    configured one: ``[archive] volumes``, else ``[archive] directory``."""
    if location and not is_url(location):
        return Archive(Path(location), cfg.storage)
    volumes = (location,) if location else cfg.archive_volumes
    if not volumes:
        return Archive(cfg.archive_directory, cfg.storage)
    return open_archive_at(volumes, cfg.storage, cfg.s3)
