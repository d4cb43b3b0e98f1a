"""The catalog: what every object's manifest says about names (the head of each manifest and
a pack's table of files, directories and links), kept in SQLite so that listing an archive
reads no manifest (FORMAT.md, "The catalog").

It is a cache, never the source of truth. Each row carries a stamp of the object's manifest
copies (inode, size, mtime and ctime of each): a scan stats them and reuses the row only if
the stamp is unchanged; a new object directory is loaded and added, a vanished one dropped,
a changed stamp reloaded. Rows are checked against a digest of their fields, so a damaged
row is reloaded from its manifest. A file that is not a catalog of this schema, or a
catalog made for another archive (its identity is stored), is replaced by a new one. The
catalog may be deleted at any time.

Where it lives: ``<archive>/.blockframe/catalog.sqlite`` for a one-directory archive;
under the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``, then
``blockframe/<hash of the archive>/catalog.sqlite``) for volume and bucket archives, and
for a directory archive that cannot hold one (read-only, or a ``.blockframe`` that is not a
real directory); in memory when neither can be used. Like health's state, ``.blockframe``
and the catalog file are never followed through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from blockframe import _core
from blockframe.archive.entry import Head, Layout
from blockframe.format.manifest import COMMITTING, MANIFEST, REPLICA
from blockframe.format.members import Member

log = logging.getLogger(__name__)

CATALOG_DIR = ".blockframe"
CATALOG_FILE = "catalog.sqlite"
CATALOG_FORMAT = "blockframe-catalog"
CATALOG_VERSION = 1

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # files: a pack's table, a JSON array of [name, type, mtime_ns, mode, offset, size,
    # content_hash, target]; layout: per stripe of a volume object, [[volume, shards], ...]
    # and its parity count; pin: the object's part of the pin (format/pin.py).
    "CREATE TABLE objects (dirname TEXT PRIMARY KEY, stamp TEXT NOT NULL, name TEXT NOT NULL,"
    " id TEXT NOT NULL, size INTEGER NOT NULL, content_hash TEXT NOT NULL,"
    " tier INTEGER NOT NULL, created TEXT NOT NULL, chunk_size INTEGER NOT NULL,"
    " kind TEXT NOT NULL, mtime_ns INTEGER, mode INTEGER, layout TEXT NOT NULL,"
    " pin TEXT NOT NULL, files TEXT NOT NULL, digest TEXT NOT NULL)",
)
_OBJECT_COLUMNS = 16
_IN_BATCH = 500  # dirnames per "IN (...)" query

# Opening a file never follows a link at its name (where the platform can say so).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

Row = tuple[str, Head]  # (stamp, head)


class CatalogUnusable(OSError):
    """The catalog file cannot be used where it is (a link, not a regular file, ...)."""


# -- stamps ---------------------------------------------------------------------------------


def _stat_stamp(path: str) -> str | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return "x"
    return f"{st.st_ino}.{st.st_size}.{st.st_mtime_ns}.{st.st_ctime_ns}"


def stamp_dir(obj_dir: str, marker: bool = False) -> str | None:
    """The stamp of the manifest copies in ``obj_dir`` (and of its commit marker), or None
    when it holds no manifest copy at all (nothing worth caching)."""
    names = (MANIFEST, REPLICA, COMMITTING) if marker else (MANIFEST, REPLICA)
    parts = [_stat_stamp(f"{obj_dir}/{n}") for n in names]
    if parts[0] is None and parts[1] is None:
        return None
    return "|".join(p or "-" for p in parts)


def stamp_of(backend: object, dirname: str) -> str | None:
    """A cheap stamp of what decides the manifest ``backend`` loads for ``dirname``: None
    when there is none (a bucket-only archive: every scan reads the manifest)."""
    volumes = getattr(backend, "volumes", None)
    root: Path = backend.root  # type: ignore[attr-defined]
    if volumes is None:
        return stamp_dir(f"{root}/{dirname}")
    parts = []
    for i, vol in volumes.present_volumes():
        local = vol.local_path()
        if local is None:
            # A bucket may hold the only copy: its changes could not be seen.
            return None
        s = stamp_dir(f"{local}/{dirname}", marker=True)
        parts.append(f"{i}:{s or '-'}")
    if not parts or all(p.endswith(":-") for p in parts):
        return None
    return ";".join(parts)


# -- rows -------------------------------------------------------------------------------------


def _digest(fields: tuple[object, ...]) -> str:
    """What a row's digest column holds: its other fields, hashed (damage, not forgery:
    the catalog is only ever as trusted as the archive directory holding it)."""
    # Fields joined by a byte no field holds (names and JSON never contain NUL): one copy
    # of the text, where repr() would escape a pack table of megabytes.
    return _core.blake3("\x00".join(map(str, fields)).encode()).hex()[:32]


def _layout_text(layout: Layout) -> str:
    return json.dumps([[list(map(list, counts)), parity] for counts, parity in layout])


def _layout_of(text: str) -> Layout:
    if text == "[]":
        return ()
    return tuple(
        (tuple((int(v), int(n)) for v, n in counts), int(parity))
        for counts, parity in json.loads(text)
    )


class Catalog:
    """Rows by object directory in one SQLite database (``where`` names it; ``:memory:``
    for one that lives as long as the process). Thread-safe; every failure of SQLite is
    logged and makes the catalog answer "nothing known" (the manifests are then read)."""

    def __init__(self, conn: sqlite3.Connection, where: str, path: Path | None = None) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.where = where
        self.path = path
        self._lock = threading.Lock()
        # Closed explicitly when the catalog goes (an archive keeps one while it lives).
        weakref.finalize(self, conn.close)

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def rows(self, dirnames: Iterable[str] | None = None) -> dict[str, Row]:
        """The usable rows of ``dirnames`` (all when None). A row that does not match its
        digest is left out (its object is then loaded and its row rewritten)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return {}
            try:
                if dirnames is None:
                    objects = conn.execute("SELECT * FROM objects").fetchall()
                else:
                    objects = []
                    wanted = list(dirnames)
                    for i in range(0, len(wanted), _IN_BATCH):
                        part = wanted[i : i + _IN_BATCH]
                        marks = ",".join("?" * len(part))
                        objects += conn.execute(
                            f"SELECT * FROM objects WHERE dirname IN ({marks})", part
                        ).fetchall()
            except sqlite3.Error as e:
                self._failed(e)
                return {}
        out: dict[str, Row] = {}
        bad = 0
        for row in objects:
            found = _row(row)
            if found is None:
                bad += 1
            else:
                out[row[0]] = found
        if bad:
            log.warning("%s: %d damaged catalog row(s), read from manifests again", self.where, bad)
        return out

    def update(self, put: Iterable[tuple[str, str, Head]], drop: Iterable[str]) -> None:
        """Replace the rows of ``put`` (dirname, stamp, head) and remove those of ``drop``."""
        objects: list[tuple[object, ...]] = []
        gone = set(drop)
        for dirname, stamp, h in put:
            gone.add(dirname)
            files = json.dumps(
                [
                    [m.name, m.type, m.mtime_ns, m.mode, m.offset, m.size, m.content_hash, m.target]
                    for m in h.members
                ],
                ensure_ascii=False,
                separators=(",", ":"),
            )
            fields = (
                dirname,
                stamp,
                h.name,
                h.id,
                h.size,
                h.content_hash,
                h.tier,
                h.created,
                h.chunk_size,
                h.kind,
                h.mtime_ns,
                h.mode,
                _layout_text(h.layout),
                h.pin or "",
                files,
            )
            objects.append((*fields, _digest(fields)))
        if not gone:
            return
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                with conn:
                    keys = [(d,) for d in gone]
                    conn.executemany("DELETE FROM objects WHERE dirname = ?", keys)
                    marks = ",".join("?" * _OBJECT_COLUMNS)
                    conn.executemany(f"INSERT INTO objects VALUES ({marks})", objects)
            except sqlite3.Error as e:
                self._failed(e)

    def _failed(self, e: sqlite3.Error) -> None:
        # Called with the lock held.
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            log.debug("%s: busy, not updated: %s", self.where, e)
            return
        log.warning("%s: catalog unusable (%s): manifests are read instead", self.where, e)
        self._close()
        if self.path is not None:
            # Damaged under us: the next opening starts a new one.
            with contextlib.suppress(OSError):
                _unlink(self.path)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


