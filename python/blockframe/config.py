"""Configuration: where it is looked up, what it holds, and how sizes are written.

Lookup order: ``--config``, then ``$BLOCKFRAME_CONFIG``, then ``./config.toml``, then the
user config directory (``$XDG_CONFIG_HOME/blockframe/config.toml``), then built-in defaults.
A missing file in the implicit places is not an error; a file named explicitly must exist,
and a malformed file is an error naming the file and line. Relative paths in a file are
taken relative to the directory that holds it.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockframe._core import CHUNK_ALIGN
from blockframe.errors import ConfigError

log = logging.getLogger(__name__)

# The server's bearer token, for `serve` and for clients of a server; wins over the config.
TOKEN_ENV = "BLOCKFRAME_TOKEN"


# Sizes beyond this (8 EiB) are no size a disk, a cache or the core's 64-bit counters hold.
MAX_SIZE = 2**63 - 1
# Longest timeout a config may set (a day): beyond, it is no timeout at all.
MAX_SECONDS = 86400
# What an HTTP client can present in "Authorization: Bearer <token>": visible ASCII, and no
# space at either end (header values are trimmed on the way).
_TOKEN = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def check_token(token: str, what: str) -> str:
    """``token`` if a client can present it (or it is empty: no token), else ConfigError."""
    if token and _TOKEN.fullmatch(token) is None:
        raise ConfigError(
            f"{what}: a token must be printable ASCII without spaces at either end "
            "(HTTP clients could never present it)"
        )
    return token


def token_from(config_token: str) -> str:
    """The bearer token: ``$BLOCKFRAME_TOKEN`` when set and non-empty, else the config's."""
    env = os.environ.get(TOKEN_ENV)
    if env:
        return check_token(env, f"${TOKEN_ENV}")
    return config_token


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d{1,40}(?:\.\d{1,40})?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object, what: str = "size") -> int:
    """Parse ``"32MiB"``, ``"10MB"``, ``"4096"`` or an integer into a byte count.

    KB/MB/GB/TB are powers of 10, KiB/MiB/GiB/TiB powers of 2; units are case-insensitive.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size like '32MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what}: a size cannot be negative ({value})")
        return _capped(value, what, value)
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a size like '32MiB', got {value!r}")
    m = _SIZE_RE.match(value)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(
            f"{what}: cannot read size {value!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    # Exact integer arithmetic: a float would round large sizes and overflow on huge ones.
    whole, _, frac = m.group(1).partition(".")
    scale = 10 ** len(frac)
    numerator = (int(whole) * scale + int(frac or "0")) * _UNITS[unit]
    number, rest = divmod(numerator, scale)
    if rest:
        raise ConfigError(f"{what}: {value!r} is not a whole number of bytes")
    return _capped(number, what, value)


def _capped(number: int, what: str, value: object) -> int:
    if number > MAX_SIZE:
        raise ConfigError(f"{what}: {value!r} is too large (at most 8 EiB)")
    return number


def format_size(n: int) -> str:
    """Human-readable binary size (``1.5 MiB``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StorageConfig:
    """How new objects are cut into shards (existing objects keep their own geometry)."""

    segment_size: int = 32 * 2**20
    tier1_max: int = 10 * 10**6
    tier2_max: int = 10**9
    block_segments: int = 30
    parity_shards: int = 3
    chunk_size: int = 64 * 2**10
    # Directory commits pack files smaller than this together (FORMAT.md §18); 0: never.
    pack_max: int = 10 * 10**6


@dataclass(frozen=True)
class S3Config:
    """Where S3 volumes are and how to sign in; empty values fall back to the usual AWS
    environment variables and files (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""

    endpoint: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""


def is_url(location: str) -> bool:
    """Whether an archive location names an S3 bucket rather than a directory."""
    return location.startswith("s3://")


@dataclass(frozen=True)
class Config:
    """The whole configuration; see ``config.toml`` at the repository root."""

    archive_directory: Path = Path("archive_directory")
    # Volumes (failure domains) when the archive is spread over several directories or
    # buckets, or one "s3://bucket/prefix"; empty: the archive is archive_directory.
    archive_volumes: tuple[str, ...] = ()
    s3: S3Config = field(default_factory=lambda: S3Config())
    mount_default_mountpoint: Path = Path("./mnt/blockframe")
    mount_default_remote: str = ""
    cache_max_segments: int = 200
    cache_max_size: int = 3 * 10**9
    server_default_port: int = 8080
    server_host: str = "127.0.0.1"
    server_token: str = ""
    server_cors_origins: tuple[str, ...] = ()
    # Seconds a client has to send complete request headers (on a new connection, or after
    # the previous response) before serve closes the connection.
    server_header_timeout: float = 10.0
    # Seconds serve waits, unable to send, for a client that reads nothing before it drops
    # the connection.
    server_send_timeout: float = 60.0
    # Connections serve holds at once; at the cap, the one idle longest is closed for a
    # newcomer (503 when every one is busy with a request).
    server_max_connections: int = 256
    logging_level: str = "info"
    storage: StorageConfig = field(default_factory=StorageConfig)
    source: Path | None = None


_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")

# section -> key -> kind; "size" keys accept units, "path" keys resolve relative to the file.
_SCHEMA: dict[str, dict[str, str]] = {
    "archive": {"directory": "location", "volumes": "locations"},
    "s3": {"endpoint": "str", "region": "str", "access_key_id": "str", "secret_access_key": "str"},
    "mount": {"default_mountpoint": "path", "default_remote": "str"},
    "cache": {"max_segments": "int", "max_size": "size"},
    "server": {
        "default_port": "int",
        "host": "str",
        "token": "str",
        "cors_origins": "strlist",
        "header_timeout": "seconds",
        "send_timeout": "seconds",
        "max_connections": "int",
    },
    "logging": {"level": "str"},
    "storage": {
        "segment_size": "size",
        "tier1_max": "size",
        "tier2_max": "size",
        "block_segments": "int",
        "parity_shards": "int",
        "chunk_size": "size",
        "pack_max": "size",
    },
}


def _default_locations() -> list[Path]:
    places = [Path("config.toml")]
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    places.append(Path(xdg) / "blockframe" / "config.toml")
    return places


def find_config(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The config file to use, or None for built-in defaults."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    env = os.environ.get("BLOCKFRAME_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{path}: config file named by BLOCKFRAME_CONFIG not found")
        return path
    for path in _default_locations():
        if path.is_file():
            return path
    return None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find and read the configuration (see the module docstring for the lookup order)."""
    path = find_config(explicit)
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed TOML: nested too deeply") from None
    return config_from_mapping(data, path)


def _value(kind: str, value: Any, what: str, base: Path) -> Any:
    if kind == "size":
        return parse_size(value, what)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what}: expected an integer, got {value!r}")
        return value
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{what}: expected a number of seconds, got {value!r}")
        if not 0 < value <= MAX_SECONDS:  # also refuses nan
            raise ConfigError(f"{what}: must be more than 0 and at most {MAX_SECONDS} seconds")
        return float(value)
    if kind == "locations":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{what}: expected a non-empty list of directories or s3:// URLs")
        locations = tuple(str(_value("location", v, what, base)) for v in value)
        if len(set(locations)) != len(locations):
            raise ConfigError(f"{what}: a volume is listed twice")
        return locations
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{what}: expected a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a string, got {value!r}")
    if kind == "location" and is_url(value):
        if len(value) <= len("s3://"):
            raise ConfigError(f"{what}: {value!r} names no bucket")
        return value
    if kind in ("path", "location"):
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    return value


