"""Command line of ``scripts/torture``: engine runs seed after seed, then a load phase, then a
summary of the figures (RELIABILITY.md quotes them)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from engine import Engine, Stats, TortureFailure
from load import run_load


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/torture")
    ap.add_argument("--seed", type=int, default=1, help="first seed (then seed+1, ...)")
    ap.add_argument("--minutes", type=float, default=5.0, help="total time budget")
    ap.add_argument("--steps", type=int, default=300, help="steps per seed")
    ap.add_argument("--seeds", type=int, default=None, help="stop after N seeds")
    ap.add_argument(
        "--load-seconds", type=float, default=None, help="default: 10%% of budget; 0: no load"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--volumes",
        type=int,
        default=0,
        help="spread the archive over N volumes (and lose whole ones); 0: one directory",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="print every step")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("blockframe").setLevel(logging.CRITICAL)

    budget = args.minutes * 60
    load_seconds = args.load_seconds if args.load_seconds is not None else max(15, budget * 0.1)
    work = Path(tempfile.mkdtemp(prefix="blockframe-torture-"))
    started = time.monotonic()
    total = Stats()
    seeds: list[int] = []
    last_line: list[str] = [""]

    def log(line: str) -> None:
        last_line[0] = line
        if args.verbose:
            print(line, flush=True)

    seed = args.seed
    failures: list[str] = []
    load = None
    while time.monotonic() - started < budget - load_seconds or not seeds:
        if args.seeds is not None and len(seeds) >= args.seeds:
            break
        remaining = budget - load_seconds - (time.monotonic() - started)
        e = Engine(seed, work / f"seed-{seed}", log=log, volumes=args.volumes)
        seeds.append(seed)
        try:
            e.run(steps=args.steps, seconds=max(remaining, 5))
        except TortureFailure as f:
            # Keep going with the next seed: one run reports every failure it meets.
            failures.append(str(f))
            print(f"FAILED: {f}\n  last step: {last_line[0]}", file=sys.stderr, flush=True)
            args.keep = True
        finally:
            total.merge(e.stats)
        print(
            f"seed={seed}: {e.stats.steps} steps, {e.stats.crashes} crashes, "
            f"{e.stats.shards_damaged} shards damaged, {e.stats.repairs} repairs, "
            f"{mib(e.stats.bytes_verified)} verified, wrong bytes {e.stats.wrong_bytes}",
            flush=True,
        )
        if not failures or failures[-1].split()[0] != f"seed={seed}":
            shutil.rmtree(work / f"seed-{seed}", ignore_errors=True)
        seed += 1
    try:
        if load_seconds > 0:
            load = run_load(work / "load", load_seconds, seed=args.seed)
            if load["errors"]:
                failures.append(f"load seed={args.seed}: {load['errors'][:5]}")
    except TortureFailure as f:
        failures.append(f"load: {f}")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    if failures:
        print(f"work directory kept: {work}", file=sys.stderr)
        args.keep = True
    status = 1 if failures else 0
    elapsed = time.monotonic() - started
    summary = {
        "command": "scripts/torture " + " ".join(sys.argv[1:]),
        "elapsed_seconds": round(elapsed, 1),
        "seeds": [seeds[0], seeds[-1]] if seeds else [],
        "scenarios (engine steps)": total.steps,
        "actions": dict(sorted(total.actions.items())),
        "commits": total.commits,
        "folders committed (directory commits)": total.folders,
        "files of folders that went into packs": total.packed_files,
        "crashes injected (SIGKILL landed)": total.crashes,
        "kill points chosen": dict(sorted(total.kill_points.items())),
        "files of killed commits finished by health (volumes)": total.finished_by_health,
        "killed commits finished damaged by lost volumes (removed)": total.finished_damaged,
        "shards damaged": total.shards_damaged,
        "manifest copies damaged": total.manifests_damaged,
        "objects damaged beyond parity (all reported)": total.beyond_parity_objects,
        "reads (engine)": total.reads,
        "reads refused (each touching a lost range)": total.reads_refused,
        "pack shard files damaged": total.pack_shards_damaged,
        "packs damaged beyond parity": total.packs_beyond_parity,
        "bytes of files of packs read and verified": total.packed_bytes_verified,
        "reads of files of packs refused (each under a lost range)": total.packed_refused,
        "bytes read and verified (engine)": total.bytes_verified,
        "repairs observed (files back to original bytes)": total.repairs,
        "health runs": total.health_runs,
        "mounts": total.mounts,
        "servers": total.servers,
        "wrong bytes returned": total.wrong_bytes,
        "recoverable data lost": total.recoverable_lost,
        "objects without manifests reported unusable": total.headless_unusable,
        "failures": failures,
        "peak RSS mount (engine)": total.peak_rss_mount,
        "peak RSS server (engine)": total.peak_rss_server,
    }
    if load is not None:
        summary["load"] = {
            k: load[k]
            for k in (
                "seconds",
                "bytes_verified",
                "health_runs",
                "repairs",
                "peak_rss_mount",
                "peak_rss_server",
                "rss_start",
                "rss_end",
                "errors",
            )
        }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("== torture summary")
        for k, v in summary.items():
            if isinstance(v, int) and ("RSS" in k or "bytes read" in k):
                v = f"{v} ({mib(v)})"
            print(f"{k}: {v}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
