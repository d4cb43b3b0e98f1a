"""An archive whose objects are spread over volumes (directories and S3 buckets).

Commit order (FORMAT.md, "Volume archives"): the core writes the shards into a staging
directory on each local volume (and into a local temporary directory for each S3 volume);
each object directory first gets a ``.committing`` marker, then its shards (local: the
staging directory is renamed into place; S3: uploaded); only when every shard of every
volume is in place are the manifests written, on every volume, and then the markers
removed. An object is published once a volume holds a manifest and no marker, so a crash
leaves either nothing visible (marked directories that ``health`` removes, or finishes
when every volume already holds the manifests) or a complete object.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from blockframe import _core
from blockframe.archive.commit import (
    ObjectMeta,
    Progress,
    Source,
    Staged,
    abandoning,
    build_manifest,
    commit_errors,
    hash_file,
    plan_object,
    source_path,
    with_hashes,
    write_shards,
)
from blockframe.archive.directory import STAGING, Only, discard_dir, list_dir
from blockframe.archive.entry import Entry, Listing, accept
from blockframe.config import StorageConfig
from blockframe.errors import ArchiveError, ConflictError, SourceError
from blockframe.format import layout
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, Manifest
from blockframe.format.names import dirname_for
from blockframe.storage.local import fsync_dir, write_new
from blockframe.storage.lock import bucket_lock, commit_lock
from blockframe.storage.volumes import REMOVING, VolumeSet, adapted_storage, place
from blockframe.testhook import crash_in_progress, crash_point

log = logging.getLogger(__name__)

UPLOADS = 8  # shard files uploaded to a bucket at once


class VolumeBackend:
    """The objects of an archive spread over ``volumes``."""

    def __init__(self, volumes: VolumeSet) -> None:
        self.volumes = volumes
        first_local = next(
            (p for _, v in volumes.present_volumes() if (p := v.local_path()) is not None), None
        )
        # Where objects are named in messages and local state may live; display uses
        # `location`.
        self.root = first_local or Path(volumes.location)

    @property
    def location(self) -> str:
        """How the archive is named in messages: every volume."""
        return self.volumes.location

    @property
    def state_root(self) -> Path:
        """The first present local volume; for an archive only in buckets, a per-archive
        directory in the user's cache (freshness is a local record, not archive data)."""
        for _, vol in self.volumes.present_volumes():
            local = vol.local_path()
            if local is not None:
                return local
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(cache) / "blockframe" / self.volumes.archive_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check(self) -> None:
        """Raise ArchiveError unless some volume is present."""
        if not self.volumes.present:
            raise ArchiveError(self.volumes.none_present())

    def listing(self, only: Only = None) -> Listing:
        """The entries of every present volume whose names pass ``only``, sorted out: an
        object directory on any volume is the object's (on another volume it may hold
        nothing recognisable: its only shard there and its manifest copies lost). Local
        volumes are sorted out like an archive directory; in a bucket every top-level name
        but the hidden ones is taken for an object. A volume that cannot be listed is
        named in ``unlisted``."""
        self.check()
        out = Listing()
        objects: set[str] = set()
        for _, vol in self.volumes.present_volumes():
            local = vol.local_path()
            if local is not None:
                try:
                    found = list_dir(local, local, only)
                except ArchiveError as e:
                    out.unlisted.append(str(e))
                    continue
                out.roots.append(local)
                objects.update(found.objects)
                out.strays += found.strays
                out.leftovers += found.leftovers
                continue
            try:
                names = vol.listdir()
            except OSError as e:
                out.unlisted.append(f"{vol.location}: cannot list volume: {e}")
                continue
            objects.update(n for n in names if not n.startswith(".") and (only is None or only(n)))
        out.strays = [s for s in out.strays if s.name not in objects]
        out.objects = sorted(objects)
        return out

    def peek(self, dirname: str) -> Manifest:
        """The manifest of object directory ``dirname``, changing and checking nothing."""
        return self.volumes.load_manifest(dirname, "none").manifest

    def load(self, dirname: str) -> Entry | None:
        """The entry of object directory ``dirname``, from the first good manifest copy."""
        loaded = self.volumes.load_manifest(dirname)
        m = loaded.manifest
        accept(dirname, m, loaded.problems, loaded.repaired)
        return Entry(m.name, self._path(dirname), m, loaded.repaired, self.volumes)

    def _path(self, dirname: str) -> Path:
        return self.root / dirname

    def exists(self) -> bool:
        return bool(self.volumes.present)

    # -- commit ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create (a new archive) and label the volumes, and their staging directories."""
        vs = self.volumes
        if not vs.labelled:
            # A new archive: its volumes are created. Once labelled, an absent volume is a
            # lost one and is never recreated behind the user's back.
            for i, vol in sorted(vs.slots.items()):
                try:
                    local = vol.local_path()
                    if local is not None:
                        local.mkdir(parents=True, exist_ok=True)
                    else:
                        create = getattr(vol, "create_bucket", None)
                        if create is not None:
                            create()
                except OSError as e:
                    raise ArchiveError(f"{vol.location}: cannot create volume: {e}") from None
                vs.present.add(i)
        if not vs.present:
            raise ArchiveError(self.volumes.none_present())
        for _, vol in vs.present_volumes():
            if vol.is_local:
                path = vol.local_path()
                assert path is not None
                try:
                    (path / STAGING).mkdir(exist_ok=True)
                except OSError as e:
                    raise ArchiveError(f"{vol.location}: cannot write: {e.strerror}") from None
        absent = sorted(set(vs.slots) - vs.present)
        if absent:
            log.warning(
                "volumes %s are absent: new objects are spread over the %d present ones",
                ", ".join(vs.slots[i].location for i in absent),
                len(vs.present),
            )
        vs.label_all()

    def stage(
        self,
        source: Source,
        size: int,
        name: str,
        storage: StorageConfig,
        progress: Progress | None,
        meta: ObjectMeta | None = None,
    ) -> Staged:
        """Write the shards of ``source`` as an object called ``name`` (see the module's
        commit order): into staging on local volumes; into buckets, under their markers."""
        vs = self.volumes
        present = sorted(vs.present)
        storage = adapted_storage(storage, len(present))
        tier, stripes = plan_object(size, storage)
        placement = [
            place(si, len(st.data) + len(st.parity), present) for si, st in enumerate(stripes)
        ]
        stage_id = uuid.uuid4().hex
        roots: list[tuple[str, bool]] = []
        root_of: dict[int, int] = {}
        staged = Staged(name, [], present=present)
        buckets = [i for i in present if not vs.slots[i].is_local]
        uploader: _Uploader | None = None
        src = source_path(source)
        with commit_errors(src), abandoning(staged):
            if buckets:
                # Shards go up while later stripes are still being encoded, so their key
                # (the object id, from the content hash) is needed before the commit.
                expected = hash_file(src) if isinstance(source, Path) else _hash_members(source)
                staged.dirname = dirname_for(name, expected[:16])
                self._check_free(staged.dirname, present)
                for i in buckets:
                    vs.slots[i].write(f"{staged.dirname}/{COMMITTING}", b"")
                uploader = _Uploader(vs, staged.dirname, stripes, placement, staged.stages)
            for i in present:
                local = vs.slots[i].local_path()
                if local is not None:
                    stage = local / STAGING / stage_id
                    stage.mkdir()
                else:
                    # Shards bound for a bucket are staged in local temporary space (not
                    # synced: the bucket makes them durable).
                    stage = Path(tempfile.mkdtemp(prefix="blockframe-s3-"))
                staged.stages[i] = stage
                staged.paths.append(stage)
                root_of[i] = len(roots)
                roots.append((str(stage), local is not None))
            try:
                content, hashes, staged.member_hashes = write_shards(
                    source,
                    size,
                    roots,
                    storage.chunk_size,
                    stripes,
                    crash_in_progress(
                        "commit:writing", _both(progress, uploader.progress if uploader else None)
                    ),
                    [[root_of[v] for v in pl] for pl in placement],
                )
                staged.manifest = build_manifest(
                    name,
                    size,
                    tier,
                    storage,
                    stripes,
                    content,
                    hashes,
                    placement,
                    with_hashes(meta, staged.member_hashes),
                )
                if uploader is not None:
                    if content.hex() != expected:
                        raise SourceError(f"{src}: the file changed while it was committed")
                    uploader.finish()
            except BaseException:
                if uploader is not None:
                    uploader.abandon()
                raise
            # Bucket shards are in place now; their local copies are not needed.
            for i in buckets:
                shutil.rmtree(staged.stages.pop(i), ignore_errors=True)
        return staged

    def publish(self, staged: Staged) -> Entry:
        """Place the staged shards under their markers, write the manifests on every volume,
        then delete the markers: the first deletion publishes the object (FORMAT.md §17)."""
        vs, manifest, present = self.volumes, staged.manifest, staged.present
        dirname = dirname_for(staged.name, manifest.id)
        if staged.dirname is None:
            self._check_free(dirname, present)
        self._place(dirname, staged.stages)
        staged.paths.clear()
        failed = []
        for i in present:
            failed += vs.write_manifest(dirname, manifest, only=i)
            crash_point("volume-commit:manifests")
        if len(failed) == 2 * len(present):
            raise ArchiveError(
                f"commit of {staged.name}: no manifest could be written: {failed[0]}"
            )
        for i in present:
            with contextlib.suppress(OSError):
                vs.slots[i].remove(f"{dirname}/{COMMITTING}")
            crash_point("volume-commit:marker-removed")
        for f in failed:
            log.warning("%s: %s (health will restore it)", dirname, f)
        return Entry(staged.name, self._path(dirname), manifest, (), vs)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The commit lock of every present volume, in index order: a local volume's
        flock, a bucket's lock object made by a conditional put."""
        with contextlib.ExitStack() as stack:
            for _, vol in self.volumes.present_volumes():
                local = vol.local_path()
                if local is not None:
                    stack.enter_context(commit_lock(local))
                else:
                    try:
                        stack.enter_context(bucket_lock(vol))
                    except OSError as e:
                        raise ArchiveError(
                            f"{vol.location}: cannot take the commit lock: {e}"
                        ) from None
            yield

    def _check_free(self, dirname: str, present: list[int]) -> None:
        for i in present:
            vol = self.volumes.slots[i]
            local = vol.local_path(dirname)
            if vol.size(f"{dirname}/{MANIFEST}") is not None or (local and local.exists()):
                raise ConflictError(
                    f"{dirname} already exists on {vol.location} but is not a usable "
                    "object (run `blockframe health`)"
                )

    def _place(self, dirname: str, stages: dict[int, Path]) -> None:
        """Move the staged shards of every local volume into ``dirname``, each directory
        marked as committing first, so nothing becomes visible before the manifests."""
        for i, stage in stages.items():
            local = self.volumes.slots[i].local_path()
            if local is not None:
                write_new(stage / COMMITTING, b"")
                os.rename(stage, local / dirname)
                fsync_dir(local)
                crash_point("volume-commit:placed")

    def discard(self, entry: Entry) -> None:
        """Remove an object from every volume: marked as a removal first (it is then
        unpublished), manifests next, shards last; an interruption leaves marked
        directories that health removes."""
        dirname = entry.dirname
        present = self.volumes.present_volumes()
        for _, vol in present:
            with contextlib.suppress(OSError):
                if vol.listdir(dirname):
                    vol.write(f"{dirname}/{COMMITTING}", REMOVING)
            crash_point("volume-discard:marked")
        for _, vol in present:
            for copy in (MANIFEST, REPLICA):
                with contextlib.suppress(OSError):
                    vol.remove(f"{dirname}/{copy}")
        for _, vol in present:
            local = vol.local_path()
            try:
                if local is not None and (local / dirname).exists():
                    discard_dir(local, local / dirname)
                elif local is None:
                    vol.remove_tree(dirname)
            except OSError as e:
                log.warning("%s: cannot remove %s: %s", vol.location, dirname, e)