def _row(row: tuple[object, ...]) -> Row | None:
    """The stamp and head of a row of ``objects``, None if it is damaged."""
    if len(row) != _OBJECT_COLUMNS:
        return None
    fields, digest = row[:-1], row[-1]
    if _digest(fields) != digest:
        return None
    try:
        (_, stamp, name, id_, size, content_hash, tier, created, chunk_size, kind, mtime, mode) = (
            fields[:12]
        )
        files = fields[14]
        members = () if files == "[]" else tuple(Member(*m) for m in json.loads(files))  # type: ignore[arg-type]
        head = Head(
            name,  # type: ignore[arg-type]
            id_,  # type: ignore[arg-type]
            size,  # type: ignore[arg-type]
            content_hash,  # type: ignore[arg-type]
            tier,  # type: ignore[arg-type]
            created,  # type: ignore[arg-type]
            chunk_size,  # type: ignore[arg-type]
            kind,  # type: ignore[arg-type]
            mtime,  # type: ignore[arg-type]
            mode,  # type: ignore[arg-type]
            members,
            _layout_of(fields[12]),  # type: ignore[arg-type]
            fields[13] or None,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError):
        return None
    return stamp, head  # type: ignore[return-value]


# -- opening ---------------------------------------------------------------------------------


def _expected_schema() -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(":memory:")
    try:
        for sql in _SCHEMA:
            conn.execute(sql)
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def _prepare(conn: sqlite3.Connection, identity: str) -> bool:
    """Make ``conn`` a catalog of this version for ``identity``: True if it already was,
    False if it was empty (created here). Raises sqlite3.DatabaseError when it holds
    anything else (not a database, another schema or version, another archive)."""
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute("PRAGMA journal_mode = MEMORY")  # no journal file beside it, by name
    conn.execute("PRAGMA synchronous = OFF")  # a cache: damage is detected and rebuilt
    found = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    if not found:
        with conn:
            for sql in _SCHEMA:
                conn.execute(sql)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("format", CATALOG_FORMAT),
                    ("version", str(CATALOG_VERSION)),
                    ("archive", identity),
                ],
            )
        return False
    if found != _expected_schema():
        raise sqlite3.DatabaseError("not a catalog of this version")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta != {"format": CATALOG_FORMAT, "version": str(CATALOG_VERSION), "archive": identity}:
        raise sqlite3.DatabaseError("a catalog of another archive or version")
    return True


