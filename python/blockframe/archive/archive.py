"""The archive: names of committed objects over a storage backend (one directory, or
volumes), and what users do with them: scan, find, open, commit, restore.

The backend knows where an object's directory, manifests and shards are; the archive knows
what a name means: the rules for names, identical re-commits, refusing or performing a
replace, and which of two copies of a name wins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

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
    Index,
    Listing,
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
from blockframe.storage.volumes import VolumeSet
from blockframe.testhook import crash_point

# What the directory of every pack starts with (FORMAT.md §18).
PACKS = encode(PACK_PREFIX)

log = logging.getLogger(__name__)


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

    # Remove what stage wrote, unless it was published.
    def abandon(self, staged: Staged) -> None: ...

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
        """Load every object's manifest. Bad entries (stray files and directories, damaged
        manifests, names that do not match) are recorded in ``problems`` and skipped."""
        # Strays are loaded too, so that each is reported with what is wrong with it.
        return self._index(self._listing().top())

    def _listing(self, only: Callable[[str], bool] | None = None) -> Listing:
        listing = self.backend.listing(only)
        for why in listing.unlisted:
            log.warning("%s", why)
        return listing

    def _index(self, dirnames: Iterable[str]) -> Index:
        index = Index()
        for dirname in dirnames:
            try:
                entry = self.backend.load(dirname)
            except (ManifestError, OSError) as e:
                index.problems.append(Problem(dirname, str(e)))
                continue
            index.add(dirname, entry)
        return index

    def find(self, name: str) -> Entry | None:
        """The file called ``name``, loading only the manifests of directories that could
        hold it: objects of that name, and packs (not the whole archive)."""
        prefix = dirname_prefix(name)

        def candidate(d: str) -> bool:
            return d.startswith(PACKS) or (d.startswith(prefix) and len(d) == len(prefix) + ID_LEN)

        return self._index(self._listing(candidate).objects).entries.get(name)

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
            self.backend.abandon(staged)

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
        """Commit every regular file under ``directory`` as ``<dir>/<relative path>``.

        Returns the results and the per-file failures (other files still go in)."""
        top = Path(directory)
        if not top.is_dir():
            raise SourceError(f"{top}: not a directory")
        base = top.resolve().name
        results: list[CommitResult] = []
        failures: list[tuple[str, BlockFrameError]] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for fname in sorted(filenames):
                path = Path(dirpath) / fname
                rel = path.relative_to(top).as_posix()
                name = f"{base}/{rel}"
                try:
                    if path.is_symlink():
                        raise SourceError(f"{path}: symbolic link skipped")
                    cb = progress(name, path.stat().st_size) if progress else None
                    results.append(self.commit(path, name, replace, cb))
                except BlockFrameError as e:
                    failures.append((name, e))
        return results, failures

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
