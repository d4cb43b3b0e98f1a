"""Volumes: one archive spread over several directories or buckets (failure domains).

Every volume has the DESIGN §5 layout: ``<vol>/<name>_<id>/manifest.json`` (and replica)
holding the object's manifest, plus the shards of the object that are placed on that
volume. Manifests are on every volume; the shards of each stripe are spread so that no
volume holds more than ``parity_shards`` shards of one stripe, which makes the loss of any
one whole volume survivable. With few volumes the tier-3 stripes get fewer data shards to
keep that rule: ``k = min(block_segments, (volumes - 1) * parity_shards)``.

Volumes are identified by a label, ``<vol>/.blockframe/volume.json`` (archive id and index),
not by their position in the configuration, so the list can be reordered. A configured
volume that is absent (the directory or bucket does not exist) is treated as lost: reads
rebuild its shards from the others and ``health`` moves them onto the surviving volumes. An
empty directory or bucket in its place is a replacement: it takes the lost index and
``health`` rebuilds the lost shards onto it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from blockframe.config import S3Config, StorageConfig
from blockframe.errors import ArchiveError, ManifestError, UsageError
from blockframe.format.manifest import (
    COMMITTING,
    MANIFEST,
    REPLICA,
    Loaded,
    Manifest,
    Shard,
    Stripe,
    load_from,
)
from blockframe.storage import Volume, open_volume
from blockframe.storage.local import fsync_dir
from blockframe.storage.readahead import FetchAhead

log = logging.getLogger(__name__)

LABEL = ".blockframe/volume.json"
LABEL_FORMAT = "blockframe-volume"
LABEL_VERSION = 1


def adapted_storage(storage: StorageConfig, volumes: int) -> StorageConfig:
    """The geometry new objects get on ``volumes`` volumes: tier-3 stripes hold at most
    ``(volumes - 1) * parity_shards`` data shards, so one volume never holds more than
    ``parity_shards`` shards of a stripe."""
    if volumes < 2:
        return storage
    k = min(storage.block_segments, (volumes - 1) * storage.parity_shards)
    if k == storage.block_segments:
        return storage
    return replace(storage, block_segments=k)


def place(stripe: int, shards: int, volumes: Sequence[int]) -> list[int]:
    """The volume of each shard of stripe ``stripe``: round robin over ``volumes``, starting
    one further on for each stripe so that data shards (and reads) spread evenly."""
    n = len(volumes)
    return [volumes[(stripe + s) % n] for s in range(shards)]


def can_lose(m: Manifest, absent: Iterable[int] = (), bad: Sequence[int] | None = None) -> int:
    """How many more whole volumes ``m`` can lose, whichever they are, with every byte still
    readable: per stripe, the shards already lost (on ``absent`` volumes, plus ``bad[s]``
    other bad shards of stripe ``s``) and those of the largest remaining volumes must stay
    within the parity. -1 when something is lost already."""
    layout = [(m.volume_counts(si).items(), len(st.parity)) for si, st in enumerate(m.stripes)]
    return can_lose_layout(layout, absent, bad)


def can_lose_layout(
    layout: Iterable[tuple[Iterable[tuple[int, int]], int]],
    absent: Iterable[int] = (),
    bad: Sequence[int] | None = None,
) -> int:
    """:func:`can_lose` over a layout: per stripe, ``(volume, shards)`` pairs and the
    number of parity shards (what a catalog row keeps of a manifest)."""
    gone = set(absent)
    worst: int | None = None
    for si, (pairs, parity) in enumerate(layout):
        counts = dict(pairs)
        budget = parity - sum(n for v, n in counts.items() if v in gone)
        budget -= bad[si] if bad is not None else 0
        if budget < 0:
            return -1
        t = 0
        for n in sorted((n for v, n in counts.items() if v not in gone), reverse=True):
            if n > budget:
                break
            budget -= n
            t += 1
        worst = t if worst is None else min(worst, t)
    return worst or 0


def replace_lost(m: Manifest, present: set[int]) -> Manifest:
    """``m`` with every shard of an absent volume given to a present one: per stripe, the
    present volume holding the fewest shards of it (ties: rotating with the stripe)."""
    order = sorted(present)
    stripes = []
    for si, st in enumerate(m.stripes):
        counts = {v: 0 for v in order}
        for sh in st.shards:
            if sh.volume in counts:
                counts[sh.volume] += 1
        shards = []
        for sh in st.shards:
            if sh.volume not in counts:
                v = min(order, key=lambda v: (counts[v], (order.index(v) - si) % len(order)))
                counts[v] += 1
                sh = Shard(sh.path, sh.size, sh.hashes, v)
            shards.append(sh)
        k = len(st.data)
        stripes.append(Stripe(tuple(shards[:k]), tuple(shards[k:])))
    return replace(m, stripes=tuple(stripes))


@dataclass
class VolumeSet:
    """The volumes of an archive, by index. ``slots`` holds every configured volume
    (present or not) under the index it has or takes; ``present`` the indices usable now."""

    archive_id: str
    slots: dict[int, Volume]
    present: set[int] = field(default_factory=set)
    labelled: set[int] = field(default_factory=set)
    _ahead: FetchAhead | None = field(default=None, repr=False, compare=False)

    @property
    def location(self) -> str:
        """How the archive is named in messages."""
        return ", ".join(self.slots[i].location for i in sorted(self.slots))

    def none_present(self) -> str:
        """Why the archive cannot be used: every volume with the reason it is absent."""
        why = "; ".join(
            self.slots[i].why_absent() or self.slots[i].location for i in sorted(self.slots)
        )
        return f"no volume of the archive is present ({why})"

    def volume(self, index: int) -> Volume | None:
        """The volume with index ``index`` if it is present."""
        return self.slots[index] if index in self.present else None

    def present_volumes(self) -> list[tuple[int, Volume]]:
        return [(i, self.slots[i]) for i in sorted(self.present)]

    def label_all(self) -> None:
        """Label present volumes that have no label yet (new or replacement volumes)."""
        for i, vol in self.present_volumes():
            if i in self.labelled:
                continue
            doc = {
                "format": LABEL_FORMAT,
                "version": LABEL_VERSION,
                "archive": self.archive_id,
                "index": i,
            }
            _check_label_dir(vol)
            try:
                vol.write(LABEL, (json.dumps(doc, indent=1) + "\n").encode())
            except OSError as e:
                raise ArchiveError(f"{vol.location}: cannot label volume: {e}") from None
            self.labelled.add(i)
            log.debug("%s: labelled volume %d of archive %s", vol.location, i, self.archive_id)

    # -- manifests ------------------------------------------------------------------------

    def load_manifest(self, dirname: str, repair: str = "existing") -> VolumeLoaded:
        """The manifest of object directory ``dirname``: the first copy that verifies, on
        any volume. ``repair``: "existing" (readers) stops at the first volume with a good
        copy and rewrites a bad copy there; "none" (dry runs) checks every volume and
        writes nothing; "all" (health) checks every volume and writes both copies on each.
        """
        found: Loaded | None = None
        source = -1
        per: dict[int, Loaded | ManifestError] = {}
        raw_good: bytes | None = None
        published = False
        for i, vol in self.present_volumes():

            def read(copy: str, vol: Volume = vol) -> bytes | None:
                return vol.read(f"{dirname}/{copy}")

            try:
                loaded = load_from(read, None, f"{vol.location}/{dirname}")
            except ManifestError as e:
                per[i] = e
                continue
            per[i] = loaded
            if found is None:
                found, source = loaded, i
                raw_good = loaded.manifest.to_json()
            # Published once a volume holds a good copy and no marker (FORMAT.md §17): the
            # commit deletes the first marker only after every volume has its manifests.
            if not published and marker(vol, dirname) is None:
                published = True
            if published and repair == "existing":
                break  # readers need one good copy; health checks the others
        if found is None or raw_good is None or not published:
            self._unpublished(dirname, found is not None, per, repair)
        assert found is not None and raw_good is not None
        repaired: list[str] = []
        problems: list[str] = []
        for i, vol in self.present_volumes():
            if i not in per:
                continue
            got = per.get(i)
            if isinstance(got, Loaded) and got.manifest == found.manifest:
                copies_bad = [p.split(":")[0] for p in got.problems]
                problems.extend(f"volume {i}: {p}" for p in got.problems)
            else:
                held = isinstance(got, Loaded) or any(
                    vol.size(f"{dirname}/{c}") is not None for c in (MANIFEST, REPLICA)
                )
                if isinstance(got, Loaded):
                    problems.append(f"volume {i}: differs from volume {source}'s copy")
                elif held and got is not None:
                    problems.append(f"volume {i}: {got}")
                else:
                    problems.append(f"volume {i}: missing")
                if repair == "none" or (repair == "existing" and not held):
                    continue
                copies_bad = [MANIFEST, REPLICA]
            if repair == "none":
                continue
            for copy in copies_bad:
                try:
                    vol.write(f"{dirname}/{copy}", raw_good)
                    repaired.append(f"volume {i}: {copy}")
                except OSError as e:
                    log.warning("%s: cannot rewrite %s/%s: %s", vol.location, dirname, copy, e)
        return VolumeLoaded(found.manifest, tuple(repaired), tuple(problems), source)

    def _unpublished(
        self,
        dirname: str,
        any_good: bool,
        per: dict[int, Loaded | ManifestError],
        repair: str,
    ) -> None:
        """Raise for an object directory that is not a published object, unless it is one
        ``health`` may finish: marked everywhere it holds a good manifest, no removal under
        way, and a manifest copy written on every volume that holds the object (a commit
        killed after its last manifest, before its first marker was deleted; a volume
        holding nothing of it was lost and replaced since)."""
        present = self.present_volumes()
        markers = [m for _, vol in present if (m := marker(vol, dirname)) is not None]
        if any_good:
            if repair != "existing" and REMOVING not in markers and self._all_written(dirname):
                return
            raise IncompleteError(
                f"{dirname}: incomplete (a commit or removal was interrupted or is "
                "under way; health finishes or removes it)"
            )
        written = any(
            vol.size(f"{dirname}/{copy}") is not None
            for _, vol in present
            for copy in (MANIFEST, REPLICA)
        )
        if markers and not written:
            # Marked, and no manifest copy was ever written (a damaged copy would prove
            # the commit got that far): an interrupted commit, not a damaged object.
            raise IncompleteError(
                f"{dirname}: incomplete (a commit or removal was interrupted or is "
                "under way; health removes it)"
            )
        reasons = "; ".join(f"volume {i}: {e}" for i, e in per.items())
        raise ManifestError(f"{dirname}: no usable manifest on any volume ({reasons})")

    def _all_written(self, dirname: str) -> bool:
        """Whether every present volume holding something of ``dirname`` holds a manifest
        copy (good or not): the commit got past writing manifests everywhere."""
        for _, vol in self.present_volumes():
            if vol.listdir(dirname) and all(
                vol.size(f"{dirname}/{c}") is None for c in (MANIFEST, REPLICA)
            ):
                return False
        return True

    def write_manifest(self, dirname: str, m: Manifest, only: int | None = None) -> list[str]:
        """Write both copies of ``m`` on every present volume (or just volume ``only``);
        returns failures."""
        body = m.to_json()
        failed = []
        for i, vol in self.present_volumes():
            if only is not None and i != only:
                continue
            for copy in (MANIFEST, REPLICA):
                try:
                    vol.write(f"{dirname}/{copy}", body)
                except OSError as e:
                    failed.append(f"volume {i} ({vol.location}): {copy}: {e}")
        return failed

    # -- shard access for the core ---------------------------------------------------------

    def all_local(self, m: Manifest) -> bool:
        """Whether every shard of ``m`` is on a present local volume (the core then reads
        the files itself; otherwise shard bytes go through :meth:`fetcher`)."""
        used = {sh.volume for st in m.stripes for sh in st.shards}
        return all(v in self.present and self.slots[v].is_local for v in used)

    def prepare_object_dir(self, dirname: str, volume: int) -> None:
        """Create the directory of object ``dirname`` on present local volume ``volume`` if
        it is missing there (an empty replacement volume) while the object still exists (a
        manifest copy is on another present volume), so that the core can rebuild shards
        in it. The core never creates an object directory itself: a repair racing the
        object's removal or replacement must not leave a zombie directory behind."""
        path = self.slots[volume].local_path(dirname)
        if path is None or path.is_dir() or not path.parent.is_dir():
            return
        if any(
            vol.size(f"{dirname}/{copy}") is not None
            for i, vol in self.present_volumes()
            if i != volume
            for copy in (MANIFEST, REPLICA)
        ):
            path.mkdir(exist_ok=True)
            fsync_dir(path.parent)

    def object_dir(self, dirname: str, volume: int) -> str:
        """The directory of object ``dirname`` on local volume ``volume``: the core opens the
        object's shards on that volume below it, following no link there."""
        path = self.slots[volume].local_path(dirname)
        assert path is not None
        return str(path)

    def fetcher(
        self, dirname: str, m: Manifest
    ) -> tuple[
        Callable[[int, int, int, int], bytes | memoryview | None],
        Callable[[int, int, bytes], None],
    ]:
        """``fetch`` and ``store`` callables for the core: shard ranges from whichever
        volume holds them (None when it is absent), repaired shards back to it."""

        def where(stripe: int, shard: int) -> tuple[Volume | None, str]:
            sh = m.stripes[stripe].shards[shard]
            return self.volume(sh.volume), f"{dirname}/{sh.path}"

        ahead = self._fetch_ahead()

        def fetch(stripe: int, shard: int, start: int, length: int) -> bytes | memoryview | None:
            vol, rel = where(stripe, shard)
            if vol is None:
                return None
            if vol.is_local:
                return vol.get_range(rel, start, length)
            size = m.stripes[stripe].shards[shard].size
            return ahead.fetch(
                (rel, m.stripes[stripe].shards[shard].volume, 0), start, length, size
            )

        def store(stripe: int, shard: int, data: bytes) -> None:
            vol, rel = where(stripe, shard)
            sh = m.stripes[stripe].shards[shard]
            if vol is None:
                raise OSError(f"volume {sh.volume} is absent")
            vol.write(rel, data)
            ahead.forget((rel, sh.volume, 0))

        return fetch, store

    def _fetch_ahead(self) -> FetchAhead:
        """One fetch-ahead pool for the bucket volumes of this archive."""
        with _LOCK:
            if self._ahead is None:

                def get(stream: tuple[str, int, int], start: int, length: int) -> bytes | None:
                    rel, volume, _ = stream
                    vol = self.volume(volume)
                    return None if vol is None else vol.get_range(rel, start, length)

                # Larger blocks than for a blockframe server: each request to an object
                # store costs more, and its throughput grows with the request size.
                self._ahead = FetchAhead(get, block=BUCKET_BLOCK, ahead=4, held=12)
            return self._ahead


