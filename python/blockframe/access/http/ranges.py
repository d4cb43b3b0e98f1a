"""Byte ranges (RFC 9110): the ``Range`` and ``If-Range`` headers of a request, and the
status and headers of the answer (200 with the whole resource, 206 with one range, 416)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.responses import Response

from blockframe.access.http.errors import error


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


def range_for(headers: Mapping[str, str], size: int, etag: str | None) -> tuple[int, int] | None:
    """The range a request with these (lower-case) headers asks for, honouring
    ``If-Range``: a client whose copy is another version gets the whole resource."""
    if_range = headers.get("if-range")
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return None
    return parse_range(headers.get("range"), size)


def span_headers(size: int, span: tuple[int, int] | None) -> tuple[int, dict[str, str]]:
    """The status (200 or 206) and length headers of an answer with ``span`` of ``size``."""
    headers = {"accept-ranges": "bytes"}
    if span is None:
        headers["content-length"] = str(size)
        return 200, headers
    start, end = span
    headers["content-length"] = str(end - start)
    headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    return 206, headers


def unsatisfiable(size: int) -> Response:
    """The 416 answer, with the size the client may ask of."""
    return error(416, "range not satisfiable", {"content-range": f"bytes */{size}"})
