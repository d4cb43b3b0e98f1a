"""The remote client against a real `blockframe serve` on loopback: listing, verified reads
through the Python API and through a real `mount --remote`, shard bytes corrupted on the
wire (rebuilt from remote parity, or EIO — never wrong bytes), the token, and a server that
dies mid-read (EIO within the timeout, no hang)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from blockframe.access.view import ArchiveView
from blockframe.archive.remote import RemoteArchive
from blockframe.errors import ArchiveError, IntegrityError

from conftest import Env, data

SIZES = {"t1.bin": 15_000, "t2.bin": 50_000, "big/t3.bin": 300_017}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: Env, token: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        child_env = {**os.environ, "XDG_CONFIG_HOME": str(env.root / "xdg")}
        child_env.pop("BLOCKFRAME_TOKEN", None)
        if token:
            child_env["BLOCKFRAME_TOKEN"] = token
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockframe", "serve", "-p", str(self.port)],
            cwd=env.root,
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    err = self.proc.communicate()[1]
                    raise AssertionError(f"server did not start: {err!r}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


@pytest.fixture
def served(env: Env) -> Iterator[tuple[Env, Server]]:
    for name, size in SIZES.items():
        path = env.root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(size, seed=size))
        r = env.run("commit", "-f", str(path), "--name", name)
        assert r.returncode == 0, r.stderr
    server = Server(env)
    yield env, server
    server.stop()


def original(env: Env, name: str) -> bytes:
    return (env.root / "src" / name).read_bytes()


def read_all(view: ArchiveView, name: str) -> bytes:
    handle = view.open(name)
    try:
        return view.read(handle, 0, view.stat(name).size)
    finally:
        view.release(handle)


def test_listing_and_verified_reads(served: tuple[Env, Server]) -> None:
    env, server = served
    remote = RemoteArchive(server.url)
    index = remote.scan()
    assert sorted(index.entries) == sorted(SIZES)
    assert index.problems == []
    local = env.archive.scan().entries
    for name, entry in index.entries.items():
        assert entry.manifest == local[name].manifest
    view = ArchiveView(remote, repair=False)
    for name in SIZES:
        assert read_all(view, name) == original(env, name)
        h = view.open(name)
        assert view.read(h, 12_345, 20_000) == original(env, name)[12_345:32_345]
    remote.close()


class FlippingProxy:
    """Forwards GETs to the server and flips one bit in every response for the chosen
    shards: damage on the wire that only client-side verification can catch."""

    def __init__(self, upstream: str, flip: set[tuple[str, int, int]]) -> None:
        self.flip = flip
        client = httpx.Client(base_url=upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() == "range"}
                r = client.get(self.path, headers=headers)
                body = bytearray(r.content)
                parts = self.path.split("/shards/")
                if len(parts) == 2 and body:
                    name = parts[0].removeprefix("/api/files/")
                    stripe, shard = (int(x) for x in parts[1].split("/"))
                    if (name, stripe, shard) in proxy.flip:
                        body[len(body) // 2] ^= 0x04
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() in ("content-type", "content-range", "etag"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(bytes(body))

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_bits_flipped_on_the_wire_are_rebuilt_or_refused(served: tuple[Env, Server]) -> None:
    env, server = served
    name = "big/t3.bin"
    stripes = env.archive.get(name).manifest.stripes
    m = len(stripes[1].parity)
    # Within parity: data shard 0 and parity shard 0 of stripe 1 are corrupted in transit.
    proxy = FlippingProxy(server.url, {(name, 1, 0), (name, 1, len(stripes[1].data))})
    try:
        view = ArchiveView(RemoteArchive(proxy.url), repair=False)
        assert read_all(view, name) == original(env, name)
    finally:
        proxy.close()
    # Beyond parity: m + 1 shards of stripe 1 corrupted: the read fails, no wrong byte.
    proxy = FlippingProxy(server.url, {(name, 1, s) for s in range(m + 1)})
    try:
        view = ArchiveView(RemoteArchive(proxy.url), repair=False)
        with pytest.raises(IntegrityError, match="cannot be recovered"):
            read_all(view, name)
        # Other stripes and other objects still read.
        h = view.open(name)
        assert view.read(h, 0, 1000) == original(env, name)[:1000]
        assert read_all(view, "t1.bin") == original(env, "t1.bin")
    finally:
        proxy.close()


def test_server_side_damage_is_invisible_to_the_client(served: tuple[Env, Server]) -> None:
    env, server = served
    obj = env.object_dir("t2.bin")
    (obj / "segments" / "segment_2.dat").unlink()
    view = ArchiveView(RemoteArchive(server.url), repair=False)
    assert read_all(view, "t2.bin") == original(env, "t2.bin")


def test_token(env: Env) -> None:
    path = env.file("a.bin", 5000)
    env.run("commit", "-f", str(path))
    server = Server(env, token="s3cret-token")
    try:
        with pytest.raises(ArchiveError, match="unauthorized"):
            RemoteArchive(server.url, token="").scan()
        with pytest.raises(ArchiveError, match="unauthorized"):
            RemoteArchive(server.url, token="wrong").scan()
        view = ArchiveView(RemoteArchive(server.url, token="s3cret-token"), repair=False)
        assert read_all(view, "a.bin") == path.read_bytes()
    finally:
        server.stop()


def test_server_dying_mid_read_gives_an_error_quickly(served: tuple[Env, Server]) -> None:
    env, server = served
    view = ArchiveView(RemoteArchive(server.url, timeout=2.0), repair=False)
    h = view.open("big/t3.bin")
    assert view.read(h, 0, 4096) == original(env, "big/t3.bin")[:4096]
    server.stop(signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises(IntegrityError):
        view.read(h, 100_000, 50_000)
    assert time.monotonic() - t < 15


@pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse")
def test_remote_mount_reads_byte_identical_files(served: tuple[Env, Server]) -> None:
    env, server = served
    mnt = env.root / "rmnt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockframe", "mount", "-r", server.url, "-m", str(mnt)],
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        assert sorted(os.listdir(mnt)) == ["big", "t1.bin", "t2.bin"]
        for name in SIZES:
            r = subprocess.run(["cmp", str(mnt / name), str(env.root / "src" / name)])
            assert r.returncode == 0, name
        assert Path(mnt / "big" / "t3.bin").stat().st_size == SIZES["big/t3.bin"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert proc.returncode == 0
