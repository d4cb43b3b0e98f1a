"""Benchmark driver for scripts/bench. Prints a Markdown report to stdout.

commit: a 1 GiB random file committed with the default config (tier 3), against
`dd conv=fsync` writing the same number of bytes the commit writes and `par2 create -r10`;
peak RSS of commit for 1 GiB and 4 GiB files. Rounds alternate between tools so that
drifts of this virtual disk hit all of them alike; medians are reported.

health: `blockframe health` on a healthy 1 GiB tier-3 object against `par2 verify` and
`b3sum` over the shard files, page cache dropped before each run; then 3 MiB of damage in
the middle of the file repaired by health against `par2 repair`.

remote: `curl -o /dev/null` of the 1 GiB file from `blockframe serve` over loopback, next to
`cat` through the local mount of the same archive (and, with the remote client, through
`mount --remote`).

folders (issue #13): seeded folders of many small files in 100 directories, kept in --dir.
`commit -f` of 10,000 files of 1-64 KB against `restic backup --no-cache` into a fresh
repository (both followed by `sync`); `du -B1` of that archive against the folder's; cold
`health` against cold `b3sum` over the archive's files; on an archive of 100,000 files of
100 B-4 KB: `list --json`, mount ready (mount started to a stat of a file answered), first
stat of files through the mount, `ls -l` of a directory of 1,000 files, mount peak RSS
(VmHWM); the per-file commit cost of 100,000 against 10,000 files of 100 B-4 KB. `--files N`
scales the large folder (the others get N / 10).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
    return sum(p.stat().st_size for p in archive.rglob("*.dat") if not p.name.startswith("."))


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


def _wait_mounted(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mount at {mnt} did not come up")
        time.sleep(0.05)


def _unmount(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        proc.kill()


def _drop_file_cache(path: Path) -> None:
    """Forget the kernel's cached pages of one file (here: a file on a FUSE mount), so the
    next read goes through the filesystem again while the archive files stay warm."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed_cat(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _random_reads(path: Path, count: int, seed: int) -> list[float]:
    """Latency of 4 KiB preads at distinct random 4 KiB-aligned offsets, readahead off
    (POSIX_FADV_RANDOM), as a database or an image viewer would read."""
    import random

    size = path.stat().st_size
    offsets = random.Random(seed).sample(range(size // 4096), count)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        lat = []
        for block in offsets:
            t = time.perf_counter()
            os.pread(fd, 4096, block * 4096)
            lat.append(time.perf_counter() - t)
        return lat
    finally:
        os.close(fd)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_mount(work: Path, rounds: int) -> None:
    src = work / "src-1g.bin"
    make_file(src, GiB)
    arch = work / "archive-mount"
    if not arch.is_dir():
        sh([*BF, "commit", "-f", str(src), "-a", str(arch)])
    tar = work / "src-1g.tar"
    if not tar.exists():
        sh(["tar", "cf", str(tar), "-C", str(work), src.name])
    bf_mnt, rat_mnt = work / "mnt-blockframe", work / "mnt-ratarmount"
    for m in (bf_mnt, rat_mnt):
        m.mkdir(exist_ok=True)
    bf = subprocess.Popen(
        [*BF, "mount", "-a", str(arch), "-m", str(bf_mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rat = subprocess.Popen(
        [str(Path(sys.executable).parent / "ratarmount"), "-f", str(tar), str(rat_mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_mounted(bf_mnt, bf)
        _wait_mounted(rat_mnt, rat)
        # Archive files warm: shards, tar and source in the page cache.
        for p in [*arch.rglob("*.dat"), tar, src]:
            subprocess.run(["cat", str(p)], check=True, stdout=subprocess.DEVNULL)
        targets = {
            "cat through blockframe mount": bf_mnt / src.name,
            "cat through ratarmount (tar)": rat_mnt / src.name,
            "cat of the file itself": src,
        }
        seq: dict[str, list[float]] = {k: [] for k in targets}
        for r in range(rounds):
            order = list(targets)
            order = order[r % len(order) :] + order[: r % len(order)]
            for label in order:
                if label != "cat of the file itself":
                    _drop_file_cache(targets[label])
                seq[label].append(_timed_cat(targets[label]))
        _drop_file_cache(bf_mnt / src.name)
        lat = _random_reads(bf_mnt / src.name, 2000, seed=1)
        rss_kib = int(
            re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{bf.pid}/status").read_text()).group(1)  # type: ignore[union-attr]
        )
    finally:
        _unmount(bf_mnt, bf)
        _unmount(rat_mnt, rat)

    # The first 4 KiB read of a chunk that must be rebuilt: damage a data segment of
    # block 0, mount afresh, read the page.
    obj = next(p for p in arch.iterdir() if not p.name.startswith("."))
    seg = obj / "blocks/block_0/segments/segment_5.dat"
    original = seg.read_bytes()
    damaged = bytearray(original)
    pos = 2**20 + 100
    damaged[pos] ^= 0xFF
    seg.write_bytes(bytes(damaged))
    file_off = 5 * 32 * 2**20 + (pos // 4096) * 4096
    bf = subprocess.Popen(
        [*BF, "mount", "-a", str(arch), "-m", str(bf_mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_mounted(bf_mnt, bf)
        fd = os.open(bf_mnt / src.name, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        t = time.perf_counter()
        got = os.pread(fd, 4096, file_off)
        rebuild = time.perf_counter() - t
        os.close(fd)
        with open(src, "rb") as f:
            f.seek(file_off)
            assert got == f.read(4096), "rebuilt bytes differ"
        deadline = time.monotonic() + 30
        while seg.read_bytes() != original and time.monotonic() < deadline:
            time.sleep(0.1)
        repaired = seg.read_bytes() == original
    finally:
        _unmount(bf_mnt, bf)
        if seg.read_bytes() != original:
            seg.write_bytes(original)

    med = {k: statistics.median(v) for k, v in seq.items()}
    print(f"### mount: 1 GiB random file, default config (tier 3), {rounds} rounds\n")
    print("| sequential read | median s | GB/s | runs (s) |")
    print("|---|---|---|---|")
    for k, v in seq.items():
        runs = ", ".join(f"{x:.2f}" for x in v)
        print(f"| {k} | {med[k]:.2f} | {GiB / med[k] / 1e9:.2f} | {runs} |")
    ratio = med["cat through ratarmount (tar)"] / med["cat through blockframe mount"]
    print(f"\nblockframe / ratarmount throughput = **{ratio:.2f}x** (target >= 0.6x)\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(
        f"| 4 KiB random reads (2000, readahead off): median | {_pct(lat, 0.5) * 1e3:.3f} ms "
        "| < 0.5 ms |"
    )
    print(f"| 4 KiB random reads: p99 | {_pct(lat, 0.99) * 1e3:.3f} ms | < 3 ms |")
    print(
        f"| first 4 KiB read of a chunk rebuilt from parity (RS 30+3) | {rebuild * 1e3:.1f} ms "
        f"| < 50 ms |"
    )
    print(f"| damaged shard rewritten on disk by the mount | {'yes' if repaired else 'NO'} | yes |")
    print(
        f"| mount peak RSS (VmHWM) | {rss_kib / 1024:.0f} MiB | cache budget "
        "(3 GB default, used only by partly-read and rebuilt chunks) + 150 MiB |"
    )
    print()


def drop_caches() -> None:
    """Write back dirty pages and empty the page cache, so every tool reads from the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        raise SystemExit(f"cannot drop the page cache ({e.strerror}): run as root") from None


def cold(cmd: list[str]) -> tuple[float, str]:
    """Wall time of ``cmd`` started with an empty page cache, and its stdout."""
    drop_caches()
    t = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return elapsed, r.stdout


def _damage(path: Path, offset: int, garbage: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(garbage)
        f.flush()
        os.fsync(f.fileno())


def _repair_only(obj_dir: Path, shards: list[tuple[int, int]]) -> float:
    """Seconds to repair ``shards`` of an object with a cold page cache, two at a time as
    health does, without the scrub of the rest of the archive."""
    from concurrent.futures import ThreadPoolExecutor

    from blockframe import _core
    from blockframe.archive.directory import load_dir as load

    m = load(obj_dir, repair=False).manifest
    core = _core.Object(
        str(obj_dir),
        m.chunk_size,
        [
            (
                [(s.path, s.size, s.hashes) for s in st.data],
                [(s.path, s.size, s.hashes) for s in st.parity],
            )
            for st in m.stripes
        ],
    )
    drop_caches()
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda ss: core.repair_shard(*ss), shards))
    elapsed = time.perf_counter() - t
    assert all(n > 0 for n, _ in done), done
    return elapsed


def bench_health(work: Path, rounds: int) -> None:
    """`blockframe health` on a healthy 1 GiB tier-3 object vs `par2 verify` and `b3sum` of
    the shard files, then repairing 3 MiB of damage in the middle vs `par2 repair`."""
    import json
    import random

    src = work / "src-1g.bin"
    make_file(src, GiB)
    empty = work / "default-config.toml"  # built-in defaults: tier 3, RS(30, 3), 32 MiB
    empty.write_text("")
    bf = [*BF, "--config", str(empty)]
    arch = work / "health-archive"
    shutil.rmtree(arch, ignore_errors=True)
    sh([*bf, "commit", "-f", str(src), "-a", str(arch)])
    (obj,) = [p for p in arch.iterdir() if not p.name.startswith(".")]
    shards = sorted(str(p) for p in obj.rglob("*.dat"))
    total = shard_bytes(arch)
    for p in work.glob("src-1g.bin*.par2"):
        p.unlink()
    drop_caches()
    t = time.perf_counter()
    sh(["par2", "create", "-q", "-r10", "-s1048576", str(src)])
    par2_create = time.perf_counter() - t
    par2_index = work / "src-1g.bin.par2"
    health_cmd = [*bf, "health", "-a", str(arch), "--json"]

    healthy = {
        "blockframe health": health_cmd,
        "par2 verify": ["par2", "verify", "-q", str(par2_index)],
        "b3sum (shard files)": ["b3sum", *shards],
    }
    results: dict[str, list[float]] = {k: [] for k in healthy}
    for r in range(rounds):
        order = list(healthy)
        order = order[r % len(order) :] + order[: r % len(order)]
        for label in order:
            elapsed, out = cold(healthy[label])
            if label == "blockframe health":
                doc = json.loads(out)
                assert doc["status"] == "healthy" and doc["totals"]["bytes_verified"] == total
            results[label].append(elapsed)

    # 3 MiB of random damage centred on the middle of the file: the end of segment 15 and
    # the start of segment 16 (both in block 0), and the same bytes in par2's copy.
    size = 3 * 2**20
    start = GiB // 2 - size // 2
    seg = 32 * 2**20
    garbage = random.Random(4).randbytes(size)
    pieces = []  # (shard path, offset in shard, slice of garbage)
    pos = start
    while pos < start + size:
        g, local = divmod(pos, seg)
        n = min(seg - local, start + size - pos)
        shard = obj / f"blocks/block_0/segments/segment_{g}.dat"
        pieces.append((shard, local, garbage[pos - start : pos - start + n]))
        pos += n
    damaged = [(0, int(p.stem.split("_")[1])) for p, _, _ in pieces]
    repair: dict[str, list[float]] = {
        "blockframe health (scrub + repair)": [],
        "blockframe repair only (2 shards)": [],
        "par2 repair": [],
    }
    repaired_bytes = 0
    for r in range(rounds):
        for shard, offset, chunk in pieces:
            _damage(shard, offset, chunk)
        elapsed, out = cold(health_cmd)
        doc = json.loads(out)
        assert doc["status"] == "repaired", doc["status"]
        repaired_bytes = doc["totals"]["bytes_repaired"]
        repair["blockframe health (scrub + repair)"].append(elapsed)
        for shard, offset, chunk in pieces:
            _damage(shard, offset, chunk)
        repair["blockframe repair only (2 shards)"].append(_repair_only(obj, damaged))
        if r < 3:  # par2 repair rewrites the whole file: three rounds are enough
            _damage(src, start, garbage)
            elapsed, _ = cold(["par2", "repair", "-q", str(par2_index)])
            repair["par2 repair"].append(elapsed)
            for p in work.glob("src-1g.bin.[0-9]*"):
                p.unlink()  # par2 keeps the damaged original as src-1g.bin.1
    assert json.loads(sh(health_cmd).stdout)["status"] == "healthy", "not healthy after the rounds"

    med = {k: statistics.median(v) for k, v in {**results, **repair}.items()}
    print(f"### health: 1 GiB random file, default config (tier 3), {rounds} rounds\n")
    print(
        f"Archive: one object, {len(shards)} shard files, {total / GiB:.3f} GiB "
        f"(1 GiB of data + parity). par2 recovery files: `par2 create -r10 -s1048576` "
        f"(took {par2_create:.1f} s). Page cache dropped before every run.\n"
    )
    print("| tool | median s | MB/s of file | runs (s) |")
    print("|---|---|---|---|")
    for k, v in results.items():
        print(
            f"| {k} | {med[k]:.2f} | {GiB / med[k] / 1e6:.0f} | "
            + ", ".join(f"{x:.2f}" for x in v)
            + " |"
        )
    h = med["blockframe health"]
    print(
        f"\nhealth: **{GiB / h / 1e9:.2f} GB/s** of file (target >= 1 GB/s), "
        f"**{med['par2 verify'] / h:.1f}x** faster than par2 verify (target >= 7x), "
        f"{h / med['b3sum (shard files)']:.2f}x the time of b3sum over the same shards\n"
    )
    print(
        f"3 MiB of damage at file offset {start} ({len(pieces)} data shards hit; "
        f"health rebuilt {repaired_bytes} bytes of bad chunks):\n"
    )
    print("| tool | median s | runs (s) |")
    print("|---|---|---|")
    for k, v in repair.items():
        print(f"| {k} | {med[k]:.2f} | " + ", ".join(f"{x:.2f}" for x in v) + " |")
    print(
        f"\nrepair of 3 MiB: **{med['blockframe repair only (2 shards)']:.2f} s** "
        f"(target < 1 s); the whole health run that finds and repairs it: "
        f"{med['blockframe health (scrub + repair)']:.2f} s; par2 repair: "
        f"{med['par2 repair']:.1f} s\n"
    )
    for p in work.glob("src-1g.bin*.par2"):
        p.unlink()
    shutil.rmtree(arch)


def _start_server(arch: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`blockframe serve` on a free loopback port; returns the process and its base URL."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*BF, "serve", "-a", str(arch), "-p", "0"], stdout=subprocess.DEVNULL, stderr=err
        )
    deadline = time.monotonic() + 60
    while True:
        m = re.search(r" at (http://\S+)", log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not come up: {log.read_text()}")
        time.sleep(0.05)


def _timed_curl(url: str) -> float:
    t = time.perf_counter()
    r = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t
    assert int(r.stdout) == GiB, f"curl got {r.stdout} bytes"
    return elapsed


def bench_remote(work: Path, rounds: int) -> None:
    """`curl -o /dev/null` of /api/files/NAME from `blockframe serve` over loopback, next to
    `cat` through the local mount of the same archive."""
    src = work / "src-1g.bin"
    make_file(src, GiB)
    arch = work / "archive-mount"
    if not arch.is_dir():
        sh([*BF, "commit", "-f", str(src), "-a", str(arch)])
    bf_mnt = work / "mnt-blockframe"
    rm_mnt = work / "mnt-remote"
    bf_mnt.mkdir(exist_ok=True)
    rm_mnt.mkdir(exist_ok=True)
    server, url = _start_server(arch, work / "serve.log")
    bf = subprocess.Popen(
        [*BF, "mount", "-a", str(arch), "-m", str(bf_mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rm = subprocess.Popen(
        [*BF, "mount", "-r", url, "-m", str(rm_mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_mounted(bf_mnt, bf)
        _wait_mounted(rm_mnt, rm)
        for p in [*arch.rglob("*.dat"), src]:
            subprocess.run(["cat", str(p)], check=True, stdout=subprocess.DEVNULL)
        file_url = f"{url}/api/files/{src.name}"
        # Correctness first: the served bytes are the file's.
        curl = subprocess.Popen(["curl", "-sS", "--fail", file_url], stdout=subprocess.PIPE)
        same = subprocess.run(["cmp", "-", str(src)], stdin=curl.stdout).returncode == 0
        curl.wait()
        assert same, "served bytes differ from the source"
        runs: dict[str, Callable[[], float]] = {
            "curl of /api/files/NAME (blockframe serve)": lambda: _timed_curl(file_url),
            "cat through the local blockframe mount": lambda: (
                _drop_file_cache(bf_mnt / src.name),
                _timed_cat(bf_mnt / src.name),
            )[1],
            "cat through the remote mount (mount --remote)": lambda: (
                _drop_file_cache(rm_mnt / src.name),
                _timed_cat(rm_mnt / src.name),
            )[1],
        }
        seq: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(rounds):
            order = list(runs)
            order = order[r % len(order) :] + order[: r % len(order)]
            for label in order:
                seq[label].append(runs[label]())
        rss_kib = int(
            re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{server.pid}/status").read_text()).group(1)  # type: ignore[union-attr]
        )
        rm_rss_kib = int(
            re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{rm.pid}/status").read_text()).group(1)  # type: ignore[union-attr]
        )
    finally:
        _unmount(rm_mnt, rm)
        _unmount(bf_mnt, bf)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in seq.items()}
    print(f"### remote: 1 GiB random file, default config (tier 3), loopback, {rounds} rounds\n")
    print("| sequential read | median s | MB/s | runs (s) |")
    print("|---|---|---|---|")
    for k, v in seq.items():
        runs_s = ", ".join(f"{x:.2f}" for x in v)
        print(f"| {k} | {med[k]:.2f} | {GiB / med[k] / 1e6:.0f} | {runs_s} |")
    remote = GiB / med["cat through the remote mount (mount --remote)"] / 1e6
    print(
        f"\nremote mount sequential read: **{remote:.0f} MB/s** (target >= 300 MB/s); "
        f"remote mount peak RSS (VmHWM) {rm_rss_kib / 1024:.0f} MiB"
    )
    served = GiB / med["curl of /api/files/NAME (blockframe serve)"] / 1e6
    print(
        f"\nserved download: **{served:.0f} MB/s** (target >= 500 MB/s); served bytes "
        f"identical to the source: {'yes' if same else 'NO'}; server peak RSS (VmHWM) "
        f"{rss_kib / 1024:.0f} MiB\n"
    )


def bench_s3(work: Path, rounds: int) -> None:
    """Commit and sequential restore of a 1 GiB file to/from a bucket of a SeaweedFS on
    loopback, against a plain upload/download (same client library and transfer settings:
    boto3 upload_file/download_fileobj) of a file of the size the commit stores."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from seaweed import SeaweedFS

    from blockframe.storage.s3 import S3Volume

    src = work / "src-1g.bin"
    make_file(src, GiB)
    weed_dir = work / "weed"
    server = SeaweedFS()
    server.start()
    try:
        bucket = server.new_bucket()
        vol = S3Volume(
            bucket,
            endpoint=server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
        )
        cfg = work / "s3-config.toml"
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}

        def config(prefix: str) -> None:
            cfg.write_text(
                f'[archive]\ndirectory = "{bucket}/{prefix}"\n'
                f'[s3]\nendpoint = "{server.endpoint}"\naccess_key_id = "{server.access_key}"\n'
                f'secret_access_key = "{server.secret_key}"\n'
            )

        # What one commit stores, to size the plain transfer alike (~1.1x the file).
        config("probe")
        sh([*BF, "--config", str(cfg), "commit", "-f", str(src)], env=env)
        stored = sum(n for d in vol.listdir("probe") for _, n in vol.files(f"probe/{d}"))
        plain = work / "plain-s3.bin"
        make_file(plain, stored)
        subprocess.run(["cat", str(plain), str(src)], check=True, stdout=subprocess.DEVNULL)

        def commit(r: int) -> float:
            config(f"round{r}")
            settle()
            t = time.perf_counter()
            sh([*BF, "--config", str(cfg), "commit", "-f", str(src)], env=env)
            return time.perf_counter() - t

        # The plain transfers run as commands too (like `aws s3 cp`), with the client and
        # transfer settings blockframe uses.
        plain_cmd = [
            sys.executable,
            "-c",
            "import sys\n"
            "from pathlib import Path\n"
            "from blockframe.storage.s3 import S3Volume\n"
            "url, ep, ak, sk, op, key, path = sys.argv[1:]\n"
            "v = S3Volume(url, endpoint=ep, access_key=ak, secret_key=sk)\n"
            "class Null:\n"
            "    def write(self, b): return len(b)\n"
            "if op == 'up': v.upload(key, Path(path))\n"
            "else: v._client.download_fileobj(v.bucket, key, Null(), Config=v._transfer)\n",
            bucket,
            server.endpoint,
            server.access_key,
            server.secret_key,
        ]

        def upload(r: int) -> float:
            settle()
            t = time.perf_counter()
            subprocess.run([*plain_cmd, "up", f"plain/round{r}.bin", str(plain)], check=True)
            return time.perf_counter() - t

        def restore(r: int) -> float:
            config("probe")
            t = time.perf_counter()
            with open(os.devnull, "wb") as null:
                subprocess.run(
                    [*BF, "--config", str(cfg), "restore", src.name, "-o", "-"],
                    check=True,
                    stdout=null,
                    env=env,
                )
            return time.perf_counter() - t

        def download(r: int) -> float:
            t = time.perf_counter()
            subprocess.run([*plain_cmd, "down", "plain/round0.bin", "-"], check=True)
            return time.perf_counter() - t

        runs: dict[str, Callable[[int], float]] = {
            "blockframe commit (1 GiB file, tier 3)": commit,
            f"plain upload_file ({stored / GiB:.2f} GiB)": upload,
            "blockframe restore -o - (1 GiB, verified)": restore,
            f"plain download_fileobj ({stored / GiB:.2f} GiB)": download,
        }
        seq: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(rounds):
            for label, run in runs.items():
                seq[label].append(run(r))
        rss = peak_rss_mib(
            [*BF, "--config", str(cfg), "restore", src.name, "-o", "/dev/null", "--force"]
        )
    finally:
        server.stop()
        shutil.rmtree(weed_dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in seq.items()}
    print(f"### s3: 1 GiB random file to SeaweedFS on loopback, default config, {rounds} rounds\n")
    print("| step | median s | MB/s of the file | runs (s) |")
    print("|---|---|---|---|")
    for k, v in seq.items():
        runs_s = ", ".join(f"{x:.2f}" for x in v)
        print(f"| {k} | {med[k]:.2f} | {GiB / med[k] / 1e6:.0f} | {runs_s} |")
    labels = list(runs)
    c = med[labels[0]] / med[labels[1]]
    d = med[labels[2]] / med[labels[3]]
    print(
        f"\ncommit / plain upload of {stored / GiB:.2f}x the bytes: **{c:.2f}x**; restore / "
        f"plain download: **{d:.2f}x** (target: within 1.5x); restore peak RSS {rss:.0f} MiB\n"
    )


# ---------------------------------------------------------------------------------------
# folders (issue #13): many small files in a directory tree.

FOLDER_DIRS = 100


def make_folder(work: Path, name: str, count: int, lo: int, hi: int, seed: int) -> Path:
    """A tree of ``count`` files in FOLDER_DIRS directories (file i in directory i % 100),
    sizes uniform in [lo, hi] bytes and contents from a generator seeded with ``seed``, mtimes
    fixed: the same bytes on every machine and every run. Kept and reused while its marker
    (written next to it once the tree is complete) matches."""
    import json
    import random

    folder = work / name
    marker = work / f"{name}.done"
    spec = {"count": count, "dirs": FOLDER_DIRS, "lo": lo, "hi": hi, "seed": seed, "v": 1}
    if folder.is_dir() and marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    marker.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(seed)
    for d in range(FOLDER_DIRS):
        (folder / f"d{d:02d}").mkdir(parents=True)
    base = 1_700_000_000
    for i in range(count):
        size = rng.randint(lo, hi)
        p = folder / f"d{i % FOLDER_DIRS:02d}" / f"f{i:06d}.bin"
        p.write_bytes(rng.randbytes(size))
        os.utime(p, (base + i, base + i))
    os.sync()
    marker.write_text(json.dumps(spec))
    return folder


def tree_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` but its hidden top-level entries (staging, locks)."""
    out = []
    for top in sorted(root.iterdir()):
        if top.name.startswith("."):
            continue
        if top.is_file():
            out.append(top)
            continue
        for dirpath, _, names in os.walk(top):
            out.extend(Path(dirpath) / n for n in names)
    return out


def du_bytes(path: Path) -> int:
    return int(sh(["du", "-s", "-B1", str(path)]).stdout.split()[0])


def timed_then_sync(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of ``cmd`` followed by ``sync`` (both timed), after a settle."""
    settle()
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {r.stderr[-500:]}")
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t


def _vmhwm_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _fmt_runs(v: list[float], unit: float = 1.0, digits: int = 2) -> str:
    return ", ".join(f"{x * unit:.{digits}f}" for x in v)


def bench_folders(work: Path, rounds: int, files: int, commit_rounds: int) -> None:
    """The issue-13 targets, side by side in one run (see the module docstring)."""
    import json
    import random

    small_n = files // 10
    cfg = work / "default-config.toml"  # built-in defaults (pack_max 10 MB, RS(30, 3))
    cfg.write_text("")
    bf = [*BF, "--config", str(cfg)]
    print(f"Generating folders in {work} (kept for re-runs) ...", file=sys.stderr)
    f10 = make_folder(work, f"folder-{small_n}-1-64k", small_n, 1000, 64000, seed=13)
    f10s = make_folder(work, f"folder-{small_n}-100-4k", small_n, 100, 4000, seed=14)
    f100 = make_folder(work, f"folder-{files}-100-4k", files, 100, 4000, seed=15)

    def warm(*folders: Path) -> None:
        """Sources warm in the page cache, as for a folder just written or read."""
        for f in folders:
            subprocess.run(
                f"find {f} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True
            )

    warm(f10)
    folder_bytes = sum(p.stat().st_size for p in f10.rglob("*") if p.is_file())

    # 1. Commit of the 10k folder against restic backup into a fresh repo, both + sync.
    arch = work / f"arch-{f10.name}"
    repo = work / "restic-repo"
    renv = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}

    def bf_commit() -> float:
        shutil.rmtree(arch, ignore_errors=True)
        return timed_then_sync([*bf, "commit", "-f", str(f10), "-a", str(arch)])

    def restic_backup() -> float:
        shutil.rmtree(repo, ignore_errors=True)
        sh(["restic", "init", "-q"], env=renv)  # not timed: the repository exists beforehand
        return timed_then_sync(["restic", "backup", "--no-cache", "-q", str(f10)], env=renv)

    commit_runs: dict[str, Callable[[], float]] = {
        f"blockframe commit -f ({small_n} files, 1-64 KB)": bf_commit,
        "restic backup --no-cache (fresh repo)": restic_backup,
    }
    commit: dict[str, list[float]] = {k: [] for k in commit_runs}
    for r in range(rounds):
        order = list(commit_runs)
        order = order[r % 2 :] + order[: r % 2]
        for label in order:
            print(f"  round {r + 1}: {label}", file=sys.stderr)
            commit[label].append(commit_runs[label]())
    if not arch.is_dir():
        bf_commit()
    restic_du = du_bytes(repo)
    shutil.rmtree(repo, ignore_errors=True)

    # 2. Allocated size.
    arch_du, folder_du = du_bytes(arch), du_bytes(f10)
    arch_files = tree_files(arch)
    arch_bytes = sum(p.stat().st_size for p in arch_files)
    packs = sum(1 for p in arch.iterdir() if p.name.startswith("%2Epack"))

    # 3. Cold health against cold b3sum over the archive's files.
    listing = work / f"arch-{f10.name}.files"
    listing.write_bytes(b"".join(bytes(p) + b"\0" for p in arch_files))
    health_cmd = [*bf, "health", "-a", str(arch), "--json"]
    b3_cmd = ["sh", "-c", f"xargs -0 b3sum < {listing} > /dev/null"]
    health: dict[str, list[float]] = {"blockframe health --json": [], "b3sum (archive files)": []}
    for r in range(rounds):
        order = list(health)
        order = order[r % 2 :] + order[: r % 2]
        for label in order:
            elapsed, out = cold(health_cmd if label.startswith("blockframe") else b3_cmd)
            if label.startswith("blockframe"):
                doc = json.loads(out)
                assert doc["status"] == "healthy", doc["status"]
            health[label].append(elapsed)

    # 4. Per-file commit cost: 10k and 100k files of the same kind (100 B-4 KB).
    arch_s = work / f"arch-{f10s.name}"
    arch_b = work / f"arch-{f100.name}"
    percommit: dict[str, list[float]] = {f"{small_n} files": [], f"{files} files": []}
    warm(f10s, f100)  # the cold health runs above emptied the page cache
    for r in range(commit_rounds):
        pair = [(f"{small_n} files", f10s, arch_s), (f"{files} files", f100, arch_b)]
        # Alternate the order, and end with the large archive, kept for what follows.
        for label, src, a in pair if r % 2 == (commit_rounds - 1) % 2 else pair[::-1]:
            shutil.rmtree(a, ignore_errors=True)
            print(f"  round {r + 1}: commit {label}", file=sys.stderr)
            percommit[label].append(timed_then_sync([*bf, "commit", "-f", str(src), "-a", str(a)]))
    shutil.rmtree(arch_s, ignore_errors=True)

    # 5. list --json of the 100k archive (archive warm in the page cache).
    lst: list[float] = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = sh([*bf, "list", "-a", str(arch_b), "--json"]).stdout
        lst.append(time.perf_counter() - t)
    listed = len(json.loads(out)["objects"])

    # 6. The mount of the 100k archive: ready, stat, ls -l, peak RSS.
    mnt = work / "mnt-folders"
    mnt.mkdir(exist_ok=True)
    rng = random.Random(16)
    top = mnt / f100.name
    ready: list[float] = []
    stat_med: list[float] = []
    stat_all: list[float] = []
    ls: list[float] = []
    rss: list[float] = []
    per_dir = files // FOLDER_DIRS
    for r in range(rounds):
        probe = top / f"d{(r + 1) % FOLDER_DIRS:02d}" / f"f{(r + 1) % FOLDER_DIRS:06d}.bin"
        t = time.perf_counter()
        proc = subprocess.Popen(
            [*bf, "mount", "-a", str(arch_b), "-m", str(mnt)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = t + 120
            while True:
                try:
                    os.stat(probe)
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() > deadline:
                        raise SystemExit("the mount did not answer") from None
                    time.sleep(0.002)
            ready.append(time.perf_counter() - t)
            # First stat of 1,000 distinct files (not yet seen by the kernel) in the
            # directories not listed below.
            lat = []
            for i in rng.sample(range(files), 1000):
                if i % FOLDER_DIRS == 0:
                    continue
                p = top / f"d{i % FOLDER_DIRS:02d}" / f"f{i:06d}.bin"
                s = time.perf_counter()
                os.stat(p)
                lat.append(time.perf_counter() - s)
            stat_med.append(statistics.median(lat))
            stat_all.extend(lat)
            # ls -l of a directory of files // 100 files, first listing since the mount.
            t = time.perf_counter()
            r_ls = subprocess.run(
                ["ls", "-l", str(top / "d00")], check=True, capture_output=True, text=True
            )
            ls.append(time.perf_counter() - t)
            assert len(r_ls.stdout.splitlines()) == per_dir + 1, "ls -l: wrong count"
            rss.append(_vmhwm_mib(proc.pid))
        finally:
            _unmount(mnt, proc)

    def med(v: list[float]) -> float:
        return statistics.median(v)

    bfc, rst = (med(v) for v in commit.values())
    h, b3 = (med(v) for v in health.values())
    c_small, c_big = (med(v) for v in percommit.values())
    per_small, per_big = c_small / small_n, c_big / files
    load = os.getloadavg()
    print(
        f"### folders: {rounds} rounds ({commit_rounds} for the per-file commit cost), "
        f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print(
        f"Folders (seeded, kept in `--dir` for re-runs): `{f10.name}`: {small_n} files of "
        f"1,000-64,000 B in {FOLDER_DIRS} directories, {folder_bytes / 1e6:.0f} MB "
        f"(`du -B1` {folder_du / 1e6:.0f} MB); `{f10s.name}` and `{f100.name}`: "
        f"{small_n} and {files} files of 100-4,000 B in {FOLDER_DIRS} directories. "
        "Default config (empty config file). Sources warm in the page cache.\n"
    )
    print("| run | median s | runs (s) |")
    print("|---|---|---|")
    for k, v in commit.items():
        print(f"| {k} + sync | {med(v):.2f} | {_fmt_runs(v)} |")
    for k, v in health.items():
        print(f"| {k}, cold | {med(v):.2f} | {_fmt_runs(v)} |")
    for k, v in percommit.items():
        print(f"| blockframe commit -f ({k}, 100-4,000 B) + sync | {med(v):.2f} | {_fmt_runs(v)} |")
    print(f"| blockframe list --json ({listed} files), warm | {med(lst):.2f} | {_fmt_runs(lst)} |")
    print(f"| mount ready (start to a stat answered) | {med(ready):.2f} | {_fmt_runs(ready)} |")
    print(
        f"| ls -l of a directory of {per_dir} files (first listing) | {med(ls) * 1e3:.1f} ms "
        f"| {_fmt_runs(ls, 1e3, 1)} ms |"
    )
    print(
        f"| stat of a file through the mount (first stat; median of each round's ~990) "
        f"| {med(stat_all) * 1e3:.3f} ms | {_fmt_runs(stat_med, 1e3, 3)} ms; p99 "
        f"{_pct(stat_all, 0.99) * 1e3:.3f} ms |"
    )
    print(f"| mount peak RSS (VmHWM) | {max(rss):.0f} MiB | {_fmt_runs(rss, 1, 0)} MiB |")
    print()

    def row(measure: str, value: str, ratio: str, target: str, ok: bool) -> None:
        print(f"| {measure} | {value} | {ratio} | {target} | {'PASS' if ok else '**FAIL**'} |")

    print("| measure | measured | ratio | target | |")
    print("|---|---|---|---|---|")
    row(
        f"commit of {small_n} files / restic backup",
        f"{bfc:.2f} s vs {rst:.2f} s",
        f"{bfc / rst:.2f}x",
        "<= 1.5x",
        bfc / rst <= 1.5,
    )
    row(
        "allocated size of the archive / the folder (`du -B1`)",
        f"{arch_du / 1e6:.0f} MB vs {folder_du / 1e6:.0f} MB",
        f"{arch_du / folder_du:.3f}x",
        "<= 1.25x",
        arch_du / folder_du <= 1.25,
    )
    row(
        "cold health speed / cold b3sum speed",
        f"{arch_bytes / h / 1e6:.0f} vs {arch_bytes / b3 / 1e6:.0f} MB/s",
        f"{b3 / h:.2f}x",
        ">= 0.7x",
        b3 / h >= 0.7,
    )
    row(f"`list --json`, {listed} files", f"{med(lst):.2f} s", "", "< 1 s", med(lst) < 1)
    row("mount ready", f"{med(ready):.2f} s", "", "< 1 s", med(ready) < 1)
    row(
        "stat through the mount, median",
        f"{med(stat_all) * 1e3:.3f} ms",
        "",
        "< 1 ms",
        med(stat_all) < 1e-3,
    )
    row(f"`ls -l` of {per_dir} files", f"{med(ls) * 1e3:.1f} ms", "", "< 100 ms", med(ls) < 0.1)
    row("mount peak RSS", f"{max(rss):.0f} MiB", "", "< 300 MiB", max(rss) < 300)
    row(
        f"per-file commit cost, {files} vs {small_n} files",
        f"{per_big * 1e3:.3f} vs {per_small * 1e3:.3f} ms",
        f"{per_big / per_small:.2f}x",
        "<= 1.2x",
        per_big / per_small <= 1.2,
    )
    print(
        f"\nArchive of `{f10.name}`: {len(arch_files)} files ({packs} packs), "
        f"{arch_bytes / 1e6:.0f} MB; restic's repository of the same folder: `du -B1` "
        f"{restic_du / 1e6:.0f} MB. Per-file commit cost of `{f10.name}`: "
        f"{bfc / small_n * 1e3:.3f} ms.\n"
    )


def compile_bytecode() -> None:
    """Compile the package's modules to bytecode, as pip does when it installs the wheel.
    The editable install of a checkout leaves that to the first import, and with
    PYTHONDONTWRITEBYTECODE set (as on these machines) every `blockframe` run would compile
    all its modules again: ~35 ms a start that no installed copy pays."""
    import compileall

    import blockframe

    if not compileall.compile_dir(Path(blockframe.__file__).parent, quiet=1):
        raise SystemExit("compileall failed")


def main() -> None:
    p = argparse.ArgumentParser(prog="scripts/bench")
    p.add_argument("what", choices=["commit", "mount", "health", "remote", "s3", "folders"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default="bench-data", help="scratch directory (needs ~7 GiB)")
    p.add_argument("--skip-4g", action="store_true")
    p.add_argument(
        "--files",
        type=int,
        default=100_000,
        help="folders: files in the large folder (the small ones get a tenth)",
    )
    p.add_argument(
        "--commit-rounds",
        type=int,
        default=None,
        help="folders: rounds of the 10k/100k per-file commit cost (default: --rounds)",
    )
    args = p.parse_args()
    compile_bytecode()
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"<!-- {time.strftime('%Y-%m-%d %H:%M %Z')} on {os.uname().nodename}, "
        f"{os.cpu_count()} cores, load average at start {load} -->\n"
    )
    if args.what == "commit":
        bench_commit(work, args.rounds, args.skip_4g)
    elif args.what == "mount":
        bench_mount(work, args.rounds)
    elif args.what == "remote":
        bench_remote(work, args.rounds)
    elif args.what == "health":
        bench_health(work, args.rounds)
    elif args.what == "s3":
        bench_s3(work, args.rounds)
    elif args.what == "folders":
        bench_folders(work, args.rounds, args.files, args.commit_rounds or args.rounds)


if __name__ == "__main__":
    main()