_LOCK = threading.Lock()
BUCKET_BLOCK = 8 << 20  # bytes of a bucket shard fetched per request by sequential readers


@dataclass(frozen=True)
class VolumeLoaded:
    """A manifest found on the volumes, what was rewritten and what was wrong."""

    manifest: Manifest
    repaired: tuple[str, ...]
    problems: tuple[str, ...]
    source: int  # the volume whose copy was used


class IncompleteError(ManifestError):
    """An object directory whose commit (or removal) has not finished."""


# What a removal writes into `.committing` (a commit writes it empty): health never
# finishes a removal, it completes it.
REMOVING = b"remove"


def marker(vol: Volume, dirname: str) -> bytes | None:
    """The content of ``dirname``'s ``.committing`` marker on ``vol``, None without one."""
    try:
        return vol.read(f"{dirname}/{COMMITTING}", limit=64)
    except OSError:
        return b""  # there, but not a marker of ours: unpublished all the same


def _check_label_dir(vol: Volume) -> None:
    """Refuse a local volume whose ``.blockframe`` is a symbolic link: the label would be
    read from, and written to, wherever it points (and health's state with it)."""
    local = vol.local_path(LABEL.partition("/")[0])
    if local is not None and local.is_symlink():
        raise ArchiveError(f"{local} is a symbolic link, not followed")


