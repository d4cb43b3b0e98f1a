"""How errors reach an HTTP client: a JSON ``{"error": ...}`` body that names no server
path, with the status for each :mod:`blockframe.errors` class, and :class:`Abort` for a
response already under way (the connection is closed: the client sees a short body)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blockframe.access.http.catalog import ArchiveChanged
from blockframe.errors import BlockFrameError, IntegrityError, NotFoundError, UsageError
from blockframe.format.names import InvalidName

log = logging.getLogger(__name__)


class Abort(Exception):
    """A response already under way must be cut short (the client sees a short body)."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def status_for(exc: BlockFrameError) -> tuple[int, str]:
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
    status, message = status_for(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error(status, message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Abort):
        log.error("%s %s: internal error: %r", request.method, request.url.path, exc)
    return error(500, "internal error")


# Starlette's exception_handlers for the application.
HANDLERS: dict[Any, Callable[[Request, Exception], Any]] = {
    BlockFrameError: _blockframe_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
