"""Where an archive's bytes live: volumes (local directories and S3 buckets), the volume
set of a spread archive, and fetch-ahead for slow sources."""

from __future__ import annotations

import re
from pathlib import Path

from blockframe.storage.base import Volume, check_rel
from blockframe.storage.local import LocalVolume

__all__ = ["LocalVolume", "Volume", "check_rel", "open_volume"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def open_volume(
    location: str,
    endpoint: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Volume:
    """The volume at ``location``: ``s3://bucket[/prefix]`` or a local directory (``~``
    expanded, made absolute). Other URL schemes are a ``ValueError``."""
    if location.startswith("s3://"):
        from blockframe.storage.s3 import S3Volume

        return S3Volume(location, endpoint, region, access_key, secret_key)
    if _SCHEME.match(location):
        raise ValueError(f"unsupported volume URL {location!r} (only s3:// and local paths)")
    if not location:
        raise ValueError("empty volume location")
    return LocalVolume(Path(location).expanduser().absolute())
