"""``blockframe serve``: share an archive read-only over HTTP (starlette on uvicorn).

Routes (the contract the remote client is written against; OpenAPI at ``/openapi.json``,
Swagger UI at ``/docs``, its assets served from the installed ``swagger-ui-bundle``):

- ``GET /api/files``: JSON list of objects, sorted by name.
- ``GET /api/files/{name}``: the whole file, verified chunk by chunk and healed on the way
  (damage within parity is rebuilt in memory and the shard rewritten on disk in the
  background), streamed in 1 MiB pieces, with single byte ranges (``bytes=a-b``, ``a-``,
  ``-n``; 206 / 416). A request naming several ranges gets the whole file (200): the
  Range header is ignored, as RFC 9110 allows. A range whose first piece cannot be
  verified is a 500 with a JSON error; damage found later aborts the connection, so the
  client sees a short body, never an unverified byte.
- ``GET /api/files/{name}/manifest``: the manifest bytes as ``Manifest.to_json()`` writes them.
- ``GET /api/files/{name}/shards/{stripe}/{shard}``: the raw bytes of one shard file (data
  shards first, then parity, as numbered in the manifest), NOT verified (the client
  verifies), with the same ranges; a shard shorter than the range gives what exists.
- ``GET /api/health``: object and problem counts, last scrub time.
- ``GET /metrics``: Prometheus text format.

An object name always wins over the suffix routes: if ``a/manifest`` is itself an object,
``/api/files/a/manifest`` is that file. Names are looked up in the archive index, never
joined into filesystem paths; a name with an empty, ``.`` or ``..`` segment, a backslash,
NUL or another control character is a 400, an unknown name a 404, and error bodies never
name server paths. Only GET and HEAD are served (405 otherwise). With a token (config
``[server] token`` or ``$BLOCKFRAME_TOKEN``, the variable winning), every request except
``/docs`` and ``/openapi.json`` (and the web page ``/`` with its assets under ``/ui/``, which
asks for the token) needs ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import signal
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blockframe import metrics
from blockframe.access.http.openapi import DOCS_PAGE, OCTET, openapi, swagger_ui_dir
from blockframe.access.view import ArchiveView
from blockframe.archive import Archive, Entry, Index
from blockframe.errors import (
    ArchiveError,
    BlockFrameError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from blockframe.format.names import InvalidName, check_name, is_servable
from blockframe.storage import Volume

log = logging.getLogger(__name__)

PIECE = 1 << 20  # bytes read, verified and sent at a time
BUCKET_PIECE = 8 << 20  # shard bytes fetched from a bucket per request
RESCAN_INTERVAL = 1.0  # seconds: how often a listing or an unknown name may rescan the archive
PUBLIC_PATHS = ("/", "/docs", "/openapi.json")  # and everything under /docs/ and /ui/
PUBLIC_PREFIXES = ("/docs/", "/ui/")
WEB_DIR = Path(__file__).parent / "web"  # the page at / (plain HTML, CSS and JS; no CDN)
_SHARD_ROUTE = re.compile(r"(.+)/shards/(\d{1,9})/(\d{1,9})")


@dataclass(frozen=True)
class ServerOptions:
    """How to serve: bind address, token ("" for none), CORS origins, chunk cache size."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    cors_origins: tuple[str, ...] = ()
    cache_bytes: int = 256 << 20


# -- the archive as the server sees it -----------------------------------------------------


def _layout(index: Index) -> dict[str, str]:
    return {name: e.path.name for name, e in index.entries.items()}


def _mtime_ns(entry: Entry) -> int:
    # The same instant ArchiveView reports for an entry (its manifest's creation time).
    return int(datetime.fromisoformat(entry.manifest.created).timestamp() * 1_000_000_000)


class ArchiveChanged(ArchiveError):
    """An object was replaced between looking it up and opening it (a 503: retry)."""


@dataclass(frozen=True)
class Target:
    """What a path under ``/api/files/`` names."""

    kind: str  # "file", "manifest" or "shard"
    entry: Entry
    stripe: int = 0
    shard: int = 0


