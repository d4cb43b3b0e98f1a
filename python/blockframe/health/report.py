"""The report of ``blockframe health``: what was found and done per object, housekeeping
and totals; its JSON form (schema: ``health-report.schema.json`` beside this file, described
in README.md) and a rich table for people."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from blockframe.config import format_size

REPORT_FORMAT = "blockframe-health"
REPORT_VERSION = 1
SCHEMA_FILE = "health-report.schema.json"

Status = Literal["healthy", "repaired", "damaged", "unusable"]


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every ``health --json`` report validates against."""
    # Imported here: importlib.resources (with tempfile and random) costs every health run
    # a few ms at start-up, for a schema only tests and tools ask for.
    from importlib import resources

    text = resources.files("blockframe.health").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def iso(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC with microseconds (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@dataclass
class ShardReport:
    """One damaged shard of an object."""

    path: str
    stripe: int
    shard: int  # index in the stripe: data shards first, then parity
    kind: Literal["data", "parity"]
    damage: str  # missing | short | oversized | unreadable | corrupt
    bad_chunks: int
    bad_bytes: int
    repaired: bool = False
    repairable: bool = True  # every bad chunk position has enough verified survivors
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LostRange:
    """Bytes ``[start, end)`` of the file that no surviving shards can rebuild."""

    start: int
    end: int
    shards_needed: int  # how many more intact shards would make them recoverable

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FileLoss:
    """A file of a pack that lost bytes: its name and its lost ranges, as offsets of the
    file itself (not of the pack)."""

    name: str
    lost: list[LostRange]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lost": [r.to_dict() for r in self.lost]}


@dataclass
class ObjectReport:
    """What the scrub found and did for one object directory."""

    directory: str
    name: str | None = None
    size: int | None = None
    tier: int | None = None
    status: Status = "healthy"
    complete: bool = True
    stripes: int | None = None
    stripes_scrubbed: tuple[int, int] | None = None  # [first, end)
    margin: int | None = None
    bytes_verified: int = 0
    bytes_repaired: int = 0
    manifest_repaired: list[str] = field(default_factory=list)
    manifest_damaged: list[tuple[str, str]] = field(default_factory=list)  # (copy, problem)
    shards: list[ShardReport] = field(default_factory=list)
    lost: list[LostRange] = field(default_factory=list)
    files_lost: list[FileLoss] = field(default_factory=list)  # packs: per file
    superseded_by: str | None = None
    problem: str | None = None
    verified_at: float | None = None
    volumes_can_lose: int | None = None  # volume archives only

    @property
    def shards_needed(self) -> int:
        return max((r.shards_needed for r in self.lost), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "name": self.name,
            "size": self.size,
            "tier": self.tier,
            "status": self.status,
            "complete": self.complete,
            "stripes": self.stripes,
            "stripes_scrubbed": list(self.stripes_scrubbed) if self.stripes_scrubbed else None,
            "margin": self.margin,
            "shards_needed": self.shards_needed,
            "bytes_verified": self.bytes_verified,
            "bytes_repaired": self.bytes_repaired,
            "manifest": {
                "repaired": list(self.manifest_repaired),
                "damaged": [{"copy": c, "problem": p} for c, p in self.manifest_damaged],
            },
            "shards": [s.to_dict() for s in self.shards],
            "lost": [r.to_dict() for r in self.lost],
            "files_lost": [f.to_dict() for f in self.files_lost],
            "superseded_by": self.superseded_by,
            "problem": self.problem,
            "verified_at": iso(self.verified_at),
            **(
                {"volumes_can_lose": self.volumes_can_lose}
                if self.volumes_can_lose is not None
                else {}
            ),
        }


@dataclass
class Leftover:
    """Something an interrupted operation of ours left behind."""

    path: str  # relative to the archive
    kind: Literal["staging", "trash", "repair-temp", "manifest-temp"]
    action: Literal["removed", "would-remove", "kept-recent", "failed"] = "would-remove"
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Stray:
    """An entry that is not ours to judge: reported, never removed."""

    path: str  # relative to the archive
    kind: Literal["file", "directory", "symlink", "other"]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Skipped:
    directory: str
    reason: Literal["fresh", "time-budget"]
    verified_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "reason": self.reason,
            "verified_at": iso(self.verified_at),
        }


@dataclass
class HealthReport:
    """The whole run: per object reports (riskiest first), housekeeping and totals."""

    archive: str
    dry_run: bool
    older_than: float | None
    max_time: float | None
    started: float
    finished: float = 0.0
    objects: list[ObjectReport] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    strays: list[Stray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    objects_total: int = 0
    verified: dict[str, float | None] = field(default_factory=dict)  # after the run

    @property
    def status(self) -> Literal["healthy", "repaired", "damaged"]:
        if any(o.status in ("damaged", "unusable") for o in self.objects):
            return "damaged"
        if any(o.status == "repaired" for o in self.objects):
            return "repaired"
        return "healthy"

    @property
    def exit_code(self) -> int:
        """0 healthy or everything repaired; 1 damage remains (or was found, dry run)."""
        return 1 if self.status == "damaged" else 0

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)

    def count(self, *statuses: str) -> int:
        return sum(1 for o in self.objects if o.status in statuses)

    def oldest(self) -> tuple[str, float] | None:
        """The object directory verified longest ago, and when (never-verified excluded)."""
        known = [(t, d) for d, t in self.verified.items() if t is not None]
        if not known:
            return None
        t, d = min(known)
        return d, t

    def to_dict(self) -> dict[str, Any]:
        oldest = self.oldest()
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "archive": self.archive,
            "dry_run": self.dry_run,
            "older_than": self.older_than,
            "max_time": self.max_time,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "status": self.status,
            "exit_code": self.exit_code,
            "objects": [o.to_dict() for o in self.objects],
            "skipped": [s.to_dict() for s in self.skipped],
            "leftovers": [x.to_dict() for x in self.leftovers],
            "strays": [x.to_dict() for x in self.strays],
            "notes": list(self.notes),
            "totals": {
                "objects": self.objects_total,
                "scrubbed": len(self.objects),
                "skipped": len(self.skipped),
                "healthy": self.count("healthy"),
                "repaired": self.count("repaired"),
                "damaged": self.count("damaged", "unusable"),
                "bytes_verified": sum(o.bytes_verified for o in self.objects),
                "bytes_repaired": sum(o.bytes_repaired for o in self.objects),
                "seconds": round(self.seconds, 6),
                "never_verified": sum(1 for t in self.verified.values() if t is None),
                "oldest_verified": None
                if oldest is None
                else {
                    "directory": oldest[0],
                    "verified_at": iso(oldest[1]),
                    "age_seconds": round(max(0.0, self.finished - oldest[1]), 6),
                },
            },
        }


