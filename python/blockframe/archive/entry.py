"""What an archive holds, as its readers see it: entries (usable objects), the index of a
scan, and the results of commit and restore."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from blockframe.errors import ManifestError, UsageError
from blockframe.format.manifest import Manifest
from blockframe.format.names import dirname_for, validate_name

if TYPE_CHECKING:
    from blockframe.storage.volumes import VolumeSet

log = logging.getLogger(__name__)

# Called with the bytes done so far by long operations (a progress bar).
Progress = Callable[[int], None]


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
            newer, older = sorted((entry, other), key=lambda e: e.manifest.created, reverse=True)
            self.problems.append(
                Problem(older.dirname, f"older copy of {entry.name!r} (superseded)")
            )
            entry = newer
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
