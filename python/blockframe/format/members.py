"""What a version-3 manifest records besides the bytes (FORMAT.md section 18): a file's
modification time and permission bits, and the table of a pack: the files, directories
and symbolic links of a directory commit, each file a byte range of the pack.

Pure data and validation, no I/O: :mod:`blockframe.format.manifest` calls these while it
parses a manifest, so a table that does not add up is a damaged manifest like any other.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from blockframe.errors import ManifestError, UsageError
from blockframe.format.names import check_stored_name

FILE, PACK = "file", "pack"  # the manifest's "kind"
KINDS = (FILE, PACK)
MemberType = Literal["file", "dir", "symlink"]
MEMBER_TYPES: tuple[MemberType, ...] = ("file", "dir", "symlink")
# Permission bits only (rwx for user, group, other, plus setuid, setgid, sticky): the file
# type is given by "type", and owners are never recorded.
MODE_MASK = 0o7777
# A symbolic link's target is text for readlink, never resolved by us; PATH_MAX bounds it.
MAX_TARGET = 4096
# Pack names: ".pack/" and 32 hex digits, unique per commit, so two packs never compete
# for a name however alike their bytes are.
PACK_PREFIX = ".pack/"


class Member(NamedTuple):
    """One entry of a pack's table: a file (a byte range of the pack), a directory or a
    symbolic link, with its path in the archive's name tree. (A named tuple: a listing
    makes one per file of every pack, 100,000 at a time.)"""

    name: str
    type: MemberType
    mtime_ns: int
    mode: int = 0  # permission bits; 0 for a symbolic link
    offset: int = 0  # files: where the bytes start in the pack
    size: int = 0  # files: how many bytes (0 allowed: an empty file)
    content_hash: str = ""  # files: BLAKE3 of the file's bytes, 64 hex digits
    target: str = ""  # symbolic links: the link's text

    def to_dict(self) -> dict[str, Any]:
        """The member as FORMAT.md section 18 writes it (only the fields of its type)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "mtime_ns": self.mtime_ns}
        if self.type == "file":
            out.update(
                offset=self.offset,
                size=self.size,
                content_hash=self.content_hash,
                mode=self.mode,
            )
        elif self.type == "dir":
            out["mode"] = self.mode
        else:
            out["target"] = self.target
        return out


def is_pack_name(name: str) -> bool:
    """Whether ``name`` has the form writers give packs (a reader goes by ``kind``)."""
    rest = name.removeprefix(PACK_PREFIX)
    return rest != name and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)


def check_mtime(value: Any, where: str = "") -> int:
    """A modification time in nanoseconds since the epoch (negative: before 1970);
    ``where`` (with its colon and space) prefixes the error."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 63:
        raise ManifestError(f"{where}mtime_ns must be a 64-bit integer")
    return value


def check_mode(value: Any, where: str = "") -> int:
    """Permission bits, 0 to 0o7777 (``where`` as for :func:`check_mtime`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MODE_MASK:
        raise ManifestError(f"{where}mode must be an integer from 0 to 4095")
    return value


def parse_members(raw: Any, size: int, where: str) -> tuple[Member, ...]:
    """The table of a pack of ``size`` bytes: every entry well-formed, names unique, and
    the files contiguous in table order, from offset 0 to exactly ``size``."""
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{where}: field 'files' must be a non-empty array")
    out: list[Member] = []
    seen: set[str] = set()
    offset = 0
    for i, d in enumerate(raw):
        try:
            member = _member(d)
        except ManifestError as e:
            raise ManifestError(f"{where}: files[{i}]: {e}") from None
        if member.name in seen:
            raise ManifestError(f"{where}: files[{i}]: name {member.name!r} appears twice")
        seen.add(member.name)
        if member.type == "file":
            if member.offset != offset:
                raise ManifestError(
                    f"{where}: files[{i}]: offset {member.offset} should be {offset}"
                )
            offset += member.size
        out.append(member)
    if offset != size:
        raise ManifestError(f"{where}: the files add up to {offset} bytes, not {size}")
    return tuple(out)


def _member(d: Any) -> Member:
    """One entry of a table (ManifestError says what is wrong; the caller says where)."""
    if not isinstance(d, Mapping):
        raise ManifestError("must be an object")
    name = _field(d, "name", str)
    try:
        check_stored_name(name)
    except UsageError:
        raise ManifestError("invalid name") from None
    kind = d.get("type")
    mtime = check_mtime(d.get("mtime_ns"))
    if kind == "file":
        offset = _field(d, "offset", int)
        size = _field(d, "size", int)
        digest = _field(d, "content_hash", str)
        if offset < 0 or size < 0:
            raise ManifestError("negative offset or size")
        if _HEX64.fullmatch(digest) is None:
            raise ManifestError("content_hash must be 64 lowercase hex digits")
        mode = check_mode(d.get("mode"))
        return Member(name, "file", mtime, mode, offset, size, digest)
    if kind == "dir":
        return Member(name, "dir", mtime, check_mode(d.get("mode")))
    if kind == "symlink":
        target = _field(d, "target", str)
        if not target or "\x00" in target or len(target.encode()) > MAX_TARGET:
            raise ManifestError("invalid symbolic link target")
        return Member(name, "symlink", mtime, target=target)
    raise ManifestError(f"type must be one of {', '.join(MEMBER_TYPES)}")


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _field(d: Mapping[str, Any], key: str, kind: type) -> Any:
    value = d.get(key)
    if value is None:
        raise ManifestError(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ManifestError(f"field {key!r} must be a {kind.__name__}")
    return value


def mode_bits(st_mode: int) -> int:
    """The permission bits of an ``os.stat`` mode."""
    return stat.S_IMODE(st_mode) & MODE_MASK
