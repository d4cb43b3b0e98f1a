"""What a directory commit takes in: one walk of the folder, never following a symbolic
link, into its files, directories and links with their times and modes; and how the files
are grouped: small ones into packs, the rest one object each (FORMAT.md §18).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from blockframe.config import StorageConfig
from blockframe.errors import BlockFrameError, SourceError
from blockframe.format.members import MAX_TARGET, Member, mode_bits

# A pack holds at most this many entries, so that its manifest stays a few MB and loads in
# a fraction of a second (a file's entry is about 200 bytes of JSON).
PACK_ENTRIES = 10_000


@dataclass(frozen=True)
class SourceFile:
    """A regular file found by the walk."""

    name: str  # its name in the archive: <folder>/<relative path>
    path: Path
    size: int
    mtime_ns: int
    mode: int


@dataclass
class Folder:
    """Everything a walk found: files, and the directories and links a pack records."""

    files: list[SourceFile] = field(default_factory=list)
    dirs: list[Member] = field(default_factory=list)
    links: list[Member] = field(default_factory=list)
    failures: list[tuple[str, BlockFrameError]] = field(default_factory=list)


def walk(top: Path) -> Folder:
    """Walk ``top`` (itself a directory, named by its base name in the archive), in name
    order, without following any symbolic link. Sockets, FIFOs and devices, unreadable
    directories and link targets too long to record are failures; the rest goes on."""
    st = os.stat(top)  # the folder itself may be given through a link
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{top}: not a directory")
    base = top.resolve().name or "root"
    out = Folder()
    out.dirs.append(Member(base, "dir", st.st_mtime_ns, mode_bits(st.st_mode)))
    _walk(top, base, out)
    return out


def _walk(directory: Path, name: str, out: Folder) -> None:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:
        why = err.strerror or err
        out.failures.append((name, SourceError(f"{directory}: cannot list: {why}")))
        return
    for e in entries:
        child = f"{name}/{e.name}"
        try:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(e.path)
                if not target or len(target.encode()) > MAX_TARGET:
                    raise SourceError(f"{e.path}: symbolic link target too long to record")
                out.links.append(Member(child, "symlink", st.st_mtime_ns, target=target))
            elif stat.S_ISDIR(st.st_mode):
                out.dirs.append(Member(child, "dir", st.st_mtime_ns, mode_bits(st.st_mode)))
                _walk(Path(e.path), child, out)
            elif stat.S_ISREG(st.st_mode):
                out.files.append(
                    SourceFile(
                        child, Path(e.path), st.st_size, st.st_mtime_ns, mode_bits(st.st_mode)
                    )
                )
            else:
                raise SourceError(f"{e.path}: not a regular file, directory or link (skipped)")
        except BlockFrameError as err:
            out.failures.append((child, err))
        except OSError as err:
            out.failures.append((child, SourceError(f"{e.path}: {err.strerror or err}")))


def packable(f: SourceFile, storage: StorageConfig) -> bool:
    """Whether a file goes into a pack rather than an object of its own. Empty files always
    do: an object cannot be empty."""
    return f.size == 0 or f.size < storage.pack_max


def packs(files: list[SourceFile], storage: StorageConfig) -> Iterator[list[SourceFile]]:
    """The packable files, in order, cut into packs of at most one block of segments
    (``block_segments`` x ``segment_size`` bytes) and :data:`PACK_ENTRIES` files."""
    limit = storage.block_segments * storage.segment_size
    group: list[SourceFile] = []
    total = 0
    for f in files:
        if group and (total + f.size > limit or len(group) >= PACK_ENTRIES):
            yield group
            group, total = [], 0
        group.append(f)
        total += f.size
    if group:
        yield group
