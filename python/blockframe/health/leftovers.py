"""What interrupted operations of ours leave behind, and what is not ours.

Left-overs that are provably ours (FORMAT.md section 15: staging directories of
interrupted commits, ``.trash`` entries, temporary files of interrupted repairs, marked
object directories of interrupted commits to volumes) are removed unless this is a dry run
or something touched them within the grace period (an operation may still be running).
Anything else that is not named by a manifest is reported as a stray, never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Literal

from blockframe.archive.directory import kind_of
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA, Manifest
from blockframe.health.plan import Clock, Options
from blockframe.health.report import HealthReport, Leftover, Stray
from blockframe.storage import Volume
from blockframe.storage.volumes import VolumeSet

log = logging.getLogger(__name__)

# Temporary files of an interrupted repair: the core's (".<shard>.repair-<pid>-<n>") and
# those of a volume's atomic writes (".<file>.tmp-<12 hex>", storage/local.py).
_REPAIR_TEMP = re.compile(r"\.(.+)\.(?:repair-\d+-\d+|tmp-[0-9a-f]{12})")
_MANIFEST_TEMP = re.compile(
    r"\.(?:manifest\.json|manifest\.replica\.json)\.tmp-(?:\d+|[0-9a-f]{12})"
)


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` and everything under it (not following links)."""
    newest = os.lstat(path).st_mtime
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


class Housekeeper:
    """Removes left-overs (unless ``options.dry_run``, or touched within
    ``options.leftover_grace`` seconds of ``clock()``) and reports strays."""

    def __init__(self, options: Options, clock: Clock) -> None:
        self.options = options
        self.clock = clock

    def clean(self, leftover: Leftover, path: Path, is_tree: bool) -> None:
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

    def incomplete(self, vs: VolumeSet, d: str, report: HealthReport) -> None:
        """An object directory that was never published (marked committing on every volume
        holding a manifest, and not every volume got its manifests) or whose removal was
        under way: a commit or removal that died; removed from every volume unless it may
        still be running."""
        leftover = Leftover(d, "staging")
        report.leftovers.append(leftover)
        young = False
        for _, vol in vs.present_volumes():
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
            for _, vol in vs.present_volumes():
                local = vol.local_path(d)
                if local is not None:
                    shutil.rmtree(local, ignore_errors=True)
                else:
                    vol.remove_tree(d)
            leftover.action = "removed"
        except OSError as e:
            leftover.action = "failed"
            leftover.detail = str(e)

    def remote_extras(
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

    def extras(
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
                        report.strays.append(Stray(f"{top}/{child}", kind_of(mode)))
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
                        report.strays.append(Stray(f"{top}/{child}", kind_of(mode)))
                    continue
                leftover = Leftover(f"{top}/{child}", kind)
                self.clean(leftover, path / child, is_tree=False)
                report.leftovers.append(leftover)