# -- output ----------------------------------------------------------------------------

# Healthy objects shown in the table before the rest are summed up in one line.
TABLE_HEALTHY = 20
# Line width of the table when stdout is not a terminal.
PIPED_WIDTH = 200


def _details(o: ObjectReport) -> list[str]:
    out: list[str] = []
    if o.problem:
        out.append(o.problem)
    out += [f"{c} restored from the other copy" for c in o.manifest_repaired]
    out += [f"{c}: {p}" for c, p in o.manifest_damaged]
    for s in o.shards:
        if s.repaired:
            out.append(f"repaired {s.path} ({s.damage})")
        else:
            why = f": {s.error}" if s.error else "" if s.repairable else " (beyond parity)"
            out.append(f"{s.path} {s.damage}, not repaired{why}")
    for r in o.lost:
        more = "shard" if r.shards_needed == 1 else "shards"
        out.append(f"LOST bytes {r.start}-{r.end - 1} (needs {r.shards_needed} more {more})")
    for f in o.files_lost:
        ranges = ", ".join(f"{r.start}-{r.end - 1}" for r in f.lost)
        out.append(f"LOST in {f.name}: bytes {ranges}")
    if not o.complete and o.stripes_scrubbed and o.stripes:
        a, b = o.stripes_scrubbed
        out.append(f"stripes {a}-{b - 1} of {o.stripes} scrubbed (time budget; resumes next run)")
    if o.superseded_by:
        out.append(f"older copy of the name, superseded by {o.superseded_by}")
    return out


