"""One stripe of a scrub: verify every shard against the manifest, rebuild the damaged
ones from verified survivors, and turn what could not be rebuilt into lost byte ranges of
the file and a margin (how many more shards of the stripe may fail)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

from blockframe import _core
from blockframe.format.manifest import Manifest
from blockframe.health.report import FileLoss, LostRange, ObjectReport, ShardReport
from blockframe.testhook import crash_point

__all__ = ["data_starts", "files_lost", "merge_lost", "scrub_stripe"]


def scrub_stripe(
    core: _core.Object,
    m: Manifest,
    si: int,
    starts: list[int],
    obj: ObjectReport,
    pool: ThreadPoolExecutor,
    tick: Callable[[int], None],
    dry_run: bool,
) -> None:
    """Verify every shard of stripe ``si`` in parallel, repair the damaged ones (unless
    ``dry_run``), and record in ``obj`` what remains: the margin and lost file ranges.
    ``starts`` are the file offsets of the stripe's data shards."""
    st = m.stripes[si]
    shards = st.shards
    verifying = {pool.submit(core.verify_shard, si, j): j for j in range(len(shards))}
    damaged: dict[int, tuple[list[int], str]] = {}
    for fut in as_completed(verifying):
        j = verifying[fut]
        bad, damage = fut.result()
        obj.bytes_verified += shards[j].size
        tick(shards[j].size)
        if damage is not None:
            damaged[j] = (bad, damage)
    m_par = len(st.parity)
    before = Counter(c for bad, _ in damaged.values() for c in set(bad))

    def repairable(j: int) -> bool:
        # Every bad chunk position of the shard has at least k verified shards.
        return all(before[c] <= m_par for c in damaged[j][0])

    errors: dict[int, str] = {}
    repaired: set[int] = set()
    if not dry_run:
        pending = [j for j in sorted(damaged) if repairable(j)]
        while pending:
            futs: dict[Future[tuple[int, list[tuple[int, int, str]]]], int] = {
                pool.submit(core.repair_shard, si, j): j for j in pending
            }
            pending = []
            for rfut in as_completed(futs):
                j = futs[rfut]
                try:
                    _, more = rfut.result()
                except _core.CoreError as e:
                    errors[j] = str(e)
                    continue
                repaired.add(j)
                crash_point("health:repaired")  # the core has renamed the rebuilt shard
                for s2, j2, _ in more:
                    # A shard that turned bad after it verified: check it again.
                    if s2 == si and j2 not in damaged:
                        bad2, damage2 = core.verify_shard(si, j2)
                        if damage2 is not None:
                            damaged[j2] = (bad2, damage2)
                            before.update(set(bad2))
                            if repairable(j2):
                                pending.append(j2)
    left = Counter(c for j, (bad, _) in damaged.items() if j not in repaired for c in set(bad))
    worst = max(left.values(), default=0)
    obj.margin = min(m_par - worst, obj.margin if obj.margin is not None else m_par)
    chunk = m.chunk_size
    for j in sorted(damaged):
        bad, damage = damaged[j]
        size = shards[j].size
        nbytes = sum(min(chunk, size - c * chunk) for c in set(bad))
        shard_report = ShardReport(
            shards[j].path,
            si,
            j,
            "data" if j < len(st.data) else "parity",
            damage,
            len(set(bad)),
            nbytes,
            repaired=j in repaired,
            repairable=repairable(j),
            error=errors.get(j),
        )
        obj.shards.append(shard_report)
        if j in repaired:
            obj.bytes_repaired += nbytes
        elif j < len(st.data):
            for c in sorted(set(bad)):
                if left[c] > m_par:
                    a = starts[j] + c * chunk
                    obj.lost.append(LostRange(a, a + min(chunk, size - c * chunk), left[c] - m_par))


def data_starts(m: Manifest) -> list[list[int]]:
    """File offset of every data shard, per stripe."""
    out, offset = [], 0
    for st in m.stripes:
        row = []
        for s in st.data:
            row.append(offset)
            offset += s.size
        out.append(row)
    return out


def merge_lost(ranges: list[LostRange]) -> list[LostRange]:
    """Sort and join adjacent lost ranges (the larger shards_needed wins)."""
    out: list[LostRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if out and out[-1].end >= r.start:
            last = out[-1]
            out[-1] = LostRange(
                last.start, max(last.end, r.end), max(last.shards_needed, r.shards_needed)
            )
        else:
            out.append(r)
    return out


def files_lost(m: Manifest, lost: list[LostRange]) -> list[FileLoss]:
    """For a pack: each file that overlaps a lost range, with the overlap as offsets of
    that file (the report names files, not pack offsets)."""
    out: list[FileLoss] = []
    if not m.is_pack or not lost:
        return out
    for f in m.members:
        if f.type != "file" or f.size == 0:
            continue
        end = f.offset + f.size
        mine = [
            LostRange(
                max(r.start, f.offset) - f.offset, min(r.end, end) - f.offset, r.shards_needed
            )
            for r in lost
            if r.start < end and f.offset < r.end
        ]
        if mine:
            out.append(FileLoss(f.name, mine))
    return out
