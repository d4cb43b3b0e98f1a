"""The archive: a directory of committed objects, its index of names, commit and restore.

Layout (see FORMAT.md)::

    <archive>/<name>_<id>/manifest.json, manifest.replica.json, shards...
    <archive>/.staging/<random>/      commits in progress (invisible until renamed)
    <archive>/.trash/<random>/        replaced objects on their way out

Commit order (DESIGN §5): shards are written and fsynced in a staging directory, the
manifest and replica are written and fsynced last, the directory is renamed into place and
the archive directory fsynced. A crash leaves either nothing visible or a complete object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from blockframe import _core, layout
from blockframe.config import StorageConfig, check_storage
from blockframe.errors import (
    ArchiveError,
    BlockFrameError,
    ConflictError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    OutputError,
    SourceError,
    UsageError,
)
from blockframe.manifest import (
    MANIFEST,
    REPLICA,
    Manifest,
    Shard,
    Stripe,
    fsync_dir,
    load,
)

if TYPE_CHECKING:
    from blockframe.volumes import VolumeSet

log = logging.getLogger(__name__)

STAGING = ".staging"
TRASH = ".trash"
READ_PIECE = 4 * 2**20
PARITY_WORKERS = 3

Progress = Callable[[int], None]


def validate_name(name: str) -> str:
    """Object names are relative paths: ``file`` or ``dir/sub/file``."""
    parts = name.split("/")
    if (
        not name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 for c in name)
    ):
        raise UsageError(f"invalid object name {name!r}")
    if len(dirname_for(name, "0" * 16).encode()) > 255:
        raise UsageError(f"object name too long: {name!r}")
    return name


def dirname_for(name: str, object_id: str) -> str:
    """``<name>_<id>`` with ``%`` and ``/`` percent-encoded (and a leading dot, which would
    hide the directory), so every object is one directory directly under the archive."""
    encoded = name.replace("%", "%25").replace("/", "%2F")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return f"{encoded}_{object_id}"


@dataclass(frozen=True)
class Entry:
    """One committed object as found in the archive."""

    name: str
    path: Path
    manifest: Manifest
    manifest_repaired: tuple[str, ...] = ()
    # The volumes of a volume archive (None: the object is one directory, ``path``).
    volumes: VolumeSet | None = field(default=None, compare=False, repr=False)

    @property
    def dirname(self) -> str:
        """``<name>_<id>``: the object's directory (on every volume)."""
        return self.path.name

    @property
    def status(self) -> str:
        return "manifest restored" if self.manifest_repaired else "ok"

    def can_lose(self) -> int:
        """How many more whole volumes the object can lose (0 for a one-directory archive;
        -1 when absent volumes already took more than parity can rebuild)."""
        if self.volumes is None:
            return 0
        from blockframe.volumes import can_lose

        used = {sh.volume for st in self.manifest.stripes for sh in st.shards}
        return can_lose(self.manifest, used - self.volumes.present)

    def summary(self) -> dict[str, str | int]:
        """What `list --json` and `GET /api/files` say of an object."""
        m = self.manifest
        out: dict[str, str | int] = {
            "name": self.name,
            "size": m.size,
            "tier": m.tier,
            "status": self.status,
            "id": m.id,
            "content_hash": m.content_hash,
            "created": m.created,
        }
        if self.volumes is not None:
            out["volumes_can_lose"] = self.can_lose()
        return out


@dataclass(frozen=True)
class Problem:
    """Something in the archive directory that is not a usable object."""

    path: str
    reason: str


@dataclass
class Index:
    """Names of the usable objects, and what was skipped and why."""

    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class CommitResult:
    name: str
    status: Literal["committed", "unchanged", "replaced"]
    entry: Entry


@dataclass
class RestoreReport:
    """What a restore read, and which shards it found bad and repaired."""

    name: str
    size: int
    damaged: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)