class Catalog:
    """The archive's usable objects, kept in step with the ArchiveView that reads them.

    The index is rescanned at most once per :data:`RESCAN_INTERVAL` when a listing is
    asked for or an unknown name is looked up, so new commits appear and replaced
    objects are followed; the view is refreshed whenever the set of objects changed.
    Objects the view cannot reach (a name that is also a directory of other names, or a
    name with a backslash) are left out, so everything listed can be read.
    """

    def __init__(self, archive: Archive, cache_bytes: int = 256 << 20) -> None:
        self.archive = archive
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._layout: dict[str, str] = {}
        self._scanned = 0.0
        self.problems = 0
        # Our scan first: anything committed before the view's own scan is then seen by
        # the view too, or differs at the next rescan (which refreshes the view).
        index = self.archive.scan()
        self.view = ArchiveView(archive, cache_bytes=cache_bytes)
        self._adopt(index)

    def _scan(self) -> None:
        index = self.archive.scan()
        if _layout(index) != self._layout:
            self.view.refresh()
        self._adopt(index)

    def _adopt(self, index: Index) -> None:
        visible: dict[str, Entry] = {}
        layout = _layout(index)
        for name, entry in index.entries.items():
            if not is_servable(name):
                continue  # a backslash: the view reads it as "/", so no path reaches it
            try:
                hidden = self.view.stat("/" + name).is_dir  # "a" when "a/b" exists
            except BlockFrameError:
                layout = {}  # the view lags behind: refresh it at the next rescan
                continue
            if not hidden:
                visible[name] = entry
        self._entries = visible
        self._layout = layout
        self.problems = len(index.problems)
        self._scanned = time.monotonic()

    def rescan(self, force: bool = False) -> None:
        """Rescan the archive unless that was done within :data:`RESCAN_INTERVAL`."""
        with self._lock:
            if force or time.monotonic() - self._scanned >= RESCAN_INTERVAL:
                self._scan()

    @property
    def count(self) -> int:
        """Objects known since the last scan (no rescan)."""
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """Every servable object, sorted by name (rescanning first if due)."""
        self.rescan()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def find(self, name: str) -> Entry | None:
        entry = self._entries.get(name)
        if entry is None or (entry.volumes is None and not entry.path.is_dir()):
            self.rescan(force=entry is not None)
            entry = self._entries.get(name)
        return entry

    def resolve(self, rest: str) -> Target:
        """Map the part of a path after ``/api/files/`` to an object, its manifest or one
        of its shards. Object names win over the suffix routes."""
        check_name(rest)
        entry = self.find(rest)
        if entry is not None:
            return Target("file", entry)
        prefix, _, last = rest.rpartition("/")
        if prefix and last == "manifest" and (entry := self.find(prefix)) is not None:
            return Target("manifest", entry)
        m = _SHARD_ROUTE.fullmatch(rest)
        if m and (entry := self.find(m.group(1))) is not None:
            return Target("shard", entry, int(m.group(2)), int(m.group(3)))
        raise NotFoundError("no such object")

    def open(self, entry: Entry) -> int:
        """A view handle on exactly ``entry`` (the version whose size and hash the
        response headers announce)."""
        path = "/" + entry.name
        for attempt in range(2):
            st = self.view.stat(path)
            if st.size == entry.manifest.size and st.mtime_ns == _mtime_ns(entry):
                return self.view.open(path)
            if attempt == 0:
                with self._lock:
                    self.view.refresh()
        raise ArchiveChanged("the archive changed during the request; retry")

    def scrub_results(self) -> dict[str, dict[str, Any]]:
        """The latest `blockframe health` outcome per object directory: {at, status,
        margin}."""
        from blockframe.health.state import State

        objects, _ = State(self.archive.state_root).load()
        return {d: f.last.to_dict() for d, f in objects.items() if f.last is not None}

    def last_scrub(self) -> str | None:
        """When ``blockframe health`` last verified an object of this archive, if ever."""
        from blockframe.health.state import State

        objects, _ = State(self.archive.state_root).load()
        times = [t for f in objects.values() for t in (f.verified, f.damaged) if t is not None]
        if not times:
            return None
        return datetime.fromtimestamp(max(times), UTC).isoformat(timespec="seconds")

    def close(self) -> None:
        self.view.close()


# -- ranges --------------------------------------------------------------------------------


class RangeNotSatisfiable(Exception):
    """The Range header names no byte of the resource (or is malformed): a 416."""


