"""HTTP GETs that a hostile or broken server cannot stretch: every request ends by an
overall deadline (not just a per-read timeout, which a server sending one byte every few
seconds never trips), and every body is read as a stream and capped.

The deadline is enforced below httpx, on every socket operation: a network backend wraps
httpcore's, and gives each read, write and connect only the time left before the deadline
of the request running on that thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpcore
import httpx


class TooLarge(OSError):
    """A response body was larger than the caller allows."""


class _Deadlines(httpcore.NetworkBackend):
    """httpcore's own backend, with the deadline of the current thread's request applied to
    every socket operation."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Socket operations of this thread end by ``deadline`` (time.monotonic())."""
        saved = getattr(self._local, "deadline", None)
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = saved

    def left(self, timeout: float | None) -> float | None:
        """The smaller of ``timeout`` and the time left; ReadTimeout when none is left."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self.left(timeout), local_address, socket_options
        )
        return _Stream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.connect_unix_socket(path, self.left(timeout), socket_options), self
        )

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _Deadlines) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._backend.left(timeout))
        return _Stream(tls, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class BoundedClient:
    """An HTTP client whose GETs end by a deadline and whose bodies are capped.

    ``timeout``: seconds any one socket operation may wait; ``deadline``: seconds a whole
    request (connect, headers and body) may take.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float = 10.0,
        deadline: float = 60.0,
        connections: int = 32,
    ) -> None:
        self.deadline = deadline
        self._backend = _Deadlines()
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        transport = httpx.HTTPTransport(limits=limits)
        # httpx takes no network backend; its transport is a thin shell around this pool,
        # built as httpx builds it, plus the backend that applies the deadlines.
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self._backend,
        )
        self._client = httpx.Client(
            base_url=base_url,
            # Compressed bodies would be capped only after inflating them.
            headers={**headers, "Accept-Encoding": "identity"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            # Proxies from the environment would get transports without deadlines.
            trust_env=False,
        )

    def get(
        self, path: str, limit: int, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of ``GET path``. A 2xx body longer than ``limit`` bytes raises
        TooLarge; other bodies are not read. httpx.HTTPError when the request fails or
        its deadline passes."""
        with (
            self._backend.until(time.monotonic() + self.deadline),
            self._client.stream("GET", path, headers=headers) as r,
        ):
            if not 200 <= r.status_code < 300:
                return r.status_code, b""
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise TooLarge(f"{path}: the server announced {declared} bytes")
            body = bytearray()
            for piece in r.iter_raw():
                body += piece
                if len(body) > limit:
                    raise TooLarge(f"{path}: the server sent more than {limit} bytes")
            return r.status_code, bytes(body)

    def close(self) -> None:
        self._client.close()
