"""What an archive holds, as its readers see it: the listing of its entries (objects,
strays, left-overs), entries (usable objects), the index of a scan, and the results of
commit and restore."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from blockframe.errors import ManifestError, UsageError
from blockframe.format.manifest import Manifest
from blockframe.format.members import FILE, PACK, Member
from blockframe.format.names import check_stored_name, dirname_for

if TYPE_CHECKING:
    from blockframe.storage.volumes import VolumeSet

log = logging.getLogger(__name__)

# Called with the bytes done so far by long operations (a progress bar).
Progress = Callable[[int], None]

# What a directory entry is, checked without following symbolic links.
FileKind = Literal["file", "directory", "symlink", "other"]


@dataclass(frozen=True)
class Found:
    """An entry of the archive, or of one of its local volumes, that is not an object."""

    name: str  # relative to the archive (or volume): "notes.txt", ".staging/<32 hex>"
    volume: Path | None  # the local volume holding it; None for a one-directory archive

    @property
    def path(self) -> str:
        """How reports name it: relative to the archive, or the full path on a volume."""
        return self.name if self.volume is None else f"{self.volume}/{self.name}"


@dataclass(frozen=True)
class StrayEntry(Found):
    """Neither an object directory nor ours: reported, never removed (FORMAT.md §3)."""

    kind: FileKind


@dataclass(frozen=True)
class LeftoverEntry(Found):
    """A ``.staging`` or ``.trash`` entry that an interrupted commit or replace of ours
    left (FORMAT.md §15)."""

    kind: Literal["staging", "trash"]


@dataclass
class Listing:
    """The entries of an archive sorted out, the one place the rules for that live (a
    backend's ``listing``): object directories, usable or not; what is not an object
    (strays); what interrupted operations left in ``.staging`` and ``.trash``. Other
    hidden entries (``.blockframe``) are housekeeping and not listed."""

    objects: list[str] = field(default_factory=list)  # object directory names, sorted
    strays: list[StrayEntry] = field(default_factory=list)
    leftovers: list[LeftoverEntry] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # the local directories listed
    unlisted: list[str] = field(default_factory=list)  # volumes that could not be listed: why

    def top(self) -> list[str]:
        """Every top-level name readers report on: the objects and the strays beside
        them (not those in ``.staging``), sorted and each once."""
        strays = {s.name for s in self.strays if not s.name.startswith(".")}
        return sorted(set(self.objects) | strays)


DEFAULT_MODE = 0o644  # what files committed before modes were recorded show


def created_ns(created: str) -> int:
    """A manifest's ``created`` time in nanoseconds since the epoch."""
    return int(datetime.fromisoformat(created).timestamp() * 1_000_000_000)


def newest_first(copies: Iterable[tuple[str, str]]) -> list[str]:
    """Directories holding copies of one name, as ``(created, dirname)``, the one that
    wins first (FORMAT.md §11): the greater ``created`` (the timestamps all have one form,
    so string order is time order), then the greater directory name."""
    return [d for _, d in sorted(copies, reverse=True)]


# Per stripe of a volume object: how many shards each volume holds, and how many of
# the stripe's shards are parity (what :meth:`Entry.can_lose` needs, no chunk hash).
Layout = tuple[tuple[tuple[tuple[int, int], ...], int], ...]


@dataclass(frozen=True, slots=True)
class Head:
    """What readers of names need of an object's manifest: everything but its stripes and
    chunk hashes. A catalog row (:mod:`blockframe.archive.catalog`) gives it without
    reading the manifest; :meth:`of` takes it from a manifest."""

    name: str
    id: str
    size: int
    content_hash: str
    tier: int
    created: str
    chunk_size: int
    kind: str = FILE
    mtime_ns: int | None = None  # a file's, as committed (None: not recorded)
    mode: int | None = None
    members: tuple[Member, ...] = ()  # a pack's table
    layout: Layout = ()  # volume objects only
    # The object's share of the archive's pin (format/pin.py), when known without the
    # manifest; derived data, so not part of what the object is.
    pin: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, m: Manifest, pin: str | None = None) -> Head:
        layout: Layout = ()
        if m.volumes:
            layout = tuple(
                (tuple(sorted(m.volume_counts(si).items())), len(st.parity))
                for si, st in enumerate(m.stripes)
            )
        return cls(
            m.name,
            m.id,
            m.size,
            m.content_hash,
            m.tier,
            m.created,
            m.chunk_size,
            m.kind,
            m.mtime_ns,
            m.mode,
            m.members,
            layout,
            pin,
        )

    @property
    def is_pack(self) -> bool:
        return self.kind == PACK

    def same_object(self, other: Head) -> bool:
        """Whether ``other`` describes the same object (placements may differ: health
        moves shards of lost volumes)."""
        return (
            self.name,
            self.id,
            self.size,
            self.content_hash,
            self.tier,
            self.created,
            self.chunk_size,
            self.kind,
            self.mtime_ns,
            self.mode,
            self.members,
        ) == (
            other.name,
            other.id,
            other.size,
            other.content_hash,
            other.tier,
            other.created,
            other.chunk_size,
            other.kind,
            other.mtime_ns,
            other.mode,
            other.members,
        )


