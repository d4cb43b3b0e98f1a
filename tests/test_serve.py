"""`blockframe serve` for real: a uvicorn server on a free loopback port, started as the CLI
starts it, stopped with SIGTERM / SIGINT. Downloads of every tier and ranges are byte-exact;
416, 404, HEAD; traversal attempts reveal nothing; the token; the bind address; damage within
parity is served clean and repaired, damage beyond parity is a 500 or an aborted stream;
16 parallel clients; manifest and shard routes; schemathesis against /openapi.json."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from blockframe.access.http import openapi
from blockframe.archive.entry import created_ns
from blockframe.format import manifest

from conftest import CONFIG_TOML, SMALL, Env, data, snapshot

FILES = {
    "t1.bin": 15_000,  # tier 1
    "t2.bin": 50_000,  # tier 2
    "dir/sub/t3.bin": 300_017,  # tier 3, last block of one short segment
    "odd name é+%.bin": 3_000,  # needs quoting in a URL
    "pre/manifest": 1_000,  # an object whose name looks like the manifest route of "pre"
}
TIERS = {"t1.bin": 1, "t2.bin": 2, "dir/sub/t3.bin": 3}
BLOCK = SMALL.segment_size * SMALL.block_segments


def content(name: str) -> bytes:
    return data(FILES[name], seed=len(name))


class Server:
    """A `blockframe serve` subprocess and its base URL (read from its log line)."""

    def __init__(
        self,
        env: Env,
        *args: str,
        extra_env: dict[str, str] | None = None,
        before: tuple[str, ...] = (),
        fd_limit: int | None = None,
    ) -> None:
        environ = {
            k: v
            for k, v in os.environ.items()
            if k not in ("BLOCKFRAME_CONFIG", "BLOCKFRAME_TOKEN")
        }
        environ["XDG_CONFIG_HOME"] = str(env.root / "xdg")
        environ.update(extra_env or {})
        self.env = env

        def limit() -> None:
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockframe", *before, "serve", "-p", "0", *args],
            cwd=env.root,
            env=environ,
            preexec_fn=limit if fd_limit is not None else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(20):
            self.proc.kill()
            raise AssertionError(f"server did not come up: {self.log}")
        line = next(x for x in self.log if " at http://" in x)
        self.url = line.split(" at ", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))
            if "serving " in line:
                self._ready.set()
        self._ready.set()

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=20, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def build(root: Path, names: dict[str, int] = FILES) -> Env:
    (root / "config.toml").write_text(CONFIG_TOML)
    env = Env(root)
    for name, size in names.items():
        src = env.root / "src" / name.replace("/", "_")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data(size, seed=len(name)))
        env.archive.commit(src, name)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = build(tmp_path_factory.mktemp("served"))
    tiers = {n: e.manifest.tier for n, e in env.archive.scan().entries.items()}
    assert {n: tiers[n] for n in TIERS} == TIERS
    server = Server(env)
    yield server
    assert server.stop() == 0, server.log
    assert any("server stopped" in x for x in server.log)
    assert not any("Traceback" in x for x in server.log), server.log


def url_name(name: str) -> str:
    return "/api/files/" + httpx.URL("/" + name).raw_path.decode()[1:]


def raw_get(server: Server, target: str) -> tuple[int, bytes]:
    """A request line sent exactly as given (httpx would normalize `..` and `%2e`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# -- reading -------------------------------------------------------------------------------


def test_listing(served: Server) -> None:
    with served.client() as c:
        r = c.get("/api/files")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    listing = r.json()
    # "pre" does not exist; "pre/manifest" is an object like any other.
    assert [f["name"] for f in listing] == sorted(FILES)
    entries = served.env.archive.scan().entries
    for f in listing:
        entry = entries[f["name"]]
        m = entry.manifest
        assert f == {
            "name": m.name,
            "size": FILES[m.name],
            "tier": m.tier,
            "status": "ok",
            "id": m.id,
            "content_hash": m.content_hash,
            "created": m.created,
            # Committed as single files before manifests recorded metadata: the mtime is
            # the commit time and the mode the default.
            "mtime_ns": created_ns(m.created),
            "mode": 0o644,
            "scrub": None,  # never scrubbed by `blockframe health`
        }


def test_whole_and_ranged_downloads_of_every_tier(served: Server) -> None:
    rng = random.Random(5)
    seg = SMALL.segment_size
    with served.client() as c:
        for name in FILES:
            want = content(name)
            size = len(want)
            r = c.get(url_name(name))
            assert r.status_code == 200 and r.content == want, name
            assert r.headers["content-length"] == str(size)
            assert r.headers["accept-ranges"] == "bytes"
            assert r.headers["content-type"] == "application/octet-stream"
            entry = served.env.archive.get(name)
            assert r.headers["etag"] == f'"{entry.manifest.content_hash}"'
            cases = [(0, 0), (size - 1, size - 1), (0, size - 1), (0, size + 1000)]
            cases += [(seg - 1, seg), (BLOCK - 3, BLOCK + 5), (size - 10, 10**30)]
            cases += [(a, a + rng.randrange(1, 70_000)) for a in rng.sample(range(size), 8)]
            for a, b in cases:
                if a >= size:
                    continue
                r = c.get(url_name(name), headers={"Range": f"bytes={a}-{b}"})
                end = min(b, size - 1)
                assert r.status_code == 206, (name, a, b)
                assert r.content == want[a : end + 1], (name, a, b)
                assert r.headers["content-range"] == f"bytes {a}-{end}/{size}"
                assert r.headers["content-length"] == str(end - a + 1)
            r = c.get(url_name(name), headers={"Range": f"bytes={size // 2}-"})
            assert r.status_code == 206 and r.content == want[size // 2 :]
            r = c.get(url_name(name), headers={"Range": "bytes=-100"})
            assert r.status_code == 206 and r.content == want[-100:]
            assert r.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
            r = c.get(url_name(name), headers={"Range": f"bytes=-{size * 2}"})
            assert r.status_code == 206 and r.content == want


def test_range_edge_cases_head_and_404(served: Server) -> None:
    want = content("t2.bin")
    size = len(want)
    etag = f'"{served.env.archive.get("t2.bin").manifest.content_hash}"'
    with served.client() as c:
        for bad in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0", "bytes=9-3",
                    "bytes=x-y", "bytes=", "bytes=-"):  # fmt: skip
            r = c.get("/api/files/t2.bin", headers={"Range": bad})
            assert r.status_code == 416, bad
            assert r.headers["content-range"] == f"bytes */{size}"
            assert r.json() == {"error": "range not satisfiable"}
        # Several ranges: the Range header is ignored and the whole file sent.
        for ignored in ("bytes=0-1,5-9", "items=0-1", "bytes=0-1,"):
            r = c.get("/api/files/t2.bin", headers={"Range": ignored})
            expected = (200, want) if ignored != "bytes=0-1," else (206, want[:2])
            assert (r.status_code, r.content) == expected, ignored
        # If-Range: the range applies only to the same version.
        r = c.get("/api/files/t2.bin", headers={"Range": "bytes=0-9", "If-Range": etag})
        assert r.status_code == 206 and r.content == want[:10]
        r = c.get("/api/files/t2.bin", headers={"Range": "bytes=0-9", "If-Range": '"old"'})
        assert r.status_code == 200 and r.content == want
        # HEAD: the headers of the GET, no body, nothing read.
        r = c.head("/api/files/t2.bin")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == str(size) and r.headers["etag"] == etag
        r = c.head("/api/files/t2.bin", headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == b""
        assert r.headers["content-range"] == f"bytes 100-199/{size}"
        assert r.headers["content-length"] == "100"
        # Unknown names and routes.
        for path in ("/api/files/nope", "/api/files/t2.bin/nope", "/api/files/pre",
                     "/api/files/t2.bin/shards/9/0", "/api/files/t2.bin/shards/0/99",
                     "/nope", "/api"):  # fmt: skip
            r = c.get(path)
            assert r.status_code == 404, path
            assert "error" in r.json()
        # Read-only.
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            r = c.request(method, "/api/files/t2.bin")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", method


def test_traversal_attempts_reveal_nothing(served: Server) -> None:
    root = str(served.env.root)
    entry = served.env.archive.get("t1.bin")
    attempts = [
        "/api/files/../../../../etc/passwd",
        "/api/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/files/..%2f..%2f..%2fetc%2fpasswd",
        "/api/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/api/files//etc/passwd",
        "/api/files/%2fetc%2fpasswd",
        "/api/files/t1.bin%00",
        "/api/files/%00",
        "/api/files/dir%5csub%5ct3.bin",
        "/api/files/dir\\sub\\t3.bin",
        "/api/files/dir/../t1.bin",
        "/api/files/./t1.bin",
        "/api/files/dir//sub/t3.bin",
        f"/api/files/{entry.path.name}/manifest.json",
        f"/api/files/{entry.path.name}",
        "/api/files/t1.bin/shards/0/0/../../../../manifest.json",
        "/api/files/t1.bin/parity/parity_0.dat",
        "/api/files/t1.bin/manifest/../data.dat",
        "/docs/static/../../../../etc/passwd",
        "/docs/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/../../etc/passwd",
        "/api/files/%ff%fe",
    ]
    for target in attempts:
        status, body = raw_get(served, target)
        assert status in (400, 404), (target, status, body)
        assert root.encode() not in body and b"Traceback" not in body, target
        assert b"root:" not in body, target
        if target.startswith("/api/"):
            assert set(json.loads(body)) == {"error"}, target


def test_manifest_route_and_object_names_win(served: Server) -> None:
    with served.client() as c:
        for name in TIERS:
            r = c.get(url_name(name) + "/manifest")
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            entry = served.env.archive.get(name)
            assert r.content == entry.manifest.to_json()
            assert manifest.parse(r.content, "served") == entry.manifest
        # "pre/manifest" is an object: the file route wins (there is no object "pre").
        r = c.get("/api/files/pre/manifest")
        assert r.status_code == 200 and r.content == content("pre/manifest")
        assert r.headers["content-type"] == "application/octet-stream"


def test_shard_routes_with_ranges(served: Server) -> None:
    with served.client() as c:
        for name in TIERS:
            entry = served.env.archive.get(name)
            for si, stripe in enumerate(entry.manifest.stripes):
                if si > 2:
                    break
                for j, shard in enumerate(stripe.shards):
                    raw = (entry.path / shard.path).read_bytes()
                    url = f"{url_name(name)}/shards/{si}/{j}"
                    r = c.get(url)
                    assert r.status_code == 200 and r.content == raw, (name, si, j)
                    assert r.headers["content-length"] == str(len(raw))
                    r = c.get(url, headers={"Range": "bytes=100-1123"})
                    assert r.status_code == 206 and r.content == raw[100:1124]
                    assert r.headers["content-range"] == f"bytes 100-1123/{len(raw)}"
                    r = c.head(url)
                    assert r.status_code == 200 and r.headers["content-length"] == str(len(raw))


def test_sixteen_parallel_ranged_clients(served: Server) -> None:
    names = list(FILES)
    errors: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with served.client() as c:
            for _ in range(25):
                name = rng.choice(names)
                want = content(name)
                a = rng.randrange(len(want))
                b = a + rng.randrange(1, 120_000)
                r = c.get(url_name(name), headers={"Range": f"bytes={a}-{b}"})
                if r.status_code != 206 or r.content != want[a : b + 1]:
                    errors.append(f"{name} {a}-{b}: {r.status_code}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_health_and_metrics(served: Server) -> None:
    with served.client() as c:
        h = c.get("/api/health").json()
        assert h == {
            "objects": len(FILES),
            "bytes": sum(FILES.values()),
            "problems": 0,
            "last_scrub": None,
        }
        (served.env.archive_dir / "stray.txt").write_bytes(b"x")
        r = served.env.run("health")
        assert r.returncode in (0, 1), r.stderr
        time.sleep(1.1)  # the index is rescanned at most once a second
        h = c.get("/api/health").json()
        assert h["problems"] == 1 and h["objects"] == len(FILES)
        scrubbed = datetime.fromisoformat(h["last_scrub"])
        assert abs(scrubbed.timestamp() - time.time()) < 60
        (served.env.archive_dir / "stray.txt").unlink()
        c.get("/api/files/t1.bin")
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.splitlines()
    samples = {k: float(v) for k, v in (x.rsplit(" ", 1) for x in lines if not x.startswith("#"))}
    assert samples["blockframe_bytes_served_total"] >= FILES["t1.bin"]
    assert samples['blockframe_http_requests_total{status="200"}'] >= 2
    assert samples["blockframe_objects"] == len(FILES)
    for name in ("reads_repaired", "integrity_errors", "shards_repaired", "streams_aborted"):
        assert samples[f"blockframe_{name}_total"] == 0
    # Exactly these metrics, under these names (no "_created" series beside the counters).
    types = dict(x.split()[2:4] for x in lines if x.startswith("# TYPE "))
    assert types == {
        "blockframe_bytes_served_total": "counter",
        "blockframe_reads_repaired_total": "counter",
        "blockframe_shards_repaired_total": "counter",
        "blockframe_integrity_errors_total": "counter",
        "blockframe_streams_aborted_total": "counter",
        "blockframe_http_requests_total": "counter",
        "blockframe_connections_closed_total": "counter",
        "blockframe_objects": "gauge",
    }
    assert {k.split("{")[0] for k in samples} == set(types)


def test_docs_and_openapi(served: Server) -> None:
    with served.client() as c:
        doc = c.get("/openapi.json").json()
        page = c.get("/docs")
        bundle = c.get("/docs/static/swagger-ui-bundle.js")
        css = c.get("/docs/static/swagger-ui.css")
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/files",
        "/api/files/{name}",
        "/api/files/{name}/manifest",
        "/api/files/{name}/shards/{stripe}/{shard}",
        "/api/health",
        "/metrics",
    }
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert css.status_code == 200


def test_openapi_documents_are_valid_openapi_3() -> None:
    import schemathesis

    for secured in (False, True):
        doc = openapi.openapi(secured)
        schemathesis.openapi.from_dict(doc).validate()
        ops = [op for path in doc["paths"].values() for op in path.values()]
        assert all(op["security"] == ([{"bearerAuth": []}] if secured else []) for op in ops)


def test_schemathesis_finds_nothing(served: Server, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "schemathesis"
    config = tmp_path / "schemathesis.toml"
    # A well-formed Range can still name no byte of the file: 416 is a valid answer.
    config.write_text(
        "[checks.positive_data_acceptance]\n"
        'expected-statuses = ["2xx", "3xx", "401", "404", "416"]\n'
    )
    for seed in ("7", "8"):
        args = ["--checks", "all", "--max-examples", "40", "--seed", seed, "--workers", "2"]
        r = subprocess.run(
            [
                str(st),
                "--config-file",
                str(config),
                "run",
                f"{served.url}/openapi.json",
                *args,
                "--no-color",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        # Findings about the API fail at once. A run that only ends in "errors" of the
        # tool itself (hypothesis's optimiser, through which schemathesis steers towards
        # accepted inputs, sometimes raises IndexError internally) is run again.
        assert "FAILURES" not in r.stdout, r.stdout[r.stdout.find("FAILURES") :][:6000]
        if r.returncode == 0:
            break
        tool_error = "ERRORS" in r.stdout and "hypothesis/internal" in r.stdout
        assert tool_error, r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, r.stdout[r.stdout.find("ERRORS") :][:6000]


# -- binding and authentication ------------------------------------------------------------


def test_binds_loopback_by_default(served: Server) -> None:
    assert served.url.startswith("http://127.0.0.1:")
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == served.port:
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert all(
        int(line.split()[1].split(":")[1], 16) != served.port
        for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    )


def test_token_and_cors(tmp_path: Path) -> None:
    env = build(tmp_path, {"t1.bin": 15_000})
    with open(env.root / "config.toml", "a") as f:
        f.write('\n[server]\ntoken = "s3cret"\ncors_origins = ["https://app.example"]\n')
    server = Server(env)
    try:
        with server.client() as c:
            for path in ("/api/files", "/api/files/t1.bin", "/api/health", "/metrics",
                         "/api/files/nope", "/anything"):  # fmt: skip
                for auth in (None, "Bearer wrong", "Bearer s3cret2", "Basic s3cret", "s3cret"):
                    r = c.get(path, headers={"Authorization": auth} if auth else {})
                    assert r.status_code == 401, (path, auth)
                    assert r.headers["www-authenticate"] == "Bearer"
                    assert r.json() == {"error": "missing or wrong bearer token"}
            good = {"Authorization": "Bearer s3cret"}
            r = c.get("/api/files/t1.bin", headers=good)
            assert r.status_code == 200 and r.content == data(15_000, seed=6)
            assert (
                c.get("/api/files", headers={"authorization": "bearer s3cret"}).status_code == 200
            )
            # The docs are public (they describe the software, not the archive).
            assert c.get("/openapi.json").status_code == 200
            assert c.get("/docs").status_code == 200
            assert "bearerAuth" in c.get("/openapi.json").json()["components"]["securitySchemes"]
            # CORS: GET from the configured origin, preflight without the token.
            origin = {"Origin": "https://app.example"}
            r = c.get("/api/files", headers={**good, **origin})
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            assert "content-range" in r.headers["access-control-expose-headers"].lower()
            r = c.options(
                "/api/files/t1.bin",
                headers={
                    **origin,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization, range",
                },
            )
            assert r.status_code == 200 and "GET" in r.headers["access-control-allow-methods"]
            r = c.get("/api/files", headers={**good, "Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in r.headers
            r = c.options(
                "/api/files",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"},
            )
            assert r.status_code == 400
    finally:
        assert server.stop(signal.SIGINT) == 0, server.log
    # The environment variable wins over the config file.
    server = Server(env, extra_env={"BLOCKFRAME_TOKEN": "from-env"})
    try:
        with server.client() as c:
            files = "/api/files"
            assert c.get(files, headers={"Authorization": "Bearer s3cret"}).status_code == 401
            assert c.get(files, headers={"Authorization": "Bearer from-env"}).status_code == 200
    finally:
        assert server.stop() == 0, server.log


def test_serve_errors_are_one_line(served: Server, tmp_path: Path) -> None:
    env = served.env
    r = env.run("serve", "-p", str(served.port))
    assert r.returncode == 1 and b"cannot listen" in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1
    r = env.run("serve", "-a", str(tmp_path / "missing"), "-p", "0")
    assert r.returncode == 1 and b"does not exist" in r.stderr and r.stderr.count(b"\n") == 1
    r = env.run("serve", "-p", "70000")
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1
    (tmp_path / "config.toml").write_text('[server]\ncors_origins = "*"\n')
    r = env.run("--config", str(tmp_path / "config.toml"), "serve")
    assert r.returncode == 2 and b"cors_origins" in r.stderr and r.stderr.count(b"\n") == 1


# -- damage --------------------------------------------------------------------------------


def wait_until(predicate: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def metric(c: httpx.Client, name: str) -> int:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(name)


def test_damage_within_parity_is_served_clean_and_repaired(tmp_path: Path) -> None:
    env = build(tmp_path, {n: FILES[n] for n in TIERS})
    seg1 = env.object_dir("t2.bin") / "segments/segment_1.dat"
    seg1_clean = seg1.read_bytes()
    raw = bytearray(seg1_clean)
    raw[100] ^= 0xFF
    seg1.write_bytes(bytes(raw))
    t3 = env.object_dir("dir/sub/t3.bin")
    victim = t3 / "blocks/block_5/segments/segment_2.dat"
    victim_clean = victim.read_bytes()
    victim.unlink()
    server = Server(env)
    try:
        with server.client() as c:
            assert c.get("/api/files/t2.bin").content == content("t2.bin")
            want = content("dir/sub/t3.bin")
            r = c.get("/api/files/dir/sub/t3.bin", headers={"Range": f"bytes={5 * BLOCK}-"})
            assert r.status_code == 206 and r.content == want[5 * BLOCK :]
            wait_until(lambda: seg1.read_bytes() == seg1_clean)
            wait_until(lambda: victim.exists() and victim.read_bytes() == victim_clean)
            # Two damaged shards, each counted once when a read found it and once when
            # it was rewritten on disk.
            assert metric(c, "blockframe_reads_repaired_total") == 2
            wait_until(lambda: metric(c, "blockframe_shards_repaired_total") == 2)
            # The shard route serves what is on disk, unverified: a missing shard is a 404,
            # a short one gives what exists.
            shard = f"/api/files/dir/sub/t3.bin/shards/{5}/{2}"
            victim.unlink()
            r = c.get(shard)
            assert r.status_code == 404 and r.json() == {"error": "shard missing on the server"}
            victim.write_bytes(victim_clean[:1000])
            r = c.get(shard, headers={"Range": "bytes=500-4999"})
            assert r.status_code == 206 and r.content == victim_clean[500:1000]
            assert r.headers["content-range"] == "bytes 500-999/1000"
            r = c.get(shard, headers={"Range": "bytes=2000-4999"})
            assert r.status_code == 416 and r.headers["content-range"] == "bytes */1000"
            victim.write_bytes(victim_clean)
    finally:
        assert server.stop() == 0, server.log
    assert any("segment_1.dat is corrupt" in x for x in server.log), server.log


def test_damage_beyond_parity_is_500_or_an_aborted_stream(tmp_path: Path) -> None:
    size = 2_500_000  # several 1 MiB pieces, so damage late in the file is found mid-stream
    env = build(tmp_path, {"big.bin": size, "t1.bin": FILES["t1.bin"]})
    want = data(size, seed=len("big.bin"))
    obj = env.object_dir("big.bin")
    block = 70  # bytes 70 * 32 KiB = 2.29 MB onwards
    for rel in ("segments/segment_0.dat", "segments/segment_1.dat", "parity/parity_0.dat"):
        p = obj / f"blocks/block_{block}" / rel
        raw = bytearray(p.read_bytes())
        raw[50] ^= 0x01
        p.write_bytes(bytes(raw))
    before = snapshot(obj)
    server = Server(env)
    try:
        with server.client() as c:
            # A range that starts in the lost chunk: refused before any byte is sent.
            r = c.get("/api/files/big.bin", headers={"Range": f"bytes={block * BLOCK}-"})
            assert r.status_code == 500, r.status_code
            assert set(r.json()) == {"error"} and str(env.root) not in r.text
            # The whole file: the first pieces are good and sent, then the stream is cut.
            received = b""
            with (
                pytest.raises(httpx.RemoteProtocolError),
                c.stream("GET", "/api/files/big.bin") as stream,
            ):
                assert stream.status_code == 200
                for piece in stream.iter_raw():
                    received += piece
            assert 2**20 <= len(received) <= block * BLOCK
            assert received == want[: len(received)]
            # Everything before the damage, and every other file, still reads.
            r = c.get("/api/files/big.bin", headers={"Range": f"bytes=0-{block * BLOCK - 1}"})
            assert r.status_code == 206 and r.content == want[: block * BLOCK]
            assert c.get("/api/files/t1.bin").content == data(FILES["t1.bin"], seed=6)
            assert metric(c, "blockframe_integrity_errors_total") == 2
            assert metric(c, "blockframe_streams_aborted_total") == 1
    finally:
        assert server.stop() == 0, server.log
    assert snapshot(obj) == before  # nothing was "repaired" with garbage
    assert not any("Traceback" in x for x in server.log), server.log


def test_new_commits_appear_and_replaced_objects_are_followed(tmp_path: Path) -> None:
    env = build(tmp_path, {"t1.bin": FILES["t1.bin"]})
    server = Server(env)
    try:
        with server.client() as c:
            assert [f["name"] for f in c.get("/api/files").json()] == ["t1.bin"]
            src = env.file("new.bin", 5_000, seed=9)
            env.archive.commit(src, "new.bin")
            time.sleep(1.1)
            assert c.get("/api/files/new.bin").content == data(5_000, seed=9)
            src = env.file("new2.bin", 7_000, seed=10)
            env.archive.commit(src, "new.bin", replace=True)
            r = c.get("/api/files/new.bin")
            assert r.status_code == 200 and r.content == data(7_000, seed=10)
            assert [f["size"] for f in c.get("/api/files").json()] == [7_000, 15_000]
    finally:
        assert server.stop() == 0, server.log


def test_a_client_that_goes_away_costs_nothing_further(tmp_path: Path) -> None:
    # The default geometry: a 48 MiB file in two 32 MiB segments (tier 2).
    (tmp_path / "config.toml").write_text('[archive]\ndirectory = "archive"\n')
    env = Env(tmp_path)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(48 * 2**20))
    assert env.run("commit", "-f", str(src)).returncode == 0
    server = Server(env)
    fds = Path(f"/proc/{server.proc.pid}/fd")
    try:
        with server.client() as c:
            c.get("/api/files/big.bin/shards/0/0", headers={"Range": "bytes=0-0"})
            open_fds = len(list(fds.iterdir()))
            with c.stream("GET", "/api/files/big.bin") as r:
                received = 0
                for piece in r.iter_raw():
                    received += len(piece)
                    if received > 2**20:
                        break
            time.sleep(1)
            served = metric(c, "blockframe_bytes_served_total")
            time.sleep(0.5)
            assert metric(c, "blockframe_bytes_served_total") == served
            # Socket buffers hold a few MiB at most; the rest was never read.
            assert served < 24 * 2**20
            # Shard downloads abandoned early leave no descriptor open.
            for _ in range(5):
                with c.stream("GET", "/api/files/big.bin/shards/0/1") as r:
                    next(r.iter_raw())
            time.sleep(0.5)
            assert len(list(fds.iterdir())) <= open_fds
    finally:
        assert server.stop() == 0, server.log
