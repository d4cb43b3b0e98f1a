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
asks for the token) needs ``Authorization: Bearer <token>`` (401 otherwise). Without a token,
a loopback server answers only loopback ``Host`` names (400 otherwise: DNS rebinding), and a
non-loopback address is refused unless ``allow_no_token``. HEAD verifies what GET would send
first, so both give one status. Connections go through :mod:`.guard` (a cap, a deadline for
request headers, no busy loop out of file descriptors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from blockframe import metrics
from blockframe.access.http.catalog import Catalog
from blockframe.access.http.edge import Edge, Gate, is_loopback, listen, quiet_signals
from blockframe.access.http.errors import HANDLERS
from blockframe.access.http.files import file_response, shard_response
from blockframe.access.http.guard import GuardedServer, Limits, rate_limit_logs
from blockframe.access.http.openapi import DOCS_PAGE, openapi, swagger_ui_dir
from blockframe.archive import Archive
from blockframe.errors import UsageError
from blockframe.format.pin import pin_of

__all__ = ["Server", "ServerOptions", "check_exposure", "run"]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"  # the page at / (plain HTML, CSS and JS; no CDN)


@dataclass(frozen=True)
class ServerOptions:
    """How to serve: bind address, token ("" for none), CORS origins, chunk cache size."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    cors_origins: tuple[str, ...] = ()
    cache_bytes: int = 256 << 20
    header_timeout: float = 10.0  # seconds to send complete request headers
    send_timeout: float = 60.0  # seconds a client may read nothing while we wait to send
    max_connections: int = 256  # connections held at once
    allow_no_token: bool = False  # serve a non-loopback address without a token


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
            return await shard_response(request, target)
        return await file_response(self.catalog, request, target.entry)

    # -- the rest -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        def summary() -> dict[str, Any]:
            entries = self.catalog.entries()
            return {
                "objects": len(entries),
                "bytes": sum(e.size for e in entries),
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
        app: ASGIApp = Starlette(routes=routes, exception_handlers=HANDLERS)
        app = Gate(app, self.options.token, loopback_only=is_loopback(self.options.host))
        if self.options.cors_origins:
            app = CORSMiddleware(
                app,
                allow_origins=list(self.options.cors_origins),
                allow_methods=["GET", "HEAD"],
                allow_headers=["Authorization", "Range", "If-Range"],
                expose_headers=["Content-Range", "Content-Length", "ETag", "Accept-Ranges"],
            )
        return Edge(app)


def check_exposure(options: ServerOptions) -> None:
    """Refuse to serve a non-loopback address without a token unless asked to."""
    if not options.token and not is_loopback(options.host) and not options.allow_no_token:
        raise UsageError(
            f"refusing to serve {options.host} without a token: anyone who can reach it could "
            f"read the archive (set BLOCKFRAME_TOKEN or [server] token, or pass --allow-no-token)"
        )


def run(archive: Archive, options: ServerOptions, verbose: bool = False) -> None:
    """Serve ``archive`` until SIGINT or SIGTERM, then finish queued repairs and return."""
    check_exposure(options)
    catalog = Catalog(archive, options.cache_bytes)
    try:
        sock = listen(options.host, options.port)
        server = Server(catalog, options)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        config = uvicorn.Config(
            server.app(),
            http="h11",
            ws="none",
            loop="asyncio",
            log_config=None,
            log_level=logging.DEBUG if verbose else logging.WARNING,
            access_log=verbose,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        rate_limit_logs()
        log.info("serving %s at %s (API docs: %s/docs)", archive.location, url, url)
        entries = catalog.entries()
        log.info(
            "pin: %s (%d objects; clients: mount --remote %s --pin PIN)",
            pin_of(e.manifest for e in entries),
            len(entries),
            url,
        )
        if not options.token and not is_loopback(host):
            # An error-level line, so that -q does not hide it.
            log.error(
                "warning: no token set (--allow-no-token): anyone who can reach %s can read "
                "the archive",
                url,
            )
        limits = Limits(options.max_connections, options.header_timeout, options.send_timeout)
        with quiet_signals():
            GuardedServer(config, sock, limits).run()
        sock.close()
    finally:
        catalog.close()
