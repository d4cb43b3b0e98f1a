"""S3-compatible object storage: a volume that is a bucket, or a prefix in one (boto3:
ranged GETs, atomic puts, multipart uploads, paginated listing, batched deletes, errors
turned into one-line ``OSError``s)."""

from __future__ import annotations

import errno
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from blockframe.storage.base import READ_LIMIT, Volume, check_range, check_rel

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

    def read(self, rel: str, limit: int = READ_LIMIT) -> bytes | None:
        """The whole object; ``None`` if missing (larger than ``limit``: OSError)."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
            with response["Body"] as body:
                if int(response.get("ContentLength") or 0) > limit:
                    raise OSError(errno.EFBIG, f"{self.where(rel)}: larger than {limit} bytes")
                data: bytes = body.read(limit + 1)
            if len(data) > limit:
                raise OSError(errno.EFBIG, f"{self.where(rel)}: larger than {limit} bytes")
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

    def create_new(self, rel: str, data: bytes) -> bool:
        """Store ``data`` at ``rel`` only if nothing is there (a conditional put,
        ``If-None-Match: *``); False if something is."""
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(rel), Body=data, IfNoneMatch="*"
            )
        except botocore.exceptions.ClientError as e:
            code, status, _ = _code(e)
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            self._fail(e, "write", rel)
        except _BOTO_ERRORS as e:
            self._fail(e, "write", rel)
        return True

    def get_range(self, rel: str, start: int, length: int) -> bytes | None:
        """A ranged GET (``Range: bytes=a-b``)."""
        check_range(start, length)
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
