"""Hostile clients of `blockframe serve` (issue #16, items 10-12), against the real server:
idle and half-open sockets beyond the connection cap, clients that never finish their
request headers, a process out of file descriptors, DNS rebinding (a foreign Host on a
loopback server without a token), a non-loopback bind without a token, and HEAD answering
what GET answers for an object damaged beyond parity."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_serve import FILES, Server, build, content

from blockframe.access.http.edge import loopback_name
from blockframe.access.http.guard import RateLimit

from conftest import CONFIG_TOML, Env, data

SMALL_FILES = {"t1.bin": FILES["t1.bin"], "dir/sub/t3.bin": FILES["dir/sub/t3.bin"]}


def configure(env: Env, **server: object) -> None:
    lines = "".join(f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n'
                    for k, v in server.items())  # fmt: skip
    (env.root / "config.toml").write_text(CONFIG_TOML + "\n[server]\n" + lines)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return build(tmp_path, SMALL_FILES)


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``s`` within ``seconds`` (polled, not slept), and what it
    sent before closing."""
    received = b""
    deadline = time.monotonic() + seconds
    while True:  # at least one look, even with no time to wait
        left = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([s], [], [], min(left, 0.05))
        if ready:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return True, received
            if not chunk:
                return True, received
            received += chunk
        elif left <= 0:
            return False, received


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def served_ok(server: Server, within: float = 10) -> float:
    """Seconds until a real client got t1.bin byte-exact (retrying refused attempts)."""
    start = time.monotonic()
    while True:
        try:
            with httpx.Client(base_url=server.url, timeout=5) as c:
                r = c.get("/api/files/t1.bin")
            if r.status_code == 200:
                assert r.content == content("t1.bin")
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        if time.monotonic() - start > within:
            raise AssertionError(f"no answer within {within} s: {server.log[-5:]}")
        time.sleep(0.05)


def metric(server: Server, sample: str) -> float:
    with server.client() as c:
        for line in c.get("/metrics").text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    raise AssertionError(sample)


def logged(server: Server, text: str, within: float = 10) -> bool:
    """Whether the server logs a line holding ``text`` within ``within`` seconds."""
    deadline = time.monotonic() + within
    while not any(text in x for x in server.log):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def stopper() -> Iterator[Callable[[Server], None]]:
    servers: list[Server] = []
    yield servers.append
    for s in servers:
        if s.proc.poll() is None:
            assert s.stop() == 0, s.log
        assert not any("Traceback" in x for x in s.log), s.log


# -- item 10: connections ------------------------------------------------------------------