def print_report(report: HealthReport, verbose: bool = False) -> None:
    """The report for people: a table, riskiest objects first, then housekeeping and
    totals. Healthy objects beyond the first few are summed up unless ``verbose``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped (cron mail, a file, grep): no wrapping at 80 columns inside the table.
        console = Console(highlight=False, width=PIPED_WIDTH)
    table = Table(box=None, header_style="bold")
    table.add_column("OBJECT")
    table.add_column("STATUS")
    table.add_column("MARGIN", justify="right")
    spread = any(o.volumes_can_lose is not None for o in report.objects)
    if spread:
        table.add_column("CAN LOSE", justify="right")
    table.add_column("SIZE", justify="right")
    table.add_column("DETAILS")
    style = {
        "healthy": "green",
        "repaired": "yellow",
        "damaged": "bold red",
        "unusable": "bold red",
    }
    healthy_shown = 0
    hidden = 0
    for o in report.objects:
        if o.status == "healthy" and not verbose:
            if healthy_shown >= TABLE_HEALTHY:
                hidden += 1
                continue
            healthy_shown += 1
        lose = o.volumes_can_lose
        row = [
            o.name or o.directory,
            f"[{style[o.status]}]{o.status}[/]",
            "-" if o.margin is None else str(o.margin),
            *([] if not spread else ["-" if lose is None or lose < 0 else f"{lose} vol"]),
            "-" if o.size is None else format_size(o.size),
            "\n".join(_details(o)),
        ]
        table.add_row(*row, end_section=False)
    if hidden:
        table.add_row(f"... and {hidden} more healthy objects", *[""] * (4 + spread))
    if report.objects:
        console.print(table)
    for x in report.leftovers:
        what = {
            "removed": "removed",
            "would-remove": "would remove",
            "kept-recent": "kept (recently modified, may be in use)",
            "failed": f"could not remove ({x.detail})",
        }[x.action]
        console.print(f"left-over {x.kind} {x.path}: {what}")
    for s in report.strays:
        console.print(f"stray {s.kind} {s.path}: not an object, left alone")
    for note in report.notes:
        console.print(f"note: {note}")
    fresh = sum(1 for s in report.skipped if s.reason == "fresh")
    budget = len(report.skipped) - fresh
    verified = sum(o.bytes_verified for o in report.objects)
    repaired = sum(o.bytes_repaired for o in report.objects)
    secs = report.seconds
    rate = f" ({format_size(int(verified / secs))}/s)" if secs > 0 and verified else ""
    skipped = []
    if fresh:
        skipped.append(f"{fresh} recently verified")
    if budget:
        skipped.append(f"{budget} left for the next run (time budget)")
    console.print(
        f"{len(report.objects)} of {report.objects_total} objects scrubbed"
        + (f" ({', '.join(skipped)} skipped)" if skipped else "")
        + f": {format_size(verified)} verified in {secs:.2f} s{rate}, "
        f"{format_size(repaired)} repaired"
    )
    oldest = report.oldest()
    never = sum(1 for t in report.verified.values() if t is None)
    line = (
        f"oldest verification: {format_duration(report.finished - oldest[1])} ago ({oldest[0]})"
        if oldest
        else "oldest verification: none recorded"
    )
    if never:
        line += f"; {never} object{'s' if never != 1 else ''} never fully verified"
    console.print(line)
    damaged = report.count("damaged", "unusable")
    if report.status == "damaged" and report.dry_run:
        console.print(
            f"[bold red]damage found in {damaged} object(s)[/] (dry run: nothing changed)"
        )
    elif report.status == "damaged":
        console.print(f"[bold red]DAMAGE REMAINS in {damaged} object(s)[/]")
    elif report.status == "repaired":
        console.print(f"[yellow]all damage repaired[/] ({report.count('repaired')} object(s))")
    else:
        console.print("[green]healthy[/]")
