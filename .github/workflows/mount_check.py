"""Mount an archive for real and read it back, before and after damaging a shard (used by
wheels.yml on Windows with WinFsp, and on macOS where macFUSE is present).

Usage: python mount_check.py MOUNTPOINT   (a drive letter such as Z: on Windows)

Two files are committed. The first is read through the mount and compared. The data shard
of the second is damaged on disk before the mount ever reads it (so no cache can hide the
damage); reading it through the mount must give the original bytes, rebuilt from parity,
and the mount's background repair must rewrite the shard with them. Then the mount is
stopped as a user would (Ctrl+Break on Windows, SIGINT elsewhere) and must exit 0.
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
    payloads = {name: os.urandom(3_000_000) for name in ("first.bin", "second.bin")}
    root = Path(tmp) / "archive"
    with blockframe.open_archive(root) as archive:
        for name, payload in payloads.items():
            src = Path(tmp) / name
            src.write_bytes(payload)
            archive.commit(src)
    # Tier 1 (3 MB is under tier1_max): the data shard is data.dat, the file's own bytes.
    shard = next(root.glob("second.bin_*/data.dat"))
    raw = bytearray(shard.read_bytes())
    assert bytes(raw) == payloads["second.bin"], "data.dat is not the file's bytes"
    raw[1000] ^= 0xFF
    shard.write_bytes(bytes(raw))
    damaged = shard.stat()

    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
    mount = subprocess.Popen(
        [sys.executable, "-m", "blockframe", "mount", "-a", str(root), "-m", mountpoint],
        creationflags=flags,
    )
    try:
        top = Path(mountpoint + os.sep)
        first, second = top / "first.bin", top / "second.bin"
        deadline = time.monotonic() + 60
        while not first.exists():
            assert mount.poll() is None, f"mount exited with {mount.returncode}"
            assert time.monotonic() < deadline, "the mount did not appear within 60 s"
            time.sleep(0.5)
        assert sorted(os.listdir(top)) == ["first.bin", "second.bin"], os.listdir(top)
        assert first.read_bytes() == payloads["first.bin"], "bytes differ through the mount"
        assert second.read_bytes() == payloads["second.bin"], "damaged shard: bytes differ"
        # The repair replaces the shard (temporary file, rename). Wait for that with stat
        # alone: on Windows an open for reading could make the rename fail.
        deadline = time.monotonic() + 30
        while (shard.stat().st_mtime_ns, shard.stat().st_ino) == (
            damaged.st_mtime_ns,
            damaged.st_ino,
        ):
            assert time.monotonic() < deadline, "the damaged shard was not repaired on disk"
            time.sleep(0.5)
        assert shard.read_bytes() == payloads["second.bin"], "the repaired shard is wrong"
        try:
            (top / "new.txt").write_bytes(b"x")
        except OSError:
            pass
        else:
            raise AssertionError("a write through the read-only mount succeeded")
        print("mount check passed: read, damaged shard read and repaired, writes refused")
    finally:
        if sys.platform == "win32":
            mount.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            mount.send_signal(signal.SIGINT)
        try:
            code = mount.wait(30)
        except subprocess.TimeoutExpired:
            mount.kill()
            raise
    assert code == 0, f"the mount exited with {code} when stopped"
    assert not (Path(mountpoint + os.sep) / "first.bin").exists(), "still mounted after stop"
print("mount stopped cleanly")