def test_idle_sockets_beyond_the_cap_lock_no_client_out(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    # A header deadline far away: only the cap's eviction of idle sockets can free slots.
    configure(env, max_connections=20, header_timeout=60)
    server = Server(env)
    stopper(server)
    idle: list[socket.socket] = []
    try:
        for i in range(300):
            s = connect(server.port)
            if i % 3 == 0:
                s.sendall(b"GET /api/files HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")  # half-open
            idle.append(s)
        waited = served_ok(server)
        assert waited < 5, waited
        # The server holds at most its cap of connections, whatever the clients hold: as
        # it takes the rest from its backlog, it closes the sockets idle longest.
        deadline = time.monotonic() + 20
        while (closed := sum(closed_within(s, 0)[0] for s in idle)) < 250:
            assert time.monotonic() < deadline, closed
            time.sleep(0.1)
        assert fds_of(server.proc.pid) < 20 + 30
        assert metric(server, 'blockframe_connections_closed_total{reason="evicted"}') >= 250
        assert served_ok(server) < 5
    finally:
        for s in idle:
            s.close()
    # And the log was not flooded: a few lines, no tracebacks.
    assert len(server.log) < 20, server.log


def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503_at_once(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    # Responses larger than one 1 MiB piece: the server waits for each slow reader.
    src = env.file("big.bin", 2_500_000, seed=3)
    env.archive.commit(src, "big.bin")
    want = data(2_500_000, seed=3)
    configure(env, max_connections=8, header_timeout=60)
    server = Server(env)
    stopper(server)
    busy: list[socket.socket] = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            s.connect(("127.0.0.1", server.port))
            # Four requests pipelined: more than socket buffers absorb, so the server
            # really waits for this reader (a response handed over whole is not busy).
            s.sendall(b"GET /api/files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)
            busy.append(s)
        for s in busy:  # every response has started: every connection is busy
            assert select.select([s], [], [], 10)[0]
        with connect(server.port) as late:
            start = time.monotonic()
            done, reply = closed_within(late, 5)
            assert done and time.monotonic() - start < 2
            assert reply.startswith(b"HTTP/1.1 503 "), reply
        # The busy ones are served correctly (the first of their responses read here).
        for s in busy:
            s.settimeout(10)
            reply = b""
            while len(reply.partition(b"\r\n\r\n")[2]) < len(want):
                chunk = s.recv(1 << 20)
                assert chunk
                reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and body[: len(want)] == want
    finally:
        for s in busy:
            s.close()
    assert served_ok(server) < 5
    assert metric(server, 'blockframe_connections_closed_total{reason="limit"}') == 1


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    src = env.file("big.bin", 2_500_000, seed=3)
    env.archive.commit(src, "big.bin")
    configure(env, send_timeout=1)
    server = Server(env)
    stopper(server)
    reason = 'blockframe_connections_closed_total{reason="send_timeout"}'
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET /api/files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)
        deadline = time.monotonic() + 15
        while metric(server, reason) < 1:
            assert time.monotonic() < deadline, "a client that reads nothing was kept"
            time.sleep(0.1)
        # What it gets now ends early: the connection was dropped.
        s.settimeout(10)
        got = 0
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < 4 * 2_500_000
    assert served_ok(server) < 5
    assert logged(server, "read nothing for 1 s")


def test_a_client_that_never_finishes_its_headers_is_cut_at_header_timeout(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    configure(env, header_timeout=0.5)
    server = Server(env)
    stopper(server)
    # Headers trickled one line every 0.1 s, never finished: closed with 408.
    with connect(server.port) as s:
        start = time.monotonic()
        s.sendall(b"GET /api/files HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        reply = b""
        done = False
        for _ in range(50):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                done = True
                break
            done, got = closed_within(s, 0.1)
            reply += got
            if done:
                break
        elapsed = time.monotonic() - start
        assert done, "the server kept a client that never finished its headers"
        assert 0.4 <= elapsed < 3, elapsed
        assert reply.startswith(b"HTTP/1.1 408 "), reply
    # A connection that sends nothing is closed silently.
    with connect(server.port) as s:
        start = time.monotonic()
        done, reply = closed_within(s, 5)
        assert done and reply == b"" and 0.4 <= time.monotonic() - start < 3
    # After a complete response, the next request's headers are under the same deadline
    # (keep-alive does not reset it with every byte).
    with connect(server.port) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first
        start = time.monotonic()
        done = False
        for _ in range(50):
            try:
                s.sendall(b"G" if _ == 0 else b"E")
            except OSError:
                done = True
                break
            done, _got = closed_within(s, 0.1)
            if done:
                break
        assert done and time.monotonic() - start < 3
    # A body trickled after complete headers (this server reads none) is under it too.
    with connect(server.port) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999\r\n\r\n")
        start = time.monotonic()
        reply = b""
        done = False
        for _ in range(50):
            try:
                s.sendall(b"x")
            except OSError:
                done = True
                break
            done, got = closed_within(s, 0.1)
            reply += got
            if done:
                break
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert done and time.monotonic() - start < 3
    # A client that sends its request in time is served as always.
    assert served_ok(server) < 5
    assert metric(server, 'blockframe_connections_closed_total{reason="header_timeout"}') >= 4


def test_out_of_file_descriptors_closes_at_accept_without_flooding_the_log(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    configure(env, header_timeout=1)
    server = Server(env, fd_limit=48)
    stopper(server)
    idle: list[socket.socket] = []
    try:
        for _ in range(150):
            idle.append(connect(server.port))
        # The connections the server had no descriptor for were accepted and closed at
        # once (not left hanging in the backlog).
        deadline = time.monotonic() + 5
        while not logged(server, "out of file descriptors", 0.1):
            assert time.monotonic() < deadline, "the descriptor limit was never reached"
        refused = [s for s in idle if closed_within(s, 0.01)[0]]
        assert refused, "every connection was kept"
        time.sleep(1.5)  # log lines over more than the header deadline, with clients waiting
        # A real client gets through once the idle ones met their deadline.
        assert served_ok(server, within=10) < 10
    finally:
        for s in idle:
            s.close()
    assert server.proc.poll() is None
    assert any("out of file descriptors" in x for x in server.log), server.log
    # Rate-limited: a handful of lines, not one (or a traceback) per failed accept.
    assert len(server.log) < 30, server.log


def test_a_flood_of_malformed_requests_does_not_flood_the_log(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    server = Server(env)
    stopper(server)
    for _ in range(300):
        with connect(server.port) as s:
            s.sendall(b"\x00\x01 garbage\r\n\r\n")
            done, reply = closed_within(s, 5)
            assert done and reply.startswith(b"HTTP/1.1 400 ")
    assert served_ok(server) < 5
    assert logged(server, "Invalid HTTP request")
    invalid = [x for x in server.log if "Invalid HTTP request" in x]
    assert len(invalid) <= 6, len(invalid)  # 5 a burst, and later one line with a count


# -- item 11: Host and bind address ----------------------------------------------------------


def raw(port: int, host: str | None, path: str = "/api/files", auth: str = "") -> tuple[int, bytes]:
    with connect(port) as s:
        head = f"GET {path} HTTP/1.1\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        if auth:
            head += f"Authorization: Bearer {auth}\r\n"
        s.sendall((head + "Connection: close\r\n\r\n").encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    top, _, body = reply.partition(b"\r\n\r\n")
    return int(top.split()[1]), body


REBOUND = [
    "evil.example",
    "evil.example:{port}",
    "localhost.evil.example",
    "127.0.0.1.nip.io:{port}",
    "attacker.localhost.evil",
    "10.0.0.1",
    "[::2]:{port}",
    ":{port}",
    "localhost:x",
    "[::1]x",
]
LOOPBACK = ["localhost", "localhost:{port}", "LOCALHOST", "127.0.0.1", "127.0.0.1:{port}",
            "[::1]", "[::1]:{port}", "127.1.2.3"]  # fmt: skip


def test_a_foreign_host_is_refused_without_a_token(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    server = Server(env)
    stopper(server)
    port = server.port
    for host in REBOUND:
        for path in ("/api/files", "/api/files/t1.bin", "/"):
            status, body = raw(port, host.format(port=port), path)
            assert status == 400, (host, path)
            assert body.count(b"\n") == 0 and b"loopback" in body, body
    for host in LOOPBACK:
        status, body = raw(port, host.format(port=port), "/api/files/t1.bin")
        assert status == 200 and body == content("t1.bin"), host
    # httpx sends the URL's host; a browser on a rebound name would send its own.
    with httpx.Client(timeout=10) as c:
        url = f"http://127.0.0.1:{port}/api/files"
        assert c.get(url).status_code == 200
        assert c.get(url, headers={"Host": "rebound.example"}).status_code == 400
        assert c.get(f"http://localhost:{port}/api/files").status_code == 200


def test_with_a_token_any_host_may_ask(env: Env, stopper: Callable[[Server], None]) -> None:
    server = Server(env, extra_env={"BLOCKFRAME_TOKEN": "s3cret"})
    stopper(server)
    assert raw(server.port, "evil.example", auth="s3cret")[0] == 200
    assert raw(server.port, "evil.example")[0] == 401


def test_a_non_loopback_bind_without_a_token_is_refused(env: Env) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        start = time.monotonic()
        r = env.run("serve", "--host", host, "-p", "0")
        assert r.returncode == 2, (host, r.stderr)
        assert r.stderr.count(b"\n") == 1 and b"--allow-no-token" in r.stderr, r.stderr
        assert b"without a token" in r.stderr
        assert time.monotonic() - start < 20
    # Refused before anything was bound: the port stays free.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    r = env.run("serve", "--host", "0.0.0.0", "-p", str(port))
    assert r.returncode == 2
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", port))


def test_allow_no_token_serves_and_warns_even_when_quiet(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    server = Server(env, "--host", "0.0.0.0", "--allow-no-token")
    stopper(server)
    assert logged(server, "warning: no token set"), server.log
    with httpx.Client(timeout=10) as c:
        # Not a loopback bind: Host is not checked (whoever reaches it may read, as asked).
        r = c.get(f"http://127.0.0.1:{server.port}/api/files", headers={"Host": "nas.lan"})
        assert r.status_code == 200
    environ = {k: v for k, v in os.environ.items() if k not in ("BLOCKFRAME_TOKEN",)}
    environ["XDG_CONFIG_HOME"] = str(env.root / "xdg")
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blockframe",
            "-q",
            "serve",
            "--host",
            "0.0.0.0",
            "-p",
            str(port),
            "--allow-no-token",
        ],
        cwd=env.root,
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "warning: no token set" in first, first
        deadline = time.monotonic() + 20
        while True:  # up and answering (its signal handlers in place) before SIGTERM
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_the_pin_is_logged_at_start(env: Env, stopper: Callable[[Server], None]) -> None:
    server = Server(env)
    stopper(server)
    r = env.run("list", "--json")
    pin = json.loads(r.stdout)["pin"]
    assert logged(server, f"pin: {pin} (2 objects"), server.log


# -- item 12: HEAD agrees with GET -----------------------------------------------------------


def test_head_and_get_agree_on_an_object_damaged_beyond_parity(
    env: Env, stopper: Callable[[Server], None]
) -> None:
    # t1.bin (tier 1): its data shard and both parity shards damaged, beyond parity.
    t1 = env.object_dir("t1.bin")
    for rel in ("data.dat", "parity/parity_0.dat", "parity/parity_1.dat"):
        p = t1 / rel
        raw_bytes = bytearray(p.read_bytes())
        raw_bytes[10] ^= 0x40
        p.write_bytes(bytes(raw_bytes))
    # dir/sub/t3.bin (tier 3): block 2 loses two segments and a parity shard (2 parity).
    t3 = env.object_dir("dir/sub/t3.bin")
    for rel in ("segments/segment_0.dat", "segments/segment_1.dat", "parity/parity_0.dat"):
        (t3 / "blocks/block_2" / rel).unlink()
    block = 8 * 1024 * 4
    size3 = FILES["dir/sub/t3.bin"]
    cases = [
        ("t1.bin", None, 500),
        ("t1.bin", "bytes=0-99", 500),
        ("t1.bin", "bytes=-100", 206),  # the damage is in the first chunk only
        ("dir/sub/t3.bin", None, 500),  # the first piece (1 MiB) covers block 2
        ("dir/sub/t3.bin", f"bytes={2 * block}-", 500),
        ("dir/sub/t3.bin", f"bytes={2 * block + 100}-{2 * block + 200}", 500),
        ("dir/sub/t3.bin", f"bytes=0-{2 * block - 1}", 206),
        ("dir/sub/t3.bin", f"bytes={3 * block}-", 206),
        ("dir/sub/t3.bin", f"bytes={size3}-", 416),
    ]
    server = Server(env)
    stopper(server)
    with server.client() as c:
        for name, span, want in cases:
            headers = {"Range": span} if span else {}
            get = c.get(f"/api/files/{name}", headers=headers)
            head = c.head(f"/api/files/{name}", headers=headers)
            assert (get.status_code, head.status_code) == (want, want), (name, span)
            assert head.content == b""
            if want == 206:
                assert head.headers["content-range"] == get.headers["content-range"]
                assert head.headers["content-length"] == get.headers["content-length"]
        # An intact range and an intact object agree too.
        r = c.head("/api/files/dir/sub/t3.bin", headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and r.headers["content-length"] == "10"


# -- the pieces on their own ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (b"localhost", True),
        (b"LocalHost:8080", True),
        (b"127.0.0.1", True),
        (b"127.0.0.1:1", True),
        (b"127.255.0.9:80", True),
        (b"[::1]", True),
        (b"[::1]:8080", True),
        (b" localhost ", True),
        (b"localhost.", False),
        (b"localhost:", False),
        (b"localhost:80:80", False),
        (b"::1", False),  # an IPv6 Host must be bracketed
        (b"[::1", False),
        (b"[::1]:", False),
        (b"[::1]8080", False),
        (b"[127.0.0.1]", False),
        (b"0.0.0.0", False),
        (b"evil.example", False),
        (b"127.0.0.1.evil.example", False),
        (b"", False),
        (b"\xff", False),
    ],
)
def test_loopback_host_names(host: bytes, ok: bool) -> None:
    assert loopback_name(host) is ok


def test_the_rate_limit_keeps_a_burst_and_counts_the_rest() -> None:
    limit = RateLimit(burst=3, interval=0.2)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, __file__, 1, msg, (), None)

    kept = [limit.filter(record("out of file descriptors")) for _ in range(100)]
    assert kept.count(True) == 3
    assert limit.filter(record("another message"))  # counted per message
    time.sleep(0.25)
    r = record("out of file descriptors")
    assert limit.filter(r) and "97 similar messages suppressed" in r.getMessage()
