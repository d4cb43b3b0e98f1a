"""The remote client against servers that misbehave on purpose: bodies trickled a byte at a
time (headers or body), answers far larger than asked, names no object can have, and a
server that serves a different, self-consistent archive (caught only by the pin)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_remote import Server

from blockframe.access.api import open_archive
from blockframe.access.fsspec import BlockFrameFileSystem
from blockframe.archive.remote import RemoteArchive
from blockframe.errors import ArchiveError, UsageError
from blockframe.format.pin import pin_of

from conftest import Env, data

Handler = Callable[[socket.socket, bytes], None]


class RawServer:
    """A loopback TCP server answering every request with ``handler(conn, request)``;
    counts the bytes it sent."""

    def __init__(self, handler: Handler) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handler = handler
        self.sent = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(65536)
                if not got:
                    return
                request += got
            with contextlib.suppress(OSError):  # the client hung up: what deadlines do
                self.handler(conn, request)

    def send(self, conn: socket.socket, raw: bytes) -> None:
        conn.sendall(raw)
        self.sent += len(raw)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def finishes(call: Callable[[], object], within: float = 60.0) -> BaseException | None:
    """Run ``call`` on a thread; the exception it raised (None if it returned). Fails the
    test if it has not finished ``within`` seconds: a hang, not a slow machine."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within)
    assert outcome, f"still running after {within} s: no deadline"
    return outcome[0]


def trickle_body(server_of: Callable[[], RawServer]) -> Handler:
    def handler(conn: socket.socket, request: bytes) -> None:
        server = server_of()
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while not server.stop.is_set():
            server.send(conn, b"[")
            time.sleep(0.2)

    return handler


