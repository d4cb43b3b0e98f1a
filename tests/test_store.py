"""Volume storage backends: one contract, run over a local directory, an S3 bucket and a
prefix in an S3 bucket (a real SeaweedFS on loopback); plus path and URL validation, a
missing bucket, and an S3 endpoint that is down or hangs."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.exceptions
import pytest
import seaweed
from seaweed import SeaweedFS

from blockframe.storage import LocalVolume, Volume, open_volume
from blockframe.storage import s3 as store
from blockframe.storage.s3 import S3Volume

MiB = 2**20
# AWS's smallest part; SeaweedFS takes smaller ones, but the test should hold on AWS too.
PART = 5 * MiB
# Outside the prefix of the "s3-prefix" volume (s3://bucket/a/b): must never be listed,
# read or removed through it. Names share the prefix's first characters on purpose.
DECOYS = {"a/b-sibling/obj_1/manifest.json": b"decoy 1", "a/bx": b"decoy 2", "top": b"decoy 3"}

# The session-wide SeaweedFS server fixture (tests/ is on sys.path: no conftest needed).
seaweedfs = seaweed.seaweedfs


def blob(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture(params=["local", "s3", "s3-prefix"])
def vol(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Volume]:
    """An empty, present volume of each kind."""
    if request.param == "local":
        (tmp_path / "vol").mkdir()
        yield LocalVolume(tmp_path / "vol")
        return
    # Only S3 tests start the server.
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    url = server.new_bucket()
    options = {"multipart_threshold": PART, "multipart_chunksize": PART}
    if request.param == "s3":
        yield server.volume(url, **options)
        return
    root = server.volume(url)
    for rel, content in DECOYS.items():
        root.write(rel, content)
    yield server.volume(f"{url}/a/b", **options)
    assert {rel: root.read(rel) for rel in DECOYS} == DECOYS, "a prefix volume leaked"


@pytest.fixture(params=["local", "s3", "s3-prefix"])
def offline(request: pytest.FixtureRequest, tmp_path: Path) -> Volume:
    """A volume of each kind, for checks made before any I/O (the S3 endpoint is closed)."""
    if request.param == "local":
        return LocalVolume(tmp_path)
    url = "s3://bucket" if request.param == "s3" else "s3://bucket/a/b"
    return S3Volume(url, endpoint="http://127.0.0.1:9", access_key="k", secret_key="s")


def populate(v: Volume) -> dict[str, bytes]:
    """An object directory laid out like an archive's, plus housekeeping entries."""
    files = {
        "obj_1/manifest.json": b'{"m": 1}',
        "obj_1/manifest.replica.json": b'{"m": 1}',
        "obj_1/blocks/block_0/segments/segment_0.dat": blob(100, 1),
        "obj_1/blocks/block_0/segments/segment_3.dat": blob(37, 2),
        "obj_1/blocks/block_0/parity/parity_0.dat": blob(100, 3),
        "obj_10/data.dat": b"x",  # "obj_1" is a prefix of its name: must stay separate
        ".blockframe/volume.json": b"{}",
        ".staging/tmp_1/data.dat": b"staged",
        "empty": b"",
    }
    for rel, content in files.items():
        v.write(rel, content)
    return files


# -- the contract --------------------------------------------------------------------------


def test_write_read_overwrite(vol: Volume) -> None:
    assert vol.present() and vol.why_absent() is None
    assert vol.read("obj_1/manifest.json") is None
    vol.write("obj_1/manifest.json", b"first version, long")
    assert vol.read("obj_1/manifest.json") == b"first version, long"
    vol.write("obj_1/manifest.json", b"second")
    assert vol.read("obj_1/manifest.json") == b"second"
    vol.write("obj_1/empty", b"")
    assert vol.read("obj_1/empty") == b""
    # No temporary files are left behind by the atomic writes.
    assert vol.listdir("obj_1") == ["empty", "manifest.json"]


def test_names_with_spaces_percent_and_unicode(vol: Volume) -> None:
    # Object directories are "<name>_<id>" with "/" and "%" percent-encoded.
    rel = "dir%2Fsüb file+1 %25_0123abcd/manifest.json"
    vol.write(rel, b"ok")
    assert vol.read(rel) == b"ok"
    assert vol.listdir() == ["dir%2Fsüb file+1 %25_0123abcd"]
    assert vol.files("dir%2Fsüb file+1 %25_0123abcd") == [("manifest.json", 2)]


