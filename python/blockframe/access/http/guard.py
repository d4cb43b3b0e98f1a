"""Hostile clients at the socket: what ``blockframe serve`` does before HTTP even starts.

uvicorn, left alone, accepts every connection, keeps a client that never finishes its
request headers for ever, and when the process runs out of file descriptors asyncio logs a
traceback for every failed ``accept``. Here:

- :class:`Acceptor` runs the accept loop itself. Connections are capped
  (``max_connections``): at the cap, the connection that has waited longest for request
  headers (an idle or half-open socket, a keep-alive connection between requests) is
  closed to make room, so idle sockets cannot lock real clients out; only when every
  connection is busy with a request is the newcomer answered ``503`` and closed at once.
  Out of file descriptors (``EMFILE``/``ENFILE``), it closes a spare descriptor kept for
  that moment, accepts the waiting connection and closes it (the client sees a closed
  connection instead of hanging in the backlog), then takes the spare back; without a
  spare it pauses accepting briefly instead of spinning.
- :class:`GuardedH11Protocol` (uvicorn's h11 protocol) closes a connection whose request
  headers are not complete ``header_timeout`` seconds after it started waiting for them
  (after the connection was made, or after the previous response): slowloris clients and
  idle sockets let go of their slot. A client that sent part of a request gets ``408``.
  The same deadline holds for the rest of a request body still arriving after the response
  was sent (this server reads no body).
- The same protocol drops a connection whose client has read nothing for
  ``send_timeout`` seconds while the server waited to send (a slow-read client would hold
  its slot, and the object open, for ever).
- :class:`RateLimit`, a logging filter, keeps such events from flooding the log: a message
  is logged at most a few times per interval, then one line says how many were suppressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from blockframe import metrics

__all__ = ["Acceptor", "GuardedH11Protocol", "GuardedServer", "Limits", "RateLimit"]

log = logging.getLogger(__name__)

# Errors of accept() that mean "out of resources", not "this one connection failed".
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
BACKLOG = 2048
ACCEPTS_PER_WAKE = 64  # connections accepted and closed per shortage of descriptors
PAUSE = 0.5  # seconds without accepting when out of descriptors and no spare is left


def _answer(status: bytes, message: str) -> bytes:
    """A complete response that closes the connection, written straight to the socket."""
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


_BUSY = _answer(b"503 Service Unavailable", "too many connections, all busy; try again")
_TIMEOUT = _answer(b"408 Request Timeout", "request headers not received in time")


class Limits:
    """What a connection may hold: ``max_connections`` at once, ``header_timeout`` seconds
    to send complete request headers, and ``send_timeout`` seconds during which the server
    waits, unable to send, for a client to read before it drops the connection."""

    def __init__(
        self, max_connections: int, header_timeout: float, send_timeout: float = 60.0
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout


class RateLimit(logging.Filter):
    """At most ``burst`` records with the same message template per ``interval`` seconds;
    the first record after a suppressed run says how many were dropped."""

    def __init__(self, burst: int = 5, interval: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._seen: dict[tuple[str, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        start, count, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.interval:
            start, count = now, 0
        if count >= self.burst:
            self._seen[key] = (start, count, dropped + 1)
            return False
        self._seen[key] = (start, count + 1, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
        if record.exc_info and count:
            # Only the first of a burst carries its traceback.
            record.exc_info = None
            record.exc_text = None
        if len(self._seen) > 1000:
            self._seen.clear()
        return True


_RATE_LIMIT = RateLimit()
# uvicorn logs every malformed request and application error; asyncio every failed
# callback; ours every refused connection. None may flood the log.
RATE_LIMITED_LOGGERS = ("uvicorn.error", "asyncio", __name__)


def rate_limit_logs() -> None:
    for name in RATE_LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        if _RATE_LIMIT not in logger.filters:
            logger.addFilter(_RATE_LIMIT)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers, and what the
    :class:`Acceptor` needs to choose a connection to close at the cap."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        limits: Limits,
        live: set[GuardedH11Protocol],
    ) -> None:
        super().__init__(config, server_state, app_state)
        self.limits = limits
        self.live = live
        live.add(self)
        # When this connection started waiting for request headers (None: a request is
        # being answered), and the timer that closes it. A new connection waits.
        self.waiting_since: float | None = time.monotonic()
        self.partial = False  # some bytes of the awaited request have arrived
        self.deadline: asyncio.TimerHandle | None = None
        self.dropped = False
        self.stalled: asyncio.TimerHandle | None = None  # closes a reader that stopped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if self.dropped:  # evicted before its transport was even made
            self.transport.close()
            return
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        self._disarm()
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The transport holds more than it may: the client is not reading. It has
        ``send_timeout`` seconds to read enough that writing resumes."""
        super().pause_writing()
        if self.stalled is None:
            self.stalled = self.loop.call_later(self.limits.send_timeout, self._reader_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None

    def _reader_stalled(self) -> None:
        self.stalled = None
        metrics.connections_closed.labels("send_timeout").inc()
        log.warning("a client read nothing for %g s: connection dropped", self.limits.send_timeout)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.waiting_since is not None:
            self.partial = True
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Arm the header deadline while waiting for a request, disarm it otherwise."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        # Waiting: for the headers of a request, or, the response already sent, for the
        # rest of a request body nobody will read (a trickled body holds no slot either).
        cycle = self.cycle
        if self.conn.their_state is h11.IDLE or (cycle is not None and cycle.response_complete):
            if self.deadline is None:
                now = time.monotonic()
                if self.waiting_since is None:
                    self.waiting_since = now
                    self.partial = bool(self.conn.trailing_data[0])
                left = self.waiting_since + self.limits.header_timeout - now
                self.deadline = self.loop.call_later(max(0.0, left), self._headers_too_late)
        else:
            self._disarm()

    def _disarm(self) -> None:
        self.waiting_since = None
        self.partial = False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _headers_too_late(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        metrics.connections_closed.labels("header_timeout").inc()
        if self.partial and self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT)
        self.drop()

    def drop(self) -> None:
        """Close this connection now (nothing of a response is under way)."""
        self.dropped = True
        self._disarm()
        transport = self.transport
        if transport is not None:
            transport.close()  # what is buffered is still sent, but not for ever:
            if transport.get_write_buffer_size():
                self.loop.call_later(self.limits.send_timeout, transport.abort)


class Acceptor:
    """The accept loop of one listening socket (a task on the event loop, through
    ``loop.sock_accept``, which every asyncio loop offers), with the cap on connections and
    the spare descriptor for running out of them."""

    def __init__(
        self,
        sock: socket.socket,
        make: Callable[[], GuardedH11Protocol],
        limits: Limits,
        live: set[GuardedH11Protocol],
    ) -> None:
        self.sock = sock
        self.make = make
        self.limits = limits
        self.live = live
        self.loop = asyncio.get_running_loop()
        self.spare = self._take_spare()
        self.pending: set[asyncio.Task[None]] = set()
        # A deep backlog (uvicorn's 2048; the kernel caps it at somaxconn): a burst of
        # connections waits there to be taken, and idle ones evicted, instead of being
        # dropped by the kernel while a real client's SYN waits for a retransmission.
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self.task = self.loop.create_task(self._run())

    @staticmethod
    def _take_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None

    def close(self) -> None:
        self.task.cancel()
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None

    async def _run(self) -> None:
        while True:
            try:
                conn, _ = await self.loop.sock_accept(self.sock)
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    await self._out_of_descriptors(e)
                else:
                    log.warning("accept failed: %s", e.strerror)
                    await asyncio.sleep(PAUSE)
                continue
            try:
                self._admit(conn)
            except Exception:  # a bug of ours must not stop the server accepting
                log.exception("could not take a connection")
                conn.close()

    async def _out_of_descriptors(self, e: OSError) -> None:
        """Accept-and-close what waits in the backlog with the spare descriptor's room;
        without a spare, stop accepting for a moment rather than spin."""
        closed = 0
        while self.spare is not None and closed < ACCEPTS_PER_WAKE:
            os.close(self.spare)
            self.spare = None
            try:
                conn, _ = self.sock.accept()
            except OSError:  # nothing waits (BlockingIOError), or still out
                self.spare = self._take_spare()
                break
            conn.close()
            closed += 1
            self.spare = self._take_spare()
        if closed:
            metrics.connections_closed.labels("out_of_descriptors").inc(closed)
        log.error(
            "out of file descriptors (%s): %d connection(s) closed at accept; "
            "lower [server] max_connections or raise the limit (ulimit -n)",
            errno.errorcode.get(e.errno or 0, e.errno),
            closed,
        )
        if self.spare is None or not closed:
            await asyncio.sleep(PAUSE)
            if self.spare is None:
                self.spare = self._take_spare()

    def _admit(self, conn: socket.socket) -> None:
        if len(self.live) >= self.limits.max_connections:
            waiting = [p for p in self.live if p.waiting_since is not None]
            if waiting:
                oldest = min(waiting, key=lambda p: p.waiting_since or 0.0)
                metrics.connections_closed.labels("evicted").inc()
                oldest.drop()
                self.live.discard(oldest)  # its slot is free now, whatever the transport does
            else:
                metrics.connections_closed.labels("limit").inc()
                log.warning(
                    "%d connections, all busy: refused a connection (503)",
                    self.limits.max_connections,
                )
                try:
                    conn.setblocking(False)
                    conn.send(_BUSY)
                except OSError:
                    pass
                conn.close()
                return
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        protocol = self.make()
        task = self.loop.create_task(self._connect(conn, protocol))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _connect(self, conn: socket.socket, protocol: GuardedH11Protocol) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: protocol, sock=conn)
        except OSError:
            self.live.discard(protocol)
            conn.close()


class GuardedServer(uvicorn.Server):
    """uvicorn's server with :class:`Acceptor` in place of asyncio's accept loop."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, limits: Limits) -> None:
        super().__init__(config)
        self.sock = sock
        self.limits = limits
        self.live: set[GuardedH11Protocol] = set()
        self.acceptor: Acceptor | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # No sockets of uvicorn's own: it sets up the application and state only.
        await super().startup(sockets=[])
        if self.should_exit:
            return

        def make() -> GuardedH11Protocol:
            return GuardedH11Protocol(
                self.config, self.server_state, self.lifespan.state, self.limits, self.live
            )

        self.acceptor = Acceptor(self.sock, make, self.limits, self.live)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            with contextlib.suppress(asyncio.CancelledError):
                await self.acceptor.task
            self.acceptor = None
        await super().shutdown(sockets=[])
