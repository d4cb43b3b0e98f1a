"""The torture engine: a seeded, reproducible randomized loop over a small-geometry archive.

Every step is chosen by ``random.Random(seed)``: commit a file, or a folder as a directory
(its small files into packs, FORMAT.md section 18); kill a ``blockframe commit``, ``restore``
or ``health`` subprocess at a test-hook point the seed picks (``BLOCKFRAME_CRASH_AT``, never
a wall-clock delay); damage shards or manifests (within or beyond parity); read every file,
of an object or of a pack, through ``Archive.open().read``, ``blockframe restore -o -``, a
real FUSE mount and a real ``blockframe serve``; and run ``blockframe health`` (sometimes
``--dry-run``).

The oracle is a model of the damage computed from the files themselves: every file of every
object is snapshotted right after its commit, and a chunk position of a stripe is *lost* when
more shards than there are parity shards differ from their snapshot there. Then, at every step:

- every byte returned (by any reader) is the original byte; a read may fail only where a
  range lost beyond parity lies under the bytes asked for (for a file of a pack: under its own
  bytes in the pack), or when both manifest copies are damaged;
- no file of an object is ever rewritten into anything but its original bytes ("never worse");
- ``health`` exits 0 and leaves every file byte-identical to its snapshot when all damage is
  within parity; exits 1 naming every object with damage beyond parity, and never writes
  wrong bytes into it; ``--dry-run`` changes nothing and exits 1 iff any damage exists;
- after a crash, ``list --json`` shows only complete objects, each restoring byte-identically,
  and ``health`` removes the leftovers (made older than an hour with ``os.utime``).

Any violation raises :class:`TortureFailure` whose message starts with ``seed=S step=N`` so
``scripts/torture --seed S`` reproduces it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from blockframe.archive import Archive, Entry, open_archive_at
from blockframe.archive.entry import Index
from blockframe.errors import IntegrityError, NotFoundError
from blockframe.format.manifest import COMMITTING
from blockframe.testhook import ENV

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import CONFIG_TOML, SMALL, data  # noqa: E402

# Files of a folder under PACK_MAX bytes go into packs (FORMAT.md section 18); packs hold at
# most one block (4 x 8 KiB), so a folder of a few files gives one or two packs.
PACK_MAX = 12_000
STORAGE = dataclasses.replace(SMALL, pack_max=PACK_MAX)
TORTURE_TOML = CONFIG_TOML + f"pack_max = {PACK_MAX}\n"
PARITY = SMALL.parity_shards
CHUNK = SMALL.chunk_size
# A read through the mount is refused whole when the kernel's request, which reaches up to
# the readahead window (1 MiB) past it and is up to 1 MiB itself, touches a lost chunk.
MOUNT_SLACK = 2 << 20
MANIFESTS = ("manifest.json", "manifest.replica.json")
HOUR = 3600


class TortureFailure(AssertionError):
    pass


def fuse_available() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None


def vm_hwm(pid: int) -> int:
    """Peak resident set of a process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Obj:
    name: str  # a file object's name; a pack's own name (.pack/<32 hex>)
    src: Path
    content: bytes  # a pack: its members' bytes back to back, in table order
    dirname: str
    geometry: list[list[tuple[str, int]]]  # stripes -> [(rel path, size)], data then parity
    ndata: list[int]
    orig: dict[str, bytes]  # every file of the object right after commit
    state: dict[str, bytes | None] = field(default_factory=dict)  # last known (None: missing)
    manifests: tuple[str, ...] = MANIFESTS  # keys of every manifest copy
    # The names the object gives: name -> (offset, size) in ``content``.
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    # What orders objects for the seeded choices (a pack's own name is random).
    key: str = ""


@dataclass
class File:
    """A name readers are asked for: a file object, or a file of a pack (a window onto the
    pack's bytes at ``offset``)."""

    name: str
    obj: Obj
    offset: int
    size: int

    @property
    def content(self) -> bytes:
        return self.obj.content[self.offset : self.offset + self.size]

    @property
    def packed(self) -> bool:
        return self.obj.name != self.name


