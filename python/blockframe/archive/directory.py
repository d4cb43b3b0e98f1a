"""The backend of an archive that is one directory: every object is a directory
``<name>_<id>`` holding its manifests and all its shards.

Layout (see FORMAT.md)::

    <archive>/<name>_<id>/manifest.json, manifest.replica.json, shards...
    <archive>/.staging/<random>/      commits in progress (invisible until renamed)
    <archive>/.trash/<random>/        replaced objects on their way out

:func:`list_dir` sorts out the entries of such a directory (or of a local volume): which
are objects, which are strays, which are left-overs of ours. Every reader lists through it.

Commit order (DESIGN §5): shards are written and fsynced in a staging directory, the
manifest and replica are written and fsynced last, the directory is renamed into place and
the archive directory fsynced. A crash leaves either nothing visible or a complete object.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from blockframe.archive.commit import (
    ObjectMeta,
    Progress,
    Source,
    Staged,
    abandoning,
    build_manifest,
    commit_errors,
    plan_object,
    source_path,
    with_hashes,
    write_shards,
)
from blockframe.archive.entry import (
    Entry,
    FileKind,
    LeftoverEntry,
    Listing,
    StrayEntry,
    accept,
)
from blockframe.config import StorageConfig
from blockframe.errors import ArchiveError, ConflictError
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, Loaded, Manifest, load_from
from blockframe.format.names import dirname_for
from blockframe.storage.local import atomic_write, fsync_dir, write_new
from blockframe.storage.lock import commit_lock
from blockframe.testhook import crash_in_progress, crash_point

STAGING = ".staging"
TRASH = ".trash"

# Which top-level names to list (all when None).
Only = Callable[[str], bool] | None

_HEX32 = re.compile(r"[0-9a-f]{32}")
_OBJECT_DIR = re.compile(r".+_[0-9a-f]{16}")
_SHARD_LAYOUT = ("data.dat", "segments", "blocks", "parity")


def kind_of(mode: int) -> FileKind:
    """What an entry is, from its ``lstat`` mode."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def is_object_dir(path: Path | str) -> bool:
    """Whether directory ``path`` is an object's: it holds a manifest copy or a commit
    marker, or it is named ``<name>_<16 hex>`` and holds our shard layout (DESIGN §5). An
    object that lost both manifest copies is still an object (reported unusable, never
    passed over as a stray)."""
    base = os.fspath(path)  # joined as text: a listing asks this of every object
    if any(os.path.lexists(f"{base}/{f}") for f in (MANIFEST, REPLICA, COMMITTING)):
        return True
    return bool(_OBJECT_DIR.fullmatch(os.path.basename(base))) and any(
        os.path.lexists(f"{base}/{part}") for part in _SHARD_LAYOUT
    )


def list_dir(root: Path, volume: Path | None = None, only: Only = None) -> Listing:
    """Sort out the entries of archive (or local volume) directory ``root`` whose names
    pass ``only``: object directories, strays, and the children of ``.staging`` and
    ``.trash`` (``<32 hex>`` directories are left-overs of ours, anything else a stray).
    Entries found are named relative to ``root``, on ``volume`` (None: the archive)."""
    try:
        with os.scandir(root) as it:
            entries = sorted((e for e in it if only is None or only(e.name)), key=lambda e: e.name)
    except OSError as e:
        raise ArchiveError(f"{root}: cannot list archive: {e.strerror}") from None
    out = Listing(roots=[root])
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            if name in (STAGING, TRASH):
                _housekeeping(out, root, name, volume)
            continue  # other hidden entries (ours: .blockframe) are not objects
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            continue  # vanished while listing
        if not stat.S_ISDIR(mode):
            out.strays.append(StrayEntry(name, volume, kind_of(mode)))
        elif is_object_dir(entry.path):
            out.objects.append(name)
        else:
            out.strays.append(StrayEntry(name, volume, "directory"))
    return out


def _housekeeping(out: Listing, root: Path, name: str, volume: Path | None) -> None:
    top = root / name
    try:
        mode = os.lstat(top).st_mode
        children = sorted(os.listdir(top)) if stat.S_ISDIR(mode) else None
    except OSError:
        return
    if children is None:
        out.strays.append(StrayEntry(name, volume, kind_of(mode)))
        return
    kind: Literal["staging", "trash"] = "staging" if name == STAGING else "trash"
    for child in children:
        rel = f"{name}/{child}"
        try:
            cmode = os.lstat(top / child).st_mode
        except OSError:
            continue
        if _HEX32.fullmatch(child) and stat.S_ISDIR(cmode):
            out.leftovers.append(LeftoverEntry(rel, volume, kind))
        else:
            out.strays.append(StrayEntry(rel, volume, kind_of(cmode)))


