"""Health's freshness state: ``<archive>/.blockframe/state.json`` remembers, per object
directory, when it was last fully verified, whether damage remained, where an interrupted
scrub stopped, and how the latest scrub ended.

Whoever can write into the archive could plant a symbolic link at ``.blockframe`` (or at a
file in it) to make health write elsewhere: ``.blockframe`` is used only if it is a real
directory, its lock and state file are opened without following links, and the state file
is replaced through a new temporary file (never written through an existing name)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from blockframe.health.report import iso
from blockframe.storage.local import atomic_write
from blockframe.storage.lock import STATE_DIR as STATE_DIR
from blockframe.storage.lock import check_state_dir, dir_lock

STATE_FILE = "state.json"
STATE_FORMAT = "blockframe-health-state"
STATE_VERSION = 1

# Opening a file never follows a link at its name (where the platform can say so).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _from_iso(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


# -- freshness state -------------------------------------------------------------------


@dataclass(frozen=True)
class LastScrub:
    """How the latest scrub of an object ended: when, its status and its margin."""

    at: float
    status: str  # healthy / repaired / damaged / unusable
    margin: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"at": iso(self.at), "status": self.status, "margin": self.margin}

    @classmethod
    def from_dict(cls, d: object) -> LastScrub | None:
        if not isinstance(d, dict):
            return None
        at, status, margin = _from_iso(d.get("at")), d.get("status"), d.get("margin")
        if at is None or status not in ("healthy", "repaired", "damaged", "unusable"):
            return None
        if not (margin is None or (isinstance(margin, int) and not isinstance(margin, bool))):
            return None
        return cls(at, str(status), margin)


@dataclass(frozen=True)
class Freshness:
    """What the state file remembers about one object directory."""

    verified: float | None = None  # last time every stripe verified healthy (or repaired)
    damaged: float | None = None  # last scrub left damage (the object is re-checked first)
    resume_stripe: int | None = None  # a time-limited run stopped before this stripe ...
    resume_since: float | None = None  # ... of a pass that began at this time
    last: LastScrub | None = None  # the outcome of the latest scrub, for people and the web page

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verified": iso(self.verified)}
        if self.damaged is not None:
            out["damaged"] = iso(self.damaged)
        if self.resume_stripe is not None:
            out["resume"] = {"stripe": self.resume_stripe, "since": iso(self.resume_since)}
        if self.last is not None:
            out["last"] = self.last.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: object) -> Freshness:
        if not isinstance(d, dict):
            return cls()
        resume = d.get("resume")
        stripe, since = None, None
        if isinstance(resume, dict):
            raw = resume.get("stripe")
            since = _from_iso(resume.get("since"))
            if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 and since:
                stripe = raw
            else:
                since = None
        return cls(
            _from_iso(d.get("verified")),
            _from_iso(d.get("damaged")),
            stripe,
            since,
            LastScrub.from_dict(d.get("last")),
        )


class State:
    """``<archive>/.blockframe/state.json``: per object directory, when it was last fully
    verified. Written atomically (synced temporary file, rename), merged under a lock so
    two concurrent runs do not drop each other's entries."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / STATE_DIR
        self.path = self.dir / STATE_FILE

    def load(self) -> tuple[dict[str, Freshness], str | None]:
        """The entries, and a problem if the file exists but cannot be used (then every
        object counts as never verified; the file is rewritten on the next save)."""
        try:
            self._check_dir()
        except FileNotFoundError:
            return {}, None
        except OSError as e:
            return {}, f"{e} (freshness state not read)"
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
            with open(fd, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}, None
        except OSError as e:
            why = "a symbolic link, not followed" if e.errno == errno.ELOOP else e.strerror
            return {}, f"{STATE_DIR}/{STATE_FILE}: unreadable ({why})"
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != STATE_FORMAT
            or doc.get("version") != STATE_VERSION
            or not isinstance(doc.get("objects"), dict)
        ):
            return {}, f"{STATE_DIR}/{STATE_FILE}: not a usable state file (ignored)"
        objects: dict[str, Any] = doc["objects"]
        return {k: Freshness.from_dict(v) for k, v in objects.items()}, None

    def _check_dir(self) -> None:
        check_state_dir(self.dir)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Create ``.blockframe`` if need be and hold its lock, never through a link."""
        return dir_lock(self.root, "lock")

    def save(self, updates: dict[str, Freshness], present: set[str]) -> None:
        """Merge ``updates`` into the file; entries of object directories that no longer
        exist are dropped. An OSError (nothing written) if ``.blockframe`` or its lock is
        not what health makes there."""
        with self._locked():
            entries, _ = self.load()
            for k, new in updates.items():
                old = entries.get(k)
                newer_on_disk = (
                    old is not None
                    and old.damaged is None
                    and new.damaged is None
                    and (old.verified or 0.0) > (new.verified or 0.0)
                )
                if not newer_on_disk:  # a concurrent run verified it since: keep that
                    entries[k] = new
            keep = {
                k: v
                for k, v in entries.items()
                if k in present or (not k.startswith(".") and (self.root / k).is_dir())
            }
            doc = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "objects": {k: keep[k].to_dict() for k in sorted(keep)},
            }
            atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode())
