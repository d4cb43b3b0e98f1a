"""What a health run will look at: its options, and the plan made from a cheap look at the
archive (no shard is read): every object directory, what is not an object (strays), what
interrupted operations left (left-overs), older copies of a name left by an interrupted
replace, and the objects to scrub, stalest first (by the freshness state)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blockframe.archive import Archive
from blockframe.archive.directory import STAGING, TRASH, load_dir
from blockframe.errors import ArchiveError, ManifestError, UsageError
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, Manifest
from blockframe.health.report import Leftover, Skipped, Stray
from blockframe.health.state import Freshness, State
from blockframe.storage.volumes import VolumeSet

WORKERS = 2
# A staging directory or temporary file touched within this time may belong to a commit or
# repair that is still running; it is reported, not removed.
LEFTOVER_GRACE = 3600.0

Clock = Callable[[], float]

_HEX32 = re.compile(r"[0-9a-f]{32}")
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
        for d, root in ((d, r) for d in self.selected for r in self.roots or [self.root]):
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
    vs = archive.volumes
    if vs is None:
        root = archive.root
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            raise UsageError(f"{root}: archive directory {what}")
        try:
            from blockframe.storage.volumes import check_not_member

            check_not_member(root)
        except ArchiveError as e:
            raise UsageError(str(e)) from None
        plan.objects = _list_dir(plan, root, "")
    else:
        plan.objects = _list_volumes(plan, vs, options.dry_run)
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


_OBJECT_DIR = re.compile(r".+_[0-9a-f]{16}")
_SHARD_LAYOUT = ("data.dat", "segments", "blocks", "parity")


def _looks_like_object(path: Path) -> bool:
    """A ``<name>_<16 hex>`` directory holding our shard layout (DESIGN §5)."""
    return bool(_OBJECT_DIR.fullmatch(path.name)) and any(
        os.path.lexists(path / part) for part in _SHARD_LAYOUT
    )


def kind_of(mode: int) -> Literal["file", "directory", "symlink", "other"]:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _list_dir(plan: Plan, root: Path, prefix: str) -> list[str]:
    """The object directories of one local directory; strays and left-overs go to
    ``plan`` under ``prefix`` + their name."""
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise UsageError(f"{root}: cannot list archive: {e.strerror}") from None
    objects = []
    for name in names:
        path = root / name
        if name.startswith("."):
            if name in (STAGING, TRASH):
                _housekeeping(plan, root, prefix, name)
            continue  # other hidden entries (ours: .blockframe) are not objects
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue  # vanished while listing
        if not stat.S_ISDIR(mode):
            plan.strays.append(Stray(prefix + name, kind_of(mode)))
        elif (
            os.path.lexists(path / MANIFEST)
            or os.path.lexists(path / REPLICA)
            or os.path.lexists(path / COMMITTING)
            or _looks_like_object(path)
        ):
            # An object that lost both manifest copies is still ours: it is reported
            # unusable (exit 1), never passed over as a stray.
            objects.append(name)
        else:
            plan.strays.append(Stray(prefix + name, "directory"))
    return objects


def _list_volumes(plan: Plan, vs: VolumeSet, dry_run: bool) -> list[str]:
    """Object directories on any present volume (an object usually has one on each)."""
    if not vs.present:
        raise UsageError(vs.none_present())
    for i in sorted(set(vs.slots) - vs.present):
        plan.notes.append(
            f"volume {i} ({vs.slots[i].location}) is absent: its shards are rebuilt "
            "onto the present volumes (create it empty to rebuild onto it instead)"
        )
    objects: set[str] = set()
    for _, vol in vs.present_volumes():
        local = vol.local_path()
        if local is not None:
            plan.roots.append(local)
            objects.update(_list_dir(plan, local, f"{local}/"))
            continue
        try:
            objects.update(n for n in vol.listdir() if not n.startswith("."))
        except OSError as e:
            raise UsageError(f"{vol.location}: cannot list volume: {e}") from None
    # On one volume an object's directory may hold nothing recognisable (its only
    # shard there and its manifest copies lost): it is the object's all the same.
    theirs = {f"{root}/{name}" for root in plan.roots for name in objects}
    plan.strays = [x for x in plan.strays if x.path not in theirs]
    if not dry_run:
        try:
            vs.label_all()
        except ArchiveError as e:
            plan.notes.append(str(e))
    return sorted(objects)


def _housekeeping(plan: Plan, root: Path, prefix: str, name: str) -> None:
    """Entries of ``.staging`` / ``.trash``: ``<32 hex>`` directories are ours."""
    top = root / name
    try:
        mode = os.lstat(top).st_mode
        children = sorted(os.listdir(top)) if stat.S_ISDIR(mode) else None
    except OSError:
        return
    if children is None:
        plan.strays.append(Stray(prefix + name, kind_of(mode)))
        return
    kind: Literal["staging", "trash"] = "staging" if name == STAGING else "trash"
    for child in children:
        rel = f"{prefix}{name}/{child}"
        try:
            cmode = os.lstat(top / child).st_mode
        except OSError:
            continue
        if _HEX32.fullmatch(child) and stat.S_ISDIR(cmode):
            plan.leftovers.append(Leftover(rel, kind))
        else:
            plan.strays.append(Stray(rel, kind_of(cmode)))


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
                m = _peek(archive, d)
            except (ManifestError, OSError):
                continue
            by_name.setdefault(m.name, []).append((m.created, d))
        for copies in by_name.values():
            copies.sort(reverse=True)
            for _, d in copies[1:]:
                out[d] = copies[0][1]
    return out


def _peek(archive: Archive, d: str) -> Manifest:
    """The manifest of object directory ``d``, changing nothing."""
    if archive.volumes is None:
        return load_dir(archive.root / d, repair=False).manifest
    return archive.volumes.load_manifest(d, "none").manifest