def config_from_mapping(data: Mapping[str, Any], path: Path) -> Config:
    """Build a validated Config from parsed TOML; ``path`` names the file in errors."""
    values: dict[str, Any] = {}
    base = path.parent
    for section, table in data.items():
        if section not in _SCHEMA:
            log.warning("%s: unknown section [%s] ignored", path, section)
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in table.items():
            kind = _SCHEMA[section].get(key)
            if kind is None:
                log.warning("%s: unknown key %s.%s ignored", path, section, key)
                continue
            values[f"{section}.{key}"] = _value(kind, value, f"{path}: {section}.{key}", base)

    storage = StorageConfig(
        **{key.split(".", 1)[1]: v for key, v in values.items() if key.startswith("storage.")}
    )
    check_storage(storage, f"{path}: storage")
    level = values.get("logging.level", "info").lower()
    if level not in _LEVELS:
        raise ConfigError(f"{path}: logging.level must be one of {', '.join(_LEVELS)}")
    port = values.get("server.default_port", 8080)
    if not 0 <= port < 65536:
        # 0: any free port, chosen when the server starts (it prints the one it got).
        raise ConfigError(f"{path}: server.default_port must be 0-65535, got {port}")
    max_connections = values.get("server.max_connections", Config.server_max_connections)
    if not 1 <= max_connections <= 1_000_000:
        raise ConfigError(
            f"{path}: server.max_connections must be 1-1000000, got {max_connections}"
        )
    for key in ("cache.max_segments",):
        if values.get(key, 1) < 0:
            raise ConfigError(f"{path}: {key} cannot be negative")
    defaults = Config()
    directory = values.get("archive.directory", base / defaults.archive_directory)
    volumes = values.get("archive.volumes", ())
    if not volumes and isinstance(directory, str):
        volumes = (directory,)  # an archive in a bucket is one S3 volume
    return Config(
        archive_directory=Path(directory)
        if isinstance(directory, Path)
        else defaults.archive_directory,
        archive_volumes=volumes,
        s3=S3Config(
            endpoint=values.get("s3.endpoint", ""),
            region=values.get("s3.region", ""),
            access_key_id=values.get("s3.access_key_id", ""),
            secret_access_key=values.get("s3.secret_access_key", ""),
        ),
        mount_default_mountpoint=values.get(
            "mount.default_mountpoint", defaults.mount_default_mountpoint
        ),
        mount_default_remote=values.get("mount.default_remote", ""),
        cache_max_segments=values.get("cache.max_segments", defaults.cache_max_segments),
        cache_max_size=values.get("cache.max_size", defaults.cache_max_size),
        server_default_port=port,
        server_host=values.get("server.host", defaults.server_host),
        server_token=check_token(values.get("server.token", ""), f"{path}: server.token"),
        server_cors_origins=values.get("server.cors_origins", ()),
        server_header_timeout=values.get("server.header_timeout", defaults.server_header_timeout),
        server_send_timeout=values.get("server.send_timeout", defaults.server_send_timeout),
        server_max_connections=max_connections,
        logging_level=level,
        storage=storage,
        source=path,
    )


def check_storage(s: StorageConfig, where: str = "storage") -> None:
    """Reject geometries the format or the codec cannot hold."""
    if s.segment_size <= 0:
        raise ConfigError(f"{where}.segment_size must be positive")
    if s.block_segments < 1 or s.block_segments > 32768:
        raise ConfigError(f"{where}.block_segments must be between 1 and 32768")
    if s.parity_shards < 1 or s.parity_shards > 32768:
        raise ConfigError(f"{where}.parity_shards must be between 1 and 32768")
    if s.block_segments + s.parity_shards > 65536:
        raise ConfigError(f"{where}: block_segments + parity_shards must be at most 65536")
    if s.tier1_max > s.tier2_max:
        raise ConfigError(f"{where}.tier1_max must not exceed tier2_max")
    if s.chunk_size <= 0 or s.chunk_size % CHUNK_ALIGN or s.chunk_size > 2**20:
        raise ConfigError(
            f"{where}.chunk_size must be a positive multiple of {CHUNK_ALIGN} bytes, at most 1MiB"
        )
