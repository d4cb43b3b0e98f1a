"""What an archive holds, as its readers see it: the listing of its entries (objects,
strays, left-overs), entries (usable objects), the index of a scan, and the results of
commit and restore."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from blockframe.errors import ManifestError, UsageError
from blockframe.format.manifest import Manifest
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


def newest_first(copies: Iterable[tuple[str, str]]) -> list[str]:
    """Directories holding copies of one name, as ``(created, dirname)``, the one that
    wins first (FORMAT.md §11): the greater ``created`` (the timestamps all have one form,
    so string order is time order), then the greater directory name."""
    return [d for _, d in sorted(copies, reverse=True)]


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
        from blockframe.storage.volumes import can_lose

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

    def add(self, dirname: str, entry: Entry | None) -> None:
        """Add what loading directory ``dirname`` gave: an entry, or None for a stray.
        Two complete copies of one name are what a replace interrupted between sealing
        the new object and removing the old one leaves: the newer one wins."""
        if entry is None:
            self.problems.append(Problem(dirname, "stray file (not an object directory)"))
            return
        other = self.entries.get(entry.name)
        if other is not None:
            both = {e.dirname: e for e in (entry, other)}
            newer, older = newest_first((e.manifest.created, e.dirname) for e in both.values())
            self.problems.append(Problem(older, f"older copy of {entry.name!r} (superseded)"))
            entry = both[newer]
        self.entries[entry.name] = entry


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
