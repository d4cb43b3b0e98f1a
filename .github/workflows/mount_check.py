"""Mount an archive for real and read it back, before and after damaging a shard (used by
wheels.yml on Windows with WinFsp, and on macOS where macFUSE is present).

Usage: python mount_check.py MOUNTPOINT   (a drive letter such as Z: on Windows)
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blockframe

mountpoint = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    src = Path(tmp) / "data.bin"
    payload = os.urandom(3_000_000)
    src.write_bytes(payload)
    root = Path(tmp) / "archive"
    with blockframe.open_archive(root) as archive:
        archive.commit(src)
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
    mount = subprocess.Popen(
        [sys.executable, "-m", "blockframe", "mount", "-a", str(root), "-m", mountpoint],
        creationflags=flags,
    )
    try:
        target = Path(mountpoint + os.sep) / "data.bin"
        deadline = time.monotonic() + 60
        while not target.exists():
            assert mount.poll() is None, f"mount exited with {mount.returncode}"
            assert time.monotonic() < deadline, "the mount did not appear within 60 s"
            time.sleep(0.5)
        assert target.read_bytes() == payload, "bytes differ through the mount"
        # Damage the data shard (tier 1: data.dat) and read again: rebuilt from parity.
        shard = next(root.glob("data.bin_*/data.dat"))
        raw = bytearray(shard.read_bytes())
        raw[1000] ^= 0xFF
        shard.write_bytes(bytes(raw))
        with open(target, "rb") as f:  # a fresh open: no page cache of the old bytes
            assert f.read() == payload, "damaged shard: bytes differ through the mount"
        print("mount check passed:", target)
    finally:
        if sys.platform == "win32":
            mount.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            mount.send_signal(signal.SIGINT)
        try:
            mount.wait(30)
        except subprocess.TimeoutExpired:
            mount.kill()
            raise
