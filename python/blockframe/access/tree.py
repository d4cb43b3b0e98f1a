"""Object names as a directory tree, built once per scan of the archive and shared by
every way of browsing it: the mount (:class:`~blockframe.access.view.ArchiveView`), the
HTTP server's catalog and the fsspec filesystem.

A name is a path: ``photos/2024/a.jpg`` is the file ``a.jpg`` in the directory
``photos/2024``, and every prefix of a name is a directory. Paths here are names without
a leading ``/``; the root is ``""``. When both ``a`` and ``a/b`` are committed the
directory wins, so ``a/b`` stays reachable, and the object ``a`` is :attr:`NameTree.hidden`.
So is an object whose name no path can reach (a backslash, from an older version: a
mounted path reads it as a separator), rather than listed and then "not found".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from blockframe.archive import Entry
from blockframe.format.members import Member
from blockframe.format.names import is_servable


def mtime_ns(entry: Entry) -> int:
    """A file's modification time in nanoseconds since the epoch: as committed, or the
    commit time for objects that did not record it."""
    return entry.mtime_ns


@dataclass(frozen=True)
class Directory:
    """One directory of the tree."""

    children: tuple[str, ...]  # the names in it (last segments), sorted by code point
    subdirs: int  # how many of them are directories
    mtime_ns: int  # as committed, else the newest file anywhere below it (0 when none)
    mode: int | None = None  # permission bits as committed (None: not recorded)


class NameTree:
    """Files, symbolic links and directories by path, computed once: looking a path up
    costs O(1) and listing a directory O(its entries).

    :attr:`entries` is every file the tree was built from, :attr:`files` those that are
    files of the tree (in name order), :attr:`links` the symbolic links, :attr:`hidden`
    the files and links that lost to a directory (or that no path can reach), and
    :attr:`dirs` every directory by path. ``dirs`` given to the constructor are directories
    a commit recorded (empty ones included), with their mtime and mode.
    """

    def __init__(
        self,
        entries: Mapping[str, Entry] | None = None,
        dirs: Mapping[str, Member] | None = None,
        links: Mapping[str, Member] | None = None,
    ) -> None:
        self.entries: Mapping[str, Entry] = entries or {}
        recorded = {k: v for k, v in (dirs or {}).items() if is_servable(k)}
        children: dict[str, dict[str, bool]] = {"": {}}  # directory -> {child: is_dir}

        def add(name: str, is_dir: bool) -> None:
            parent = ""
            *parts, last = name.split("/")
            for part in parts:
                here = f"{parent}/{part}" if parent else part
                children[parent][part] = True
                children.setdefault(here, {})
                parent = here
            if is_dir:
                children[parent][last] = True
                children.setdefault(name, {})
            else:
                children[parent].setdefault(last, False)

        given: Mapping[str, Member] = links or {}
        leaves = [*self.entries, *given]
        for name in leaves:
            if is_servable(name):
                add(name, False)
        for name in recorded:
            add(name, True)
        self.files: dict[str, Entry] = {}
        self.links: dict[str, Member] = {}
        self.hidden: dict[str, Entry | Member] = {}
        for name in sorted(leaves):
            is_file = name in self.entries
            node: Entry | Member = self.entries[name] if is_file else given[name]
            if name in children or not is_servable(name):
                self.hidden[name] = node
            elif is_file:
                self.files[name] = self.entries[name]
            else:
                self.links[name] = given[name]
        mtimes = dict.fromkeys(children, 0)
        for name, entry in self.files.items():
            t = entry.mtime_ns
            parent = name
            while parent:
                parent = parent.rpartition("/")[0]
                if mtimes[parent] >= t:
                    break  # and so is every directory above it
                mtimes[parent] = t
        self.dirs: dict[str, Directory] = {}
        for path, kids in children.items():
            rec = recorded.get(path)
            self.dirs[path] = Directory(
                tuple(sorted(kids)),
                sum(kids.values()),
                rec.mtime_ns if rec is not None else mtimes[path],
                rec.mode if rec is not None else None,
            )
        self.size = sum(e.size for e in self.files.values())

    def file(self, path: str) -> Entry | None:
        """The file at ``path``, if it is a file of the tree."""
        return self.files.get(path)

    def link(self, path: str) -> Member | None:
        """The symbolic link at ``path``, if there is one."""
        return self.links.get(path)

    def directory(self, path: str) -> Directory | None:
        """The directory at ``path`` (``""`` for the root), if there is one."""
        return self.dirs.get(path)

    def __len__(self) -> int:
        """How many files the tree has (hidden objects not counted)."""
        return len(self.files)


def child_path(directory: str, child: str) -> str:
    """The path of ``child`` in ``directory`` (``""`` for the root)."""
    return f"{directory}/{child}" if directory else child
