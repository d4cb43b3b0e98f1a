"""The short torture run: fixed seeds and small step budgets of the randomized engine, a short
load phase, and hypothesis fuzzing of the config parser and the HTTP request surface.

The long run is ``scripts/torture --minutes 30`` (see RELIABILITY.md)."""

from __future__ import annotations

import logging
import socket
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine import Engine, fuse_available
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from load import run_load

from blockframe.config import load_config
from blockframe.errors import ConfigError, IntegrityError

from conftest import data


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logger = logging.getLogger("blockframe")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


# -- the engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_torture_seed(seed: int, tmp_path: Path) -> None:
    lines: list[str] = []
    e = Engine(seed, tmp_path / "t", log=lines.append, mount_every=20, serve_every=20)
    stats = e.run(steps=60)
    assert stats.wrong_bytes == 0 and stats.recoverable_lost == 0
    assert stats.steps == 60 and stats.bytes_verified > 0
    assert stats.folders > 0 and stats.packed_bytes_verified > 0
    assert all(line.startswith(f"seed={seed} step=") for line in lines)


@pytest.mark.parametrize("seed", [5, 6])
def test_torture_seed_on_three_volumes(seed: int, tmp_path: Path) -> None:
    """The same oracle over a volume archive, with whole volumes lost and replaced."""
    e = Engine(seed, tmp_path / "t", mount_every=20, serve_every=20, volumes=3)
    stats = e.run(steps=60)
    assert stats.wrong_bytes == 0 and stats.recoverable_lost == 0
    assert stats.steps == 60 and stats.bytes_verified > 0


def test_a_seed_fixes_the_run(tmp_path: Path) -> None:
    """Kill points, like everything else, are drawn from the seed: two runs of one seed take
    the same steps and see the same states. (Without the mount and the server, whose
    background repairs race their SIGTERM, and with ``exact``: no packs, whose names are
    random, and no kill at health:repaired, where parallel repairs race the kill.)"""
    runs = []
    for i in range(2):
        lines: list[str] = []
        e = Engine(
            7, tmp_path / f"t{i}", log=lines.append, mount_every=0, serve_every=0, exact=True
        )
        stats = e.run(steps=30)
        assert stats.kill_points
        runs.append(lines)
    assert runs[0] == runs[1]


def test_files_of_a_pack_damaged_beyond_parity(tmp_path: Path) -> None:
    """Three of a pack's four data shards lost (two parity shards): the files wholly in the
    surviving shard, the empty one included, read back exactly through Archive.open,
    restore and serve; the others may be refused, and only where the oracle's lost ranges
    lie under their bytes."""
    from engine import PARITY, TortureFailure

    e = Engine(8, tmp_path / "t")
    top = tmp_path / "t" / "src" / "p0"
    sizes = {"a.bin": 3000, "b.bin": 0, "c/d.bin": 2500, "e.bin": 7000, "f.bin": 9000, "g.bin": 1}
    sources = {}
    for i, (rel, size) in enumerate(sizes.items()):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data(size, seed=i))
        sources[f"p0/{rel}"] = data(size, seed=i)
    r = e.cli("commit", "-f", str(top))
    assert r.returncode == 0, r.stderr
    e.adopt_folder(top, sources, set(sources))
    (pack,) = e.objects.values()
    assert pack.name.startswith(".pack/") and len(pack.geometry) == 1
    assert pack.ndata[0] == 4
    first = pack.geometry[0][0][1]
    for rel, _ in pack.geometry[0][1 : PARITY + 2]:
        (e.odir(pack) / rel).unlink()
    pack.state = e.read_state(pack)
    assert e.lost(pack)
    files = e.all_files()
    assert {f.name for f in files} == set(sources) and all(f.packed for f in files)
    intact = {f.name for f in files if f.offset + f.size <= first}
    assert intact >= {"p0/a.bin", "p0/b.bin"} and len(intact) < len(files)
    proc, url, logp = e.start_server()
    try:
        with httpx.Client(base_url=url, timeout=20) as c:
            for f in files:
                try:
                    got = e.archive.open(f.name).read(0, f.size + 1)
                    e.expect_bytes(f, 0, got, "read")
                    assert len(got) == f.size
                except IntegrityError as err:
                    assert f.name not in intact, err
                    e.refused(f, "read", err, (0, f.size))
                r = e.cli("restore", f.name, "-o", "-")
                if r.returncode == 0:
                    e.expect_bytes_raw(f.name, f.content, r.stdout, f.packed)
                else:
                    assert f.name not in intact, r.stderr
                    e.refused(f, "restore", r.stderr, (len(r.stdout), f.size))
                e.http_read(c, f, 0, max(1, f.size))
    finally:
        e.stop_server(proc, logp)
    assert e.stats.packed_refused > 0 and e.stats.wrong_bytes == 0
    # The refusal of a file none of whose bytes lie under a lost range is flagged: a pack
    # with its stripe's chunk 0 lost and nothing else, judged for its last file.
    pack.state = dict(pack.orig)
    for rel, _size in pack.geometry[0][: PARITY + 1]:
        orig = pack.orig[rel]
        pack.state[rel] = bytes([orig[0] ^ 1]) + orig[1:]
    (last,) = [f for f in files if f.name == "p0/g.bin"]
    assert last.offset > first
    with pytest.raises(TortureFailure, match="which parity could rebuild"):
        e.refused(last, "test", None, (0, 1))


