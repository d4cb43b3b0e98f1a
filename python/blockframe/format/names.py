"""Object names: which names an object may have, how a name becomes a directory of the
archive, and how a path of the mounted tree is spelled. Every entry point (commit, the
mount, serve, the remote client) checks names with these functions.
"""

from __future__ import annotations

import re

from blockframe.errors import UsageError

ID_LEN = 16  # hex digits of the object id in a directory name

# What a served name may be, as an OpenAPI (ECMA-262 and Python) pattern: segments of
# characters other than "/", "\\" and controls, none of them "." or "..".
_CHAR = r"[^/\\\x00-\x1f\x7f]"
_SEGMENT = rf"(?:[^./\\\x00-\x1f\x7f]{_CHAR}*|\.[^./\\\x00-\x1f\x7f]{_CHAR}*|\.\.{_CHAR}+)"
NAME_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
_NAME = re.compile(NAME_PATTERN)


class InvalidName(UsageError):
    """A name no object can have (traversal attempts among them)."""


def validate_name(name: str) -> str:
    """``name`` if a new object may be committed under it: a relative path, ``file`` or
    ``dir/sub/file``, that the mount, serve and the remote client can all reach (see
    :data:`NAME_PATTERN`: no empty, ``.`` or ``..`` segments, no control characters, no
    backslash, which reads as a separator on Windows and in mounted paths)."""
    check_stored_name(name)
    if not is_servable(name):
        raise UsageError(f"invalid object name '{display_name(name)}'")
    return name


def check_stored_name(name: str) -> str:
    """``name`` if an object already in an archive may carry it. Older versions committed
    names with a backslash or DEL; such objects stay readable by ``list``, ``restore`` and
    ``health`` although the mount and serve cannot reach them."""
    # One pass of a compiled pattern (a pack's table checks thousands of names per load).
    if _BAD_STORED.search(f"/{name}/") is not None:
        raise UsageError(f"invalid object name '{display_name(name)}'")
    # Encoding at most triples a character's bytes: short names always fit.
    if len(name) > _SHORT and len(dirname_for(name, "0" * ID_LEN).encode()) > 255:
        raise UsageError(f"object name too long: '{display_name(name)}'")
    return name


# Within "/<name>/": an empty, "." or ".." part, or a control character.
_BAD_STORED = re.compile(r"//|/\.\.?/|[\x00-\x1f]")
_SHORT = (255 - 1 - ID_LEN) // 12  # UTF-8 up to 4 bytes, each encoded up to 3x


def is_servable(name: str) -> bool:
    """Whether ``name`` can be reached through the mount and the HTTP API (a backslash
    reads as a separator there)."""
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    """``name`` if an object could have it and be served, else :class:`InvalidName`."""
    if not is_servable(name):
        raise InvalidName("invalid object name")
    return name


def dirname_for(name: str, object_id: str) -> str:
    """``<name>_<id>`` with the name encoded (:func:`encode`), so every object is one
    directory directly under the archive."""
    return f"{encode(name)}_{object_id}"


def encode(name: str) -> str:
    """``name`` with ``%`` and ``/`` percent-encoded (and a leading dot, which would hide
    the directory): the first part of an object directory's name (FORMAT.md §4)."""
    encoded = name.replace("%", "%25").replace("/", "%2F")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return encoded


def dirname_prefix(name: str) -> str:
    """What the directory of every object called ``name`` starts with."""
    return dirname_for(name, "")


def normalize_path(path: str) -> str:
    """``/a/b`` for any spelling of a path of the mounted tree (``a/b``, ``/a//b/``,
    ``\\a\\b``, ``./a/b``)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def display_name(name: str) -> str:
    """``name`` safe to print on a terminal: characters that are not printable (C0 and C1
    controls, bidi overrides and other format characters) are shown as ``\\xNN`` /
    ``\\uNNNN`` escapes, so a name cannot move the cursor or reorder what is shown."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