class ManifestRef:
    """An object's manifest, given or loaded on first use (then kept): entries listed from
    the catalog read their manifest only when their bytes are read. Shared by every entry
    of one object (the files of a pack)."""

    __slots__ = ("_load", "_manifest")

    def __init__(
        self, manifest: Manifest | None = None, load: Callable[[], Manifest] | None = None
    ) -> None:
        if manifest is None and load is None:
            raise TypeError("a manifest or a way to load it is needed")
        self._manifest = manifest
        self._load = load

    @property
    def loaded(self) -> bool:
        return self._manifest is not None

    def get(self) -> Manifest:
        m = self._manifest
        if m is None:
            assert self._load is not None
            # Two threads may both load it: each gets a valid manifest, one is kept.
            m = self._manifest = self._load()
        return m


class Entry:
    """One file of the archive: a committed object, or a file of a pack (``member``; then
    ``path`` and ``manifest`` are the pack's and ``name`` the member's).

    ``head`` is what listings need; ``manifest`` (with every chunk hash) is loaded on first
    use when the entry came from the catalog. Entries are never changed once made."""

    __slots__ = (
        "_ref",
        "dirname",
        "head",
        "manifest_repaired",
        "member",
        "name",
        "path",
        "volumes",
    )

    name: str
    path: Path
    head: Head
    manifest_repaired: tuple[str, ...]
    # The volumes of a volume archive (None: the object is one directory, ``path``).
    volumes: VolumeSet | None
    member: Member | None
    # ``<name>_<id>``: the object's directory (on every volume).
    dirname: str
    _ref: ManifestRef

    def __init__(
        self,
        name: str,
        path: Path,
        manifest: Manifest | None = None,
        manifest_repaired: tuple[str, ...] = (),
        volumes: VolumeSet | None = None,
        member: Member | None = None,
        *,
        head: Head | None = None,
        ref: ManifestRef | None = None,
    ) -> None:
        if manifest is not None:
            ref = ManifestRef(manifest)
            head = head or Head.of(manifest)
        if head is None or ref is None:
            raise TypeError("an Entry needs a manifest, or a head and a manifest reference")
        self.name = name
        self.path = path
        self.head = head
        self.manifest_repaired = tuple(manifest_repaired)
        self.volumes = volumes
        self.member = member
        self._ref = ref
        self.dirname = path.name

    def _key(self) -> tuple[object, ...]:
        return (self.name, self.path, self.head, self.manifest_repaired, self.member)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.name, self.path, self.head.content_hash))

    def __repr__(self) -> str:
        return f"Entry(name={self.name!r}, path={self.path!r}, member={self.member!r})"

    @property
    def manifest(self) -> Manifest:
        """The object's full manifest (read now if the entry came from the catalog)."""
        return self._ref.get()

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self.member.size if self.member is not None else self.head.size

    @property
    def offset(self) -> int:
        """Where the file's bytes start in the object (0 unless it is in a pack)."""
        return self.member.offset if self.member is not None else 0

    @property
    def content_hash(self) -> str:
        """BLAKE3 of the file's bytes, 64 hex digits."""
        m = self.member
        return m.content_hash if m is not None else self.head.content_hash

    @property
    def mtime_ns(self) -> int:
        """The file's modification time as committed; the commit time for objects of
        versions 1 and 2, which did not record it."""
        if self.member is not None:
            return self.member.mtime_ns
        if self.head.mtime_ns is not None:
            return self.head.mtime_ns
        return created_ns(self.head.created)

    @property
    def mode(self) -> int:
        """The file's permission bits as committed (0o644 when not recorded)."""
        if self.member is not None:
            return self.member.mode
        return self.head.mode if self.head.mode is not None else DEFAULT_MODE

    def members(self) -> list[Entry]:
        """The files of a pack, each an entry of its own (none for other objects)."""
        return [self.member_entry(m) for m in self.head.members if m.type == "file"]

    def member_entry(self, member: Member) -> Entry:
        """The entry of one file of this pack."""
        # Made field by field: a listing makes one per file of every pack.
        out = object.__new__(Entry)
        out.name = member.name
        out.path = self.path
        out.head = self.head
        out.manifest_repaired = self.manifest_repaired
        out.volumes = self.volumes
        out.member = member
        out._ref = self._ref
        out.dirname = self.dirname
        return out

    @property
    def status(self) -> str:
        return "manifest restored" if self.manifest_repaired else "ok"

    def can_lose(self) -> int:
        """How many more whole volumes the object can lose (0 for a one-directory archive;
        -1 when absent volumes already took more than parity can rebuild)."""
        if self.volumes is None:
            return 0
        from blockframe.storage.volumes import can_lose_layout

        layout = self.head.layout
        absent = {v for counts, _ in layout for v, _ in counts} - self.volumes.present
        return can_lose_layout(layout, absent)

    def summary(self) -> dict[str, str | int]:
        """What `list --json` and `GET /api/files` say of an object."""
        h, m = self.head, self.member
        out: dict[str, str | int]
        if m is not None:
            out = {
                "name": self.name,
                "size": m.size,
                "tier": h.tier,
                "status": self.status,
                "id": h.id,
                "content_hash": m.content_hash,
                "created": h.created,
                "mtime_ns": m.mtime_ns,
                "mode": m.mode,
                "pack": self.dirname,
            }
        else:
            out = {
                "name": self.name,
                "size": h.size,
                "tier": h.tier,
                "status": self.status,
                "id": h.id,
                "content_hash": h.content_hash,
                "created": h.created,
                "mtime_ns": self.mtime_ns,
                "mode": self.mode,
            }
        if self.volumes is not None:
            out["volumes_can_lose"] = self.can_lose()
        return out

    def pin_doc(self) -> str:
        """The object's share of the archive's pin (format/pin.py)."""
        if self.head.pin is not None:
            return self.head.pin
        from blockframe.format.pin import pin_doc

        return pin_doc(self.manifest)


