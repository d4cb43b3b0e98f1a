"""``blockframe health``: scrub, repair and report a whole archive.

For every object: both manifest copies are checked (a bad copy is restored from the good
one), every chunk of every shard, data and parity, is verified against the manifest, and
every damaged shard is rebuilt from verified survivors (the core verifies before it writes
and replaces atomically; damage beyond parity is never written). Left-overs that are
provably ours (staging directories of interrupted commits, ``.trash`` entries, temporary
files of interrupted repairs) are removed; anything else that is not an object is reported,
never deleted.

Freshness: ``<archive>/.blockframe/state.json`` remembers when each object was last fully
verified (and whether damage remained), so ``older_than`` scrubs only what is stale and
``max_time`` stops after a budget, stalest first, resuming a large object at the stripe
where the previous run stopped. Time comes from an injectable clock.

The report (:mod:`blockframe.health.report`, JSON schema in ``health-report.schema.json``,
described in README.md) names per object what was repaired, which byte ranges of the file
are lost and how many more shards would be needed, and a margin: how many more shards per
stripe may fail before data is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import stat
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blockframe import _core
from blockframe.archive import Archive, Entry
from blockframe.archive.directory import STAGING, TRASH, load_dir
from blockframe.archive.entry import check_dirname
from blockframe.archive.reader import core_object
from blockframe.errors import ArchiveError, ManifestError, UsageError
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, Manifest, Shard, Stripe
from blockframe.health.report import (
    HealthReport,
    Leftover,
    LostRange,
    ObjectReport,
    ShardReport,
    Skipped,
    Stray,
    print_report,
    report_schema,
)
from blockframe.health.state import STATE_DIR, STATE_FILE, Freshness, LastScrub, State
from blockframe.storage import Volume
from blockframe.storage.volumes import IncompleteError, VolumeSet, can_lose

__all__ = ["Health", "Options", "Plan", "parse_duration", "print_report", "report_schema", "scrub"]

log = logging.getLogger(__name__)

WORKERS = 2
# A staging directory or temporary file touched within this time may belong to a commit or
# repair that is still running; it is reported, not removed.
LEFTOVER_GRACE = 3600.0

Clock = Callable[[], float]
Progress = Callable[[int], None]

_HEX32 = re.compile(r"[0-9a-f]{32}")
# Temporary files of an interrupted repair: the core's (".<shard>.repair-<pid>-<n>") and
# those of a volume's atomic writes (".<file>.tmp-<12 hex>", storage/local.py).
_REPAIR_TEMP = re.compile(r"\.(.+)\.(?:repair-\d+-\d+|tmp-[0-9a-f]{12})")
_MANIFEST_TEMP = re.compile(
    r"\.(?:manifest\.json|manifest\.replica\.json)\.tmp-(?:\d+|[0-9a-f]{12})"
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


# -- durations -----------------------------------------------------------------------


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


# -- planning --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How to run: ``older_than`` and ``max_time`` in seconds (None: no limit)."""

    dry_run: bool = False
    older_than: float | None = None
    max_time: float | None = None
    workers: int = WORKERS
    leftover_grace: float = LEFTOVER_GRACE


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


_OBJECT_DIR = re.compile(r".+_[0-9a-f]{16}")
_SHARD_LAYOUT = ("data.dat", "segments", "blocks", "parity")


def _looks_like_object(path: Path) -> bool:
    """A ``<name>_<16 hex>`` directory holding our shard layout (DESIGN §5)."""
    return bool(_OBJECT_DIR.fullmatch(path.name)) and any(
        os.path.lexists(path / part) for part in _SHARD_LAYOUT
    )