def test_failures_name_seed_and_step(tmp_path: Path) -> None:
    e = Engine(77, tmp_path / "t")
    e.step = 12
    with pytest.raises(AssertionError, match=r"^seed=77 step=12 .*scripts/torture --seed 77"):
        e.check(False, "boom")


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")
def test_load_short(tmp_path: Path) -> None:
    out = run_load(tmp_path / "load", 6, seed=5, threads=3, procs=2, http_clients=3)
    assert out["errors"] == []
    assert out["bytes_verified"] > 10 * 2**20
    assert out["health_runs"] >= 1
    assert 0 < out["peak_rss_mount"] < 300 * 2**20
    assert 0 < out["peak_rss_server"] < 300 * 2**20


# -- fuzzing: the config parser -----------------------------------------------------------------

KEYS = {
    "archive": ["directory"],
    "mount": ["default_mountpoint", "default_remote"],
    "cache": ["max_segments", "max_size"],
    "server": [
        "default_port",
        "host",
        "token",
        "cors_origins",
        "header_timeout",
        "send_timeout",
        "max_connections",
    ],
    "logging": ["level"],
    "storage": [
        "segment_size",
        "tier1_max",
        "tier2_max",
        "block_segments",
        "parity_shards",
        "chunk_size",
    ],
}

toml_strings = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\'), max_size=20
)
toml_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(
        lambda i: str(i) if abs(i) < 2**63 else "1"
    ),
    st.sampled_from(["1.5", "nan", "inf", "-inf", "-0.0", "1e300", "0.1"]),
    st.booleans().map(lambda b: "true" if b else "false"),
    toml_strings.map(lambda s: f'"{s}"'),
    st.sampled_from(
        ['"32MiB"', '"1.5KiB"', '"10 GB"', '"-1KB"', '"0"', '"64"', '"1e3"', '"ten"', '""']
    ),
    st.lists(toml_strings.map(lambda s: f'"{s}"'), max_size=3).map(
        lambda xs: "[" + ", ".join(xs) + "]"
    ),
    st.just("{ a = 1 }"),
    st.just("1979-05-27T07:32:00Z"),
)


@st.composite
def config_texts(draw: Any) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from([*KEYS, "extra"]), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        keys = KEYS.get(section, ["whatever"])
        for key in draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True)):
            lines.append(f"{key} = {draw(toml_values)}")
    if draw(st.booleans()):  # sometimes raw junk, anywhere
        junk = draw(st.text(max_size=40))
        lines.insert(draw(st.integers(0, len(lines))), junk)
    return "\n".join(lines) + "\n"


def _load(path: Path) -> None:
    try:
        load_config(path)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg.strip() or "malformed TOML" in msg, msg
        assert str(path) in msg, msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=config_texts())
def test_fuzz_config_values(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load(path)


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_fuzz_config_raw_bytes(raw: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_bytes(raw)
    _load(path)


# -- fuzzing: the HTTP request surface ---------------------------------------------------------


@pytest.fixture(scope="module")
def http_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, str]]:
    e = Engine(11, tmp_path_factory.mktemp("http"))
    for _ in range(5):
        e.act_commit()
    damaged = e.objects[sorted(e.objects)[0]]
    e.act_damage(beyond=True, o=damaged)
    proc, url, logp = e.start_server()
    yield e, url
    e.stop_server(proc, logp)