@dataclass(frozen=True)
class Problem:
    """Something in the archive directory that is not a usable object."""

    path: str
    reason: str


@dataclass
class Index:
    """The archive's name tree as its objects give it, and what was skipped and why.

    :attr:`entries` are the files by name (objects, and files of packs), :attr:`dirs` and
    :attr:`links` the directories and symbolic links that packs record, and
    :attr:`objects` every usable object by directory, packs included. When several
    objects give one name, the newest wins (FORMAT.md §11, §18.3)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    dirs: dict[str, Member] = field(default_factory=dict)
    links: dict[str, Member] = field(default_factory=dict)
    objects: dict[str, Entry] = field(default_factory=dict)
    # name -> (created, dirname) of the object that gave it
    _given_by: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    def add(self, dirname: str, entry: Entry | None) -> None:
        """Add what loading directory ``dirname`` gave: an entry, or None for a stray.
        Two complete objects of one name are what a replace interrupted between sealing
        the new object and removing the old one leaves: the newer one wins, and the older
        is reported. A file of a pack that a newer commit replaced is simply not shown."""
        if entry is None:
            self.problems.append(Problem(dirname, "stray file (not an object directory)"))
            return
        self.objects[entry.dirname] = entry
        key = (entry.head.created, entry.dirname)
        if not entry.head.is_pack:
            self._offer(entry.name, key, entry)
            return
        given, entries = self._given_by, self.entries
        for m in entry.head.members:
            name = m.name
            if name in given:
                self._offer(name, key, entry.member_entry(m) if m.type == "file" else m)
                continue
            # The common case, inline (a listing adds every file of every pack).
            given[name] = key
            if m.type == "file":
                entries[name] = entry.member_entry(m)
            elif m.type == "dir":
                self.dirs[name] = m
            else:
                self.links[name] = m

    def given_by(self, name: str) -> str | None:
        """The directory of the object that gives ``name`` (None: no such name)."""
        held = self._given_by.get(name)
        return held[1] if held is not None else None

    def _offer(self, name: str, key: tuple[str, str], node: Entry | Member) -> None:
        held = self._given_by.get(name)
        if held is not None:
            newer = newest_first([held, key])[0]
            if newer == held[1]:
                self._superseded(name, key[1])
                return
            self._superseded(name, held[1])
            self.entries.pop(name, None)
            self.dirs.pop(name, None)
            self.links.pop(name, None)
        self._given_by[name] = key
        if isinstance(node, Entry):
            self.entries[name] = node
        elif node.type == "dir":
            self.dirs[name] = node
        else:
            self.links[name] = node

    def _superseded(self, name: str, dirname: str) -> None:
        loser = self.objects.get(dirname)
        if loser is not None and not loser.head.is_pack:
            self.problems.append(Problem(dirname, f"older copy of {name!r} (superseded)"))


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


def check_dirname(dirname: str, m: Manifest) -> None:
    """A manifest belongs in ``dirname`` only if its name is valid and encodes to it."""
    try:
        check_stored_name(m.name)
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