def test_get_range(vol: Volume) -> None:
    vol.write("f.dat", b"0123456789")
    vol.write("empty", b"")
    assert vol.get_range("f.dat", 0, 4) == b"0123"
    assert vol.get_range("f.dat", 3, 1) == b"3"
    assert vol.get_range("f.dat", 5, 20) == b"56789"  # shorter at the end
    assert vol.get_range("f.dat", 9, 1) == b"9"
    assert vol.get_range("f.dat", 10, 5) == b""  # at the end
    assert vol.get_range("f.dat", 11, 5) == b""  # after it
    assert vol.get_range("f.dat", 1000, 1) == b""
    assert vol.get_range("f.dat", 4, 0) == b""
    assert vol.get_range("empty", 0, 10) == b""
    assert vol.get_range("empty", 0, 0) == b""
    assert vol.get_range("missing", 0, 10) is None
    assert vol.get_range("missing", 0, 0) is None
    assert vol.get_range("dir/missing", 5, 1) is None
    with pytest.raises(ValueError):
        vol.get_range("f.dat", -1, 2)
    with pytest.raises(ValueError):
        vol.get_range("f.dat", 0, -2)


def test_size(vol: Volume) -> None:
    files = populate(vol)
    for rel, content in files.items():
        assert vol.size(rel) == len(content)
    assert vol.size("missing") is None
    assert vol.size("obj_1/missing.dat") is None


def test_listdir(vol: Volume) -> None:
    populate(vol)
    assert vol.listdir() == [".blockframe", ".staging", "empty", "obj_1", "obj_10"]
    assert vol.listdir("") == vol.listdir()
    assert vol.listdir("obj_1") == ["blocks", "manifest.json", "manifest.replica.json"]
    assert vol.listdir("obj_1/blocks") == ["block_0"]
    assert vol.listdir("obj_1/blocks/block_0") == ["parity", "segments"]
    assert vol.listdir("obj_1/blocks/block_0/segments") == ["segment_0.dat", "segment_3.dat"]
    assert vol.listdir(".staging") == ["tmp_1"]
    assert vol.listdir("missing") == []
    assert vol.listdir("obj_1/missing/deeper") == []
    assert vol.listdir("obj_1/manifest.json") == []  # a file is not a directory


def test_files(vol: Volume) -> None:
    files = populate(vol)
    assert vol.files("obj_1") == sorted(
        (rel.removeprefix("obj_1/"), len(content))
        for rel, content in files.items()
        if rel.startswith("obj_1/")
    )
    assert vol.files("obj_1/blocks/block_0/segments") == [
        ("segment_0.dat", 100),
        ("segment_3.dat", 37),
    ]
    assert vol.files("") == sorted((rel, len(content)) for rel, content in files.items())
    assert vol.files("missing") == []


def test_remove(vol: Volume) -> None:
    populate(vol)
    vol.remove("obj_1/manifest.json")
    assert vol.read("obj_1/manifest.json") is None
    assert vol.size("obj_1/manifest.json") is None
    assert vol.read("obj_1/manifest.replica.json") == b'{"m": 1}'
    vol.remove("obj_1/manifest.json")  # missing is fine
    vol.remove("never/there")


def test_remove_tree(vol: Volume) -> None:
    populate(vol)
    for i in range(20):
        vol.write(f"obj_1/blocks/block_{i % 3}/segments/segment_{i}.dat", blob(10, i))
    vol.remove_tree("obj_1")
    assert vol.files("obj_1") == []
    assert vol.listdir("obj_1") == []
    assert vol.read("obj_1/manifest.json") is None
    # Gone from the listing at once (SeaweedFS keeps emptied directories for a while).
    assert vol.listdir() == [".blockframe", ".staging", "empty", "obj_10"]
    assert vol.read("obj_10/data.dat") == b"x"
    vol.remove_tree("obj_1")  # missing is fine
    vol.remove_tree(".staging/tmp_1")
    assert vol.listdir(".staging") == []
    with pytest.raises(ValueError):
        vol.remove_tree("")


