"""Benchmark driver for scripts/bench. Prints a Markdown report to stdout.

commit: a 1 GiB random file committed with the default config (tier 3), against
`dd conv=fsync` writing the same number of bytes the commit writes and `par2 create -r10`;
peak RSS of commit for 1 GiB and 4 GiB files. Rounds alternate between tools so that
drifts of this virtual disk hit all of them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

GiB = 2**30
BF = [sys.executable, "-m", "blockframe"]


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * 2**20)
            f.write(os.urandom(n))
            left -= n


def settle() -> None:
    """Flush earlier writes so one run's writeback does not slow the next."""
    os.sync()
    time.sleep(1)


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    settle()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def peak_rss_mib(cmd: list[str]) -> float:
    settle()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=True)
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    return kib / 1024


def shard_bytes(archive: Path) -> int:
    return sum(
        p.stat().st_size for p in archive.rglob("*.dat") if not p.name.startswith(".")
    )


def bench_commit(work: Path, rounds: int, skip_4g: bool) -> None:
    src = work / "src-1g.bin"
    make_file(src, GiB)
    # Warm the page cache, as for a file just written or read.
    subprocess.run(["cat", str(src)], check=True, stdout=subprocess.DEVNULL)
    arch = work / "archive"
    shutil.rmtree(arch, ignore_errors=True)
    sh([*BF, "commit", "-f", str(src), "-a", str(arch)])
    written = shard_bytes(arch)
    results: dict[str, list[float]] = {
        "blockframe commit": [],
        "dd conv=fsync (same bytes as commit)": [],
        "dd conv=fsync 1.1 GiB": [],
        "par2 create -r10": [],
    }
    out = work / "dd.out"
    commit_cmd = [*BF, "commit", "-f", str(src), "-a", str(arch)]
    runs = {
        "blockframe commit": (commit_cmd, arch),
        "dd conv=fsync (same bytes as commit)": (
            ["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={written // 2**20}", "conv=fsync"],
            out,
        ),
        "dd conv=fsync 1.1 GiB": (
            ["dd", "if=/dev/zero", f"of={out}", "bs=1M", "count=1126", "conv=fsync"],
            out,
        ),
    }
    shutil.rmtree(arch)
    for r in range(rounds):
        # Rotate the order, and remove every output right after its run: on this VM, writes
        # into page-cache memory freed a moment ago are several times faster than writes
        # into fresh memory, so each run must start from the same state.
        order = list(runs)
        order = order[r % len(order) :] + order[: r % len(order)]
        for label in order:
            cmd, output = runs[label]
            results[label].append(timed(cmd))
            if output.is_dir():
                shutil.rmtree(output)
            else:
                output.unlink()
        if r < 2:  # par2 is ~25x slower; two rounds are enough for its median
            results["par2 create -r10"].append(
                timed(["par2", "create", "-q", "-r10", "-s1048576", str(src)])
            )
            for p in work.glob("src-1g.bin*.par2"):
                p.unlink()
    for p in work.glob("src-1g.bin*.par2"):
        p.unlink()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"### commit: 1 GiB random file, default config (tier 3), {rounds} rounds\n")
    print(f"Commit writes {written / GiB:.3f} GiB of shards; dd writes the same.\n")
    print("| tool | median s | MB/s of source | runs (s) |")
    print("|---|---|---|---|")
    for k, v in results.items():
        print(
            f"| {k} | {med[k]:.2f} | {GiB / med[k] / 1e6:.0f} | "
            + ", ".join(f"{x:.2f}" for x in v)
            + " |"
        )
    commit = med["blockframe commit"]
    same = commit / med["dd conv=fsync (same bytes as commit)"]
    spec = commit / med["dd conv=fsync 1.1 GiB"]
    par2 = med["par2 create -r10"] / commit
    print(
        f"\ncommit / dd 1.1 GiB = **{spec:.2f}x**, commit / dd of the same bytes = "
        f"**{same:.2f}x** (target <= 1.2x); commit is **{par2:.1f}x** faster than par2 "
        "(target >= 8x)\n"
    )
    print("| file | commit peak RSS |")
    print("|---|---|")
    shutil.rmtree(arch, ignore_errors=True)
    print(f"| 1 GiB | {peak_rss_mib([*BF, 'commit', '-f', str(src), '-a', str(arch)]):.0f} MiB |")
    shutil.rmtree(arch, ignore_errors=True)
    if not skip_4g:
        big = work / "src-4g.bin"
        make_file(big, 4 * GiB)
        rss = peak_rss_mib([*BF, "commit", "-f", str(big), "-a", str(arch)])
        print(f"| 4 GiB | {rss:.0f} MiB |")
        shutil.rmtree(arch, ignore_errors=True)
        big.unlink()
    print()


def main() -> None:
    p = argparse.ArgumentParser(prog="scripts/bench")
    p.add_argument("what", choices=["commit"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default="bench-data", help="scratch directory (needs ~7 GiB)")
    p.add_argument("--skip-4g", action="store_true")
    args = p.parse_args()
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} on {os.uname().nodename}, {os.cpu_count()} cores -->\n")
    if args.what == "commit":
        bench_commit(work, args.rounds, args.skip_4g)


if __name__ == "__main__":
    main()
