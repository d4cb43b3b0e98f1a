"""Storage backends of an archive volume: a local directory or an S3 bucket (or prefix).

A volume is a root holding object directories (``<name>_<id>/manifest.json``,
``<name>_<id>/blocks/block_0/segments/segment_3.dat``, ...) and hidden housekeeping entries
(names starting with ``.``). Every path given to a volume is *relative*: posix separators,
no leading ``/``, no ``.``/``..``/empty components; anything else is a ``ValueError``, so a
path can never reach outside the root.

Failures are ``OSError`` (or a subclass: ``ConnectionError``, ``TimeoutError``,
``PermissionError``, ``FileNotFoundError``) with a one-line message naming the file, so
callers handle a local disk and a remote bucket alike. A missing file is not an error:
``read``, ``get_range`` and ``size`` answer ``None``, ``listdir`` and ``files`` ``[]``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

log = logging.getLogger(__name__)

MiB = 2**20
# Uploads of shards: large ones go in parts, several at a time. Parts of 16 MiB stay far from
# S3's 10,000-part limit for any shard size BlockFrame produces (s3transfer enlarges the
# parts itself if a file would need more).
MULTIPART_THRESHOLD = 64 * MiB
MULTIPART_CHUNKSIZE = 16 * MiB
UPLOAD_THREADS = 8
DEFAULT_REGION = "us-east-1"
# S3 bucket names: 3-63 characters. Upper case and "_" are tolerated because buckets created
# before 2018 in us-east-1 may hold them; the server has the last word.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def check_rel(rel: str, *, allow_root: bool = False) -> str:
    """``rel`` if it is a valid volume path, else ``ValueError``.

    ``allow_root``: the empty path (the volume root) is accepted, for directory arguments.
    """
    if not isinstance(rel, str):
        raise ValueError(f"volume path must be a string, not {type(rel).__name__}")
    if rel == "":
        if allow_root:
            return rel
        raise ValueError("empty volume path")
    if rel.startswith("/"):
        raise ValueError(f"volume path must be relative: {rel!r}")
    if "\x00" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"invalid volume path: {rel!r}")
    # On Windows a backslash or a drive letter would be a second way out of the root.
    if os.name == "nt" and ("\\" in rel or ":" in rel):
        raise ValueError(f"invalid volume path: {rel!r}")
    return rel


def _check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"invalid range: start {start}, length {length}")


class Volume(ABC):
    """The root of one archive volume, local or remote. Instances are thread-safe."""

    location: str  # as the user wrote it: "/disk1/bf" or "s3://bucket/prefix"
    is_local: bool

    def present(self) -> bool:
        """Whether the root exists and answers now (local: is a directory; S3: the bucket
        exists and can be reached with these credentials)."""
        return self.why_absent() is None

    @abstractmethod
    def why_absent(self) -> str | None:
        """``None`` if the volume is present, else a one-line reason (for messages)."""

    @abstractmethod
    def where(self, rel: str = "") -> str:
        """How to name ``rel`` to a user: a local path or an ``s3://`` URL."""

    @abstractmethod
    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names directly under directory ``rel`` (files and directories);
        ``[]`` if it does not exist."""

    @abstractmethod
    def read(self, rel: str) -> bytes | None:
        """The whole file; ``None`` if it does not exist."""

    @abstractmethod
    def write(self, rel: str, data: bytes) -> None:
        """Store ``data`` at ``rel``, atomically (readers see the old or the new content,
        never a part) and durably, creating parent directories as needed."""

    @abstractmethod
    def get_range(self, rel: str, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` of the file: shorter at the end of the file,
        ``b""`` at or after its end, ``None`` if the file does not exist."""

    @abstractmethod
    def size(self, rel: str) -> int | None:
        """The size of the file in bytes; ``None`` if it does not exist."""

    @abstractmethod
    def files(self, rel: str) -> list[tuple[str, int]]:
        """Every file under directory ``rel``, recursively, as (path relative to ``rel``,
        size), sorted by path; ``[]`` if the directory does not exist."""

    @abstractmethod
    def newest(self, rel: str) -> float | None:
        """The latest modification time (seconds since the epoch) of anything under
        directory ``rel``; ``None`` if it does not exist. Tells whether an operation may
        still be writing there."""

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Delete one file; a missing file is fine."""

    @abstractmethod
    def remove_tree(self, rel: str) -> None:
        """Delete directory ``rel`` and everything under it; a missing one is fine.
        The volume root itself cannot be removed this way (``ValueError``)."""

    @abstractmethod
    def upload(self, rel: str, local_file: Path) -> None:
        """Store the content of ``local_file`` at ``rel``, atomically and durably."""

    @abstractmethod
    def local_path(self, rel: str = "") -> Path | None:
        """The absolute local path of ``rel`` for a local volume, ``None`` for a remote one."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"