names = st.one_of(
    st.text(alphabet=string.printable, max_size=30),
    st.sampled_from(["", ".", "..", "%2e%2e", "a/../b", "%00", "%2F", "//", "\\", "x" * 300]),
)


@st.composite
def requests(draw: Any, known: list[str]) -> tuple[str, str, dict[str, str]]:
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]))
    name = draw(st.one_of(st.sampled_from(known), names))
    suffix = draw(
        st.sampled_from(["", "", "/manifest", "/shards/0/0", "/shards/9/1", "/shards/x/-1"])
    )
    prefix = draw(
        st.sampled_from(["/api/files/", "/api/files/", "/api/", "/", "/metrics", "/docs"])
    )
    headers = {}
    if draw(st.booleans()):
        a = draw(st.integers(-5, 10**6))
        b = draw(st.integers(-5, 10**6))
        headers["Range"] = draw(
            st.sampled_from(
                [
                    f"bytes={a}-{b}",
                    f"bytes={a}-",
                    f"bytes=-{abs(b)}",
                    f"bytes={a}-{b},0-1",
                    f"items={a}-{b}",
                    "bytes=",
                    "bytes=--",
                    f"bytes={a}",
                    "bytes=99999999999999999999999-",
                ]
            )
        )
    if draw(st.booleans()):
        headers["If-Range"] = draw(
            st.sampled_from(['"x"', "garbage", "Wed, 21 Oct 2015 07:28:00 GMT"])
        )
    target = prefix + (name + suffix if prefix == "/api/files/" else "")
    return method, target, headers


def raw_request(port: int, method: str, target: str, headers: dict[str, str]) -> int:
    """Send the request line as given (quoted only where HTTP forbids the byte) and read the
    whole answer with a timeout: a hang fails the test."""
    safe = "".join(c if 33 <= ord(c) < 127 else f"%{ord(c):02X}" for c in target)
    head = f"{method} {safe} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall((head + "\r\n").encode("latin-1"))
        reply = b""
        deadline = time.monotonic() + 15
        while chunk := s.recv(65536):
            reply += chunk
            assert time.monotonic() < deadline, "answer took too long"
    return int(reply.split(b" ", 2)[1])


def test_fuzz_http_requests(http_engine: tuple[Engine, str]) -> None:
    e, url = http_engine
    port = int(url.rsplit(":", 1)[1])
    known = sorted(e.objects)
    lost = {o.name for o in e.objects.values() if e.lost(o)}
    assert lost

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(req=requests(known))
    def check(req: tuple[str, str, dict[str, str]]) -> None:
        method, target, headers = req
        status = raw_request(port, method, target, headers)
        if status >= 500:
            # Only an object damaged beyond parity may answer 5xx.
            assert any(target.startswith(f"/api/files/{n}") for n in lost), (status, req)
        assert status in {200, 206, 400, 404, 405, 416, 500} or status < 500, (status, req)

    check()
    with httpx.Client(base_url=url, timeout=10) as c:  # still serving, and correct
        for o in e.objects.values():
            if o.name not in lost:
                assert c.get("/api/files/" + o.name).content == o.content


def test_the_oracle_refuses_a_refusal_of_intact_bytes(tmp_path: Path) -> None:
    """A reader may refuse only ranges that overlap a lost chunk: the oracle flags a
    refusal of intact bytes of an object that has lost data elsewhere."""
    from engine import CHUNK, PARITY, TortureFailure

    e = Engine(3, tmp_path / "t")
    while not any(len(o.content) > 4 * CHUNK for o in e.objects.values()):
        e.act_commit()
    o = next(o for o in e.objects.values() if len(o.content) > 4 * CHUNK)
    # PARITY + 1 shards of stripe 0 differ from their snapshot in chunk 0 only.
    for rel, _size in o.geometry[0][: PARITY + 1]:
        orig = o.orig[rel]
        o.state[rel] = bytes([orig[0] ^ 1]) + orig[1:]
    lost = e.lost_ranges(o)
    assert lost and lost[0][0] == 0
    f = e.file_of(o)
    e.refused(f, "test", None, (0, 10))  # overlaps the lost chunk: allowed
    with pytest.raises(TortureFailure, match="which parity could rebuild"):
        e.refused(f, "test", None, (len(o.content) - 10, len(o.content)))