def load_dir(obj_dir: Path, repair: bool = True) -> Loaded:
    """Read the manifest of ``obj_dir``, falling back to the replica when the primary is
    missing or damaged. With ``repair`` a bad or missing copy is rewritten from the good
    one (atomically); if the archive is read-only the repair is skipped, not fatal."""

    def read(name: str) -> bytes | None:
        try:
            return (obj_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(name: str, data: bytes) -> None:
        atomic_write(obj_dir / name, data)

    return load_from(read, write if repair else None, obj_dir.name)


def discard_dir(root: Path, path: Path) -> None:
    """Remove object directory ``path`` of archive (or volume) ``root``: renamed into
    ``.trash`` first (one atomic step, durable), then deleted at leisure."""
    trash = root / TRASH
    trash.mkdir(exist_ok=True)
    target = trash / uuid.uuid4().hex
    os.rename(path, target)
    fsync_dir(root)
    shutil.rmtree(target, ignore_errors=True)


class DirectoryBackend:
    """The objects of one archive directory, ``root``."""

    volumes = None  # not spread over volumes

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    @property
    def location(self) -> str:
        """How the archive is named in messages."""
        return str(self.root)

    @property
    def state_root(self) -> Path:
        """The directory whose ``.blockframe/`` holds health's freshness state."""
        return self.root

    def check(self) -> None:
        """Raise ArchiveError unless the archive can be read."""
        if not self.root.is_dir():
            raise ArchiveError(f"{self.root}: archive directory does not exist")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ArchiveError(f"{self.root}: archive directory is not readable")
        from blockframe.storage.volumes import check_not_member

        check_not_member(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def listing(self, only: Only = None) -> Listing:
        """The entries of the archive directory whose names pass ``only``, sorted out."""
        self.check()
        return list_dir(self.root, None, only)

    def peek(self, dirname: str) -> Manifest:
        """The manifest of object directory ``dirname``, changing and checking nothing."""
        return load_dir(self.root / dirname, repair=False).manifest

    def load(self, dirname: str) -> Entry | None:
        """The entry of one top-level name; None when it is not an object directory."""
        path = self.root / dirname
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
        loaded = load_dir(path)
        accept(dirname, loaded.manifest, loaded.problems, loaded.repaired)
        return Entry(loaded.manifest.name, path, loaded.manifest, loaded.repaired)

    def prepare(self) -> None:
        """Create the archive (and its staging directory) for a commit."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / STAGING).mkdir(exist_ok=True)
        except OSError as e:
            raise ArchiveError(f"{self.root}: cannot create archive: {e.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ArchiveError(f"{self.root}: archive directory is not writable")

    def stage(
        self,
        source: Source,
        size: int,
        name: str,
        storage: StorageConfig,
        progress: Progress | None,
        meta: ObjectMeta | None = None,
    ) -> Staged:
        """Write the object of ``source`` (a file, or a pack's member files) called
        ``name`` into a fresh staging directory, shards and manifests durable; nothing is
        visible until :meth:`publish`."""
        tier, stripes = plan_object(size, storage)
        stage = self.root / STAGING / uuid.uuid4().hex
        stage.mkdir()
        staged = Staged(name, [stage])
        with commit_errors(source_path(source)), abandoning(staged):
            content, hashes, staged.member_hashes = write_shards(
                source,
                size,
                [(str(stage), True)],
                storage.chunk_size,
                stripes,
                crash_in_progress("commit:writing", progress),
            )
            staged.manifest = build_manifest(
                name,
                size,
                tier,
                storage,
                stripes,
                content,
                hashes,
                meta=with_hashes(meta, staged.member_hashes),
            )
            body = staged.manifest.to_json()
            for copy in (MANIFEST, REPLICA):
                write_new(stage / copy, body)
            fsync_dir(stage)
            crash_point("commit:staged")
        return staged

    def publish(self, staged: Staged) -> Entry:
        """Make a staged object visible: one rename into place (the caller holds the commit
        lock and has checked the name)."""
        manifest = staged.manifest
        final = self.root / dirname_for(staged.name, manifest.id)
        if final.exists():
            raise ConflictError(
                f"{final.name} already exists but is not a usable object (run `blockframe health`)"
            )
        os.rename(staged.paths[0], final)
        staged.paths.clear()
        fsync_dir(self.root)
        crash_point("commit:published")
        return Entry(staged.name, final, manifest)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The archive's commit lock: names are checked and objects published under it."""
        return commit_lock(self.root)

    def discard(self, entry: Entry) -> None:
        """Remove a replaced object."""
        discard_dir(self.root, entry.path)
