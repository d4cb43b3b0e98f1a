"""Running a health plan (:mod:`.plan`): scrub, repair and report every selected object.

For every object: both manifest copies are checked (a bad copy is restored from the good
one), every chunk of every shard, data and parity, is verified against the manifest, and
every damaged shard is rebuilt from verified survivors (the core verifies before it writes
and replaces atomically; damage beyond parity is never written). Left-overs and strays are
handled by :mod:`.leftovers`.

Freshness: ``<archive>/.blockframe/state.json`` (:mod:`.state`) remembers when each object
was last fully verified (and whether damage remained), so ``older_than`` scrubs only what
is stale and ``max_time`` stops after a budget, stalest first, resuming a large object at
the stripe where the previous run stopped. Time comes from an injectable clock.

The report (:mod:`blockframe.health.report`, JSON schema in ``health-report.schema.json``,
described in README.md) names per object what was repaired, which byte ranges of the file
are lost and how many more shards would be needed, and a margin: how many more shards per
stripe may fail before data is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blockframe import _core
from blockframe.archive import Archive, Entry
from blockframe.archive.directory import load_dir
from blockframe.archive.entry import check_dirname
from blockframe.archive.reader import core_object
from blockframe.errors import ManifestError, UsageError
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, Manifest
from blockframe.health.leftovers import Housekeeper
from blockframe.health.plan import Clock, Options, Plan, make_plan
from blockframe.health.report import (
    HealthReport,
    ObjectReport,
    Skipped,
)
from blockframe.health.state import STATE_DIR, STATE_FILE, Freshness, LastScrub, State
from blockframe.health.stripe import data_starts, files_lost, merge_lost, scrub_stripe
from blockframe.storage.volumes import IncompleteError, VolumeSet, can_lose, replace_lost
from blockframe.testhook import crash_point

__all__ = ["Health", "scrub"]

Progress = Callable[[int], None]

# Bytes of an object read ahead when its scrub starts (see Health._prefetch): the disk's
# share of the time a large manifest takes to parse, with room for fast disks. Page cache,
# reclaimable.
PREFETCH = 256 << 20
# Only objects whose manifest is at least this large are read ahead: a smaller one parses
# in less time than the read-ahead takes to start (~0.1 ms; health of 2,000 small objects
# took a fifth longer with it), and its shards are small too.
PREFETCH_FROM = 64 << 10


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
        self.options.check()
        self.clock = clock
        self.housekeeper = Housekeeper(self.options, clock)

    def plan(self) -> Plan:
        """List the archive, read the state and pick the objects to scrub, stalest first
        (objects left damaged, then never verified, then oldest verification)."""
        return make_plan(self.archive, self.options, self.clock())

    def run(self, plan: Plan, progress: Progress | None = None) -> HealthReport:
        """Scrub the planned objects; repairs unless ``dry_run``. Stops starting new
        stripes once ``max_time`` is spent. The state is saved even when interrupted."""
        crash_point("health:planned")
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
            self.housekeeper.clean(leftover, self.root / leftover.path, is_tree=True)
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
        if before.resume_stripe is None:
            self._prefetch(d)
        try:
            if self.vs is None:
                m, core = self._open_dir(d, obj, report)
            else:
                m, target, core = self._open_volumes(self.vs, d, obj, report)
        except IncompleteError:
            assert self.vs is not None  # only commits to volumes are marked
            self.housekeeper.incomplete(self.vs, d, report)
            return None
        except (ManifestError, UsageError, _core.CoreError, OSError) as e:
            if self._gone(d, report):
                return None
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
        starts = data_starts(m)
        end = first
        for si in range(first, len(m.stripes)):
            if si > first and deadline is not None and self.clock() >= deadline:
                obj.complete = False
                break
            assert core is not None  # there are stripes
            scrub_stripe(core, m, si, starts[si], obj, pool, tick, self.options.dry_run)
            end = si + 1
            crash_point("health:stripe")
        obj.stripes_scrubbed = (first, end)
        obj.lost = merge_lost(obj.lost)
        obj.files_lost = files_lost(m, obj.lost)
        if self.vs is not None and target is not None:
            self._settle(self.vs, d, m, target, obj, report)
        remains = obj.manifest_damaged or any(not s.repaired for s in obj.shards)
        found = obj.shards or obj.manifest_repaired or obj.manifest_damaged
        obj.status = "damaged" if remains else "repaired" if found else "healthy"
        if obj.status == "damaged" and self._gone(d, report):
            return None
        if obj.status == "damaged":
            return obj, Freshness(before.verified, self.clock())
        if obj.complete:
            return obj, Freshness(since)
        return obj, Freshness(before.verified, None, end, since)

    def _prefetch(self, d: str) -> None:
        """Have the OS start reading the object's files (its first :data:`PREFETCH`
        bytes) in the background: the disk works while the manifest is parsed, which for a
        pack of thousands of files takes longer than reading 100 MB. Only for a manifest
        of :data:`PREFETCH_FROM` bytes or more."""
        if self.vs is None:
            dirs = [self.root / d]
        else:
            dirs = [p for _, vol in self.vs.present_volumes() if (p := vol.local_path(d))]
        size = 0
        for path in dirs:
            # The first volume holding a copy says (missing ones are damage, seen later).
            with contextlib.suppress(OSError):
                size = os.lstat(path / MANIFEST).st_size
                break
        if size < PREFETCH_FROM:
            return
        for path in dirs:
            _core.prefetch(str(path), PREFETCH // len(dirs))

    def _open_dir(
        self, d: str, obj: ObjectReport, report: HealthReport
    ) -> tuple[Manifest, _core.Object | None]:
        """Manifest (copies checked and restored) and core reader of a directory object."""
        path = self.root / d
        loaded = load_dir(path, repair=not self.options.dry_run)
        m = loaded.manifest
        check_dirname(d, m)
        # An empty pack has no stripes: its manifests are all there is to check.
        core = core_object(Entry(m.name, path, m)) if m.stripes else None
        self._describe(obj, m)
        obj.manifest_repaired = list(loaded.repaired)
        for copy in (MANIFEST, REPLICA):
            if copy not in loaded.repaired:
                obj.manifest_damaged.extend(
                    (copy, p.removeprefix(f"{copy}: "))
                    for p in loaded.problems
                    if p.startswith(f"{copy}:")
                )
        self.housekeeper.extras(path, m, report)
        return m, core

    def _gone(self, d: str, report: HealthReport) -> bool:
        """Whether object directory ``d`` was removed since the plan (a replace, or another
        health run): what it lacks then is no damage. Noted in the report."""
        if self.vs is None:
            gone = not os.path.lexists(self.root / d)
        else:
            gone = not any(vol.listdir(d) for _, vol in self.vs.present_volumes())
        if gone:
            report.notes.append(f"{d}: removed while health ran (replaced or removed)")
        return gone

    @staticmethod
    def _describe(obj: ObjectReport, m: Manifest) -> None:
        obj.name, obj.size, obj.tier, obj.stripes = m.name, m.size, m.tier, len(m.stripes)

    def _open_volumes(
        self, vs: VolumeSet, d: str, obj: ObjectReport, report: HealthReport
    ) -> tuple[Manifest, Manifest, _core.Object | None]:
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
                    self.housekeeper.extras(local, target, report, volume=i)
            else:
                names = self.housekeeper.remote_extras(vol, d, target, i, report)
            if COMMITTING in names and not dry:
                with contextlib.suppress(OSError):
                    vol.remove(f"{d}/{COMMITTING}")  # the commit got as far as manifests
        core = (
            core_object(Entry(m.name, self.root / d, m, (), vs), manifest=target)
            if m.stripes
            else None
        )
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


def scrub(
    root: str | os.PathLike[str] | Archive,
    options: Options | None = None,
    clock: Clock = time.time,
    progress: Progress | None = None,
) -> HealthReport:
    """Plan and run a scrub in one call (see :class:`Health`)."""
    checker = Health(root, options, clock)
    return checker.run(checker.plan(), progress)
