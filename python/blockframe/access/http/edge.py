"""The server's edge: the listening socket, the read-only, bearer-token and Host gate, and the
outermost layer that counts answers by status and turns an aborted response into a
closed connection."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import signal
import socket
from collections.abc import Iterator
from types import FrameType

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blockframe import metrics
from blockframe.access.http.errors import Abort, error
from blockframe.errors import ArchiveError, UsageError

PUBLIC_PATHS = ("/", "/docs", "/openapi.json")  # and everything under /docs/ and /ui/
PUBLIC_PREFIXES = ("/docs/", "/ui/")


def loopback_name(host: bytes) -> bool:
    """Whether a Host header value names this machine's loopback: ``localhost``, a loopback
    address (``127.0.0.1``, ``[::1]``), with or without a port."""
    name = host.strip().lower()
    if name.startswith(b"["):
        inside, bracket, port = name[1:].partition(b"]")
        if not bracket or (port and not (port.startswith(b":") and port[1:].isdigit())):
            return False
        if b":" not in inside:  # brackets hold an IPv6 address only
            return False
        name = inside
    else:
        bare, colon, port = name.rpartition(b":")
        if colon:
            if not port.isdigit():
                return False
            name = bare
    if name == b"localhost":
        return True
    try:
        return ipaddress.ip_address(name.decode("ascii")).is_loopback
    except (ValueError, UnicodeDecodeError):
        return False


class Gate:
    """Read-only (GET and HEAD, else 405) and, with a token, bearer authentication.
    Without a token on a loopback address (``loopback_only``), only requests whose Host
    names the loopback are answered (400 otherwise): a web page in a browser on this
    machine that rebinds its own DNS name to 127.0.0.1 still sends its own name as Host,
    so it cannot read the archive."""

    def __init__(self, app: ASGIApp, token: str, loopback_only: bool = False) -> None:
        self.app = app
        self.digest = hashlib.sha256(token.encode()).digest() if token else None
        self.loopback_only = loopback_only and not token

    def _host_allowed(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"host":
                return loopback_name(value)
        return True  # no Host (HTTP/1.0): not a browser, nothing to rebind

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
            if self.loopback_only and not self._host_allowed(scope):
                response = error(
                    400,
                    "Host is not a loopback name (localhost, 127.0.0.1, [::1]): "
                    "without a token this server answers only its own machine",
                )
                await response(scope, receive, send)
                return
            if scope["method"] not in ("GET", "HEAD"):
                response = error(405, "read-only server: only GET and HEAD", {"allow": "GET, HEAD"})
                await response(scope, receive, send)
                return
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if self.digest is not None and not public and not self._authorized(scope):
                response = error(
                    401, "missing or wrong bearer token", {"www-authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Edge:
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
        except Abort:
            pass
        except BaseExceptionGroup as group:
            _, rest = group.split(Abort)
            if rest is not None:
                raise rest from None
        finally:
            metrics.http_requests.labels(str(status)).inc()


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


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextlib.contextmanager
def quiet_signals() -> Iterator[list[int]]:
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