def test_upload_large_file_in_parts(vol: Volume, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    content = blob(20 * MiB + 12345)
    src.write_bytes(content)
    vol.upload("obj_1/blocks/block_0/segments/segment_0.dat", src)
    assert vol.size("obj_1/blocks/block_0/segments/segment_0.dat") == len(content)
    assert vol.read("obj_1/blocks/block_0/segments/segment_0.dat") == content
    # A range across a part boundary.
    assert (
        vol.get_range("obj_1/blocks/block_0/segments/segment_0.dat", PART - 10, 20)
        == (content[PART - 10 : PART + 10])
    )
    if isinstance(vol, S3Volume):
        # A multipart object's ETag is "<md5 of part md5s>-<parts>".
        head = vol._client.head_object(
            Bucket=vol.bucket, Key=vol._key("obj_1/blocks/block_0/segments/segment_0.dat")
        )
        assert head["ETag"].strip('"').endswith("-5")
    # Overwriting by upload, with a small file (a single request on S3).
    small = tmp_path / "small.bin"
    small.write_bytes(b"small")
    vol.upload("obj_1/blocks/block_0/segments/segment_0.dat", small)
    assert vol.read("obj_1/blocks/block_0/segments/segment_0.dat") == b"small"
    assert vol.listdir("obj_1/blocks/block_0/segments") == ["segment_0.dat"]
    with pytest.raises(OSError):
        vol.upload("obj_1/x.dat", tmp_path / "missing.bin")
    assert vol.read("obj_1/x.dat") is None


def test_concurrent_writes_and_reads(vol: Volume) -> None:
    def work(i: int) -> bytes | None:
        vol.write(f"obj_{i % 4}/segments/segment_{i}.dat", blob(1000, i))
        return vol.get_range(f"obj_{i % 4}/segments/segment_{i}.dat", 10, 10)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(48)))
    assert results == [blob(1000, i)[10:20] for i in range(48)]
    assert len(vol.files("")) == 48