def _open_file(directory: Path, create_dir: bool) -> tuple[Path, os.stat_result, os.stat_result]:
    """Check (and create) ``directory`` and its catalog file without following a link at
    either name: the path and the stats the connection must still match."""
    if create_dir:
        with contextlib.suppress(FileExistsError):
            os.makedirs(directory, mode=0o755)
    dst = os.lstat(directory)
    if stat.S_ISLNK(dst.st_mode):
        raise CatalogUnusable(f"{directory} is a symbolic link, not followed")
    if not stat.S_ISDIR(dst.st_mode):
        raise CatalogUnusable(f"{directory} is not a directory")
    dfd = os.open(directory, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    try:
        try:
            fd = os.open(CATALOG_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CatalogUnusable(f"{CATALOG_FILE} is a symbolic link, not followed") from None
            raise
        try:
            fst = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise CatalogUnusable(f"{CATALOG_FILE} is not a regular file")
        for suffix in ("-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISLNK(os.lstat(CATALOG_FILE + suffix, dir_fd=dfd).st_mode):
                    raise CatalogUnusable(f"{CATALOG_FILE}{suffix} is a symbolic link")
    finally:
        os.close(dfd)
    return directory / CATALOG_FILE, dst, fst


def _unlink(path: Path) -> None:
    """Remove the catalog file ``path``, following no link on the way: not its name, nor a
    directory swapped for a link since it was opened."""
    dfd = os.open(path.parent, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    try:
        os.unlink(path.name, dir_fd=dfd)
    finally:
        os.close(dfd)


def _connect(directory: Path, identity: str, create_dir: bool) -> Catalog:
    """The catalog in ``directory``: reused if it is one for ``identity``, else replaced
    by a new one. OSError or sqlite3.Error when it cannot be used there."""
    for attempt in range(2):
        path, dst, fst = _open_file(directory, create_dir)
        uri = f"file:{quote(str(path))}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=2.0, check_same_thread=False)
        try:
            # Still the file and directory checked (not a link planted since).
            if not (
                os.path.samestat(os.lstat(path), fst) and os.path.samestat(os.lstat(directory), dst)
            ):
                raise CatalogUnusable(f"{path} changed while it was opened")
            _prepare(conn, identity)
            return Catalog(conn, str(path), path)
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            if attempt:
                raise
            log.info("%s: %s: made anew from the manifests", path, e)
            _unlink(path)
        except BaseException:
            conn.close()
            raise
    raise AssertionError("unreachable")


def memory_catalog() -> Catalog:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    _prepare(conn, "memory")
    return Catalog(conn, "in-memory catalog")


def cache_dir() -> Path:
    """Where catalogs of archives that cannot hold their own live."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "blockframe"


def _cache_place(identity: str) -> Path:
    return cache_dir() / _core.blake3(identity.encode()).hex()[:32]


def identity_of(backend: object) -> str | None:
    """What names an archive for its catalog: its directory's device and inode (a copy,
    or another archive at the same path, is another archive), or its volumes' label and
    locations. None when it cannot be told (then only memory is used)."""
    volumes = getattr(backend, "volumes", None)
    if volumes is None:
        root: Path = backend.root  # type: ignore[attr-defined]
        try:
            st = os.stat(root)
        except OSError:
            return None
        # Not its path: the same archive reached by another path (a link, a bind mount)
        # must not rebuild the catalog of the other; a moved archive keeps it.
        return f"directory {st.st_dev}:{st.st_ino}"
    return f"volumes {volumes.archive_id} {volumes.location}"


def open_cache_catalog(identity: str) -> Catalog:
    """A catalog in the user's cache for ``identity`` (a remote archive), else in memory."""
    try:
        return _connect(_cache_place(identity), identity, True)
    except (OSError, sqlite3.Error) as e:
        log.debug("no cached catalog for %s: %s", identity, e)
        return memory_catalog()


def open_catalog(backend: object, create: bool = True) -> Catalog | None:
    """The catalog of ``backend``'s archive: its own (a directory archive), else one in
    the user's cache, else one in memory. With ``create`` false, only a catalog that
    already exists is opened (None otherwise): lookups never create one."""
    identity = identity_of(backend)
    if identity is None:
        return memory_catalog() if create else None
    places: list[tuple[Path, bool]] = []
    if getattr(backend, "volumes", None) is None:
        places.append((backend.root / CATALOG_DIR, True))  # type: ignore[attr-defined]
    places.append((_cache_place(identity), True))
    for directory, make in places:
        if not create and not os.path.lexists(directory / CATALOG_FILE):
            continue
        try:
            return _connect(directory, identity, make and create)
        except (OSError, sqlite3.Error) as e:
            log.debug("%s: no catalog here: %s", directory, e)
    return memory_catalog() if create else None
