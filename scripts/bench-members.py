"""Commit of a pack's member files against a commit of the same bytes as one file.

10,000 files of 1 to 64 KB (about 330 MB) are committed with the pack geometry
(format/layout.py pack_storage) as a member list (`_core.commit(list_of_members, ...)`),
and their concatenation, written once beforehand, is committed as one file with the same
plan. Both read from the page cache (the files were just written, then synced) and write
durable shards (fsynced) to a fresh staging directory each round, after a warm-up round;
rounds alternate so that drifts of the disk hit both alike. Prints the median wall and
CPU times and their ratios (members / file).

Not part of the tests: run it by hand, e.g.
    PYTHONPATH=python .venv/bin/python scripts/bench-members.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from blockframe import _core
from blockframe.config import StorageConfig
from blockframe.format import layout


def cpu_seconds() -> float:
    """User and system CPU time of this process so far, every thread included: steadier
    than wall time on a machine shared with other work."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--min-size", type=int, default=1_000)
    ap.add_argument("--max-size", type=int, default=64_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to work (default: a temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-members-", dir=args.dir))
    try:
        rng = random.Random(13)
        src = work / "src"
        src.mkdir()
        listed: list[tuple[str, int]] = []
        whole = work / "whole.bin"
        with whole.open("wb") as out:
            for i in range(args.files):
                n = rng.randint(args.min_size, args.max_size)
                blob = rng.randbytes(n)
                path = src / f"d{i // 1000:02}" / f"f{i:05}.bin"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(blob)
                out.write(blob)
                listed.append((str(path), n))
        # Written back before timing: dirty source pages being flushed meanwhile would slow
        # the first commits (the shards' fsyncs share the disk with them).
        os.sync()
        size = sum(n for _, n in listed)
        storage = layout.pack_storage(size, StorageConfig())
        _, planned = layout.plan(size, storage)
        stripes = [([(p, n) for p, n in st.data], list(st.parity)) for st in planned]
        shards = sum(len(d) + len(p) for d, p in stripes)
        print(
            f"{args.files} files, {size / 1e6:.1f} MB; pack geometry: "
            f"{len(stripes)} stripe(s), {shards} shards of {storage.segment_size / 1e6:.2f} MB"
        )

        times: dict[str, list[float]] = {"members": [], "file": []}
        cpu: dict[str, list[float]] = {"members": [], "file": []}
        results = {}
        # Round 0 warms up (dentry and inode caches, allocator) and is not counted.
        for r in range(args.rounds + 1):
            for kind in ("members", "file") if r % 2 == 0 else ("file", "members"):
                stage = work / f"stage-{kind}-{r}"
                stage.mkdir()
                source: str | list[tuple[str, int]] = listed if kind == "members" else str(whole)
                start, used = time.perf_counter(), cpu_seconds()
                got = _core.commit(source, [(str(stage), True)], storage.chunk_size, stripes)
                if r > 0:
                    times[kind].append(time.perf_counter() - start)
                    cpu[kind].append(cpu_seconds() - used)
                results[kind] = got[:2]
                shutil.rmtree(stage)
        assert results["members"] == results["file"], "the two commits differ"
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        for kind in ("members", "file"):
            runs = ", ".join(f"{t:.3f}" for t in times[kind])
            print(
                f"{kind:8} median {med[kind]:.3f} s ({size / med[kind] / 1e6:.0f} MB/s), "
                f"CPU {med_cpu[kind]:.3f} s; runs: {runs}"
            )
        print(
            f"ratio members / file: {med['members'] / med['file']:.2f} (wall), "
            f"{med_cpu['members'] / med_cpu['file']:.2f} (CPU, user + system)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