@pytest.mark.parametrize("rel", ["../x", "/x", "a/../b", "a/..", "..", "a//b", "./a", "a/./b"])
def test_rejected_paths(offline: Volume, rel: str, tmp_path: Path) -> None:
    vol = offline
    calls: list[Callable[[], object]] = [
        lambda: vol.listdir(rel),
        lambda: vol.read(rel),
        lambda: vol.write(rel, b"x"),
        lambda: vol.get_range(rel, 0, 1),
        lambda: vol.size(rel),
        lambda: vol.files(rel),
        lambda: vol.remove(rel),
        lambda: vol.remove_tree(rel),
        lambda: vol.upload(rel, tmp_path / "any"),
        lambda: vol.local_path(rel),
        lambda: vol.where(rel),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    if isinstance(vol, LocalVolume):
        assert not (tmp_path / "x").exists() and not (Path("/x")).exists()


def test_files_need_a_path(offline: Volume, tmp_path: Path) -> None:
    vol = offline
    for call in (
        lambda: vol.read(""),
        lambda: vol.write("", b""),
        lambda: vol.size(""),
        lambda: vol.remove(""),
        lambda: vol.upload("", tmp_path / "any"),
    ):
        with pytest.raises(ValueError):
            call()


def test_local_path_and_where(offline: Volume) -> None:
    vol = offline
    if isinstance(vol, LocalVolume):
        assert vol.is_local
        assert vol.local_path() == vol.root and vol.root.is_absolute()
        assert vol.local_path("obj_1/data.dat") == vol.root / "obj_1" / "data.dat"
        assert vol.where("obj_1") == str(vol.root / "obj_1")
    else:
        assert isinstance(vol, S3Volume)
        assert not vol.is_local
        assert vol.local_path() is None and vol.local_path("obj_1/data.dat") is None
        assert vol.where() == vol.location
        assert vol.where("obj_1/data.dat") == f"{vol.location}/obj_1/data.dat"


# -- local specifics -------------------------------------------------------------------------


def test_local_missing_root(tmp_path: Path) -> None:
    missing = LocalVolume(tmp_path / "missing")
    assert not missing.present()
    assert "no such directory" in (missing.why_absent() or "")
    assert missing.read("x") is None
    assert missing.listdir() == [] and missing.files("") == []
    assert missing.size("x") is None and missing.get_range("x", 0, 1) is None
    missing.remove("x")
    missing.remove_tree("x")
    (tmp_path / "file").write_bytes(b"")
    assert not LocalVolume(tmp_path / "file").present()


def test_local_write_replaces_atomically(tmp_path: Path) -> None:
    v = LocalVolume(tmp_path)
    v.write("a/b/c.dat", b"one")
    inode = (tmp_path / "a/b/c.dat").stat().st_ino
    v.write("a/b/c.dat", b"two")
    assert (tmp_path / "a/b/c.dat").read_bytes() == b"two"
    assert (tmp_path / "a/b/c.dat").stat().st_ino != inode  # a new file renamed over it
    # Writing below a file fails, and leaves no temporary file behind.
    with pytest.raises(OSError):
        v.write("a/b/c.dat/d", b"x")
    assert sorted(os.listdir(tmp_path / "a/b")) == ["c.dat"]


def test_local_unreadable_file_raises(tmp_path: Path) -> None:
    v = LocalVolume(tmp_path)
    v.write("d/f", b"x")
    with pytest.raises(OSError):
        v.read("d")  # a directory
    if os.name != "nt" and os.geteuid() != 0:
        (tmp_path / "d/f").chmod(0)
        with pytest.raises(PermissionError):
            v.read("d/f")


# -- S3 specifics ------------------------------------------------------------------------------


def test_listing_paginates(seaweedfs: SeaweedFS) -> None:
    v = seaweedfs.volume(seaweedfs.new_bucket() + "/p")
    v.page_size = 3
    for i in range(10):
        v.write(f"obj_{i:02}/manifest.json", b"m")
        v.write(f"top_{i:02}", b"t")
    for i in range(7):
        v.write(f"obj_00/blocks/block_{i}/parity/parity_0.dat", b"p")
    assert v.listdir() == sorted(
        [f"obj_{i:02}" for i in range(10)] + [f"top_{i:02}" for i in range(10)]
    )
    assert v.listdir("obj_00/blocks") == [f"block_{i}" for i in range(7)]
    assert len(v.files("")) == 27
    assert len(v.files("obj_00")) == 8
    v.remove_tree("obj_00")
    assert v.listdir() == sorted(
        [f"obj_{i:02}" for i in range(1, 10)] + [f"top_{i:02}" for i in range(10)]
    )
    assert len(v.files("")) == 19


def test_missing_bucket(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    url = f"s3://bf-missing-{uuid.uuid4().hex[:12]}"
    v = seaweedfs.volume(url + "/pre")
    assert not v.present()
    assert "does not exist" in (v.why_absent() or "")
    # Like a local volume whose root is missing: nothing is there.
    assert v.read("x") is None and v.size("x") is None and v.get_range("x", 0, 1) is None
    assert v.listdir() == [] and v.files("") == []
    v.remove("x")
    v.remove_tree("x")
    with pytest.raises(FileNotFoundError, match=f"{url}/pre/x: cannot write: bucket .* does not"):
        v.write("x", b"data")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    with pytest.raises(FileNotFoundError, match=f"{url}/pre/y: cannot upload"):
        v.upload("y", src)
    v.create_bucket()
    v.create_bucket()  # idempotent
    assert v.present()
    v.write("x", b"data")
    assert seaweedfs.volume(url).read("pre/x") == b"data"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def all_calls(v: S3Volume, src: Path) -> dict[str, Callable[[], object]]:
    return {
        "list": lambda: v.listdir("obj_1"),
        "read": lambda: v.read("obj_1/manifest.json"),
        "write": lambda: v.write("obj_1/manifest.json", b"x"),
        "read ": lambda: v.get_range("obj_1/data.dat", 0, 10),
        "stat": lambda: v.size("obj_1/data.dat"),
        "list ": lambda: v.files("obj_1"),
        "remove": lambda: v.remove("obj_1/data.dat"),
        "remove ": lambda: v.remove_tree("obj_1"),
        "upload": lambda: v.upload("obj_1/data.dat", src),
        "create bucket": v.create_bucket,
    }


def check_fails_fast(
    v: S3Volume, src: Path, kind: type[OSError], budget: float, only: set[str] | None = None
) -> None:
    for action, call in all_calls(v, src).items():
        if only is not None and action not in only:
            continue
        t = time.monotonic()
        with pytest.raises(kind) as info:
            call()
        assert time.monotonic() - t < budget, action
        message = str(info.value)
        # One line, naming the URL and what failed; no botocore chain attached.
        assert "\n" not in message
        assert message.startswith("s3://bf-down/pre"), message
        assert f"cannot {action.strip()}:" in message, message
        assert info.value.__suppress_context__ and info.value.__cause__ is None
        assert not isinstance(info.value, botocore.exceptions.BotoCoreError)


def test_endpoint_down(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"data")
    endpoint = f"http://127.0.0.1:{closed_port()}"

    def down(max_attempts: int = 3) -> S3Volume:
        return S3Volume(
            "s3://bf-down/pre",
            endpoint,
            access_key="k",
            secret_key="s",
            timeout=1.0,
            max_attempts=max_attempts,
        )

    # With the default three attempts (backoff between them), still quick.
    v = down()
    t = time.monotonic()
    with pytest.raises(
        ConnectionError, match=rf"^s3://bf-down/pre/x: cannot read: cannot reach {endpoint}$"
    ):
        v.read("x")
    assert time.monotonic() - t < 8
    assert not v.present()
    assert (v.why_absent() or "").startswith("s3://bf-down/pre: cannot access bucket: cannot reach")
    # Every operation, tried once.
    check_fails_fast(down(max_attempts=1), src, ConnectionError, 3)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()
    for conn in held:
        conn.close()


def test_endpoint_hangs(silent_server: str, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"data")
    v = S3Volume(
        "s3://bf-down/pre",
        endpoint=silent_server,
        access_key="k",
        secret_key="s",
        timeout=0.2,
        max_attempts=1,
    )
    # Reads and writes (PUTs wait a second for "100 Continue" first, then time out).
    check_fails_fast(v, src, TimeoutError, 3, only={"read", "write", "list"})
    assert "timed out" in (v.why_absent() or "")


def test_client_errors_become_oserrors() -> None:
    v = S3Volume("s3://bucket/p", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s")

    def client_error(code: str, status: int) -> Exception:
        response = {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        error: Exception = botocore.exceptions.ClientError(response, "GetObject")
        return error

    cases = [
        ("AccessDenied", 403, PermissionError),
        ("InvalidAccessKeyId", 403, PermissionError),
        ("NoSuchBucket", 404, FileNotFoundError),
        ("SlowDown", 503, OSError),
        ("InternalError", 500, OSError),
    ]
    for code, status, kind in cases:
        err = v._error(client_error(code, status), "read", "x/y")
        assert type(err) is kind, code
        assert str(err).startswith("s3://bucket/p/x/y: cannot read: "), str(err)
    assert str(v._error(client_error("SlowDown", 503), "read", "x")) == (
        "s3://bucket/p/x: cannot read: SlowDown happened (SlowDown, HTTP 503)"
    )
    no_creds = v._error(botocore.exceptions.NoCredentialsError(), "write", "x")
    assert isinstance(no_creds, PermissionError) and "credentials" in str(no_creds)


# -- URLs and the factory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://ab",
        "s3://" + "a" * 64,
        "s3://-bucket",
        "s3://bucket-",
        "s3://bu cket",
        "s3://bucket?x=1",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/./a",
        "http://bucket",
    ],
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(ValueError):
        S3Volume(url, endpoint="http://127.0.0.1:9", access_key="k", secret_key="s")


def test_s3_url_forms() -> None:
    def parts(url: str) -> tuple[str, str]:
        v = S3Volume(url, endpoint="http://127.0.0.1:9", access_key="k", secret_key="s")
        assert v.location == url
        return v.bucket, v.prefix

    assert parts("s3://bucket") == ("bucket", "")
    assert parts("s3://bucket/") == ("bucket", "")
    assert parts("s3://my.bucket-1/a/b") == ("my.bucket-1", "a/b")
    assert parts("s3://bkt/a/b/") == ("bkt", "a/b")
    assert parts("s3://" + "a" * 63) == ("a" * 63, "")
    with pytest.raises(ValueError, match="both"):
        S3Volume("s3://bucket", access_key="k")


def test_region_and_endpoint_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    # A fresh boto3 session, so no earlier test's (or ~/.aws's) settings are cached.
    monkeypatch.setattr(store, "_session", None)
    assert S3Volume("s3://bucket").region == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    v = S3Volume("s3://bucket")
    assert v.region == "eu-west-3" and v.endpoint == "http://127.0.0.1:9999"
    v = S3Volume("s3://bucket", endpoint="http://127.0.0.1:1234", region="ap-south-1")
    assert v.region == "ap-south-1" and v.endpoint == "http://127.0.0.1:1234"


def test_open_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = open_volume(
        "s3://bucket/pre", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s"
    )
    assert isinstance(v, S3Volume) and (v.bucket, v.prefix) == ("bucket", "pre")
    assert v.endpoint == "http://127.0.0.1:9"
    monkeypatch.chdir(tmp_path)
    local = open_volume("rel/dir")
    assert isinstance(local, LocalVolume) and local.root == tmp_path / "rel" / "dir"
    assert local.location == str(tmp_path / "rel" / "dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = open_volume("~/bf")
    assert isinstance(home, LocalVolume) and home.root == tmp_path / "home" / "bf"
    for bad in ("gs://bucket", "https://host/x", ""):
        with pytest.raises(ValueError):
            open_volume(bad)
