"""Load: reader threads and reader processes through a real FUSE mount, and ranged HTTP
clients against a real ``blockframe serve``, while ``blockframe health`` repairs in the
background and fresh damage (always within parity) keeps appearing. No read may fail and no
byte may be wrong; the peak RSS (VmHWM) of the mount and the server is recorded."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from engine import Engine, fuse_available, vm_hwm

# A reader process: reads random ranges of the files through the mount for a while and
# compares them with the sources; prints {"bytes": n, "errors": [...]} as JSON.
READER = r"""
import json, os, random, sys, time
spec = json.loads(sys.argv[1])
rng = random.Random(spec["seed"])
deadline = time.monotonic() + spec["seconds"]
done, errors = 0, []
files = spec["files"]
while time.monotonic() < deadline:
    name, src = rng.choice(files)
    want = open(src, "rb").read()
    off = rng.randrange(len(want))
    size = rng.choice((1, 4096, 65536, len(want)))
    try:
        with open(os.path.join(spec["mnt"], name), "rb") as f:
            f.seek(off)
            got = f.read(size)
    except OSError as e:
        errors.append(f"{name} @{off}: {e}")
        continue
    if got != want[off:off + size]:
        errors.append(f"{name} @{off}+{size}: wrong bytes")
    done += len(got)
print(json.dumps({"bytes": done, "errors": errors[:20]}))
"""


def run_load(
    root: Path,
    seconds: float,
    *,
    seed: int = 0,
    threads: int = 4,
    procs: int = 2,
    http_clients: int = 4,
    objects: int = 8,
    log: Any = None,
) -> dict[str, Any]:
    e = Engine(seed, root, log=log, max_size=400_000)
    while len(e.objects) < objects:
        e.act_commit()
    for _ in range(objects):
        e.act_damage(beyond=False)
    use_mount = fuse_available()
    files = sorted(e.objects.values(), key=lambda o: o.name)
    errors: list[str] = []
    verified = [0]
    lock = threading.Lock()
    stop = threading.Event()
    out: dict[str, Any] = {"seed": seed, "seconds": seconds}

    def fail(msg: str) -> None:
        with lock:
            errors.append(msg)

    def count(n: int) -> None:
        with lock:
            verified[0] += n

    # -- the server and the mount
    server, url, slog = e.start_server()
    mnt = root / "mnt-load"
    mount = None
    mlog = open(root / "mount-load.log", "ab")  # noqa: SIM115
    if use_mount:
        mnt.mkdir(exist_ok=True)
        mount = e.popen("mount", "-m", str(mnt), stderr=mlog)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if mount.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("load: mount did not come up")
            time.sleep(0.05)
    rss_start = {"mount": _rss(mount.pid) if mount else 0, "server": _rss(server.pid)}

    def mount_reader(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while not stop.is_set():
            o = rng.choice(files)
            off = rng.randrange(len(o.content))
            size = rng.choice((1, 4096, 65536, len(o.content)))
            try:
                with open(mnt / o.name, "rb") as f:
                    f.seek(off)
                    got = f.read(size)
            except OSError as err:
                fail(f"mount thread {i}: {o.name} @{off}: {err}")
                continue
            if got != o.content[off : off + size]:
                fail(f"mount thread {i}: {o.name} @{off}+{size}: wrong bytes")
            count(len(got))

    def http_reader(i: int) -> None:
        rng = random.Random(seed * 2000 + i)
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                o = rng.choice(files)
                off = rng.randrange(len(o.content))
                size = rng.choice((1, 4096, 65536, len(o.content)))
                try:
                    r = c.get(
                        "/api/files/" + o.name, headers={"Range": f"bytes={off}-{off + size - 1}"}
                    )
                except httpx.HTTPError as err:
                    fail(f"http {i}: {o.name} @{off}: {err!r}")
                    continue
                if r.status_code != 206:
                    fail(f"http {i}: {o.name} @{off}: status {r.status_code}")
                elif r.content != o.content[off : off + size]:
                    fail(f"http {i}: {o.name} @{off}+{size}: wrong bytes")
                else:
                    count(len(r.content))

    health_runs = [0]

    def repairer() -> None:
        rng = random.Random(seed * 3000)
        while not stop.is_set():
            # Fresh damage, at most one bad shard per stripe at any time (parity is 2).
            o = rng.choice(files)
            o.state = e.read_state(o)
            clean = [i for i in range(len(o.geometry)) if not e.bad_shards_in_stripe(o, i)]
            if clean:
                si = rng.choice(clean)
                rel = rng.choice([r for r, _ in o.geometry[si]])
                p = e.odir(o) / rel
                raw = bytearray(p.read_bytes())
                if raw:
                    raw[rng.randrange(len(raw))] ^= 0x10
                    tmp = p.with_name(p.name + ".dmg")
                    tmp.write_bytes(bytes(raw))
                    os.replace(tmp, p)  # atomic, like bit rot found by the next read
            r = e.cli("health")
            health_runs[0] += 1
            if r.returncode != 0:
                fail(f"background health exit {r.returncode}: {r.stderr[-500:]!r}")
            stop.wait(0.2)

    workers = [threading.Thread(target=repairer, daemon=True)]
    if use_mount:
        workers += [threading.Thread(target=mount_reader, args=(i,)) for i in range(threads)]
    workers += [threading.Thread(target=http_reader, args=(i,)) for i in range(http_clients)]
    spec = {
        "mnt": str(mnt),
        "seconds": seconds,
        "files": [(o.name, str(o.src)) for o in files],
    }
    readers = []
    if use_mount:
        readers = [
            subprocess.Popen(
                [sys.executable, "-c", READER, json.dumps({**spec, "seed": seed * 4000 + i})],
                stdout=subprocess.PIPE,
            )
            for i in range(procs)
        ]
    for w in workers:
        w.start()
    peak = {"mount": 0, "server": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        if mount:
            peak["mount"] = max(peak["mount"], vm_hwm(mount.pid))
        peak["server"] = max(peak["server"], vm_hwm(server.pid))
    stop.set()
    for w in workers:
        w.join(60)
    for rp in readers:
        stdout, _ = rp.communicate(timeout=60)
        doc = json.loads(stdout)
        count(doc["bytes"])
        errors.extend(f"reader process: {x}" for x in doc["errors"])
    rss_end = {"mount": _rss(mount.pid) if mount else 0, "server": _rss(server.pid)}
    if mount:
        peak["mount"] = max(peak["mount"], vm_hwm(mount.pid))
        mount.send_signal(signal.SIGTERM)
        try:
            mount.wait(timeout=20)
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
    mlog.close()
    peak["server"] = max(peak["server"], vm_hwm(server.pid))
    e.stop_server(server, slog)
    # Nothing written was ever wrong; a final health leaves every file as committed.
    e.observe("load")
    e.act_health(dry_run=False, age=True)
    out.update(
        errors=errors,
        bytes_verified=verified[0],
        health_runs=health_runs[0],
        peak_rss_mount=peak["mount"],
        peak_rss_server=peak["server"],
        rss_start=rss_start,
        rss_end=rss_end,
        mount=use_mount,
        repairs=e.stats.repairs,
    )
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
