"""What a health run will look at: its options, and the plan made from a cheap look at the
archive (no shard is read): every object directory, what is not an object (strays), what
interrupted operations left (left-overs), older copies of a name left by an interrupted
replace, and the objects to scrub, stalest first (by the freshness state)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from blockframe.archive import Archive
from blockframe.archive.entry import newest_first
from blockframe.errors import ArchiveError, ManifestError, UsageError
from blockframe.health.report import Leftover, Skipped, Stray
from blockframe.health.state import Freshness, State

WORKERS = 2
# A staging directory or temporary file touched within this time may belong to a commit or
# repair that is still running; it is reported, not removed.
LEFTOVER_GRACE = 3600.0

Clock = Callable[[], float]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in ``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"``, ``"1h30m"`` or a
    plain number of seconds; a UsageError for anything else."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    total, pos = 0.0, 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise UsageError(
            f"{what}: cannot read duration {text!r} (use e.g. 7d, 12h, 30m, 45s or 1h30m)"
        )
    return total


@dataclass(frozen=True)
class Options:
    """How to run: ``older_than`` and ``max_time`` in seconds (None: no limit)."""

    dry_run: bool = False
    older_than: float | None = None
    max_time: float | None = None
    workers: int = WORKERS
    leftover_grace: float = LEFTOVER_GRACE

    def check(self) -> None:
        """A UsageError for options no run can follow."""
        if self.workers < 1:
            raise UsageError("health needs at least one worker")
        if self.max_time is not None and self.max_time <= 0:
            raise UsageError("--max-time must be more than zero")
        if self.older_than is not None and self.older_than < 0:
            raise UsageError("--older-than cannot be negative")


@dataclass
class Plan:
    """What a run will look at: the objects to scrub in order, and everything else found."""

    root: Path
    started: float
    state: dict[str, Freshness]
    objects: list[str] = field(default_factory=list)  # every object directory, usable or not
    selected: list[str] = field(default_factory=list)  # to scrub, stalest first
    skipped: list[Skipped] = field(default_factory=list)
    strays: list[Stray] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)  # in .staging and .trash
    superseded: dict[str, str] = field(default_factory=dict)  # older dir -> newer, same name
    notes: list[str] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # local directories holding objects

    def measure(self) -> int:
        """Bytes on disk under the selected objects: a total for a progress bar (it
        stats every file, so it is only worth calling when a bar is shown)."""
        total = 0
        for d, root in ((d, r) for d in self.selected for r in self.roots):
            for dirpath, _, files in os.walk(root / d):
                for f in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, f)).st_size
        return total


def make_plan(archive: Archive, options: Options, now: float) -> Plan:
    """List the archive, read the state and pick the objects to scrub, stalest first
    (objects left damaged, then never verified, then oldest verification)."""
    state, problem = State(archive.state_root).load()
    plan = Plan(archive.root, now, state, notes=[problem] if problem else [])
    try:
        listing = archive.backend.listing()
    except ArchiveError as e:
        raise UsageError(str(e)) from None
    if listing.unlisted:
        raise UsageError(listing.unlisted[0])
    plan.objects = listing.objects
    plan.roots = listing.roots
    plan.strays = [Stray(s.path, s.kind) for s in listing.strays]
    plan.leftovers = [Leftover(x.path, x.kind) for x in listing.leftovers]
    vs = archive.volumes
    if vs is not None:
        for i in sorted(set(vs.slots) - vs.present):
            plan.notes.append(
                f"volume {i} ({vs.slots[i].location}) is absent: its shards are rebuilt "
                "onto the present volumes (create it empty to rebuild onto it instead)"
            )
        if not options.dry_run:
            try:
                vs.label_all()
            except ArchiveError as e:
                plan.notes.append(str(e))
    plan.superseded = _superseded(archive, plan.objects)
    older_than = options.older_than
    for d in plan.objects:
        f = state.get(d, Freshness())
        fresh = f.damaged is None and f.verified is not None
        if older_than is not None and fresh and now - (f.verified or 0) < older_than:
            plan.skipped.append(Skipped(d, "fresh", f.verified))
        else:
            plan.selected.append(d)

    def staleness(d: str) -> tuple[int, int, float, str]:
        f = state.get(d, Freshness())
        group = 0 if f.damaged is not None else 1 if f.verified is None else 2
        return group, 0 if f.resume_stripe else 1, f.verified or 0.0, d

    plan.selected.sort(key=staleness)
    return plan


def _superseded(archive: Archive, objects: list[str]) -> dict[str, str]:
    """Older copies of a name left by an interrupted replace: directory -> newer one.
    Only directories whose names differ just in the id are loaded (without repair)."""
    groups: dict[str, list[str]] = {}
    for d in objects:
        if re.fullmatch(r".+_[0-9a-f]{16}", d):
            groups.setdefault(d[:-17], []).append(d)
    out: dict[str, str] = {}
    for dirs in groups.values():
        if len(dirs) < 2:
            continue
        by_name: dict[str, list[tuple[str, str]]] = {}
        for d in dirs:
            try:
                m = archive.backend.peek(d)
            except (ManifestError, OSError):
                continue
            by_name.setdefault(m.name, []).append((m.created, d))
        for copies in by_name.values():
            newest, *older = newest_first(copies)
            out.update(dict.fromkeys(older, newest))
    return out