# --- local directories ---------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    # Windows cannot open a directory for fsync (and NTFS journals the rename itself).
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalVolume(Volume):
    """A volume that is a directory of a local filesystem."""

    is_local = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path).absolute()
        self.location = str(self.root)

    def _path(self, rel: str, *, allow_root: bool = False) -> Path:
        check_rel(rel, allow_root=allow_root)
        return self.root / rel if rel else self.root

    def why_absent(self) -> str | None:
        """``None`` if the root is a directory, else why not."""
        try:
            if self.root.is_dir():
                return None
            if self.root.exists():
                return f"{self.root}: not a directory"
        except OSError as e:
            return f"{self.root}: {e.strerror}"
        return f"{self.root}: no such directory"

    def where(self, rel: str = "") -> str:
        """The local path of ``rel``."""
        return str(self._path(rel, allow_root=True))

    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names directly under ``rel``; ``[]`` if it is missing or not a directory."""
        try:
            return sorted(os.listdir(self._path(rel, allow_root=True)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, rel: str) -> bytes | None:
        """The whole file; ``None`` if missing."""
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None

    def _makedirs(self, directory: Path) -> None:
        # Created directories are fsynced into their parents: a file made durable inside a
        # directory whose own entry is not would still vanish in a crash.
        missing: list[Path] = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
            _fsync_dir(d.parent)

    def _atomic(self, rel: str, fill: Callable[[Path], None]) -> None:
        path = self._path(rel)
        self._makedirs(path.parent)
        # The temporary name is hidden (housekeeping) and unique, so concurrent writers of
        # the same file cannot clobber each other's half-written copy.
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            fill(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def write(self, rel: str, data: bytes) -> None:
        """Temporary file in the same directory, fsync, rename, fsync the directory."""

        def fill(tmp: Path) -> None:
            with open(tmp, "xb") as f:
                f.write(data)

        self._atomic(rel, fill)

    def get_range(self, rel: str, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)``; ``b""`` past the end; ``None`` if missing."""
        _check_range(start, length)
        try:
            f = open(self._path(rel), "rb")  # noqa: SIM115 - closed below, after the reads
        except FileNotFoundError:
            return None
        with f:
            f.seek(start)
            parts = []
            left = length
            # A regular file returns everything asked for but at its end; loop anyway so a
            # short read (network filesystems) is not mistaken for the end of the file.
            while left > 0:
                part = f.read(left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            return b"".join(parts)

    def size(self, rel: str) -> int | None:
        """The file's size; ``None`` if missing."""
        try:
            return self._path(rel).stat().st_size
        except FileNotFoundError:
            return None

    def files(self, rel: str) -> list[tuple[str, int]]:
        """Every file under ``rel`` with its size, sorted; ``[]`` if ``rel`` is missing."""
        top = self._path(rel, allow_root=True)
        if not top.is_dir():
            return []

        def fail(e: OSError) -> None:
            # A directory removed while we walk is simply not there; anything else is real.
            if not isinstance(e, FileNotFoundError):
                raise e

        out: list[tuple[str, int]] = []
        for dirpath, _dirs, names in os.walk(top, onerror=fail):
            base = Path(dirpath)
            for name in names:
                p = base / name
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((p.relative_to(top).as_posix(), st.st_size))
        return sorted(out)

    def newest(self, rel: str) -> float | None:
        """Newest mtime of ``rel`` and everything under it (it included)."""
        top = self._path(rel, allow_root=True)
        try:
            newest = top.stat().st_mtime
        except FileNotFoundError:
            return None
        for dirpath, dirs, names in os.walk(top):
            for name in dirs + names:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    continue
        return newest

    def remove(self, rel: str) -> None:
        """Unlink the file (missing is fine)."""
        path = self._path(rel)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def remove_tree(self, rel: str) -> None:
        """Delete the directory and everything in it (missing, or not a directory, is
        fine: the same as a prefix without keys on S3)."""
        path = self._path(rel)
        if path.is_symlink() or not path.is_dir():
            return
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def upload(self, rel: str, local_file: Path) -> None:
        """Copy ``local_file`` to a temporary file, fsync, rename, fsync the directory."""

        def fill(tmp: Path) -> None:
            # copyfile uses the kernel's copy (sendfile / copy_file_range) where it can.
            shutil.copyfile(local_file, tmp)

        self._atomic(rel, fill)

    def local_path(self, rel: str = "") -> Path:
        """The absolute path of ``rel``."""
        return self._path(rel, allow_root=True)


# --- S3 --------------------------------------------------------------------------------------


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _s3_client(
    endpoint: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    config: Config,
) -> tuple[Any, str]:
    """A new S3 client and its region (what was given, else boto3's chain, else us-east-1).

    All clients come from one boto3 session: its first client loads the service model
    (~0.1 s), later ones reuse it (~0.01 s), which matters with several volumes. Creating
    clients from a session is not thread-safe, hence the lock; the clients themselves are.
    """
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        region = region or _session.region_name or DEFAULT_REGION
        client = _session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
    return client, region


def _code(e: botocore.exceptions.ClientError) -> tuple[str, int | None, str]:
    """(error code, HTTP status, message) of a ClientError."""
    err: dict[str, Any] = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(err.get("Code", "")), status, str(err.get("Message") or "")


def _missing(e: botocore.exceptions.ClientError) -> bool:
    """The key (or its whole bucket) does not exist. HEAD answers a bare 404 for both."""
    code, status, _ = _code(e)
    return code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404") or status == 404


_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error)