class _Uploader:
    """Uploads the shards bound for buckets as soon as the core has written their stripe
    (it reports source bytes done; a stripe is complete once they pass its end)."""

    def __init__(
        self,
        vs: VolumeSet,
        dirname: str,
        stripes: list[layout.PlannedStripe],
        placement: list[list[int]],
        stages: dict[int, Path],
    ) -> None:
        self.vs, self.dirname, self.stripes = vs, dirname, stripes
        self.placement, self.stages = placement, stages
        self.ends = list(itertools.accumulate(sum(n for _, n in st.data) for st in stripes))
        self.next = 0
        self.pool = ThreadPoolExecutor(UPLOADS, thread_name_prefix="upload")
        self.futures: list[Future[None]] = []

    def progress(self, done: int) -> None:
        while self.next < len(self.stripes) and done >= self.ends[self.next]:
            self._submit(self.next)
            self.next += 1
        for f in self.futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def _submit(self, si: int) -> None:
        st = self.stripes[si]
        paths = [p for p, _ in st.data] + list(st.parity)
        for rel, v in zip(paths, self.placement[si], strict=True):
            vol = self.vs.slots[v]
            if not vol.is_local:
                local = self.stages[v] / rel
                self.futures.append(self.pool.submit(vol.upload, f"{self.dirname}/{rel}", local))

    def finish(self) -> None:
        """Upload what is left and wait for every upload."""
        while self.next < len(self.stripes):
            self._submit(self.next)
            self.next += 1
        try:
            for f in self.futures:
                f.result()
        finally:
            self.pool.shutdown()

    def abandon(self) -> None:
        """Stop uploading; what went up stays marked ``.committing`` for health."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _both(
    a: Callable[[int], None] | None, b: Callable[[int], None] | None
) -> Callable[[int], None] | None:
    if a is None or b is None:
        return a or b

    def call(done: int) -> None:
        a(done)
        b(done)

    return call


def _hash_members(members: Sequence[tuple[str, int]]) -> str:
    """BLAKE3 hex digest of a pack's bytes, the concatenation of ``members``, read piece by
    piece (a pack may be as large as a block)."""
    try:
        return _core.hash_file([path for path, _ in members]).hex()
    except _core.CoreError as e:
        raise SourceError(str(e)) from None