class ArchivedObject:
    """Verified random access to one object (every byte returned matches the manifest).

    Shards found bad during reads are remembered in :attr:`damaged`; :meth:`repair` rebuilds
    them on disk.
    """

    def __init__(
        self,
        entry: Entry,
        cache: _core.Cache | None = None,
        fetch: Callable[[int, int, int, int], bytes | memoryview | None] | None = None,
    ) -> None:
        self.entry = entry
        self._core = core_object(entry, cache, fetch)
        self.damaged: dict[tuple[int, int], str] = {}

    @property
    def size(self) -> int:
        return self.entry.manifest.size

    def shard(self, stripe: int, shard: int) -> Shard:
        return self.entry.manifest.stripes[stripe].shards[shard]

    def _note(self, bad: list[tuple[int, int, str]]) -> None:
        for stripe, shard, damage in bad:
            if (stripe, shard) not in self.damaged:
                log.warning("%s: %s is %s", self.entry.name, self.shard(stripe, shard).path, damage)
            self.damaged[(stripe, shard)] = damage

    def read(self, offset: int, size: int) -> bytes:
        """Verified bytes at ``offset`` (fewer at the end of the file)."""
        if offset < 0 or size < 0:
            raise UsageError("offset and size must not be negative")
        try:
            data, bad = self._core.read(offset, size)
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
        try:
            n, bad = self._core.read_into(buffer, offset)
        except _core.CoreError as e:
            raise IntegrityError(f"{self.entry.name}: {e}") from None
        if bad:
            self._note(bad)
        return n

    def verify_parity(self) -> None:
        """Verify every parity shard, remembering bad ones in :attr:`damaged`. A few at a
        time: the core releases the GIL, and remote shards are latency-bound."""
        todo = [
            (si, len(st.data) + j)
            for si, st in enumerate(self.entry.manifest.stripes)
            for j in range(len(st.parity))
        ]
        with ThreadPoolExecutor(PARITY_WORKERS, thread_name_prefix="parity") as pool:
            checks = list(pool.map(lambda t: self._core.verify_shard(*t)[1], todo))
        for (si, shard), damage in zip(todo, checks, strict=True):
            if damage is not None:
                self._note([(si, shard, damage)])

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
            try:
                chunks, more = self._core.repair_shard(stripe, shard)
            except _core.CoreError as e:
                failed.append(f"{path} ({damage}): {e}")
                continue
            self.damaged.pop((stripe, shard), None)
            if chunks:
                log.warning("%s: repaired %s (%s)", self.entry.name, path, damage)
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
    fetch: Callable[[int, int, int, int], bytes | memoryview | None] | None = None,
    manifest: Manifest | None = None,
) -> _core.Object:
    """The core's verified reader over ``entry`` (or over ``manifest``, a new placement of
    the same object): shard files of its directory, of its volumes, or ``fetch``."""
    m = manifest or entry.manifest
    vs = entry.volumes
    store = None
    root = str(entry.path)

    def shard(si: int, j: int) -> tuple[str, int, bytes]:
        s = m.stripes[si].shards[j]
        return (s.path, s.size, s.hashes)

    if vs is not None and fetch is None:
        if vs.all_local(m):
            root = "/"

            def shard(si: int, j: int) -> tuple[str, int, bytes]:
                s = m.stripes[si].shards[j]
                return (vs.shard_path(entry.dirname, m, si, j), s.size, s.hashes)
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