def _number(digits: str) -> int:
    # More than 20 digits exceeds any file size; int() of huge strings is slow or refused.
    return int(digits) if len(digits) <= 20 else 10**20


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` byte range a Range header asks of ``size`` bytes, or None for
    the whole resource (no header, another unit, or several ranges, which are ignored).
    Raises RangeNotSatisfiable for a malformed or unsatisfiable ``bytes`` range."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if len(specs) > 1:
        return None
    m = re.fullmatch(r"(\d*)\s*-\s*(\d*)", specs[0]) if specs else None
    if m is None or not (m.group(1) or m.group(2)):
        raise RangeNotSatisfiable
    first, last = m.group(1), m.group(2)
    if not first:
        n = _number(last)
        if n == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size
    start = _number(first)
    if start >= size or (last and _number(last) < start):
        raise RangeNotSatisfiable
    return start, min(size, _number(last) + 1) if last else size


def _range_for(request: Request, size: int, etag: str | None) -> tuple[int, int] | None:
    if_range = request.headers.get("if-range")
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return None  # the client's copy is another version: send it all
    return parse_range(request.headers.get("range"), size)


def _headers(size: int, span: tuple[int, int] | None) -> tuple[int, dict[str, str]]:
    headers = {"accept-ranges": "bytes"}
    if span is None:
        headers["content-length"] = str(size)
        return 200, headers
    start, end = span
    headers["content-length"] = str(end - start)
    headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    return 206, headers


def _unsatisfiable(size: int) -> Response:
    return _error(416, "range not satisfiable", {"content-range": f"bytes */{size}"})


# -- errors --------------------------------------------------------------------------------


class _Abort(Exception):
    """A response already under way must be cut short (the client sees a short body)."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_for(exc: BlockFrameError) -> tuple[int, str]:
    """The HTTP status and a message that names no server path."""
    if isinstance(exc, NotFoundError):
        return 404, "no such object"
    if isinstance(exc, InvalidName):
        return 400, str(exc)
    if isinstance(exc, UsageError):
        return 400, "bad request"
    if isinstance(exc, IntegrityError):
        return 500, "damaged beyond what parity can rebuild; no bytes were sent"
    if isinstance(exc, ArchiveChanged):
        return 503, str(exc)
    return 503, "archive unavailable"


async def _blockframe_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BlockFrameError)
    status, message = _status_for(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return _error(status, message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, _Abort):
        log.error("%s %s: internal error: %r", request.method, request.url.path, exc)
    return _error(500, "internal error")


# -- the application -----------------------------------------------------------------------


class Server:
    """The routes over one catalog; :meth:`app` builds the ASGI application."""

    def __init__(self, catalog: Catalog, options: ServerOptions) -> None:
        self.catalog = catalog
        self.options = options

    # -- /api/files -----------------------------------------------------------------------

    async def list_files(self, request: Request) -> Response:
        entries = await run_in_threadpool(self.catalog.entries)
        scrubs = await run_in_threadpool(self.catalog.scrub_results)
        return JSONResponse([{**e.summary(), "scrub": scrubs.get(e.path.name)} for e in entries])

    async def files(self, request: Request) -> Response:
        target = await run_in_threadpool(self.catalog.resolve, request.path_params["rest"])
        if target.kind == "manifest":
            body = await run_in_threadpool(target.entry.manifest.to_json)
            return Response(body, media_type="application/json")
        if target.kind == "shard":
            return await self._shard(request, target)
        return await self._file(request, target.entry)

    async def _file(self, request: Request, entry: Entry) -> Response:
        size = entry.manifest.size
        etag = f'"{entry.manifest.content_hash}"'
        try:
            span = _range_for(request, size, etag)
        except RangeNotSatisfiable:
            return _unsatisfiable(size)
        status, headers = _headers(size, span)
        headers["etag"] = etag
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=OCTET)
        start, end = span or (0, size)
        view = self.catalog.view
        handle = await run_in_threadpool(self.catalog.open, entry)
        try:
            first = await run_in_threadpool(view.read, handle, start, min(PIECE, end - start))
        except BaseException as e:
            view.release(handle)
            if isinstance(e, IntegrityError):
                metrics.integrity_errors.inc()
            raise
        body = self._verified(handle, first, start + len(first), end, entry.name)
        return _Stream(body, status, headers, lambda: view.release(handle))

    async def _verified(
        self, handle: int, first: bytes, pos: int, end: int, name: str
    ) -> AsyncIterator[bytes]:
        """The rest of a verified range; a piece that fails verification aborts."""
        view = self.catalog.view
        try:
            yield first
            metrics.bytes_served.inc(len(first))
            while pos < end:
                piece = await run_in_threadpool(view.read, handle, pos, min(PIECE, end - pos))
                if not piece:
                    raise IntegrityError(f"{name}: ended early at byte {pos}")
                pos += len(piece)
                yield piece
                metrics.bytes_served.inc(len(piece))
        except IntegrityError as e:
            metrics.integrity_errors.inc()
            metrics.streams_aborted.inc()
            log.error("aborted a response at byte %d: %s", pos, e)
            raise _Abort from None

    async def _shard(self, request: Request, target: Target) -> Response:
        stripes = target.entry.manifest.stripes
        if target.stripe >= len(stripes) or target.shard >= len(stripes[target.stripe].shards):
            return _error(404, "no such shard")
        shard = stripes[target.stripe].shards[target.shard]
        rel = shard.path
        path = target.entry.path / rel
        vs = target.entry.volumes
        if vs is not None:
            vol = vs.volume(shard.volume)
            if vol is None:
                return _error(404, "shard missing on the server (its volume is absent)")
            local = vol.local_path(f"{target.entry.dirname}/{rel}")
            if local is None:
                return await self._bucket_shard(request, vol, f"{target.entry.dirname}/{rel}")
            path = local
        try:
            fd, size = await run_in_threadpool(_open_shard, path)
        except FileNotFoundError:
            return _error(404, "shard missing on the server")
        except OSError:
            log.error("%s: cannot open %s", target.entry.name, rel, exc_info=True)
            return _error(503, "shard unreadable on the server")
        try:
            span = _range_for(request, size, None)
        except RangeNotSatisfiable:
            os.close(fd)
            return _unsatisfiable(size)
        status, headers = _headers(size, span)
        if request.method == "HEAD":
            os.close(fd)
            return Response(status_code=status, headers=headers, media_type=OCTET)
        start, end = span or (0, size)

        def read_file(pos: int, n: int) -> bytes:
            return os.pread(fd, n, pos)

        return _Stream(self._raw(read_file, start, end), status, headers, lambda: os.close(fd))

    async def _bucket_shard(self, request: Request, vol: Volume, key: str) -> Response:
        """A shard range from a bucket volume, passed through unverified (as for files:
        the client verifies)."""
        try:
            size = await run_in_threadpool(vol.size, key)
        except OSError as e:
            log.error("%s: %s", vol.location, e)
            return _error(503, "shard unreadable on the server")
        if size is None:
            return _error(404, "shard missing on the server")
        try:
            span = _range_for(request, size, None)
        except RangeNotSatisfiable:
            return _unsatisfiable(size)
        status, headers = _headers(size, span)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=OCTET)
        start, end = span or (0, size)

        def read(pos: int, n: int) -> bytes:
            return vol.get_range(key, pos, n) or b""

        return _Stream(self._raw(read, start, end, BUCKET_PIECE), status, headers, lambda: None)

    async def _raw(
        self, read: Callable[[int, int], bytes], pos: int, end: int, step: int = PIECE
    ) -> AsyncIterator[bytes]:
        """Raw bytes of a shard (``read(offset, n)``, off the event loop); a shard that
        shrinks under us aborts."""
        try:
            while pos < end:
                piece = await run_in_threadpool(read, pos, min(step, end - pos))
                if not piece:
                    log.error("aborted a shard response: the shard shrank at byte %d", pos)
                    raise _Abort
                pos += len(piece)
                yield piece
                metrics.bytes_served.inc(len(piece))
        except OSError as e:
            log.error("aborted a shard response: %s", e)
            raise _Abort from None

    # -- the rest -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        def summary() -> dict[str, Any]:
            entries = self.catalog.entries()
            return {
                "objects": len(entries),
                "bytes": sum(e.manifest.size for e in entries),
                "problems": self.catalog.problems,
                "last_scrub": self.catalog.last_scrub(),
            }

        return JSONResponse(await run_in_threadpool(summary))

    async def metrics_text(self, request: Request) -> Response:
        metrics.objects.set(self.catalog.count)
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(openapi(bool(self.options.token)))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    async def index(self, request: Request) -> Response:
        """The web page: the archive at a glance (its data comes from the API, with the
        token the page asks for when the server has one)."""
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    def app(self) -> ASGIApp:
        """The ASGI application: metrics and abort handling outermost, then CORS (when
        configured), then the method and token gate, then the routes."""
        routes = [
            Route("/api/files", self.list_files, methods=["GET"]),
            Route("/api/files/{rest:path}", self.files, methods=["GET"]),
            Route("/api/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/openapi.json", self.openapi_json, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
            Mount("/docs/static", StaticFiles(directory=swagger_ui_dir()), name="swagger"),
            Route("/", self.index, methods=["GET"]),
            Mount("/ui", StaticFiles(directory=WEB_DIR), name="ui"),
        ]
        handlers: dict[Any, Callable[[Request, Exception], Any]] = {
            BlockFrameError: _blockframe_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        }
        app: ASGIApp = Starlette(routes=routes, exception_handlers=handlers)
        app = _Gate(app, self.options.token)
        if self.options.cors_origins:
            app = CORSMiddleware(
                app,
                allow_origins=list(self.options.cors_origins),
                allow_methods=["GET", "HEAD"],
                allow_headers=["Authorization", "Range", "If-Range"],
                expose_headers=["Content-Range", "Content-Length", "ETag", "Accept-Ranges"],
            )
        return _Edge(app)


class _Stream(StreamingResponse):
    """A streamed body whose resources (a view handle, a file descriptor) are let go by
    ``on_close`` however the response ends: complete, aborted, client gone, or never
    started. (Starlette waits for an in-flight worker thread before it cancels.)"""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        status: int,
        headers: dict[str, str],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(body, status, headers, media_type=OCTET)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _open_shard(path: Path) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(path)
    return fd, st.st_size


class _Gate:
    """Read-only (GET and HEAD, else 405) and, with a token, bearer authentication."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.digest = hashlib.sha256(token.encode()).digest() if token else None

    def _authorized(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = hashlib.sha256(credentials.strip()).digest()
                    # Constant time, and equal-length inputs (digests) leak no length.
                    return hmac.compare_digest(given, self.digest or b"")
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if scope["method"] not in ("GET", "HEAD"):
                response = _error(
                    405, "read-only server: only GET and HEAD", {"allow": "GET, HEAD"}
                )
                await response(scope, receive, send)
                return
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if self.digest is not None and not public and not self._authorized(scope):
                response = _error(
                    401, "missing or wrong bearer token", {"www-authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Edge:
    """Outermost: counts requests by status, and ends a response that must be aborted
    by returning without completing it (uvicorn then closes the connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting)
        except _Abort:
            pass
        except BaseExceptionGroup as group:
            _, rest = group.split(_Abort)
            if rest is not None:
                raise rest from None
        finally:
            metrics.http_requests.labels(str(status)).inc()


# -- running -------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ArchiveError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextlib.contextmanager
def _quiet_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM recorded instead of acted on: uvicorn handles them while it runs
    and raises them again when it returns; then they must not kill us."""
    caught: list[int] = []

    def record(sig: int, frame: FrameType | None) -> None:
        caught.append(sig)

    saved = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run(archive: Archive, options: ServerOptions, verbose: bool = False) -> None:
    """Serve ``archive`` until SIGINT or SIGTERM, then finish queued repairs and return."""
    catalog = Catalog(archive, options.cache_bytes)
    try:
        sock = listen(options.host, options.port)
        server = Server(catalog, options)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        config = uvicorn.Config(
            server.app(),
            log_config=None,
            log_level=logging.DEBUG if verbose else logging.WARNING,
            access_log=verbose,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        log.info("serving %s at %s (API docs: %s/docs)", archive.location, url, url)
        if not options.token and not _is_loopback(host):
            log.warning("no token set: anyone who can reach %s can read the archive", url)
        with _quiet_signals():
            uvicorn.Server(config).run(sockets=[sock])
        sock.close()
    finally:
        catalog.close()