def test_a_body_trickled_a_byte_at_a_time_ends_at_the_deadline(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    holder: list[RawServer] = []
    server = raw_server(trickle_body(lambda: holder[0]))
    holder.append(server)
    # Each byte arrives well within the 5 s read timeout; only the deadline ends it.
    remote = RemoteArchive(server.url, timeout=5.0, deadline=1.5)
    error = finishes(remote.scan)
    assert isinstance(error, ArchiveError) and "Timeout" in str(error)
    remote.close()


def test_headers_trickled_a_byte_at_a_time_end_at_the_deadline(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    holder: list[RawServer] = []

    def handler(conn: socket.socket, request: bytes) -> None:
        server = holder[0]
        server.send(conn, b"HTTP/1.1 200 OK\r\n")
        while not server.stop.is_set():
            server.send(conn, b"X")
            time.sleep(0.2)

    holder.append(raw_server(handler))
    remote = RemoteArchive(holder[0].url, timeout=5.0, deadline=1.5)
    error = finishes(remote.scan)
    assert isinstance(error, ArchiveError) and "Timeout" in str(error)
    remote.close()


@pytest.mark.parametrize("declared", [True, False])
def test_a_huge_listing_is_refused_without_reading_it(
    raw_server: Callable[[Handler], RawServer], declared: bool
) -> None:
    holder: list[RawServer] = []
    total = 600 << 20
    piece = b"[" + b" " * (1 << 20)

    def handler(conn: socket.socket, request: bytes) -> None:
        server = holder[0]
        length = f"Content-Length: {total}\r\n" if declared else "Transfer-Encoding: chunked\r\n"
        server.send(conn, f"HTTP/1.1 200 OK\r\n{length}\r\n".encode())
        sent = 0
        while sent < total and not server.stop.is_set():
            if declared:
                server.send(conn, piece)
            else:
                server.send(conn, f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)

    holder.append(raw_server(handler))
    remote = RemoteArchive(holder[0].url)
    error = finishes(remote.scan)
    assert isinstance(error, ArchiveError) and "TooLarge" in str(error)
    remote.close()
    # The client stopped reading at the cap (plus what the socket buffers held).
    assert holder[0].sent < (256 << 20) + (64 << 20)


def test_names_no_object_can_have_are_skipped_and_reported(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    bad = ["", "/abs", "a//b", "a/./b", "../up", "ctl\x01x", "back\\slash", 7, None]

    def handler(conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET /api/files "):
            body = json.dumps([{"name": n} for n in bad]).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        else:  # no manifest request may be made for any of these names
            raise AssertionError(request[:80])

    server = raw_server(handler)
    remote = RemoteArchive(server.url)
    index = remote.scan()
    assert index.entries == {}
    assert len(index.problems) == len(bad)
    assert all(p.reason == "invalid object name (skipped)" for p in index.problems)
    remote.close()


def _commit_all(env: Env, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = env.root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        r = env.run("commit", "-f", str(path), "--name", name)
        assert r.returncode == 0, r.stderr


def test_the_pin_catches_a_server_that_serves_another_archive(env: Env, tmp_path: Path) -> None:
    _commit_all(env, {"a.bin": data(20_000, 1), "b.bin": data(70_000, 2)})
    pin = pin_of(e.manifest for e in env.archive.scan().entries.values())
    # Another archive: same names, other bytes. Every manifest in it is self-consistent,
    # so without a pin the client has no way to tell.
    other = Env(tmp_path / "other")
    other.root.mkdir()
    (other.root / "config.toml").write_text((env.root / "config.toml").read_text())
    _commit_all(other, {"a.bin": data(20_000, 3), "b.bin": data(70_000, 2)})
    honest, forger = Server(env), Server(other)
    try:
        good = RemoteArchive(honest.url, pin=pin)
        assert sorted(good.scan().entries) == ["a.bin", "b.bin"]
        assert good.open_object(good.get("a.bin")).read(0, 20_000) == data(20_000, 1)
        good.close()
        unpinned = RemoteArchive(forger.url)
        assert unpinned.open_object(unpinned.get("a.bin")).read(0, 100) == data(100, 3)
        unpinned.close()
        forged = RemoteArchive(forger.url, pin=pin)
        with pytest.raises(ArchiveError, match="does not match its pin"):
            forged.scan()
        with pytest.raises(ArchiveError, match="does not match its pin"):
            forged.get("b.bin")  # b.bin itself is genuine: the catalog as a whole is not
        forged.close()
        # The same pin through the public API and fsspec.
        with open_archive(honest.url, pin=pin) as api:
            assert api.open("a.bin").read() == data(20_000, 1)
        with open_archive(forger.url, pin=pin) as api, pytest.raises(ArchiveError, match="pin"):
            api.list()
        fs = BlockFrameFileSystem(url=forger.url, pin=pin)
        with pytest.raises(ArchiveError, match="does not match its pin"):
            fs.ls("")
        assert BlockFrameFileSystem(url=honest.url, pin=pin).cat_file("b.bin") == data(70_000, 2)
    finally:
        honest.stop()
        forger.stop()


def test_an_object_hidden_by_the_server_breaks_the_pin(env: Env) -> None:
    _commit_all(env, {"a.bin": data(20_000, 1)})
    pin = pin_of(e.manifest for e in env.archive.scan().entries.values())
    _commit_all(env, {"b.bin": data(5_000, 2)})  # the catalog moved on: the pin is stale
    server = Server(env)
    try:
        remote = RemoteArchive(server.url, pin=pin)
        with pytest.raises(ArchiveError, match="does not match its pin"):
            remote.scan()
        remote.close()
    finally:
        server.stop()


def test_a_malformed_pin_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="invalid pin"):
        RemoteArchive("http://127.0.0.1:9", pin="abc")
    with pytest.raises(UsageError, match="a pin is for a server URL"):
        open_archive("/some/dir", pin="0" * 64)
    with pytest.raises(ValueError, match="pin is for a server URL"):
        BlockFrameFileSystem(archive="/some/dir", pin="0" * 64)


def test_list_json_shows_the_pin_and_mount_refuses_a_wrong_one(env: Env) -> None:
    _commit_all(env, {"a.bin": data(20_000, 1)})
    doc = json.loads(env.run("list", "--json").stdout)
    assert doc["pin"] == pin_of(e.manifest for e in env.archive.scan().entries.values())
    server = Server(env)
    try:
        mnt = env.root / "mnt"
        mnt.mkdir()
        wrong = "0" * 64
        r = env.run("mount", "-m", str(mnt), "--remote", server.url, "--pin", wrong)
        assert r.returncode == 1
        assert b"does not match its pin" in r.stderr and r.stderr.count(b"\n") == 1
        assert not os.path.ismount(mnt)
        r = env.run("mount", "-m", str(mnt), "--pin", wrong)
        assert r.returncode == 2 and b"--pin is for a remote archive" in r.stderr
    finally:
        server.stop()
