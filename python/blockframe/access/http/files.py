"""The bytes under ``/api/files/``: an object's verified bytes (read through the view,
piece by piece) and the raw bytes of one of its shards (from a local file or a bucket,
unverified: the client verifies). Reads run off the event loop; a response whose later
piece fails is cut short (:class:`~blockframe.access.http.errors.Abort`)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from blockframe import metrics
from blockframe.access.http.catalog import Catalog, Target
from blockframe.access.http.errors import Abort, error
from blockframe.access.http.openapi import OCTET
from blockframe.access.http.ranges import (
    RangeNotSatisfiable,
    range_for,
    span_headers,
    unsatisfiable,
)
from blockframe.archive import Entry
from blockframe.errors import IntegrityError
from blockframe.storage import Volume
from blockframe.storage.local import READ_FLAGS, read_at

log = logging.getLogger(__name__)

PIECE = 1 << 20  # bytes read, verified and sent at a time
BUCKET_PIECE = 8 << 20  # shard bytes fetched from a bucket per request


async def file_response(catalog: Catalog, request: Request, entry: Entry) -> Response:
    """The verified bytes of ``entry`` (or the range asked for). A first piece that fails
    verification is an error before any byte is sent; a later one aborts the stream."""
    size = entry.size
    etag = f'"{entry.content_hash}"'
    try:
        span = range_for(request.headers, size, etag)
    except RangeNotSatisfiable:
        return unsatisfiable(size)
    status, headers = span_headers(size, span)
    headers["etag"] = etag
    start, end = span or (0, size)
    view = catalog.view
    handle = await run_in_threadpool(catalog.open, entry)
    try:
        # HEAD verifies the first piece exactly as GET does, so both give one status.
        first = await run_in_threadpool(view.read, handle, start, min(PIECE, end - start))
    except BaseException as e:
        view.release(handle)
        if isinstance(e, IntegrityError):
            metrics.integrity_errors.inc()
        raise
    if request.method == "HEAD":
        view.release(handle)
        return Response(status_code=status, headers=headers, media_type=OCTET)

    async def rest() -> AsyncIterator[bytes]:
        pos = start + len(first)
        try:
            yield first
            metrics.bytes_served.inc(len(first))
            while pos < end:
                piece = await run_in_threadpool(view.read, handle, pos, min(PIECE, end - pos))
                if not piece:
                    raise IntegrityError(f"{entry.name}: ended early at byte {pos}")
                pos += len(piece)
                yield piece
                metrics.bytes_served.inc(len(piece))
        except IntegrityError as e:
            metrics.integrity_errors.inc()
            metrics.streams_aborted.inc()
            log.error("aborted a response at byte %d: %s", pos, e)
            raise Abort from None

    return Stream(rest(), status, headers, lambda: view.release(handle))


async def shard_response(request: Request, target: Target) -> Response:
    """The raw bytes of one shard of ``target.entry`` (or the range asked for)."""
    stripes = target.entry.manifest.stripes
    if target.stripe >= len(stripes) or target.shard >= len(stripes[target.stripe].shards):
        return error(404, "no such shard")
    shard = stripes[target.stripe].shards[target.shard]
    rel = shard.path
    path = target.entry.path / rel
    vs = target.entry.volumes
    if vs is not None:
        vol = vs.volume(shard.volume)
        if vol is None:
            return error(404, "shard missing on the server (its volume is absent)")
        local = vol.local_path(f"{target.entry.dirname}/{rel}")
        if local is None:
            return await _bucket_shard(request, vol, f"{target.entry.dirname}/{rel}")
        path = local
    try:
        fd, size = await run_in_threadpool(_open_shard, path)
    except FileNotFoundError:
        return error(404, "shard missing on the server")
    except OSError:
        log.error("%s: cannot open %s", target.entry.name, rel, exc_info=True)
        return error(503, "shard unreadable on the server")
    try:
        span = range_for(request.headers, size, None)
    except RangeNotSatisfiable:
        os.close(fd)
        return unsatisfiable(size)
    status, headers = span_headers(size, span)
    if request.method == "HEAD":
        os.close(fd)
        return Response(status_code=status, headers=headers, media_type=OCTET)
    start, end = span or (0, size)

    def read_file(pos: int, n: int) -> bytes:
        return read_at(fd, n, pos)

    return Stream(_raw(read_file, start, end), status, headers, lambda: os.close(fd))


async def _bucket_shard(request: Request, vol: Volume, key: str) -> Response:
    """A shard range from a bucket volume, passed through unverified (as for files: the
    client verifies)."""
    try:
        size = await run_in_threadpool(vol.size, key)
    except OSError as e:
        log.error("%s: %s", vol.location, e)
        return error(503, "shard unreadable on the server")
    if size is None:
        return error(404, "shard missing on the server")
    try:
        span = range_for(request.headers, size, None)
    except RangeNotSatisfiable:
        return unsatisfiable(size)
    status, headers = span_headers(size, span)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=OCTET)
    start, end = span or (0, size)

    def read(pos: int, n: int) -> bytes:
        return vol.get_range(key, pos, n) or b""

    return Stream(_raw(read, start, end, BUCKET_PIECE), status, headers, lambda: None)


async def _raw(
    read: Callable[[int, int], bytes], pos: int, end: int, step: int = PIECE
) -> AsyncIterator[bytes]:
    """Raw bytes of a shard (``read(offset, n)``, off the event loop); a shard that
    shrinks under us aborts."""
    try:
        while pos < end:
            piece = await run_in_threadpool(read, pos, min(step, end - pos))
            if not piece:
                log.error("aborted a shard response: the shard shrank at byte %d", pos)
                raise Abort
            pos += len(piece)
            yield piece
            metrics.bytes_served.inc(len(piece))
    except OSError as e:
        log.error("aborted a shard response: %s", e)
        raise Abort from None


def _open_shard(path: Path) -> tuple[int, int]:
    """A descriptor of the shard at ``path`` and its size; anything there but a regular file
    (a link, a FIFO, a directory) is answered as missing."""
    fd = os.open(path, READ_FLAGS)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(path)
    return fd, st.st_size


class Stream(StreamingResponse):
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
