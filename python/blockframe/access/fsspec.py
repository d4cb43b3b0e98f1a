"""An fsspec filesystem (protocol ``blockframe``) over a local or remote archive.

Registered through the ``fsspec.specs`` entry point, so no import is needed::

    pandas.read_parquet("blockframe://dataset/part-0.parquet",
                        storage_options={"archive": "/data/archive"})
    pandas.read_csv("blockframe://logs/2024.csv",
                    storage_options={"archive": "http://server:8080", "token": "..."})

Read-only. Object names are paths: ``dataset/part-0.parquet`` is the file ``part-0.parquet``
in the directory ``dataset``. Files open as the verified file objects of
:meth:`blockframe.api.BlockFrameArchive.open`.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from fsspec.spec import AbstractFileSystem

from blockframe.access.api import BlockFrameArchive, FileInfo
from blockframe.access.tree import NameTree, child_path
from blockframe.archive import Entry
from blockframe.errors import NotFoundError, UsageError

__all__ = ["BlockFrameFileSystem"]


class BlockFrameFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Read-only fsspec access to a BlockFrame archive.

    Storage options: ``archive``, a local archive directory or the ``http(s)://`` URL of
    ``blockframe serve``, with ``token`` for a server (its bearer token; default
    ``$BLOCKFRAME_TOKEN``) and ``pin`` to refuse any content but the pinned archive's.
    ``url`` is accepted for a server too, but only where fsspec
    passes it through (``fsspec.filesystem``, ``fsspec.open``): ``fsspec.core.url_to_fs``,
    which pandas and dask call, has a parameter of that name and refuses it.
    Listings are cached for ``listing_ttl`` seconds (``invalidate_cache()`` drops them);
    opening a file always looks the name up afresh.
    """

    protocol = "blockframe"
    root_marker = ""

    def __init__(
        self,
        archive: str | os.PathLike[str] | None = None,
        url: str | None = None,
        token: str | None = None,
        listing_ttl: float = 1.0,
        pin: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (archive is None) == (url is None):
            raise ValueError("blockframe: give exactly one of the storage options archive / url")
        location = os.fspath(archive) if archive is not None else str(url)
        if url is not None and not location.startswith(("http://", "https://")):
            raise ValueError(f"blockframe: url must start with http:// or https://: {url!r}")
        for option, value in (("token", token), ("pin", pin)):
            if value is not None and not location.startswith(("http://", "https://")):
                raise ValueError(f"blockframe: {option} is for a server URL, not a local archive")
        self.archive = BlockFrameArchive(location, token, pin=pin)
        self.listing_ttl = listing_ttl
        self._lock = threading.Lock()
        self._tree: NameTree | None = None
        self._listed = 0.0

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = os.fspath(path)
        for prefix in ("blockframe://", "blockframe::"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        return text.strip("/")

    # -- the listing ----------------------------------------------------------------------

    def _listing(self, refresh: bool = False) -> NameTree:
        with self._lock:
            stale = time.monotonic() - self._listed > self.listing_ttl
            if self._tree is None or refresh or stale:
                self._tree = self.archive.tree()
                self._listed = time.monotonic()
            return self._tree

    def invalidate_cache(self, path: str | None = None) -> None:
        with self._lock:
            self._tree = None
        super().invalidate_cache(path)

    @staticmethod
    def _file_entry(entry: Entry) -> dict[str, Any]:
        info = FileInfo.from_entry(entry)
        return {
            "name": info.name,
            "size": info.size,
            "type": "file",
            "tier": info.tier,
            "status": info.status,
            "id": info.id,
            "content_hash": info.content_hash,
            "created": info.created,
            "mtime": info.mtime_ns / 1e9,
            "mode": info.mode,
        }

    def _entry(self, path: str, tree: NameTree) -> dict[str, Any] | None:
        entry = tree.file(path)
        if entry is not None:
            return self._file_entry(entry)
        link = tree.link(path)
        if link is not None:
            # Never followed: the target is text for the caller, as local fsspec gives it.
            return {
                "name": path,
                "size": 0,
                "type": "other",
                "islink": True,
                "destination": link.target,
                "mtime": link.mtime_ns / 1e9,
            }
        directory = tree.directory(path)
        if directory is not None:
            out: dict[str, Any] = {"name": path, "size": 0, "type": "directory"}
            if directory.mode is not None:
                out.update(mtime=directory.mtime_ns / 1e9, mode=directory.mode)
            return out
        return None

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        for refresh in (False, True):
            found = self._entry(path, self._listing(refresh))
            if found is not None:
                return found
        raise FileNotFoundError(errno.ENOENT, "no such file or directory in the archive", path)

    def ls(self, path: str = "", detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        for refresh in (False, True):
            tree = self._listing(refresh)
            directory = tree.directory(path)
            if directory is not None:
                children = [child_path(path, c) for c in directory.children]
                if not detail:
                    return children
                return [e for c in children if (e := self._entry(c, tree)) is not None]
            entry = tree.file(path)
            if entry is not None:
                return [self._file_entry(entry)] if detail else [path]
        raise FileNotFoundError(errno.ENOENT, "no such file or directory in the archive", path)

    # -- reading --------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> io.BufferedReader:
        if mode != "rb":
            raise PermissionError(errno.EROFS, "a BlockFrame archive is read-only", path)
        path = self._strip_protocol(path)
        try:
            return self.archive.open(path, buffer_size=block_size)
        except NotFoundError:
            if self._listing(refresh=True).directory(path) is not None:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path) from None
            raise FileNotFoundError(errno.ENOENT, "no such file in the archive", path) from None
        except UsageError as e:
            raise FileNotFoundError(errno.ENOENT, str(e), path) from None

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        with self._open(path) as f:
            size = f.raw.size  # type: ignore[attr-defined]
            lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
            hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            if hi <= lo:
                return b""
            f.seek(lo)
            return f.read(hi - lo)

    def created(self, path: str) -> datetime:
        return datetime.fromisoformat(self.info(path)["created"])

    def modified(self, path: str) -> datetime:
        """The file's modification time as committed (for files committed before that was
        recorded: when they were committed)."""
        info = self.info(path)
        if "mtime" not in info:
            return self.created(path)
        return datetime.fromtimestamp(info["mtime"], UTC)

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return str(info.get("content_hash") or info["name"])