@dataclass
class Stats:
    steps: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    folders: int = 0  # directory commits (counted in commits too)
    packed_files: int = 0  # files of those that went into packs
    pack_shards_damaged: int = 0
    packs_beyond_parity: int = 0  # by damage-beyond
    packed_bytes_verified: int = 0  # read back from files of packs (any reader)
    packed_refused: int = 0  # refusals of files of packs (each under a lost range)
    crashes: int = 0
    finished_by_health: int = 0  # files of killed commits health finished (volumes)
    finished_damaged: int = 0  # such commits damaged by volume losses first (removed)
    # kill point -> times chosen ("... (not reached)": the command finished first)
    kill_points: Counter[str] = field(default_factory=Counter)
    shards_damaged: int = 0
    manifests_damaged: int = 0
    beyond_parity_objects: int = 0
    reads: int = 0
    reads_refused: int = 0
    bytes_verified: int = 0
    repairs: int = 0  # damaged files observed back to their original bytes
    health_runs: int = 0
    mounts: int = 0
    servers: int = 0
    headless_unusable: int = 0
    wrong_bytes: int = 0
    recoverable_lost: int = 0
    peak_rss_mount: int = 0
    peak_rss_server: int = 0

    def merge(self, other: Stats) -> None:
        for k, v in vars(other).items():
            if k in ("actions", "kill_points"):
                getattr(self, k).update(v)
            elif k.startswith("peak_"):
                setattr(self, k, max(getattr(self, k), v))
            else:
                setattr(self, k, getattr(self, k) + v)

    def summary(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["actions"] = dict(sorted(self.actions.items()))
        d["kill_points"] = dict(sorted(self.kill_points.items()))
        return d


class Engine:
    def __init__(
        self,
        seed: int,
        root: Path,
        *,
        log: Callable[[str], None] | None = None,
        mount_every: int = 25,
        serve_every: int = 25,
        max_objects: int = 10,
        max_size: int = 260_000,
        volumes: int = 0,
        exact: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.root = root
        self.step = 0
        self.log_fn = log or (lambda s: None)
        self.mount_every = mount_every
        self.serve_every = serve_every
        self.max_objects = max_objects
        self.max_size = max_size
        # exact: leave out the two choices whose outcome the seed does not fix (pack names
        # are random and order health's scrub; repairs of one stripe run in parallel, so
        # others may be done when health:repaired fires).
        self.exact = exact
        self.stats = Stats()
        self.objects: dict[str, Obj] = {}
        self.counter = 0
        # Files of killed commits that were not published: health may yet finish such a
        # commit (a volume archive whose volume without manifests was lost and replaced).
        self.pending: dict[Path, dict[str, bytes]] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.archive_dir = root / "archive"
        # volumes > 0: a volume archive over root/disk0 ... (files keyed relative to root);
        # a whole volume is sometimes lost and replaced by an empty directory.
        self.volumes = [root / f"disk{i}" for i in range(volumes)]
        self.archive: Archive
        if volumes:
            listed = ", ".join(f'"{v}"' for v in self.volumes)
            (root / "config.toml").write_text(
                TORTURE_TOML.replace('directory = "archive"', f"volumes = [{listed}]")
            )
            for v in self.volumes:
                v.mkdir(exist_ok=True)
            self.archive = open_archive_at([str(v) for v in self.volumes], STORAGE)
        else:
            (root / "config.toml").write_text(TORTURE_TOML)
            self.archive = Archive(self.archive_dir, STORAGE)
        self.environ = {
            k: v
            for k, v in os.environ.items()
            if k not in ("BLOCKFRAME_CONFIG", "BLOCKFRAME_TOKEN")
        }
        self.environ["XDG_CONFIG_HOME"] = str(root / "xdg")

    # -- helpers ---------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        self.log_fn(f"seed={self.seed} step={self.step} {msg}")

    def check(self, cond: object, msg: str) -> None:
        if not cond:
            raise TortureFailure(
                f"seed={self.seed} step={self.step} {msg} "
                f"(reproduce: scripts/torture --seed {self.seed})"
            )

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "blockframe", *args],
            cwd=self.root,
            env=self.environ,
            capture_output=True,
            timeout=timeout,
        )

    def popen(self, *args: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "blockframe", *args],
            cwd=self.root,
            env=self.environ,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def odir(self, o: Obj) -> Path:
        """What the object's file keys are relative to."""
        return self.root if self.volumes else self.archive_dir / o.dirname

    def homes(self) -> list[Path]:
        """The directories holding object directories: the archive, or every volume."""
        return self.volumes or [self.archive_dir]

    def read_state(self, o: Obj) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for rel in o.orig:
            try:
                out[rel] = (self.odir(o) / rel).read_bytes()
            except FileNotFoundError:
                out[rel] = None
        return out

    def bad_chunks(self, o: Obj, rel: str, cur: bytes | None) -> set[int]:
        orig = o.orig[rel]
        n = -(-len(orig) // CHUNK)
        if cur is None:
            return set(range(n))
        bad = {
            p
            for p in range(n)
            if cur[p * CHUNK : (p + 1) * CHUNK] != orig[p * CHUNK : (p + 1) * CHUNK]
        }
        if len(cur) > len(orig):
            bad |= set(range(n))  # oversized: the shard as a whole is suspect
        return bad

    def damaged_files(self, o: Obj) -> list[str]:
        return [rel for rel, cur in o.state.items() if cur != o.orig[rel]]

    def lost(self, o: Obj) -> bool:
        """Beyond parity: both manifest copies damaged, or a chunk position of a stripe with
        more bad shards than parity shards."""
        if all(o.state[m] != o.orig[m] for m in o.manifests):
            return True
        for stripe in o.geometry:
            per_pos: Counter[int] = Counter()
            for rel, _size in stripe:
                for p in self.bad_chunks(o, rel, o.state[rel]):
                    per_pos[p] += 1
            if any(c > PARITY for c in per_pos.values()):
                return True
        return False

    def marked(self, o: Obj) -> bool:
        """A volume commit's ``.committing`` marker is still in one of its directories."""
        return any((v / o.dirname / COMMITTING).exists() for v in self.volumes)

    def unusable(self, o: Obj) -> bool:
        return all(o.state[m] != o.orig[m] for m in o.manifests)

    def bad_shards_in_stripe(self, o: Obj, si: int) -> set[str]:
        return {rel for rel, _ in o.geometry[si] if o.state[rel] != o.orig[rel]}

    def observe(self, what: str) -> None:
        """Never worse: every file is either its original bytes or unchanged since last seen."""
        for o in self.objects.values():
            cur = self.read_state(o)
            for rel, now in cur.items():
                before = o.state[rel]
                if now == before:
                    continue
                self.check(
                    now == o.orig[rel],
                    f"after {what}: {o.name}/{rel} rewritten into bytes that are neither the "
                    f"original nor the previous state (lost={self.lost(o)})",
                )
                self.stats.repairs += 1
            o.state = cur

    def expect_bytes(self, o: File, offset: int, got: bytes, via: str) -> None:
        want = o.content[offset : offset + len(got)]
        if got != want:
            wrong = sum(1 for a, b in zip(got, want, strict=False) if a != b) + abs(
                len(got) - len(want)
            )
            self.stats.wrong_bytes += wrong
            self.check(
                False, f"{via}: {o.name} [{offset}, +{len(got)}) returned {wrong} wrong bytes"
            )
        self.stats.bytes_verified += len(got)
        self.stats.packed_bytes_verified += len(got) if o.packed else 0

    def lost_ranges(self, o: Obj) -> list[tuple[int, int]]:
        """File byte ranges beyond parity: chunk positions of a stripe with more bad shards
        than parity shards, over the data shards of that stripe."""
        out = []
        start = 0
        for si, stripe in enumerate(o.geometry):
            per_pos: Counter[int] = Counter()
            for rel, _size in stripe:
                for p in self.bad_chunks(o, rel, o.state[rel]):
                    per_pos[p] += 1
            lost = {p for p, c in per_pos.items() if c > PARITY}
            for _rel, size in stripe[: o.ndata[si]]:
                for p in sorted(lost):
                    a = p * CHUNK
                    if a < size:
                        out.append((start + a, start + min(size, a + CHUNK)))
                start += size
        return out

    def stripes_span(self, o: Obj, a: int, b: int) -> tuple[int, int]:
        """The bytes of ``o`` held by the stripes that bytes ``[a, b)`` lie in."""
        lo, hi, at = b, a, 0
        for si, stripe in enumerate(o.geometry):
            n = sum(size for _rel, size in stripe[: o.ndata[si]])
            if at < b and a < at + n:
                lo, hi = min(lo, at), max(hi, at + n)
            at += n
        return (lo, hi) if lo < hi else (a, b)

    def refused(
        self,
        f: File,
        via: str,
        detail: object,
        span: tuple[int, int],
        slack: int = 0,
        whole: bool = False,
    ) -> None:
        """A reader refused bytes ``span`` of file ``f``: only allowed when both manifest
        copies of its object are damaged or a lost range of the object overlaps the span
        (widened by ``slack`` bytes each side for a mount, whose kernel reads ahead and fails
        the whole request). A file of a pack is a window at ``f.offset`` onto the pack: only
        the pack's lost ranges under the file's own bytes excuse a refusal. ``whole``: the
        reader failed after every byte, on a shard it could not repair: any loss in the
        stripes the file lies in excuses it."""
        o = f.obj
        a, b = f.offset + span[0], f.offset + span[1]
        if whole:
            a, b = self.stripes_span(o, f.offset, f.offset + max(1, f.size))
        a, b = a - slack, b + slack
        allowed = self.unusable(o) or any(x < b and a < y for x, y in self.lost_ranges(o))
        if not allowed:
            self.stats.recoverable_lost += 1
        where = f" (in {o.name} at {f.offset})" if f.packed else ""
        self.check(
            allowed,
            f"{via}: {f.name}{where} refused [{span[0]}, {span[1]}), which parity could "
            f"rebuild (lost: {self.lost_ranges(o)}): {detail!r}",
        )
        self.stats.reads_refused += 1
        self.stats.packed_refused += f.packed

    # -- actions ---------------------------------------------------------------------------

    def new_file(self) -> tuple[str, Path, bytes]:
        self.counter += 1
        tier = self.rng.choice((1, 1, 2, 2, 3))
        lo, hi = {
            1: (1, SMALL.tier1_max - 1),
            2: (SMALL.tier1_max, SMALL.tier2_max - 1),
            3: (SMALL.tier2_max, self.max_size),
        }[tier]
        if self.rng.random() < 0.3:  # sizes at and around chunk/segment boundaries
            base = self.rng.choice(
                (CHUNK, SMALL.segment_size, SMALL.segment_size * SMALL.block_segments)
            )
            size = max(lo, min(hi, base * self.rng.randint(1, 12) + self.rng.randint(-1, 1)))
        else:
            size = self.rng.randint(lo, hi)
        name = f"d{self.counter % 3}/f{self.counter}-t{tier}.bin"
        content = data(size, seed=self.seed * 100_003 + self.counter)
        src = self.root / "src" / name.replace("/", "_")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(content)
        return name, src, content

    def adopt(self, name: str, src: Path, content: bytes) -> Obj:
        """Snapshot the file object ``name`` just committed from ``src``."""
        entry = self.archive.get(name)
        return self.adopt_entry(entry, src, content, {name: (0, len(content))}, name)

    @staticmethod
    def folder_dirs(index: Index, top: Path, names: set[str]) -> dict[str, Entry]:
        """The published objects giving ``names`` and every pack under the folder ``top``."""
        prefix = f"{top.name}/"
        found: dict[str, Entry] = {}
        for name in sorted(names):
            entry = index.entries[name]
            found.setdefault(entry.dirname, index.objects[entry.dirname])
        for d, entry in index.objects.items():
            members = entry.manifest.members if entry.manifest.is_pack else ()
            if any(x.name.startswith(prefix) for x in members):
                found.setdefault(d, entry)
        return found

    def adopt_folder(self, top: Path, sources: dict[str, bytes], names: set[str]) -> None:
        """Snapshot the published objects of the folder ``top`` (whose files' bytes are
        ``sources``) that the engine does not know yet: those giving ``names``, and every
        pack under the folder (one holding only directories gives no file name)."""
        index = self.archive.scan()
        known = {o.dirname for o in self.objects.values()}
        found = self.folder_dirs(index, top, names)

        def key(e: Entry) -> str:
            return min(x.name for x in e.manifest.members) if e.manifest.is_pack else e.name

        for entry in sorted(found.values(), key=key):
            if entry.dirname in known:
                continue
            m = entry.manifest
            if not m.is_pack:
                self.adopt_entry(
                    entry, top, sources[entry.name], {entry.name: (0, m.size)}, key(entry)
                )
                continue
            table = sorted((x for x in m.members if x.type == "file"), key=lambda x: x.offset)
            missing = [x.name for x in table if x.name not in sources]
            self.check(not missing, f"pack {m.name} holds files not committed: {missing}")
            content = b"".join(sources[x.name] for x in table)
            self.check(len(content) == m.size, f"pack {m.name}: table does not add up")
            self.check(
                all(sources[x.name] == content[x.offset : x.offset + x.size] for x in table),
                f"pack {m.name}: a file's bytes are not at its offset",
            )
            files = {x.name: (x.offset, x.size) for x in table}
            self.adopt_entry(entry, top, content, files, key(entry), pack=m.name)

    def adopt_entry(
        self,
        entry: Entry,
        src: Path,
        content: bytes,
        files: dict[str, tuple[int, int]],
        key: str,
        pack: str | None = None,
    ) -> Obj:
        m = entry.manifest
        d = entry.dirname
        if self.volumes:
            geometry = [
                [(f"disk{s.volume}/{d}/{s.path}", s.size) for s in st.shards] for st in m.stripes
            ]
            manifests = tuple(
                f"disk{v}/{d}/{c}" for v in range(len(self.volumes)) for c in MANIFESTS
            )
        else:
            geometry = [[(s.path, s.size) for s in st.shards] for st in m.stripes]
            manifests = MANIFESTS
        base = self.root if self.volumes else entry.path
        orig = {rel: (base / rel).read_bytes() for st in geometry for rel, _ in st}
        # A commit killed between two volumes' manifests is complete (every shard is in
        # place) but some copies are missing: their original is the manifest all the same.
        body = m.to_json() if self.volumes else None
        for rel in manifests:
            orig[rel] = body if body is not None else (base / rel).read_bytes()
        name = pack if pack is not None else entry.name
        o = Obj(
            name,
            src,
            content,
            d,
            geometry,
            [len(st.data) for st in m.stripes],
            orig,
            {},
            manifests,
            files,
            key,
        )
        o.state = self.read_state(o)
        self.objects[name] = o
        return o

    def retire(self, o: Obj, why: str) -> None:
        self.log(f"retire {o.name} ({why})")
        for home in self.homes():
            shutil.rmtree(home / o.dirname, ignore_errors=True)
        del self.objects[o.name]

    def new_folder(self) -> tuple[Path, dict[str, bytes]]:
        """A small folder ``p<N>``: a few files in nested directories, some empty, most small
        enough for a pack (some at chunk boundaries), now and then one of its own; sometimes
        an empty directory. Returns it and its files by archive name."""
        self.counter += 1
        top = self.root / "src" / f"p{self.counter}"
        top.mkdir(parents=True)
        sources: dict[str, bytes] = {}
        for i in range(self.rng.randint(1, 6)):
            r = self.rng.random()
            if r < 0.2:
                size = 0
            elif r < 0.35:
                size = max(1, min(PACK_MAX - 1, CHUNK * self.rng.randint(1, 11)))
                size += self.rng.randint(-1, 1)
            elif r < 0.9:
                size = self.rng.randint(1, PACK_MAX - 1)
            else:
                size = self.rng.randint(PACK_MAX, 2 * SMALL.tier1_max)
            rel = self.rng.choice(("", "a/", "a/b/", "c/")) + f"f{i}.bin"
            content = data(size, seed=self.seed * 100_003 + self.counter * 101 + i)
            (top / rel).parent.mkdir(parents=True, exist_ok=True)
            (top / rel).write_bytes(content)
            sources[f"{top.name}/{rel}"] = content
        if self.rng.random() < 0.3:
            (top / "empty").mkdir()
        return top, sources

    def act_commit(self) -> None:
        name, src, content = self.new_file()
        self.log(f"action=commit name={name} size={len(content)}")
        if self.rng.random() < 0.25 or self.stats.commits == 0:
            r = self.cli("commit", "-f", str(src), "--name", name)
            self.check(r.returncode == 0, f"commit failed: {r.stderr!r}")
        else:
            self.archive.commit(src, name)
        self.stats.commits += 1
        o = self.adopt(name, src, content)
        self.check(
            self.archive.open(name).read(0, len(content)) == content,
            "fresh commit reads back wrong",
        )
        self.stats.bytes_verified += len(content)
        del o

    def act_commit_folder(self) -> None:
        """A directory commit: small files into packs, the others objects of their own."""
        top, sources = self.new_folder()
        sizes = sorted(len(c) for c in sources.values())
        self.log(f"action=commit-folder dir={top.name} sizes={sizes}")
        if self.rng.random() < 0.5:
            r = self.cli("commit", "-f", str(top))
            self.check(r.returncode == 0, f"folder commit failed: {r.stderr!r}")
        else:
            _results, failures = self.archive.commit_tree(top)
            self.check(not failures, f"folder commit failed: {failures}")
        self.stats.commits += 1
        self.stats.folders += 1
        self.adopt_folder(top, sources, set(sources))
        for name, content in sorted(sources.items()):
            got = self.archive.open(name).read(0, len(content) + 1)
            self.check(got == content, f"fresh commit of {name} reads back wrong")
            self.stats.bytes_verified += len(got)
        self.stats.packed_files += sum(
            1 for f in self.all_files() if f.packed and f.name in sources
        )

    def settle_pending(self, reports: dict[str, Any] | None = None) -> set[str]:
        """Volume archives: health (finished or killed) may publish a killed commit whose
        one volume without manifests was lost and replaced (FORMAT.md section 17). Every file
        of it now listed must restore exactly (or be refused with a correct prefix); it is
        then adopted, or removed when the volume losses left it damaged (the engine never
        snapshotted it, so it cannot judge it further). ``reports``: health's report by
        directory. Returns the directories handled."""
        if not self.pending:
            return set()
        listed = self.listing()
        adopted = {n for o in self.objects.values() for n in o.files}
        handled: set[str] = set()
        for src, sources in sorted(self.pending.items()):
            names = (set(listed) & set(sources)) - adopted
            index = self.archive.scan()
            known = {o.dirname for o in self.objects.values()}
            dirs = set(self.folder_dirs(index, src, names)) - known
            if not dirs:
                continue
            good = True
            for name in sorted(names):
                r = self.cli("restore", name, "-o", "-")
                if r.returncode == 0:
                    self.expect_bytes_raw(name, sources[name], r.stdout)
                else:
                    self.check(
                        r.stdout == sources[name][: len(r.stdout)],
                        f"finished {name}: a failed restore wrote wrong bytes",
                    )
                    good = False
            if reports is not None:
                good = good and all(
                    reports.get(d, {}).get("status") in (None, "healthy", "repaired") for d in dirs
                )
            if good:
                try:
                    self.adopt_folder(src, sources, names)
                except FileNotFoundError:
                    good = False
            if good:
                self.log(f"health finished a killed commit: {sorted(names)} in {sorted(dirs)}")
                self.stats.finished_by_health += len(names)
            else:
                self.log(f"health finished a killed commit damaged by lost volumes: {sorted(dirs)}")
                for d in dirs:
                    for home in self.homes():
                        shutil.rmtree(home / d, ignore_errors=True)
                for o in [o for o in self.objects.values() if o.dirname in dirs]:
                    del self.objects[o.name]
                self.stats.finished_damaged += 1
            handled |= dirs
        return handled

    def listing(self) -> dict[str, dict[str, Any]]:
        r = self.cli("list", "--json")
        self.check(r.returncode == 0, f"list --json failed: {r.stderr!r}")
        doc = json.loads(r.stdout)
        return {x["name"]: x for x in doc["objects"]}

    def crash_env(self, point: str) -> dict[str, str]:
        return {**self.environ, ENV: point}

    def run_killed(self, point: str, *args: str) -> int:
        """Run ``blockframe ARGS`` with the kill point ``point`` (the test hook); its exit
        code (-SIGKILL when the point was reached, else the command finished)."""
        r = subprocess.run(
            [sys.executable, "-m", "blockframe", *args],
            cwd=self.root,
            env=self.crash_env(point),
            capture_output=True,
            timeout=120,
        )
        killed = r.returncode == -signal.SIGKILL
        self.stats.crashes += killed
        self.stats.kill_points[point.partition("@")[0] + ("" if killed else " (not reached)")] += 1
        if not killed:
            self.check(
                b"Traceback" not in r.stderr, f"{args[0]} with {point}: {r.stderr[-2000:]!r}"
            )
        return r.returncode

    def commit_point(self, folder: bool) -> str:
        """A kill point of a file commit (or a folder's), for this kind of archive; ``@n``
        counts passages (one per volume, or per object of a folder), some beyond the last."""
        # A file commit passes each point once: @1 (never reached) now and then.
        n = self.rng.randrange(3) if folder else int(self.rng.random() < 0.15)
        if self.volumes:
            v = self.rng.randrange(len(self.volumes) * (2 if folder else 1))
            points = [
                f"volume-commit:placed@{v}",
                f"volume-commit:manifests@{v}",
                f"volume-commit:marker-removed@{v}",
            ]
        else:
            points = [f"commit:staged@{n}", f"commit:published@{n}"]
        if folder:
            points += ["folder-commit:staged", f"folder-commit:published@{n}"]
        else:
            points += ["commit:locking", "commit:locked"]
        return self.rng.choice(points)

    def act_crash_commit(self) -> None:
        folder = self.rng.random() < 0.35 and not self.exact
        if folder:
            top, sources = self.new_folder()
            args = ("commit", "-f", str(top))
            what = f"dir={top.name} sizes={sorted(len(c) for c in sources.values())}"
        else:
            name, src, content = self.new_file()
            sources = {name: content}
            args = ("commit", "-f", str(src), "--name", name)
            what = f"name={name} size={len(content)}"
        point = self.commit_point(folder)
        self.log(f"action=crash-commit {what} at={point}")
        code = self.run_killed(point, *args)
        self.check(code in (0, -signal.SIGKILL), f"commit exit {code} at {point}")
        listed = self.listing()
        known = {f.name for f in self.all_files()}
        self.check(
            set(listed) - known <= set(sources),
            f"list shows unknown objects after crash: {sorted(set(listed) - known)}",
        )
        if code == 0:
            self.check(set(sources) <= set(listed), f"completed commit not all listed: {listed}")
        visible = [
            p.name
            for home in self.homes()
            for p in home.iterdir()
            if not p.name.startswith(".") and not (p / COMMITTING).exists()
        ]
        new = sorted(set(listed) & set(sources))
        for name in new:
            r = self.cli("restore", name, "-o", "-")
            self.check(
                r.returncode == 0, f"crashed-but-listed {name} does not restore: {r.stderr!r}"
            )
            self.expect_bytes_raw(name, sources[name], r.stdout)
        if new:
            if folder:
                self.adopt_folder(top, sources, set(new))
            else:
                self.adopt(name, src, content)
            # An object published in part is not a thing: each is all listed or not at all.
            for o in self.objects.values():
                for n in o.files:
                    if n in sources:
                        self.check(n in listed, f"{n} of a published object is not listed")
        # Health may yet finish what was not published (volume archives); a folder's pack
        # of directories only gives no name a listing could show.
        self.pending[top if folder else src] = sources
        known_dirs = {o.dirname for o in self.objects.values()}
        self.check(
            set(visible) <= known_dirs,
            f"crash left a visible partial object: {sorted(set(visible) - known_dirs)}",
        )

    def expect_bytes_raw(self, name: str, want: bytes, got: bytes, packed: bool = False) -> None:
        self.stats.packed_bytes_verified += len(got) if packed else 0
        if got != want:
            self.stats.wrong_bytes += max(
                1, sum(1 for a, b in zip(got, want, strict=False) if a != b)
            )
            self.check(False, f"{name}: restored bytes differ from the source")
        self.stats.bytes_verified += len(got)

    def pick(self, stored: bool = False) -> Obj | None:
        """A random object (``stored``: one with shards; an empty pack has none)."""
        objs = sorted(
            (o for o in self.objects.values() if o.geometry or not stored), key=lambda o: o.key
        )
        return self.rng.choice(objs) if objs else None

    def all_files(self) -> list[File]:
        return sorted(
            (
                File(n, o, off, size)
                for o in self.objects.values()
                for n, (off, size) in o.files.items()
            ),
            key=lambda f: f.name,
        )

    def pick_file(self) -> File | None:
        files = self.all_files()
        return self.rng.choice(files) if files else None

    def file_of(self, o: Obj) -> File:
        """The first file of ``o`` (a file object's only one)."""
        return next(f for f in self.all_files() if f.obj is o)

    def damage_file(self, o: Obj, rel: str, kind: str, offset: int | None = None) -> None:
        p = self.odir(o) / rel
        if not p.exists():
            return
        raw = bytearray(p.read_bytes())
        n = len(raw)
        off = offset if offset is not None else self.rng.randrange(max(1, n))
        if kind == "flip" and n:
            raw[off % n] ^= 1 << self.rng.randrange(8)
            p.write_bytes(bytes(raw))
        elif kind == "truncate":
            with open(p, "r+b") as f:
                f.truncate(min(off, max(0, n - 1)))
        elif kind == "delete":
            p.unlink()
        elif kind == "zero" and n:
            off %= n
            length = self.rng.randint(1, 3 * CHUNK)
            end = min(n, off + length)
            if raw[off:end] == bytes(end - off):  # already zero: flip instead
                raw[off % n] ^= 0x80
            else:
                raw[off:end] = bytes(end - off)
            p.write_bytes(bytes(raw))
        elif kind == "garbage" and n:
            for i in range(off % 7, n, 7):
                raw[i] ^= 0xA5
            p.write_bytes(bytes(raw))

    def act_damage(self, beyond: bool, o: Obj | None = None) -> None:
        o = o or self.pick(stored=True)
        if o is None:
            return
        si = self.rng.randrange(len(o.geometry))
        stripe = [rel for rel, _ in o.geometry[si]]
        kinds = ("flip", "truncate", "delete", "zero", "garbage", "swap")
        already = self.bad_shards_in_stripe(o, si)
        lost_before = self.lost(o)
        if beyond:
            count = min(len(stripe), PARITY + 1)
            targets = self.rng.sample(stripe, count)
            kind = self.rng.choice(("flip", "delete", "zero", "truncate"))
            shared = self.rng.randrange(
                max(1, min((o.orig[t] and len(o.orig[t])) or 1 for t in targets))
            )
            self.log(
                f"action=damage-beyond name={o.name} stripe={si} kind={kind} "
                f"shards={targets} at={shared}"
            )
            for t in targets:
                self.damage_file(o, t, kind, shared)
        else:
            room = PARITY - len(already)
            if room <= 0:
                self.log(f"action=damage-within name={o.name} stripe={si} skipped (no room)")
                return
            kind = self.rng.choice(kinds)
            equal = [
                (a, b)
                for i, (a, sa) in enumerate(o.geometry[si])
                for (b, sb) in o.geometry[si][i + 1 :]
                if sa == sb and a not in already and b not in already
            ]
            if kind == "swap" and room >= 2 and equal:
                a, b = self.rng.choice(equal)
                self.log(
                    f"action=damage-within name={o.name} stripe={si} kind=swap shards={[a, b]}"
                )
                pa, pb, tmp = self.odir(o) / a, self.odir(o) / b, self.odir(o) / "swap.tmp"
                if pa.exists() and pb.exists():
                    os.rename(pa, tmp)
                    os.rename(pb, pa)
                    os.rename(tmp, pb)
            else:
                kind = "flip" if kind == "swap" else kind
                free = [r for r in stripe if r not in already]
                targets = self.rng.sample(free, self.rng.randint(1, min(room, len(free))))
                self.log(
                    f"action=damage-within name={o.name} stripe={si} kind={kind} shards={targets}"
                )
                for t in targets:
                    self.damage_file(o, t, kind)
        before = {r for r, c in o.state.items() if c != o.orig[r]}
        o.state = self.read_state(o)
        after = {r for r, c in o.state.items() if c != o.orig[r]}
        self.stats.shards_damaged += len(after - before)
        if o.name.startswith(".pack/"):
            self.stats.pack_shards_damaged += len(after - before)
        if self.lost(o) and not lost_before:
            self.stats.beyond_parity_objects += 1
            self.stats.packs_beyond_parity += o.name.startswith(".pack/")
        self.check(
            beyond or lost_before or not self.lost(o),
            f"engine bug: within-parity damage of {o.name} is beyond",
        )

    def act_damage_manifest(self) -> None:
        o = self.pick()
        if o is None:
            return
        both = self.rng.random() < 0.2
        lost_before = self.lost(o)
        copies = list(o.manifests) if both else [self.rng.choice(o.manifests)]
        kind = self.rng.choice(("flip", "truncate", "delete", "zero", "garbage"))
        self.log(f"action=damage-manifest name={o.name} copies={copies} kind={kind}")
        for c in copies:
            self.damage_file(o, c, kind)
        before = o.state
        o.state = self.read_state(o)
        self.stats.manifests_damaged += sum(o.state[c] != before[c] for c in copies)
        if both and self.lost(o) and not lost_before:
            self.stats.beyond_parity_objects += 1

    def act_lose_volume(self) -> None:
        """A whole volume is lost and an empty directory put in its place."""
        if not self.volumes:
            return
        v = self.rng.randrange(len(self.volumes))
        self.log(f"action=lose-volume disk{v}")
        lost_before = {o.name for o in self.objects.values() if self.lost(o)}
        shutil.rmtree(self.volumes[v])
        self.volumes[v].mkdir()
        for o in self.objects.values():
            before = o.state
            o.state = self.read_state(o)
            self.stats.shards_damaged += sum(
                1 for k in o.state if o.state[k] != before[k] and k not in o.manifests
            )
            if self.lost(o) and o.name not in lost_before:
                self.stats.beyond_parity_objects += 1

    def act_read(self) -> None:
        f = self.pick_file()
        if f is None:
            return
        o = f.obj
        off = self.rng.randrange(max(1, f.size))
        size = self.rng.choice((1, 100, CHUNK, 5000, f.size + 1))
        self.log(f"action=read name={f.name} offset={off} size={size} lost={self.lost(o)}")
        self.stats.reads += 1
        try:
            got = self.archive.open(f.name).read(off, size)
        except NotFoundError as e:  # hidden: no usable manifest copy left
            self.check(self.unusable(o), f"Archive.open: {f.name} not found: {e}")
            self.refused(f, "Archive.open", e, (0, f.size))
            return
        except IntegrityError as e:
            self.refused(f, "Archive.read", e, (off, min(off + size, f.size)))
            return
        self.check(len(got) == max(0, min(size, f.size - off)), f"short read {len(got)}")
        self.expect_bytes(f, off, got, "Archive.read")

    def act_restore(self) -> None:
        f = self.pick_file()
        if f is None:
            return
        self.log(f"action=restore name={f.name} lost={self.lost(f.obj)}")
        self.stats.reads += 1
        r = self.cli("restore", f.name, "-o", "-")
        if r.returncode != 0:
            # Only a file of a pack may fail after all its bytes: a parity shard of a
            # stripe it lies in was beyond repair, for another file's lost range.
            self.check(
                f.packed or not r.stdout or len(r.stdout) < f.size,
                "failed restore wrote everything",
            )
            # Failing after all the bytes (a shard it could not repair) is judged whole.
            whole = len(r.stdout) == f.size > 0
            last = r.stderr.rstrip(b"\n").rsplit(b"\n", 1)[-1]
            self.check(
                b"Traceback" not in r.stderr
                and (
                    b"could not repair" in r.stderr
                    if whole
                    else last.startswith(b"blockframe: error:")
                ),
                f"restore failure is not a one-line error: {r.stderr!r}",
            )
            self.refused(f, "restore", r.stderr, (len(r.stdout), f.size), whole=whole)
            # whatever was streamed before the failure is still verified bytes
            self.expect_bytes(f, 0, r.stdout, "restore (partial)")
            return
        self.expect_bytes_raw(f.name, f.content, r.stdout, f.packed)

    def age_leftovers(self) -> None:
        past = time.time() - 2 * HOUR
        for home in self.homes():
            for base in (home / ".staging", home / ".trash"):
                if base.is_dir():
                    for p in base.rglob("*"):
                        os.utime(p, (past, past), follow_symlinks=False)
                    for p in base.iterdir():
                        os.utime(p, (past, past), follow_symlinks=False)
            known = {o.dirname for o in self.objects.values()}
            for top in home.iterdir() if home.is_dir() else ():
                if top.name.startswith("."):
                    continue
                # Interrupted volume commits: whole marked directories age.
                pattern = "*" if top.name not in known else ".*"
                for p in [top, *top.rglob(pattern)] if pattern == "*" else top.rglob(pattern):
                    os.utime(p, (past, past), follow_symlinks=False)

    def act_health(self, dry_run: bool | None = None, age: bool | None = None) -> None:
        if dry_run is None:
            dry_run = self.rng.random() < 0.3
        if age is None:
            age = self.rng.random() < 0.7
        if age:
            self.age_leftovers()
        lost = {o.name for o in self.objects.values() if self.lost(o)}
        damaged = {o.name for o in self.objects.values() if self.damaged_files(o)}
        self.log(
            f"action=health dry_run={dry_run} aged={age} lost={sorted(lost)} "
            f"damaged={sorted(damaged)}"
        )
        before = {o.name: dict(o.state) for o in self.objects.values()}
        t = time.perf_counter()
        r = self.cli("health", "--json", *(("--dry-run",) if dry_run else ()))
        self.health_time = time.perf_counter() - t
        self.stats.health_runs += 1
        self.check(r.returncode in (0, 1), f"health exit {r.returncode}: {r.stderr!r}")
        doc = json.loads(r.stdout)
        by_dir = {x["directory"].rstrip("/").rsplit("/", 1)[-1]: x for x in doc["objects"]}
        strays = {x["path"] for x in doc["strays"]}
        # An object directory whose two manifest copies are both gone cannot be verified any
        # more: health must report it unusable and exit 1 (found by this suite, seed 1000).
        headless = {
            o.name for o in self.objects.values() if all(o.state[m] is None for m in o.manifests)
        }
        # A volume commit killed after its manifests but before removing every marker, whose
        # manifests are then all lost before any health run, is indistinguishable from an
        # interrupted commit: health may treat it as one (FORMAT.md section 17).
        leftover_dirs = {x["path"]: x["action"] for x in doc["leftovers"]}
        as_leftover = {
            o.name
            for o in self.objects.values()
            if o.name in headless and self.marked(o) and o.dirname in leftover_dirs
        }
        # Every file of an object gone from every volume (volumes lost one after another
        # with no health run between): nothing is left that could name it.
        vanished = {
            o.name for o in self.objects.values() if all(o.state[k] is None for k in o.orig)
        }
        vanished_dirs = {self.objects[n].dirname for n in vanished}
        lost -= as_leftover | vanished
        headless -= as_leftover | vanished
        # A vanished object whose empty directories still look like one is unusable.
        shown = {n for n in vanished if self.objects[n].dirname in by_dir}
        # Objects the engine does not know: a killed commit health finished (see
        # settle_pending), or, in a dry run, could finish; lost volumes may have damaged it.
        finished = set(by_dir) - {o.dirname for o in self.objects.values()}
        self.check(not finished or self.volumes, f"health reported unknown objects {finished}")
        broken = {d for d in finished if by_dir[d]["status"] in ("damaged", "unusable")}
        counted = lost | headless | shown | broken | (damaged if dry_run else set())
        want = {1} if counted else {0}
        self.check(
            r.returncode in want,
            f"health exit {r.returncode}, expected {want} (lost={sorted(lost)}, "
            f"damaged={sorted(damaged)}, headless={sorted(headless)}): "
            f"{[(k, v['status']) for k, v in by_dir.items() if v['status'] != 'healthy']}",
        )
        self.stats.headless_unusable += len(headless)
        for o in list(self.objects.values()):
            rep = by_dir.get(o.dirname)
            if o.name in vanished:
                self.check(
                    rep is None or rep["status"] == "unusable", f"{o.dirname} vanished: {rep}"
                )
                if not dry_run:
                    self.retire(o, "every file lost")
                continue
            if o.name in as_leftover:
                self.check(rep is None, f"{o.dirname} both a leftover and an object")
                if leftover_dirs[o.dirname] == "removed":
                    self.retire(o, "headless and marked: removed as an interrupted commit")
                continue
            if o.name in headless:
                self.check(
                    rep is not None and rep["status"] == "unusable",
                    f"{o.dirname} without manifests not reported unusable: {rep}",
                )
                self.check(o.dirname not in strays, f"{o.dirname} called a stray")
                continue
            self.check(
                rep is not None,
                f"health did not report {o.dirname}: {sorted(by_dir)} "
                f"skipped={doc['skipped']} strays={doc['strays']}",
            )
            assert rep is not None
            if o.name in lost:
                self.check(
                    rep["status"] in ("damaged", "unusable"), f"{o.name} lost but {rep['status']}"
                )
            elif o.name in damaged:
                want_status = "damaged" if dry_run else "repaired"
                self.check(
                    rep["status"] == want_status,
                    f"{o.name} within parity but {rep['status']}: {rep}",
                )
                self.check(
                    not rep["lost"], f"{o.name}: within-parity damage reported lost: {rep['lost']}"
                )
            else:
                self.check(rep["status"] == "healthy", f"{o.name} undamaged but {rep['status']}")
        known = {o.dirname for o in self.objects.values() if o.name in headless}
        # Empty directories of vanished objects are strays on their volumes.
        known |= {f"{v}/{d}" for v in self.volumes for d in vanished_dirs}
        self.check(strays <= known, f"unexpected strays: {sorted(strays - known)}")
        if dry_run:
            for o in self.objects.values():
                self.check(self.read_state(o) == before[o.name], f"--dry-run changed {o.name}")
        else:
            self.observe("health")
            if finished:
                handled = self.settle_pending(by_dir)
                self.check(
                    finished <= handled, f"health reported unknown objects {sorted(finished)}"
                )
            for o in list(self.objects.values()):
                if o.name in as_leftover:
                    continue  # kept as a recent left-over: removed by an aged run
                if o.name in lost:
                    self.retire(o, "beyond parity, reported by health")
                else:
                    bad = self.damaged_files(o)
                    self.check(not bad, f"health exit 0 but {o.name} still differs: {bad}")
            if age:
                for home in self.homes():
                    staging = home / ".staging"
                    left = list(staging.iterdir()) if staging.is_dir() else []
                    self.check(not left, f"aged staging leftovers not removed: {left}")
                    known = {o.dirname for o in self.objects.values()}
                    extra = {p.name for p in home.iterdir() if not p.name.startswith(".")}
                    self.check(
                        extra <= known, f"aged incomplete objects not removed: {extra - known}"
                    )
            else:
                for lo in doc["leftovers"]:
                    self.check(lo["action"] in ("removed", "kept-recent"), f"leftover {lo}")

    def act_crash_restore(self) -> None:
        f = self.pick_file()
        if f is None:
            return
        o = f.obj
        out = self.root / "restored.out"
        out.unlink(missing_ok=True)
        # writing@n: after the n-th piece written; pieces are 4 MiB, so @1 is never reached
        # here (the restore finishes), nor is @0 for an empty file.
        point = self.rng.choices(
            ("restore:writing@0", "restore:synced", "restore:writing@1"), weights=(9, 9, 2)
        )[0]
        self.log(f"action=crash-restore name={f.name} at={point} lost={self.lost(o)}")
        code = self.run_killed(point, "restore", f.name, "-o", str(out))
        if out.exists():
            self.check(code != -signal.SIGKILL, f"restore killed at {point} left its output")
            # Exit 1 with an output: every byte out, a shard left unrepaired.
            self.expect_bytes_raw(f.name, f.content, out.read_bytes(), f.packed)
            out.unlink()
        else:
            self.check(code != 0, f"restore exit 0 without output of {f.name}")
            if code != -signal.SIGKILL:  # a read failed: no output at all
                self.refused(f, "restore -o", code, (0, f.size))
        strays = [p.name for p in self.root.iterdir() if p.name.startswith(".restored")]
        self.check(not strays, f"killed restore left {strays}")

    def act_crash_health(self) -> None:
        if not any(self.damaged_files(o) for o in self.objects.values()):
            self.act_damage(beyond=False)
        stripes = sum(len(o.geometry) for o in self.objects.values())
        point = self.rng.choice(
            (
                "health:planned",
                f"health:stripe@{self.rng.randrange(stripes + 2)}",
                f"health:repaired@{self.rng.randrange(4)}",
            )[: 2 if self.exact else 3]
        )
        self.log(f"action=crash-health at={point}")
        self.run_killed(point, "health")
        self.observe("killed health")
        if self.volumes:
            self.settle_pending()  # it may have finished a killed commit before dying

    # -- mount and server --------------------------------------------------------------------

    def ranges(self, f: File) -> list[tuple[int, int]]:
        out = []
        for _ in range(self.rng.randint(1, 4)):
            off = self.rng.randrange(max(1, f.size))
            out.append((off, self.rng.choice((1, 4096, 10_000, max(1, f.size)))))
        return out

    def act_mount(self) -> None:
        if not fuse_available() or not self.objects:
            return
        mnt = self.root / "mnt"
        mnt.mkdir(exist_ok=True)
        self.log("action=mount")
        logf = open(self.root / "mount.log", "ab")  # noqa: SIM115
        proc = self.popen("mount", "-m", str(mnt), stderr=logf)
        deadline = time.monotonic() + 20
        try:
            while not os.path.ismount(mnt):
                self.check(
                    proc.poll() is None and time.monotonic() < deadline, "mount did not come up"
                )
                time.sleep(0.05)
            self.stats.mounts += 1
            for _ in range(self.rng.randint(3, 10)):
                f = self.pick_file()
                assert f is not None
                for off, size in self.ranges(f):
                    self.stats.reads += 1
                    try:
                        with open(mnt / f.name, "rb", buffering=0) as fh:
                            fh.seek(off)
                            got = b""
                            while len(got) < size:
                                piece = fh.read(size - len(got))
                                if not piece:
                                    break
                                got += piece
                    except OSError as e:
                        unusable = self.unusable(f.obj)
                        allowed = (errno.EIO, errno.ENOENT) if unusable else (errno.EIO,)
                        self.check(e.errno in allowed, f"mount read error {e!r}")
                        span = (off, min(off + size, f.size))
                        self.refused(f, "mount", e, span, slack=MOUNT_SLACK)
                        continue
                    want = max(0, min(size, f.size - off))
                    self.check(len(got) == want, f"mount short read of {f.name}")
                    self.expect_bytes(f, off, got, "mount")
            self.stats.peak_rss_mount = max(self.stats.peak_rss_mount, vm_hwm(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
            logf.close()
        self.check(code == 0, f"mount exited {code}")
        self.observe("mount")

    def start_server(self) -> tuple[subprocess.Popen[bytes], str, Path]:
        logp = self.root / f"serve-{self.step}.log"
        logf = open(logp, "wb")  # noqa: SIM115
        proc = self.popen("serve", "-p", "0", stderr=logf)
        logf.close()
        deadline = time.monotonic() + 20
        while True:
            text = logp.read_text(errors="replace")
            if "serving " in text and " at http://" in text:
                line = next(x for x in text.splitlines() if " at http://" in x)
                return proc, line.split(" at ", 1)[1].split()[0], logp
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                self.check(False, f"server did not come up: {text}")
            time.sleep(0.05)

    def stop_server(self, proc: subprocess.Popen[bytes], logp: Path) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        text = logp.read_text(errors="replace")
        self.check(code == 0, f"server exited {code}")
        self.check("Traceback" not in text, f"server logged a traceback: {text[-2000:]}")
        logp.unlink()

    def http_read(self, c: httpx.Client, f: File, off: int, size: int) -> None:
        self.stats.reads += 1
        url = "/api/files/" + f.name
        end = off + size - 1
        got = b""
        # An empty file has no byte to ask a range of: it is asked for whole.
        headers = {"Range": f"bytes={off}-{end}"} if f.size else {}
        try:
            with c.stream("GET", url, headers=headers) as r:
                if r.status_code >= 500:
                    self.refused(f, "http", r.status_code, (off, min(end + 1, f.size)))
                    return
                want = 206 if f.size else 200
                self.check(r.status_code == want, f"http status {r.status_code} for a valid range")
                for piece in r.iter_raw():
                    got += piece
        except httpx.RemoteProtocolError as e:  # stream cut at damage found mid-way
            span = (off + len(got), min(end + 1, f.size))
            self.refused(f, "http (stream cut)", e, span)
            self.expect_bytes(f, off, got, "http (partial)")
            return
        self.check(len(got) == max(0, min(size, f.size - off)), f"http short body {len(got)}")
        self.expect_bytes(f, off, got, "http")

    def act_serve(self) -> None:
        if not self.objects:
            return
        self.log("action=serve")
        proc, url, logp = self.start_server()
        self.stats.servers += 1
        try:
            with httpx.Client(base_url=url, timeout=20) as c:
                listed = {x["name"] for x in c.get("/api/files").json()}
                usable = {f.name for f in self.all_files() if not self.unusable(f.obj)}
                self.check(
                    usable <= listed, f"server lists {sorted(listed)}, expected {sorted(usable)}"
                )
                for _ in range(self.rng.randint(3, 10)):
                    f = self.pick_file()
                    assert f is not None
                    if f.name not in listed:
                        continue
                    for off, size in self.ranges(f):
                        self.http_read(c, f, off, size)
            self.stats.peak_rss_server = max(self.stats.peak_rss_server, vm_hwm(proc.pid))
        finally:
            self.stop_server(proc, logp)
        self.observe("serve")

    # -- the loop --------------------------------------------------------------------------

    def one_step(self) -> None:
        self.step += 1
        self.stats.steps += 1
        if len(self.objects) < 3:
            action = "commit"
        elif self.mount_every and self.step % self.mount_every == 0:
            action = "mount"
        elif self.serve_every and self.step % self.serve_every == self.serve_every // 2:
            action = "serve"
        else:
            action = self.rng.choices(
                (
                    "commit",
                    "commit-folder",
                    "crash-commit",
                    "damage-within",
                    "damage-beyond",
                    "damage-manifest",
                    "read",
                    "restore",
                    "health",
                    "crash-health",
                    "crash-restore",
                    "lose-volume",
                ),
                weights=(
                    *(10, 0 if self.exact else 5, 6, 20, 5, 5, 20, 8, 10, 3, 3),
                    3 if self.volumes else 0,
                ),
            )[0]
        self.stats.actions[action] += 1
        if action == "commit":
            if len(self.objects) >= self.max_objects:
                o = self.pick()
                assert o is not None
                self.retire(o, "archive full")
            self.act_commit()
            self.observe("commit")
        elif action == "commit-folder":
            if len(self.objects) >= self.max_objects:
                o = self.pick()
                assert o is not None
                self.retire(o, "archive full")
            self.act_commit_folder()
            self.observe("commit-folder")  # its scan repairs a bad manifest copy
        elif action == "crash-commit":
            self.act_crash_commit()
            self.observe("crash-commit")  # list/restore repair a bad manifest copy
        elif action == "damage-within":
            self.act_damage(beyond=False)
        elif action == "damage-beyond":
            self.act_damage(beyond=True)
        elif action == "damage-manifest":
            self.act_damage_manifest()
        elif action == "read":
            self.act_read()
            self.observe("read")
        elif action == "restore":
            self.act_restore()
            self.observe("restore")
        elif action == "health":
            self.act_health()
        elif action == "crash-health":
            self.act_crash_health()
        elif action == "crash-restore":
            self.act_crash_restore()
            self.observe("crash-restore")
        elif action == "lose-volume":
            self.act_lose_volume()
        elif action == "mount":
            self.act_mount()
        elif action == "serve":
            self.act_serve()

    def finish(self) -> None:
        """Final oracle: a full health (leftovers aged) brings the archive back; then every
        remaining object restores byte-identically and a second health is clean."""
        self.step += 1
        self.act_health(dry_run=False, age=True)
        if any(o for o in self.objects.values() if self.damaged_files(o)):
            self.check(False, "damage left after final health")
        self.step += 1
        self.age_leftovers()
        r = self.cli("health", "--json")
        doc = json.loads(r.stdout)
        self.check(
            r.returncode == 0 and doc["status"] == "healthy",
            f"second health not healthy: {doc['status']}",
        )
        self.check(
            not doc["leftovers"] and not doc["strays"],
            f"leftovers after health: {doc['leftovers']}",
        )
        listed = self.listing()
        files = self.all_files()
        self.check(
            set(listed) == {f.name for f in files},
            f"final list {sorted(listed)} != {sorted(f.name for f in files)}",
        )
        for f in files:
            r = self.cli("restore", f.name, "-o", "-")
            self.check(r.returncode == 0, f"final restore of {f.name} failed: {r.stderr!r}")
            self.expect_bytes_raw(f.name, f.content, r.stdout, f.packed)

    def run(self, steps: int | None = None, seconds: float | None = None) -> Stats:
        start = time.monotonic()
        while True:
            if steps is not None and self.step >= steps:
                break
            if seconds is not None and time.monotonic() - start >= seconds:
                break
            try:
                self.one_step()
            except TortureFailure:
                raise
            except Exception as e:
                raise TortureFailure(
                    f"seed={self.seed} step={self.step} unexpected {e!r} "
                    f"(reproduce: scripts/torture --seed {self.seed})"
                ) from e
        self.finish()
        return self.stats