def _read_label(vol: Volume) -> dict[str, object] | None:
    _check_label_dir(vol)
    try:
        raw = vol.read(LABEL)
    except OSError as e:
        raise ArchiveError(f"{vol.location}: cannot read volume label: {e}") from None
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        doc = None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != LABEL_FORMAT
        or not isinstance(doc.get("archive"), str)
        or not isinstance(doc.get("index"), int)
    ):
        raise ArchiveError(f"{vol.location}/{LABEL}: not a usable volume label")
    return doc


def open_volumes(locations: Sequence[str], s3: S3Config | None = None) -> VolumeSet:
    """Open the configured volumes and give each its index (from its label, or the
    lowest index no other volume claims)."""
    s3 = s3 or S3Config()
    vols = []
    for loc in locations:
        try:
            vols.append(
                open_volume(
                    loc,
                    endpoint=s3.endpoint or None,
                    region=s3.region or None,
                    access_key=s3.access_key_id or None,
                    secret_key=s3.secret_access_key or None,
                )
            )
        except ValueError as e:
            raise UsageError(f"{loc}: {e}") from None
    present = [v.present() for v in vols]
    labels: list[dict[str, object] | None] = [
        _read_label(v) if p else None for v, p in zip(vols, present, strict=True)
    ]
    archive_ids = {str(lb["archive"]) for lb in labels if lb is not None}
    if len(archive_ids) > 1:
        raise ArchiveError(
            "the configured volumes belong to different archives: "
            + ", ".join(
                f"{v.location} ({lb['archive']})"
                for v, lb in zip(vols, labels, strict=True)
                if lb is not None
            )
        )
    slots: dict[int, Volume] = {}
    labelled: set[int] = set()
    for v, lb in zip(vols, labels, strict=True):
        if lb is None:
            continue
        index = int(str(lb["index"]))
        if index in slots:
            raise ArchiveError(
                f"{v.location} and {slots[index].location} are both labelled volume {index}"
            )
        slots[index] = v
        labelled.add(index)
    free = (i for i in range(len(vols) + len(slots) + 1) if i not in slots)
    for v, lb in zip(vols, labels, strict=True):
        if lb is None:
            slots[next(free)] = v
    present_ix = {i for i, v in slots.items() if present[vols.index(v)]}
    archive_id = next(iter(archive_ids)) if archive_ids else uuid.uuid4().hex
    return VolumeSet(archive_id, slots, present_ix, labelled)


def check_not_member(root: Path) -> None:
    """Refuse to use one volume of a volume archive as a plain archive directory: its
    objects would look damaged and health would 'repair' them onto this one volume."""
    label = root / LABEL
    if os.path.lexists(label):
        raise ArchiveError(
            f"{root} is one volume of a volume archive: list all its volumes in "
            "[archive] volumes instead of passing --archive"
        )
