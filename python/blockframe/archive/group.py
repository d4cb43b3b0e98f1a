"""A directory commit (``commit -f DIR``): one walk of the folder, small files packed
together, the others one object each, all written first and published together under the
commit lock (FORMAT.md §12 and §18).

Order: (1) walk the folder, never following links; (2) sort out what is new, unchanged or
in conflict with what the archive holds; (3) stage every object (packs and single files,
each durable in its staging directory); (4) under the commit lock, check the names again
and publish, then remove objects every name of which is now given by newer ones. A crash
before (4) leaves nothing visible; during (4), a prefix of the objects, each complete.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blockframe.archive.commit import ObjectMeta, Staged, check_manifest_fits, hash_file
from blockframe.archive.entry import CommitResult, Entry, Index, Progress
from blockframe.archive.folder import PACK_ENTRIES, SourceFile, packable, packs, walk
from blockframe.config import StorageConfig
from blockframe.errors import BlockFrameError, ConflictError, SourceError
from blockframe.format.layout import pack_storage
from blockframe.format.members import PACK, PACK_PREFIX, Member
from blockframe.format.names import validate_name
from blockframe.testhook import crash_point

if TYPE_CHECKING:
    from blockframe.archive.archive import Archive

log = logging.getLogger(__name__)

Failures = list[tuple[str, BlockFrameError]]


@dataclass
class _Plan:
    """What a directory commit will do."""

    unchanged: list[CommitResult] = field(default_factory=list)
    # (file, the entry it replaces or None)
    singles: list[tuple[SourceFile, Entry | None]] = field(default_factory=list)
    packed: list[tuple[SourceFile, Entry | None]] = field(default_factory=list)
    # Directories and links to record (new or changed).
    others: list[Member] = field(default_factory=list)
    failures: Failures = field(default_factory=list)


def commit_folder(
    archive: Archive,
    top: Path,
    replace: bool = False,
    progress: Callable[[str, int], Progress | None] | None = None,
) -> tuple[list[CommitResult], Failures]:
    """Commit the folder ``top`` as ``<basename>/<relative path>``: the results of the files
    that went in (committed, unchanged, replaced), and the failures (the rest still goes
    in)."""
    folder = walk(top)
    index = archive.scan() if archive.backend.exists() else Index()
    plan = _plan(index, folder.files, folder.dirs + folder.links, replace, archive.storage)
    plan.failures[:0] = folder.failures
    if not plan.singles and not plan.packed and not plan.others:
        return plan.unchanged, plan.failures
    archive.backend.prepare()
    staged: list[tuple[Staged, list[tuple[SourceFile, Entry | None]]]] = []
    try:
        for f, old in plan.singles:
            try:
                check_manifest_fits(f.path, f.size, archive.storage)
                cb = progress(f.name, f.size) if progress else None
                meta = ObjectMeta("file", f.mtime_ns, f.mode)
                s = archive.backend.stage(f.path, f.size, f.name, archive.storage, cb, meta)
            except BlockFrameError as e:
                plan.failures.append((f.name, e))
                continue
            staged.append((s, [(f, old)]))
        for group, extra in _pack_groups(plan, archive):
            try:
                staged.append((_stage_pack(archive, group, extra), group))
            except BlockFrameError as e:
                plan.failures.extend((f.name, e) for f, _ in group)
                if not group:
                    plan.failures.extend((m.name, e) for m in extra)
        crash_point("folder-commit:staged")
        with archive.backend.locked():
            results = _publish(archive, staged, replace, plan.failures)
    finally:
        for s, _ in staged:
            s.abandon()
    return plan.unchanged + results, plan.failures


def _plan(
    index: Index,
    files: list[SourceFile],
    others: list[Member],
    replace: bool,
    storage: StorageConfig,
) -> _Plan:
    """Sort the walk's findings against what ``index`` holds: a file of the same size and
    content is unchanged, of other content a conflict unless ``replace``; a directory or
    link recorded as it is now is left alone."""
    plan = _Plan()
    for f in files:
        try:
            validate_name(f.name)
        except BlockFrameError as e:
            plan.failures.append((f.name, e))
            continue
        old = index.entries.get(f.name)
        if old is not None and old.size == f.size:
            try:
                same = f.size == 0 or hash_file(f.path) == old.content_hash
            except SourceError as e:
                plan.failures.append((f.name, e))
                continue
            if same:
                plan.unchanged.append(CommitResult(f.name, "unchanged", old))
                continue
        if old is not None and not replace:
            plan.failures.append((f.name, _conflict(f.name)))
            continue
        (plan.packed if packable(f, storage) else plan.singles).append((f, old))
    changed = []
    for m in others:
        if m.type == "dir" and _same_dir(index.dirs.get(m.name), m):
            continue
        if m.type == "symlink" and _same_link(index.links.get(m.name), m):
            continue
        # A directory's time or mode may change; a file or another link becoming this is
        # a conflict like a file's new content.
        taken = m.name in index.entries or (m.type == "symlink" and m.name in index.links)
        if taken and not replace:
            plan.failures.append((m.name, _conflict(m.name)))
            continue
        changed.append(m.name)
    if plan.singles or plan.packed or changed:
        # Anything written records every directory and link again (those in conflict
        # aside), so that older packs end up wholly replaced and can go.
        refused = {n for n, _ in plan.failures}
        plan.others = [m for m in others if m.name not in refused]
    return plan


def _conflict(name: str) -> ConflictError:
    return ConflictError(
        f"{name!r} is already archived with different content (use --replace to replace it)"
    )


def _same_dir(old: Member | None, new: Member) -> bool:
    return old is not None and (old.mtime_ns, old.mode) == (new.mtime_ns, new.mode)


def _same_link(old: Member | None, new: Member) -> bool:
    return old is not None and (old.target, old.mtime_ns) == (new.target, new.mtime_ns)


def _pack_groups(
    plan: _Plan, archive: Archive
) -> list[tuple[list[tuple[SourceFile, Entry | None]], list[Member]]]:
    """The packs to write: the packable files cut by size and count, and the directories
    and links in the last pack while it has room (in packs of their own otherwise)."""
    by_file = {id(f): (f, old) for f, old in plan.packed}
    groups: list[tuple[list[tuple[SourceFile, Entry | None]], list[Member]]] = [
        ([by_file[id(f)] for f in group], [])
        for group in packs([f for f, _ in plan.packed], archive.storage)
    ]
    others = list(plan.others)
    while others:
        if not groups or len(groups[-1][0]) + len(groups[-1][1]) >= PACK_ENTRIES:
            groups.append(([], []))
        room = PACK_ENTRIES - len(groups[-1][0]) - len(groups[-1][1])
        groups[-1][1].extend(others[:room])
        del others[:room]
    return groups


def _stage_pack(
    archive: Archive, group: list[tuple[SourceFile, Entry | None]], extra: list[Member]
) -> Staged:
    """Write one pack: its files back to back, its table in the manifest (with each file's
    content hash, which the core computes as it reads)."""
    # The table lists the files in the order of their bytes (the order the core reads
    # them and returns their hashes in), then the directories and links.
    files: list[Member] = []
    offset = 0
    for f, _ in group:
        files.append(Member(f.name, "file", f.mtime_ns, f.mode, offset, f.size))
        offset += f.size
    table = (*files, *sorted(extra, key=lambda m: m.name))
    source = [(str(f.path), f.size) for f, _ in group]
    name = f"{PACK_PREFIX}{uuid.uuid4().hex}"
    storage = pack_storage(offset, archive.storage) if offset else archive.storage
    return archive.backend.stage(
        source, offset, name, storage, None, ObjectMeta(PACK, members=table)
    )


def _publish(
    archive: Archive,
    staged: Sequence[tuple[Staged, list[tuple[SourceFile, Entry | None]]]],
    replace: bool,
    failures: Failures,
) -> list[CommitResult]:
    """Under the commit lock: check again that no concurrent commit took a name meanwhile,
    publish, then remove what is now wholly replaced."""
    index = archive.scan()
    results: list[CommitResult] = []
    replaced: set[str] = set()
    published: list[Entry] = []
    for s, group in staged:
        raced = [
            f.name
            for f, old in group
            if (now := index.entries.get(f.name)) is not None
            and (old is None or now.dirname != old.dirname)
            and not replace
        ]
        if raced:
            why = ConflictError("archived by another commit meanwhile; commit again")
            failures.extend((n, why) for n in raced)
            failures.extend((f.name, why) for f, _ in group if f.name not in raced)
            continue
        entry = archive.backend.publish(s)
        crash_point("folder-commit:published")
        published.append(entry)
        by_name = {m.name: m for m in s.manifest.members}
        for f, old in group:
            got = entry.member_entry(by_name[f.name]) if s.manifest.is_pack else entry
            results.append(
                CommitResult(f.name, "committed", got)
                if old is None
                else CommitResult(f.name, "replaced", got)
            )
        # Whatever gave these names before (a file's object or pack, a pack recording a
        # directory or a link now recorded again) may now give none.
        names = [m.name for m in s.manifest.members] or [s.name]
        replaced.update(d for n in names if (d := index.given_by(n)) is not None)
    if replaced:
        _discard_replaced(archive, replaced)
    archive.remember(published)
    return results


def _discard_replaced(archive: Archive, dirnames: set[str]) -> None:
    """Remove the objects among ``dirnames`` that give no name any more: a file object
    whose name a newer object now gives, a pack once every entry of its table is given by
    newer objects (FORMAT.md §18.3)."""
    index = archive.scan()
    for dirname in sorted(dirnames):
        entry = index.objects.get(dirname)
        if entry is None:
            continue
        names = [m.name for m in entry.manifest.members] or [entry.name]
        if all(index.given_by(n) not in (None, dirname) for n in names):
            try:
                archive.backend.discard(entry)
            except OSError as e:
                log.warning("%s: cannot remove the replaced object: %s", dirname, e)