def _kind(mode: int) -> Literal["file", "directory", "symlink", "other"]:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` and everything under it (not following links)."""
    newest = os.lstat(path).st_mtime
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


# -- the scrubber ----------------------------------------------------------------------


class Health:
    """Scrub an archive: ``plan()`` looks (cheaply), ``run(plan)`` verifies and repairs.

    ``clock`` returns seconds since the epoch; it timestamps verifications and measures
    the ``max_time`` budget, so tests can drive both.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Archive,
        options: Options | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.archive = root if isinstance(root, Archive) else Archive(Path(root))
        self.root = self.archive.root
        # The volumes of a volume archive; None for a one-directory archive.
        self.vs: VolumeSet | None = self.archive.volumes
        self.options = options or Options()
        self.clock = clock
        if self.options.workers < 1:
            raise UsageError("health needs at least one worker")
        if self.options.max_time is not None and self.options.max_time <= 0:
            raise UsageError("--max-time must be more than zero")
        if self.options.older_than is not None and self.options.older_than < 0:
            raise UsageError("--older-than cannot be negative")

    # -- plan ----------------------------------------------------------------------------

    def plan(self) -> Plan:
        """List the archive, read the state and pick the objects to scrub, stalest first
        (objects left damaged, then never verified, then oldest verification)."""
        now = self.clock()
        state, problem = State(self.archive.state_root).load()
        plan = Plan(self.root, now, state, notes=[problem] if problem else [])
        if self.vs is None:
            root = self.root
            if not root.is_dir():
                what = "is not a directory" if root.exists() else "does not exist"
                raise UsageError(f"{root}: archive directory {what}")
            try:
                from blockframe.storage.volumes import check_not_member

                check_not_member(root)
            except ArchiveError as e:
                raise UsageError(str(e)) from None
            plan.objects = self._list_dir(plan, root, "")
        else:
            plan.objects = self._list_volumes(plan, self.vs)
        plan.superseded = self._superseded(plan.objects)
        older_than = self.options.older_than
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

    def _list_dir(self, plan: Plan, root: Path, prefix: str) -> list[str]:
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
                    self._housekeeping(plan, root, prefix, name)
                continue  # other hidden entries (ours: .blockframe) are not objects
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue  # vanished while listing
            if not stat.S_ISDIR(mode):
                plan.strays.append(Stray(prefix + name, _kind(mode)))
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

    def _list_volumes(self, plan: Plan, vs: VolumeSet) -> list[str]:
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
                objects.update(self._list_dir(plan, local, f"{local}/"))
                continue
            try:
                objects.update(n for n in vol.listdir() if not n.startswith("."))
            except OSError as e:
                raise UsageError(f"{vol.location}: cannot list volume: {e}") from None
        # On one volume an object's directory may hold nothing recognisable (its only
        # shard there and its manifest copies lost): it is the object's all the same.
        theirs = {f"{root}/{name}" for root in plan.roots for name in objects}
        plan.strays = [x for x in plan.strays if x.path not in theirs]
        if not self.options.dry_run:
            try:
                vs.label_all()
            except ArchiveError as e:
                plan.notes.append(str(e))
        return sorted(objects)

    def _housekeeping(self, plan: Plan, root: Path, prefix: str, name: str) -> None:
        """Entries of ``.staging`` / ``.trash``: ``<32 hex>`` directories are ours."""
        top = root / name
        try:
            mode = os.lstat(top).st_mode
            children = sorted(os.listdir(top)) if stat.S_ISDIR(mode) else None
        except OSError:
            return
        if children is None:
            plan.strays.append(Stray(prefix + name, _kind(mode)))
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
                plan.strays.append(Stray(rel, _kind(cmode)))

    def _superseded(self, objects: list[str]) -> dict[str, str]:
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
                    m = self._peek(d)
                except (ManifestError, OSError):
                    continue
                by_name.setdefault(m.name, []).append((m.created, d))
            for copies in by_name.values():
                copies.sort(reverse=True)
                for _, d in copies[1:]:
                    out[d] = copies[0][1]
        return out

    def _peek(self, d: str) -> Manifest:
        """The manifest of object directory ``d``, changing nothing."""
        if self.vs is None:
            return load_dir(self.root / d, repair=False).manifest
        return self.vs.load_manifest(d, "none").manifest

    # -- run -----------------------------------------------------------------------------

    def run(self, plan: Plan, progress: Progress | None = None) -> HealthReport:
        """Scrub the planned objects; repairs unless ``dry_run``. Stops starting new
        stripes once ``max_time`` is spent. The state is saved even when interrupted."""
        opts = self.options
        report = HealthReport(
            str(self.root),
            opts.dry_run,
            opts.older_than,
            opts.max_time,
            plan.started,
            objects_total=len(plan.objects),
        )
        report.skipped = list(plan.skipped)
        report.strays = list(plan.strays)
        report.notes = list(plan.notes)
        for leftover in plan.leftovers:
            self._clean(leftover, self.root / leftover.path, is_tree=True)
            report.leftovers.append(leftover)
        deadline = None if opts.max_time is None else plan.started + opts.max_time
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done)

        updates: dict[str, Freshness] = {}
        try:
            with ThreadPoolExecutor(opts.workers, thread_name_prefix="health") as pool:
                for i, d in enumerate(plan.selected):
                    if deadline is not None and self.clock() >= deadline:
                        report.skipped.extend(
                            Skipped(rest, "time-budget", plan.state.get(rest, Freshness()).verified)
                            for rest in plan.selected[i:]
                        )
                        break
                    before = plan.state.get(d, Freshness())
                    scrubbed = self._scrub(d, before, plan, report, pool, deadline, tick)
                    if scrubbed is None:
                        continue  # an interrupted commit, handled as a left-over
                    obj, after = scrubbed
                    obj.superseded_by = plan.superseded.get(d)
                    report.objects.append(obj)
                    if obj.complete:
                        last = LastScrub(self.clock(), obj.status, obj.margin)
                        after = dataclasses.replace(after, last=last)
                    else:
                        after = dataclasses.replace(after, last=before.last)
                    if not opts.dry_run and after != before:
                        updates[d] = after
        finally:
            report.finished = self.clock()
            if updates:
                try:
                    State(self.archive.state_root).save(updates, set(plan.objects))
                except OSError as e:
                    report.notes.append(f"{STATE_DIR}/{STATE_FILE}: not saved ({e})")
        for d in plan.objects:
            report.verified[d] = updates.get(d, plan.state.get(d, Freshness())).verified
        for obj in report.objects:
            obj.verified_at = report.verified.get(obj.directory)
        rank = {"unusable": 0, "damaged": 1, "repaired": 2, "healthy": 3}
        report.objects.sort(
            key=lambda o: (
                o.margin if o.margin is not None else -(2**31),
                rank[o.status],
                o.name or o.directory,
            )
        )
        report.leftovers.sort(key=lambda x: x.path)
        report.strays.sort(key=lambda x: x.path)
        return report

    def _clean(self, leftover: Leftover, path: Path, is_tree: bool) -> None:
        """Remove one left-over unless this is a dry run or it may still be in use."""
        try:
            young = (
                leftover.kind != "trash"
                and self.clock() - (_newest_mtime(path) if is_tree else os.lstat(path).st_mtime)
                < self.options.leftover_grace
            )
        except OSError:
            young = False
        if young:
            leftover.action = "kept-recent"
            leftover.detail = "modified recently: an operation may still be running"
            return
        if self.options.dry_run:
            leftover.action = "would-remove"
            return
        try:
            if is_tree:
                shutil.rmtree(path)
            else:
                path.unlink()
            leftover.action = "removed"
            log.debug("removed %s", leftover.path)
        except FileNotFoundError:
            leftover.action = "removed"  # someone else (the replace itself) got there first
        except OSError as e:
            leftover.action = "failed"
            leftover.detail = str(e)

    def _scrub(
        self,
        d: str,
        before: Freshness,
        plan: Plan,
        report: HealthReport,
        pool: ThreadPoolExecutor,
        deadline: float | None,
        tick: Progress,
    ) -> tuple[ObjectReport, Freshness] | None:
        """Scrub one object directory: manifests, extras, then stripe after stripe. None
        when it turned out to be an interrupted commit of a volume archive."""
        obj = ObjectReport(d)
        since = self.clock()
        target: Manifest | None = None
        try:
            if self.vs is None:
                m, core = self._open_dir(d, obj, report)
            else:
                m, target, core = self._open_volumes(self.vs, d, obj, report)
        except IncompleteError:
            self._incomplete(d, report)
            return None
        except (ManifestError, UsageError, _core.CoreError, OSError) as e:
            obj.status = "unusable"
            obj.problem = str(e)
            return obj, Freshness(before.verified, self.clock())

        first = 0
        if before.resume_stripe is not None and before.resume_since is not None:
            fresh_enough = (
                self.options.older_than is None
                or since - before.resume_since < self.options.older_than
            )
            if before.resume_stripe < len(m.stripes) and fresh_enough:
                first, since = before.resume_stripe, before.resume_since
        starts = _data_starts(m)
        end = first
        for si in range(first, len(m.stripes)):
            if si > first and deadline is not None and self.clock() >= deadline:
                obj.complete = False
                break
            self._stripe(core, m, si, starts[si], obj, pool, tick)
            end = si + 1
        obj.stripes_scrubbed = (first, end)
        obj.lost = _merge(obj.lost)
        if self.vs is not None and target is not None:
            self._settle(self.vs, d, m, target, obj, report)
        remains = obj.manifest_damaged or any(not s.repaired for s in obj.shards)
        found = obj.shards or obj.manifest_repaired or obj.manifest_damaged
        obj.status = "damaged" if remains else "repaired" if found else "healthy"
        if obj.status == "damaged":
            return obj, Freshness(before.verified, self.clock())
        if obj.complete:
            return obj, Freshness(since)
        return obj, Freshness(before.verified, None, end, since)

    def _open_dir(
        self, d: str, obj: ObjectReport, report: HealthReport
    ) -> tuple[Manifest, _core.Object]:
        """Manifest (copies checked and restored) and core reader of a directory object."""
        path = self.root / d
        loaded = load_dir(path, repair=not self.options.dry_run)
        m = loaded.manifest
        check_dirname(d, m)
        core = core_object(Entry(m.name, path, m))
        self._describe(obj, m)
        obj.manifest_repaired = list(loaded.repaired)
        for copy in (MANIFEST, REPLICA):
            if copy not in loaded.repaired:
                obj.manifest_damaged.extend(
                    (copy, p.removeprefix(f"{copy}: "))
                    for p in loaded.problems
                    if p.startswith(f"{copy}:")
                )
        self._extras(path, m, report)
        return m, core

    @staticmethod
    def _describe(obj: ObjectReport, m: Manifest) -> None:
        obj.name, obj.size, obj.tier, obj.stripes = m.name, m.size, m.tier, len(m.stripes)

    def _open_volumes(
        self, vs: VolumeSet, d: str, obj: ObjectReport, report: HealthReport
    ) -> tuple[Manifest, Manifest, _core.Object]:
        """Manifest, the placement to scrub against and the core reader of an object of a
        volume archive. Copies are checked and written on every present volume; shards of
        absent volumes are given new homes on present ones (rebuilt by the scrub)."""
        dry = self.options.dry_run
        loaded = vs.load_manifest(d, "none" if dry else "all")
        m = loaded.manifest
        check_dirname(d, m)
        self._describe(obj, m)
        obj.manifest_repaired = list(loaded.repaired)
        for problem in loaded.problems:
            where, _, what = problem.partition(": ")
            if not any(r.startswith(f"{where}:") for r in loaded.repaired):
                obj.manifest_damaged.append((where, what))
        target = m
        lost = {sh.volume for st in m.stripes for sh in st.shards} - vs.present
        if lost and not dry:
            target = replace_lost(m, vs.present)
        for i, vol in vs.present_volumes():
            local = vol.local_path(d)
            if local is not None:
                names = set(os.listdir(local)) if local.is_dir() else set()
                if names:
                    self._extras(local, target, report, volume=i)
            else:
                names = self._remote_extras(vol, d, target, i, report)
            if COMMITTING in names and not dry:
                with contextlib.suppress(OSError):
                    vol.remove(f"{d}/{COMMITTING}")  # the commit got as far as manifests
        core = core_object(Entry(m.name, self.root / d, m, (), vs), manifest=target)
        return m, target, core

    def _settle(
        self,
        vs: VolumeSet,
        d: str,
        m: Manifest,
        target: Manifest,
        obj: ObjectReport,
        report: HealthReport,
    ) -> None:
        """After the scrub of a volume object: adopt the new placement if every moved
        shard was rebuilt, and say how many volumes the object can lose."""
        if target is not m and obj.complete:
            moved = {
                (si, j)
                for si, (a, b) in enumerate(zip(m.stripes, target.stripes, strict=True))
                for j, (x, y) in enumerate(zip(a.shards, b.shards, strict=True))
                if x.volume != y.volume
            }
            rebuilt = {(s.stripe, s.shard) for s in obj.shards if s.repaired}
            if moved <= rebuilt:
                failed = vs.write_manifest(d, target)
                for f in failed:
                    obj.manifest_damaged.append(("manifest", f))
                if len(failed) < 2 * len(vs.present):
                    m = target
                    report.notes.append(
                        f"{d}: {len(moved)} shard(s) of absent volumes rebuilt onto the "
                        "present volumes"
                    )
        bad = [0] * len(m.stripes)
        for s in obj.shards:
            if not s.repaired:
                bad[s.stripe] += 1
        used = {sh.volume for st in m.stripes for sh in st.shards}
        obj.volumes_can_lose = can_lose(m, used - vs.present, bad)

    def _incomplete(self, d: str, report: HealthReport) -> None:
        """An object directory marked committing with no manifest anywhere: a commit (or
        removal) that died; removed from every volume unless it may still be running."""
        assert self.vs is not None
        leftover = Leftover(d, "staging")
        report.leftovers.append(leftover)
        young = False
        for _, vol in self.vs.present_volumes():
            # Anything written under the directory lately (a shard still going up, on any
            # volume) means the commit may still be running.
            try:
                newest = vol.newest(d)
            except OSError:
                newest = None
            if newest is not None and self.clock() - newest < self.options.leftover_grace:
                young = True
        if young:
            leftover.action = "kept-recent"
            leftover.detail = "modified recently: a commit may still be running"
            return
        if self.options.dry_run:
            return
        try:
            for _, vol in self.vs.present_volumes():
                local = vol.local_path(d)
                if local is not None:
                    shutil.rmtree(local, ignore_errors=True)
                else:
                    vol.remove_tree(d)
            leftover.action = "removed"
        except OSError as e:
            leftover.action = "failed"
            leftover.detail = str(e)

    def _remote_extras(
        self, vol: Volume, d: str, m: Manifest, volume: int, report: HealthReport
    ) -> set[str]:
        """Keys under an object's prefix in a bucket that the manifest does not place
        there: reported, never deleted. Returns every key found (relative to ``d``)."""
        allowed = {sh.path for st in m.stripes for sh in st.shards if sh.volume == volume}
        allowed |= {MANIFEST, REPLICA, COMMITTING}
        try:
            found = vol.files(d)
        except OSError as e:
            report.notes.append(f"{vol.location}/{d}: cannot list: {e}")
            return set()
        for rel, _ in found:
            if rel not in allowed:
                report.strays.append(Stray(f"{vol.location}/{d}/{rel}", "file"))
        return {rel for rel, _ in found}

    def _extras(
        self, path: Path, m: Manifest, report: HealthReport, volume: int | None = None
    ) -> None:
        """Files and directories in an object directory that the manifest does not name
        (on ``volume``, for a volume archive): temporary files of interrupted repairs are
        removed, anything else reported."""
        placed = [
            sh.path for st in m.stripes for sh in st.shards if volume is None or sh.volume == volume
        ]
        files = set(placed) | {MANIFEST, REPLICA} | ({COMMITTING} if volume is not None else set())
        dirs: set[str] = set()
        names_in: dict[str, set[str]] = {}
        for p in placed:
            parent, _, base = p.rpartition("/")
            names_in.setdefault(parent, set()).add(base)
            while parent:
                dirs.add(parent)
                parent = parent.rpartition("/")[0]
        top = path.name if volume is None else str(path)
        for dirpath, subdirs, filenames in os.walk(path):
            rel = Path(dirpath).relative_to(path).as_posix()
            rel = "" if rel == "." else rel
            for sub in sorted(subdirs):
                child = f"{rel}/{sub}" if rel else sub
                if child not in dirs:
                    subdirs.remove(sub)
                    with contextlib.suppress(OSError):
                        mode = os.lstat(os.path.join(dirpath, sub)).st_mode
                        report.strays.append(Stray(f"{top}/{child}", _kind(mode)))
            for fname in sorted(filenames):
                child = f"{rel}/{fname}" if rel else fname
                if child in files:
                    continue
                temp = _REPAIR_TEMP.fullmatch(fname)
                kind: Literal["repair-temp", "manifest-temp"] | None = None
                if temp and temp.group(1) in names_in.get(rel, set()):
                    kind = "repair-temp"
                elif not rel and _MANIFEST_TEMP.fullmatch(fname):
                    kind = "manifest-temp"
                if kind is None:
                    with contextlib.suppress(OSError):
                        mode = os.lstat(os.path.join(dirpath, fname)).st_mode
                        report.strays.append(Stray(f"{top}/{child}", _kind(mode)))
                    continue
                leftover = Leftover(f"{top}/{child}", kind)
                self._clean(leftover, path / child, is_tree=False)
                report.leftovers.append(leftover)

    def _stripe(
        self,
        core: _core.Object,
        m: Manifest,
        si: int,
        starts: list[int],
        obj: ObjectReport,
        pool: ThreadPoolExecutor,
        tick: Progress,
    ) -> None:
        """Verify every shard of stripe ``si`` in parallel, repair the damaged ones, and
        account for what remains: margin, lost file ranges."""
        st = m.stripes[si]
        shards = st.shards
        verifying = {pool.submit(core.verify_shard, si, j): j for j in range(len(shards))}
        damaged: dict[int, tuple[list[int], str]] = {}
        for fut in as_completed(verifying):
            j = verifying[fut]
            bad, damage = fut.result()
            obj.bytes_verified += shards[j].size
            tick(shards[j].size)
            if damage is not None:
                damaged[j] = (bad, damage)
        m_par = len(st.parity)
        before = Counter(c for bad, _ in damaged.values() for c in set(bad))

        def repairable(j: int) -> bool:
            # Every bad chunk position of the shard has at least k verified shards.
            return all(before[c] <= m_par for c in damaged[j][0])

        errors: dict[int, str] = {}
        repaired: set[int] = set()
        if not self.options.dry_run:
            pending = [j for j in sorted(damaged) if repairable(j)]
            while pending:
                futs: dict[Future[tuple[int, list[tuple[int, int, str]]]], int] = {
                    pool.submit(core.repair_shard, si, j): j for j in pending
                }
                pending = []
                for rfut in as_completed(futs):
                    j = futs[rfut]
                    try:
                        _, more = rfut.result()
                    except _core.CoreError as e:
                        errors[j] = str(e)
                        continue
                    repaired.add(j)
                    for s2, j2, _ in more:
                        # A shard that turned bad after it verified: check it again.
                        if s2 == si and j2 not in damaged:
                            bad2, damage2 = core.verify_shard(si, j2)
                            if damage2 is not None:
                                damaged[j2] = (bad2, damage2)
                                before.update(set(bad2))
                                if repairable(j2):
                                    pending.append(j2)
        left = Counter(c for j, (bad, _) in damaged.items() if j not in repaired for c in set(bad))
        worst = max(left.values(), default=0)
        obj.margin = min(m_par - worst, obj.margin if obj.margin is not None else m_par)
        chunk = m.chunk_size
        for j in sorted(damaged):
            bad, damage = damaged[j]
            size = shards[j].size
            nbytes = sum(min(chunk, size - c * chunk) for c in set(bad))
            shard_report = ShardReport(
                shards[j].path,
                si,
                j,
                "data" if j < len(st.data) else "parity",
                damage,
                len(set(bad)),
                nbytes,
                repaired=j in repaired,
                repairable=repairable(j),
                error=errors.get(j),
            )
            obj.shards.append(shard_report)
            if j in repaired:
                obj.bytes_repaired += nbytes
            elif j < len(st.data):
                for c in sorted(set(bad)):
                    if left[c] > m_par:
                        a = starts[j] + c * chunk
                        obj.lost.append(
                            LostRange(a, a + min(chunk, size - c * chunk), left[c] - m_par)
                        )


def replace_lost(m: Manifest, present: set[int]) -> Manifest:
    """``m`` with every shard of an absent volume given to a present one: per stripe, the
    present volume holding the fewest shards of it (ties: rotating with the stripe)."""
    order = sorted(present)
    stripes = []
    for si, st in enumerate(m.stripes):
        counts = {v: 0 for v in order}
        for sh in st.shards:
            if sh.volume in counts:
                counts[sh.volume] += 1
        shards = []
        for sh in st.shards:
            if sh.volume not in counts:
                v = min(order, key=lambda v: (counts[v], (order.index(v) - si) % len(order)))
                counts[v] += 1
                sh = Shard(sh.path, sh.size, sh.hashes, v)
            shards.append(sh)
        k = len(st.data)
        stripes.append(Stripe(tuple(shards[:k]), tuple(shards[k:])))
    return dataclasses.replace(m, stripes=tuple(stripes))


def _data_starts(m: Manifest) -> list[list[int]]:
    """File offset of every data shard, per stripe."""
    out, offset = [], 0
    for st in m.stripes:
        row = []
        for s in st.data:
            row.append(offset)
            offset += s.size
        out.append(row)
    return out


def _merge(ranges: list[LostRange]) -> list[LostRange]:
    """Sort and join adjacent lost ranges (the larger shards_needed wins)."""
    out: list[LostRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if out and out[-1].end >= r.start:
            last = out[-1]
            out[-1] = LostRange(
                last.start, max(last.end, r.end), max(last.shards_needed, r.shards_needed)
            )
        else:
            out.append(r)
    return out


def scrub(
    root: str | os.PathLike[str] | Archive,
    options: Options | None = None,
    clock: Clock = time.time,
    progress: Progress | None = None,
) -> HealthReport:
    """Plan and run a scrub in one call (see :class:`Health`)."""
    checker = Health(root, options, clock)
    return checker.run(checker.plan(), progress)