class S3Volume(Volume):
    """A volume that is an S3 bucket, or a prefix (``s3://bucket/some/prefix``) in one.

    Directories are key prefixes, as usual on S3. One boto3 client (thread-safe) serves all
    calls; endpoint, region and credentials left ``None`` come from boto3's usual chain
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``~/.aws``), the region defaulting to us-east-1.

    ``timeout``: connect and read timeout in seconds of each HTTP request (botocore's
    default, 60 s, if ``None``); ``max_attempts``: tries of each request (transient errors,
    throttling and unreachable endpoints are retried with backoff).
    ``multipart_threshold``/``multipart_chunksize``: uploads of files this large or larger
    go in parts of this size, ``upload_threads`` at a time.
    """

    is_local = False
    # Keys per listing request (None: the server's maximum, 1000 on AWS). Tests lower it to
    # exercise pagination without thousands of keys.
    page_size: int | None = None

    def __init__(
        self,
        url: str,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int = 3,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
        upload_threads: int = UPLOAD_THREADS,
    ) -> None:
        self.location = url
        self.bucket, self.prefix = parse_s3_url(url)
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both the S3 access key and the secret key, or neither")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        timeouts: dict[str, float] = (
            {} if timeout is None else {"connect_timeout": timeout, "read_timeout": timeout}
        )
        config = Config(
            max_pool_connections=32,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # Path-style addressing works with every S3 implementation (SeaweedFS, MinIO,
            # Ceph) and with bucket names that contain dots; AWS still accepts it.
            s3={"addressing_style": "path"},
            **timeouts,
        )
        self._client, self.region = _s3_client(endpoint, region, access_key, secret_key, config)
        self.endpoint: str = self._client.meta.endpoint_url
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=upload_threads,
            use_threads=upload_threads > 1,
        )

    # -- names and errors

    def _key(self, rel: str, *, allow_root: bool = False) -> str:
        check_rel(rel, allow_root=allow_root)
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def _dir_prefix(self, rel: str) -> str:
        """The key prefix of everything under directory ``rel`` ("" for a bucket's root)."""
        key = self._key(rel, allow_root=True)
        return f"{key}/" if key else ""

    def where(self, rel: str = "") -> str:
        """The ``s3://`` URL of ``rel``."""
        key = self._key(rel, allow_root=True)
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _fail(self, e: Exception, action: str, rel: str) -> NoReturn:
        """Raise ``e`` (a botocore/boto3 error) as an OSError with a one-line message."""
        # ``from None``: the botocore chain is noise to the user; the message says it all.
        raise self._error(e, action, rel) from None

    def _error(self, e: Exception, action: str, rel: str) -> OSError:
        """The OSError (subclass) to raise for botocore/boto3 error ``e``."""
        url = self.where(rel)
        cls: type[OSError] = OSError
        # upload_file wraps the ClientError it caught; the original has the error code.
        if isinstance(e, boto3.exceptions.S3UploadFailedError) and isinstance(
            e.__context__, botocore.exceptions.ClientError
        ):
            e = e.__context__
        if isinstance(e, botocore.exceptions.ClientError):
            code, status, message = _code(e)
            if code == "NoSuchBucket":
                cls, why = FileNotFoundError, f"bucket {self.bucket} does not exist"
            else:
                if status in (401, 403) or code in (
                    "AccessDenied",
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                    "ExpiredToken",
                ):
                    cls = PermissionError
                elif status == 404:
                    cls = FileNotFoundError
                why = f"{message or code} ({code or 'error'}, HTTP {status})"
        elif isinstance(
            e,
            botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError,
        ):
            cls, why = TimeoutError, f"no answer from {self.endpoint} (timed out)"
        elif isinstance(
            e,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.ConnectionClosedError
            | botocore.exceptions.ResponseStreamingError,
        ):
            cls, why = ConnectionError, f"cannot reach {self.endpoint}"
        elif isinstance(
            e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        ):
            cls, why = (
                PermissionError,
                "no S3 credentials found (configure an access key, or AWS_ACCESS_KEY_ID)",
            )
        else:
            why = str(e)
        text = " ".join(f"{url}: cannot {action}: {why}".split())
        log.debug("%s", text, exc_info=e)
        return cls(text)

    def _pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        if self.page_size is not None:
            kwargs["PaginationConfig"] = {"PageSize": self.page_size}
        yield from paginator.paginate(Bucket=self.bucket, **kwargs)

    # -- the bucket

    def why_absent(self) -> str | None:
        """``None`` if the bucket exists and answers, else why not."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            if _missing(e):
                return f"{self.where()}: bucket {self.bucket} does not exist"
            return str(self._error(e, "access bucket", ""))
        except _BOTO_ERRORS as e:
            return str(self._error(e, "access bucket", ""))
        return None

    def create_bucket(self) -> None:
        """Create the bucket unless it exists (and is ours)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        # AWS wants the region spelled out everywhere but in us-east-1, where it refuses it.
        if self.region != DEFAULT_REGION:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as e:
            code, _, _ = _code(e)
            if code == "BucketAlreadyOwnedByYou":
                return
            # Some servers say "already exists" even to the owner: accept it if we can use it.
            if code == "BucketAlreadyExists" and self.why_absent() is None:
                return
            self._fail(e, "create bucket", "")
        except _BOTO_ERRORS as e:
            self._fail(e, "create bucket", "")

    # -- files

    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names (keys and common prefixes) directly under ``rel``."""
        prefix = self._dir_prefix(rel)
        names: set[str] = set()
        try:
            for page in self._pages(Prefix=prefix, Delimiter="/"):
                for obj in page.get("Contents", ()):
                    # A "directory marker" (key ending in "/") is the directory itself.
                    name = obj["Key"][len(prefix) :]
                    if name and "/" not in name:
                        names.add(name)
                for cp in page.get("CommonPrefixes", ()):
                    name = cp["Prefix"][len(prefix) :].rstrip("/")
                    if name:
                        names.add(name)
        except botocore.exceptions.ClientError as e:
            # No bucket: like a local volume whose root is missing, nothing is there.
            if _code(e)[0] == "NoSuchBucket":
                return []
            self._fail(e, "list", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "list", rel)
        return sorted(names)

    def read(self, rel: str) -> bytes | None:
        """The whole object; ``None`` if missing."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
            with response["Body"] as body:
                data: bytes = body.read()
            return data
        except botocore.exceptions.ClientError as e:
            if _missing(e):
                return None
            self._fail(e, "read", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "read", rel)

    def write(self, rel: str, data: bytes) -> None:
        """``put_object``: S3 makes an object visible whole or not at all, once stored."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)
        except (botocore.exceptions.ClientError, *_BOTO_ERRORS) as e:
            self._fail(e, "write", rel)

    def get_range(self, rel: str, start: int, length: int) -> bytes | None:
        """A ranged GET (``Range: bytes=a-b``)."""
        _check_range(start, length)
        key = self._key(rel)
        if length == 0:
            # No Range header can ask for nothing; the answer only depends on existence.
            return None if self.size(rel) is None else b""
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
            with response["Body"] as body:
                data: bytes = body.read()
        except botocore.exceptions.ClientError as e:
            code, status, _ = _code(e)
            if code == "InvalidRange" or status == 416:
                # Unsatisfiable: the range starts at or after the end (or the object is
                # empty). Missing objects answer 404, so the object exists.
                return b""
            if _missing(e):
                return None
            self._fail(e, "read", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "read", rel)
        # A server that ignores Range answers 200 with the whole object: cut it here rather
        # than hand back the wrong bytes.
        if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200 and not response.get(
            "ContentRange"
        ):
            return data[start : start + length]
        return data

    def size(self, rel: str) -> int | None:
        """``head_object``'s ContentLength; ``None`` if missing."""
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(rel))
        except botocore.exceptions.ClientError as e:
            if _missing(e):
                return None
            self._fail(e, "stat", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "stat", rel)
        return int(response["ContentLength"])

    def _objects(self, rel: str) -> list[tuple[str, dict[str, Any]]]:
        """(path relative to ``rel``, listing entry) of every key under ``rel/``, directory
        markers skipped (paginated); ``[]`` when the bucket does not exist."""
        prefix = self._dir_prefix(rel)
        out: list[tuple[str, dict[str, Any]]] = []
        try:
            for page in self._pages(Prefix=prefix):
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(prefix) :]
                    if name and not name.endswith("/"):
                        out.append((name, obj))
        except botocore.exceptions.ClientError as e:
            if _code(e)[0] == "NoSuchBucket":
                return []
            self._fail(e, "list", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "list", rel)
        return out

    def files(self, rel: str) -> list[tuple[str, int]]:
        """Every key under ``rel/`` with its size (paginated listing), sorted."""
        return sorted((name, int(obj["Size"])) for name, obj in self._objects(rel))

    def newest(self, rel: str) -> float | None:
        """Latest ``LastModified`` of the keys under ``rel/`` (paginated listing)."""
        times = [obj["LastModified"].timestamp() for _, obj in self._objects(rel)]
        return max(times, default=None)

    def remove(self, rel: str) -> None:
        """``delete_object`` (S3 answers success for a missing key)."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(rel))
        except botocore.exceptions.ClientError as e:
            if _missing(e):
                return
            self._fail(e, "remove", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "remove", rel)

    def _delete_keys(self, keys: list[str], rel: str) -> None:
        # delete_objects takes at most 1000 keys; it reports per-key failures in the answer
        # instead of raising, so those are checked too.
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = [err for err in response.get("Errors", ()) if err.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise OSError(
                    f"{self.where(rel)}: cannot remove: {len(errors)} key(s) failed, e.g. "
                    f"{first.get('Key')}: {first.get('Message') or first.get('Code')}"
                )

    def _subdirs(self, prefix: str) -> list[str]:
        """Every "directory" prefix under ``prefix``, deepest first."""
        found: list[str] = []
        todo = [prefix]
        while todo:
            p = todo.pop()
            for page in self._pages(Prefix=p, Delimiter="/"):
                for cp in page.get("CommonPrefixes", ()):
                    found.append(cp["Prefix"])
                    todo.append(cp["Prefix"])
        return sorted(found, key=lambda d: d.count("/"), reverse=True)

    def remove_tree(self, rel: str) -> None:
        """Delete every key under ``rel/`` (``delete_objects``, 1000 per call)."""
        check_rel(rel)  # not "": the volume root cannot be removed this way
        prefix = self._dir_prefix(rel)
        try:
            keys = [
                obj["Key"]
                for page in self._pages(Prefix=prefix)
                for obj in page.get("Contents", ())
            ]
            self._delete_keys(keys, rel)
            # Filer-backed servers (SeaweedFS) keep emptied directories, listed as common
            # prefixes, for a while after their last key goes; deleting "dir/" removes an
            # empty one at once (and is a no-op on AWS), so `listdir` stops showing it.
            self._delete_keys([*self._subdirs(prefix), prefix], rel)
        except botocore.exceptions.ClientError as e:
            if _code(e)[0] == "NoSuchBucket":
                return
            self._fail(e, "remove", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "remove", rel)

    def upload(self, rel: str, local_file: Path) -> None:
        """``upload_file``: multipart with several threads for large files."""
        key = self._key(rel)
        try:
            self._client.upload_file(str(local_file), self.bucket, key, Config=self._transfer)
        except (botocore.exceptions.ClientError, *_BOTO_ERRORS) as e:
            self._fail(e, "upload", rel)

    def local_path(self, rel: str = "") -> Path | None:
        """Always ``None``: the volume is remote."""
        self._key(rel, allow_root=True)
        return None


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket`` or ``s3://bucket/some/prefix`` (the prefix
    without slashes at either end); ``ValueError`` if the URL is not one."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(
            f"invalid S3 bucket name {bucket!r} in {url!r}: 3 to 63 letters, digits, dots "
            "or hyphens, starting and ending with a letter or digit"
        )
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_rel(prefix)
        except ValueError:
            raise ValueError(f"invalid prefix {prefix!r} in S3 URL {url!r}") from None
    return bucket, prefix


def open_volume(
    location: str,
    endpoint: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Volume:
    """The volume at ``location``: ``s3://bucket[/prefix]`` or a local directory (``~``
    expanded, made absolute). Other URL schemes are a ``ValueError``."""
    if location.startswith("s3://"):
        return S3Volume(location, endpoint, region, access_key, secret_key)
    if _SCHEME.match(location):
        raise ValueError(f"unsupported volume URL {location!r} (only s3:// and local paths)")
    if not location:
        raise ValueError("empty volume location")
    return LocalVolume(Path(location).expanduser().absolute())