class Archive:
    """An archive directory. Read-only operations never create it; commit does."""

    def __init__(self, root: str | os.PathLike[str], storage: StorageConfig | None = None):
        # Absolute: a mount serves from libfuse threads that may not share our cwd.
        self.root = Path(root).absolute()
        self.storage = storage or StorageConfig()
        check_storage(self.storage)

    # -- index ----------------------------------------------------------------------------

    @property
    def location(self) -> str:
        """How the archive is named in messages."""
        return str(self.root)

    @property
    def state_root(self) -> Path:
        """The directory whose ``.blockframe/`` holds health's freshness state."""
        return self.root

    def _require(self) -> None:
        if not self.root.is_dir():
            raise ArchiveError(f"{self.root}: archive directory does not exist")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ArchiveError(f"{self.root}: archive directory is not readable")
        from blockframe.volumes import check_not_member

        check_not_member(self.root)

    def _names(self) -> list[str]:
        """Sorted entries of the archive directory (hidden ones included)."""
        self._require()
        try:
            return sorted(os.listdir(self.root))
        except OSError as e:
            raise ArchiveError(f"{self.root}: cannot list archive: {e.strerror}") from None

    def scan(self) -> Index:
        """Load every object's manifest. Bad entries (stray files and directories, damaged
        manifests, names that do not match) are recorded in ``problems`` and skipped."""
        index = Index()
        for dirname in self._names():
            if not dirname.startswith("."):
                self._add(index, dirname)
        return index

    def _load(self, dirname: str) -> Entry | None:
        """The entry of one top-level name; None when it is not an object directory."""
        return self._load_entry(self.root / dirname)

    def _add(self, index: Index, dirname: str) -> None:
        try:
            entry = self._load(dirname)
        except (ManifestError, OSError) as e:
            index.problems.append(Problem(dirname, str(e)))
            return
        if entry is None:
            index.problems.append(Problem(dirname, "stray file (not an object directory)"))
            return
        other = index.entries.get(entry.name)
        if other is not None:
            # Two complete copies of one name: a replace was interrupted between sealing
            # the new object and removing the old one. The newer one wins.
            newer, older = sorted((entry, other), key=lambda e: e.manifest.created, reverse=True)
            index.problems.append(
                Problem(older.dirname, f"older copy of {entry.name!r} (superseded)")
            )
            entry = newer
        index.entries[entry.name] = entry

    def _load_entry(self, path: Path) -> Entry | None:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
        loaded = load(path)
        accept(path.name, loaded.manifest, loaded.problems, loaded.repaired)
        return Entry(loaded.manifest.name, path, loaded.manifest, loaded.repaired)

    def find(self, name: str) -> Entry | None:
        """The object called ``name``, loading only the manifests of directories whose
        name could hold it (not the whole archive)."""
        prefix = dirname_for(name, "")
        index = Index()
        candidates = [
            d for d in self._names() if d.startswith(prefix) and len(d) == len(prefix) + 16
        ]
        for dirname in candidates:
            self._add(index, dirname)
        return index.entries.get(name)

    def get(self, name: str) -> Entry:
        """Like :meth:`find`, but a missing name is a NotFoundError."""
        entry = self.find(name)
        if entry is None:
            raise NotFoundError(f"no object named {name!r} in {self.root}")
        return entry

    def open(self, name: str) -> ArchivedObject:
        """Verified random access to the object called ``name``."""
        return ArchivedObject(self.get(name))

    def open_object(self, entry: Entry, cache: _core.Cache | None = None) -> ArchivedObject:
        """Verified random access to an entry of :meth:`scan`, sharing ``cache``."""
        return ArchivedObject(entry, cache)

    # -- commit ---------------------------------------------------------------------------

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / STAGING).mkdir(exist_ok=True)
        except OSError as e:
            raise ArchiveError(f"{self.root}: cannot create archive: {e.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ArchiveError(f"{self.root}: archive directory is not writable")

    def commit(
        self,
        source: str | os.PathLike[str],
        name: str | None = None,
        replace: bool = False,
        progress: Progress | None = None,
    ) -> CommitResult:
        """Archive one regular file under ``name`` (default: its base name).

        Identical content under an existing name is a no-op ("unchanged"); different
        content is refused unless ``replace``, in which case the new object is sealed
        first and the old one removed after.
        """
        src = Path(source)
        size = check_source(src)
        name = validate_name(name if name is not None else src.name)
        existing = self.find(name) if self._exists() else None
        if existing is not None:
            same_size = existing.manifest.size == size
            if same_size and hash_file(src) == existing.manifest.content_hash:
                return CommitResult(name, "unchanged", existing)
            if not replace:
                raise ConflictError(
                    f"{name!r} is already archived with different content "
                    "(use --replace to replace it)"
                )
        self._prepare_root()
        entry = self._write_object(src, size, name, progress)
        if existing is None:
            return CommitResult(name, "committed", entry)
        if existing.dirname != entry.dirname:
            self._discard(existing)
        return CommitResult(name, "replaced", entry)

    def _write_object(self, src: Path, size: int, name: str, progress: Progress | None) -> Entry:
        storage = self.storage
        tier, stripes = layout.plan(size, storage)
        stage = self.root / STAGING / uuid.uuid4().hex
        stage.mkdir()
        with commit_errors(src), removing([stage]):
            content, hashes = _core.commit(
                str(src),
                [(str(stage), True)],
                storage.chunk_size,
                [([(p, n) for p, n in st.data], list(st.parity)) for st in stripes],
                progress,
            )
            manifest = _manifest(name, size, tier, storage, stripes, content, hashes)
            body = manifest.to_json()
            for copy in (MANIFEST, REPLICA):
                with open(stage / copy, "xb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
            fsync_dir(stage)
            final = self.root / dirname_for(name, manifest.id)
            if final.exists():
                raise ConflictError(
                    f"{final.name} already exists but is not a usable object "
                    "(run `blockframe health`)"
                )
            os.rename(stage, final)
            fsync_dir(self.root)
        return Entry(name, final, manifest)

    def _exists(self) -> bool:
        return self.root.is_dir()

    def _discard(self, entry: Entry) -> None:
        discard_dir(self.root, entry.path)

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
        obj.verify_parity()
        report.damaged = sorted(
            f"{obj.shard(st, sh).path} ({d})" for (st, sh), d in obj.damaged.items()
        )
        report.repaired, report.unrepaired = obj.repair()
        return report


def check_dirname(dirname: str, m: Manifest) -> None:
    """A manifest belongs in ``dirname`` only if its name is valid and encodes to it."""
    try:
        validate_name(m.name)
    except UsageError:
        raise ManifestError(f"{dirname}: invalid object name in manifest") from None
    if dirname != dirname_for(m.name, m.id):
        raise ManifestError(f"{dirname}: directory name does not match its manifest")


def accept(dirname: str, m: Manifest, problems: Iterable[str], repaired: Iterable[str]) -> None:
    """What every loader of an object does with its manifest: check that it belongs in
    ``dirname`` and log what was wrong with its copies and what was rewritten."""
    check_dirname(dirname, m)
    for problem in problems:
        log.warning("%s: %s", dirname, problem)
    for copy in repaired:
        log.warning("%s: %s rewritten from the good copy", dirname, copy)


def discard_dir(root: Path, path: Path) -> None:
    """Remove object directory ``path`` of archive (or volume) ``root``: renamed into
    ``.trash`` first (one atomic step, durable), then deleted at leisure."""
    trash = root / TRASH
    trash.mkdir(exist_ok=True)
    target = trash / uuid.uuid4().hex
    os.rename(path, target)
    fsync_dir(root)
    shutil.rmtree(target, ignore_errors=True)


@contextlib.contextmanager
def commit_errors(src: Path) -> Iterator[None]:
    """Turn what a commit of ``src`` can raise into errors with meaning for the user."""
    try:
        yield
    except _core.SourceChangedError as e:
        raise SourceError(str(e)) from None
    except _core.CoreError as e:
        raise ArchiveError(f"commit of {src} failed: {e}") from None
    except OSError as e:
        raise ArchiveError(f"commit of {src} failed: {e}") from None


@contextlib.contextmanager
def removing(paths: Iterable[Path]) -> Iterator[None]:
    """Remove ``paths`` (staging directories) when the block ends, however it ends; read
    at the end, so a live view (``dict.values()``) covers what the block added."""
    try:
        yield
    finally:
        for path in paths:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)


def check_source(src: Path) -> int:
    """Size of a committable file, or a SourceError saying why it is not one."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise SourceError(f"{src}: no such file") from None
    except OSError as e:
        raise SourceError(f"{src}: cannot read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{src}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{src}: not a regular file")
    if st.st_size == 0:
        raise SourceError(f"{src}: file is empty (nothing to archive)")
    try:
        with open(src, "rb"):
            pass
    except OSError as e:
        raise SourceError(f"{src}: cannot read: {e.strerror}") from None
    return st.st_size


def hash_file(path: Path) -> str:
    """BLAKE3 hex digest of a file's content."""
    try:
        return _core.hash_file(str(path)).hex()
    except _core.CoreError as e:
        raise SourceError(str(e)) from None


def _manifest(
    name: str,
    size: int,
    tier: int,
    storage: StorageConfig,
    stripes: list[layout.PlannedStripe],
    content: bytes,
    hashes: list[list[bytes]],
    placement: list[list[int]] | None = None,
) -> Manifest:
    """The manifest of a just-written object; ``placement`` (per stripe, the volume of
    each shard) makes it a volume archive's manifest."""
    built = []
    for si, (st, shard_hashes) in enumerate(zip(stripes, hashes, strict=True)):
        k = len(st.data)
        vol = placement[si] if placement is not None else [0] * (k + len(st.parity))
        data = tuple(
            Shard(p, n, h, vol[i])
            for i, ((p, n), h) in enumerate(zip(st.data, shard_hashes[:k], strict=True))
        )
        padded = -(-max(n for _, n in st.data) // 64) * 64
        parity = tuple(
            Shard(p, padded, h, vol[k + j])
            for j, (p, h) in enumerate(zip(st.parity, shard_hashes[k:], strict=True))
        )
        built.append(Stripe(data, parity))
    leaves = b"".join(h for shard_hashes in hashes for h in shard_hashes)
    return Manifest(
        name=name,
        id=content.hex()[:16],
        size=size,
        content_hash=content.hex(),
        tier=tier,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        chunk_size=storage.chunk_size,
        segment_size=storage.segment_size,
        block_segments=storage.block_segments,
        parity_shards=storage.parity_shards,
        stripes=tuple(built),
        merkle_root=_core.merkle_root(leaves).hex(),
        volumes=placement is not None,
    )


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` only if the block completes.

    The bytes go to an anonymous ``O_TMPFILE`` inode in the target directory (nothing is
    visible even if the process is killed), which is fsynced, linked under a temporary
    name and renamed over ``path``. Where the filesystem lacks ``O_TMPFILE``, a hidden
    temporary file is used instead.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.blockframe-{uuid.uuid4().hex[:8]}"
    anonymous = True
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:
        anonymous = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise OutputError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if anonymous:
                # A dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), which resolves the
                # /proc magic link to the anonymous inode (plain link() would not).
                dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.link(
                        f"/proc/self/fd/{f.fileno()}",
                        tmp.name,
                        dst_dir_fd=dirfd,
                        follow_symlinks=True,
                    )
                finally:
                    os.close(dirfd)
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)
