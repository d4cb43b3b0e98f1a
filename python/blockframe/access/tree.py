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
from datetime import datetime

from blockframe.archive import Entry
from blockframe.format.names import is_servable


def mtime_ns(entry: Entry) -> int:
    """When an object was committed (its manifest's creation time), in nanoseconds since
    the epoch: the modification time every adapter reports for it."""
    return int(datetime.fromisoformat(entry.manifest.created).timestamp() * 1_000_000_000)


@dataclass(frozen=True)
class Directory:
    """One directory of the tree."""

    children: tuple[str, ...]  # the names in it (last segments), sorted by code point
    subdirs: int  # how many of them are directories
    mtime_ns: int  # the newest file anywhere below it (0 when none)


class NameTree:
    """Files by path and the children of each directory, computed once: looking a path up
    costs O(1) and listing a directory O(its entries).

    :attr:`entries` is every object the tree was built from, :attr:`files` those that are
    files of the tree (in name order), :attr:`hidden` those that lost to a directory, and
    :attr:`dirs` every directory by path.
    """

    def __init__(self, entries: Mapping[str, Entry] | None = None) -> None:
        self.entries: Mapping[str, Entry] = entries or {}
        children: dict[str, dict[str, bool]] = {"": {}}  # directory -> {child: is_dir}
        for name in self.entries:
            if not is_servable(name):
                continue
            parent = ""
            *dirs, last = name.split("/")
            for part in dirs:
                here = f"{parent}/{part}" if parent else part
                children[parent][part] = True
                children.setdefault(here, {})
                parent = here
            children[parent].setdefault(last, False)
        self.files: dict[str, Entry] = {}
        self.hidden: dict[str, Entry] = {}
        for name in sorted(self.entries):
            hidden = name in children or not is_servable(name)
            (self.hidden if hidden else self.files)[name] = self.entries[name]
        mtimes = dict.fromkeys(children, 0)
        for name, entry in self.files.items():
            t = mtime_ns(entry)
            parent = name
            while parent:
                parent = parent.rpartition("/")[0]
                if mtimes[parent] >= t:
                    break  # and so is every directory above it
                mtimes[parent] = t
        self.dirs: dict[str, Directory] = {
            path: Directory(tuple(sorted(kids)), sum(kids.values()), mtimes[path])
            for path, kids in children.items()
        }
        self.size = sum(e.manifest.size for e in self.files.values())

    def file(self, path: str) -> Entry | None:
        """The object at ``path``, if it is a file of the tree."""
        return self.files.get(path)

    def directory(self, path: str) -> Directory | None:
        """The directory at ``path`` (``""`` for the root), if there is one."""
        return self.dirs.get(path)

    def __len__(self) -> int:
        """How many files the tree has (hidden objects not counted)."""
        return len(self.files)


def child_path(directory: str, child: str) -> str:
    """The path of ``child`` in ``directory`` (``""`` for the root)."""
    return f"{directory}/{child}" if directory else child
