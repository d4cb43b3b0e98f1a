"""Restore a directory of the archive's name tree like ``cp -r``: files, empty
directories, symbolic links, mtimes and modes, every byte verified (and repaired on the
way), staged beside the destination and renamed into place only when complete.

Ownership is not restored (files belong to whoever restores them), and the setuid and
setgid bits are dropped, as ``tar`` does for a user other than root: an archive must not
be able to hand out privileges.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from blockframe import _core
from blockframe.archive.entry import Entry, Index
from blockframe.archive.reader import ArchivedObject
from blockframe.errors import IntegrityError, NotFoundError, OutputError, UsageError
from blockframe.format.members import Member
from blockframe.format.names import display_name, is_servable
from blockframe.storage.local import fsync_dir
from blockframe.testhook import crash_point

log = logging.getLogger(__name__)

NO_PRIVILEGES = ~(stat.S_ISUID | stat.S_ISGID)
CACHE_BYTES = 64 << 20
_NEW_FILE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)


@dataclass
class TreeReport:
    """What a tree restore wrote, and what it could not."""

    root: Path  # where the tree now is
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    # What could not be repaired in packs whose restored files were all intact (other files
    # of the pack hold the loss): worth a warning, not a failure of this restore.
    unrepaired_elsewhere: list[str] = field(default_factory=list)


@dataclass
class Subtree:
    """The part of the name tree under one directory, as paths relative to it."""

    name: str  # the directory's name in the archive, without a trailing slash
    files: dict[str, Entry] = field(default_factory=dict)
    links: dict[str, Member] = field(default_factory=dict)
    dirs: dict[str, Member | None] = field(default_factory=dict)  # None: not recorded
    skipped: list[str] = field(default_factory=list)  # names no path can hold


def subtree(index: Index, name: str) -> Subtree:
    """The directory ``name`` (``photos`` or ``photos/2024/``) of the index's name tree:
    NotFoundError when there is none. A file or link that is also a directory is left out,
    as the mount hides it."""
    top = name.strip("/")
    if not top:
        raise UsageError("give the directory to restore (the archive's root has no name)")
    prefix = top + "/"
    out = Subtree(top)
    leaves: dict[str, Entry | Member] = {}
    for n, e in index.entries.items():
        if n.startswith(prefix):
            leaves[n[len(prefix) :]] = e
    for n, link in index.links.items():
        if n.startswith(prefix):
            leaves[n[len(prefix) :]] = link
    dirs: dict[str, Member | None] = {"": index.dirs.get(top)}
    for n, d in index.dirs.items():
        if n.startswith(prefix):
            dirs[n[len(prefix) :]] = d
    for rel in list(leaves):
        parent = rel
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            dirs.setdefault(parent, None)
    if len(dirs) == 1 and not leaves and top not in index.dirs:
        raise NotFoundError(f"no object or directory named {display_name(name)!r}")
    for rel, node in sorted(leaves.items()):
        if rel in dirs:
            continue  # a directory of the same name wins
        if not is_servable(f"{top}/{rel}"):
            out.skipped.append(f"{top}/{rel}")
        elif isinstance(node, Entry):
            out.files[rel] = node
        else:
            out.links[rel] = node
    out.dirs = dict(sorted(dirs.items()))
    return out


def destination(tree: Subtree, output: Path | None) -> Path:
    """Where the tree goes, as ``cp -r`` decides: ``output`` itself when it does not
    exist, ``output/<basename>`` when it is a directory (default: ``./<basename>``)."""
    base = tree.name.rpartition("/")[2]
    if output is None:
        return Path(base)
    if output.is_dir():
        return output / base
    if output.exists() or output.is_symlink():
        raise OutputError(f"{output}: exists and is not a directory")
    return output


def restore_tree(
    index: Index,
    tree: Subtree,
    final: Path,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> TreeReport:
    """Write ``tree`` to ``final``: staged in a hidden directory beside it, synced, then
    renamed into place (replacing what is there only with ``force``). A file damaged
    beyond repair is left out and named in the report; the rest is restored."""
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{parent}: no such directory")
    if (final.exists() or final.is_symlink()) and not force:
        raise OutputError(f"{final}: already exists (use --force to overwrite)")
    stage = parent / f".{final.name}.blockframe-{uuid.uuid4().hex[:12]}"
    try:
        os.mkdir(stage, 0o700)
    except OSError as e:
        raise OutputError(f"{parent}: cannot write: {e.strerror}") from None
    report = TreeReport(final)
    try:
        _write(index, tree, stage, report, progress)
        crash_point("restore-tree:staged")
        _publish(stage, final, force)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for name in tree.skipped:
        report.failed.append((name, "no path can hold this name (skipped)"))
    return report


def _write(
    index: Index,
    tree: Subtree,
    stage: Path,
    report: TreeReport,
    progress: Callable[[int], None] | None,
) -> None:
    for rel in tree.dirs:
        if rel:
            os.mkdir(stage / rel, 0o700)
    cache = _core.Cache(CACHE_BYTES)
    readers: dict[str, ArchivedObject] = {}  # one reader per object, shared by its files
    done = 0
    for rel, entry in tree.files.items():
        path = stage / rel
        obj = _reader(index, entry, readers, cache)
        try:
            with open(os.open(path, _NEW_FILE, 0o600), "wb") as f:
                for piece in obj.chunks():
                    f.write(piece)
                    done += len(piece)
                    if progress:
                        progress(done)
        except IntegrityError as e:
            path.unlink(missing_ok=True)
            report.failed.append((entry.name, str(e)))
            continue
        finally:
            readers[entry.dirname].damaged.update(obj.damaged)
        os.chmod(path, entry.mode & NO_PRIVILEGES)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        report.files += 1
        report.bytes += entry.size
        crash_point("restore-tree:file")
    for rel, link in tree.links.items():
        try:
            os.symlink(link.target, stage / rel)
        except OSError as e:
            # Windows lets only administrators and Developer Mode create symbolic links:
            # the link is named in the report and the rest of the tree is still restored.
            why = e.strerror or str(e)
            report.failed.append((f"{tree.name}/{rel}", f"cannot create the link: {why}"))
            continue
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(stage / rel, ns=(link.mtime_ns, link.mtime_ns), follow_symlinks=False)
        report.links += 1
    # Deepest first: creating entries changes a directory's mtime, and a directory whose
    # mode denies writing must get it after everything inside exists.
    for rel, d in sorted(tree.dirs.items(), key=lambda kv: kv[0].count("/"), reverse=True):
        path = stage / rel if rel else stage
        if d is not None:
            os.chmod(path, d.mode & NO_PRIVILEGES)
            os.utime(path, ns=(d.mtime_ns, d.mtime_ns))
        else:
            os.chmod(path, 0o755)
        report.dirs += 1
    for obj in readers.values():
        # Parity of each object once (not once per file of a pack), then its repairs.
        obj.verify_parity()
        repaired, failed = obj.repair()
        report.repaired += repaired
        if obj.entry.head.is_pack:
            report.unrepaired_elsewhere += [f"{obj.entry.dirname}: {f}" for f in failed]
        else:
            report.unrepaired += failed
    _sync(stage)


def _reader(
    index: Index, entry: Entry, readers: dict[str, ArchivedObject], cache: _core.Cache
) -> ArchivedObject:
    whole = readers.get(entry.dirname)
    if whole is None:
        owner = index.objects.get(entry.dirname, entry)
        whole = readers[entry.dirname] = ArchivedObject(owner, cache)
    return whole.window(entry)


def _sync(stage: Path) -> None:
    """Make everything under ``stage`` durable before it is published."""
    if hasattr(os, "sync") and sys.platform != "win32":
        os.sync()  # one barrier for the whole tree instead of an fsync per file
        return
    for dirpath, _, filenames in os.walk(stage):
        for fname in filenames:
            with open(os.path.join(dirpath, fname), "rb+") as f:
                os.fsync(f.fileno())


def _publish(stage: Path, final: Path, force: bool) -> None:
    parent = stage.parent
    old: Path | None = None
    if final.exists() or final.is_symlink():
        if not force:
            raise OutputError(f"{final}: already exists (use --force to overwrite)")
        old = parent / f".{final.name}.blockframe-old-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
    try:
        os.rename(stage, final)
    except OSError as e:
        if old is not None:
            os.rename(old, final)
        raise OutputError(f"{final}: cannot write: {e.strerror}") from None
    fsync_dir(parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
