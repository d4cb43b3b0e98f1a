"""Configuration lookup, sizes with units, validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from blockframe.config import Config, load_config, parse_size
from blockframe.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("0", 0),
        ("10B", 10),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 10**9),
        ("2TB", 2 * 10**12),
        ("1KiB", 1024),
        ("32MiB", 32 * 2**20),
        ("3 GiB", 3 * 2**30),
        ("1TiB", 2**40),
        ("1.5KiB", 1536),
        ("32mib", 32 * 2**20),
    ],
)
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "MB", "1.3B", "ten", "5 parsecs", "-1KB", -5, True, 1.5, None])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad, "storage.segment_size")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BLOCKFRAME_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def write(path: Path, directory: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[archive]\ndirectory = "{directory}"\n')
    return path


def test_lookup_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config() == Config()  # nothing anywhere: defaults, not an error
    write(isolated / "xdg" / "blockframe" / "config.toml", "/from-xdg")
    assert load_config().archive_directory == Path("/from-xdg")
    write(isolated / "config.toml", "/from-cwd")
    assert load_config().archive_directory == Path("/from-cwd")
    env = write(isolated / "env.toml", "/from-env")
    monkeypatch.setenv("BLOCKFRAME_CONFIG", str(env))
    assert load_config().archive_directory == Path("/from-env")
    explicit = write(isolated / "explicit.toml", "/from-flag")
    assert load_config(explicit).archive_directory == Path("/from-flag")


def test_named_files_must_exist(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(isolated / "nope.toml")
    monkeypatch.setenv("BLOCKFRAME_CONFIG", str(isolated / "nope.toml"))
    with pytest.raises(ConfigError, match="BLOCKFRAME_CONFIG"):
        load_config()


def test_relative_paths_resolve_against_the_config_file(isolated: Path) -> None:
    cfg = load_config(write(isolated / "etc" / "bf.toml", "data/archive"))
    assert cfg.archive_directory == isolated / "etc" / "data" / "archive"


def test_seed_keys_and_storage_keys(isolated: Path) -> None:
    (isolated / "config.toml").write_text(
        """
[archive]
directory = "/a"
[mount]
default_mountpoint = "/mnt/bf"
default_remote = "http://127.0.0.1:9000"
[cache]
max_segments = 10
max_size = "1GB"
[server]
default_port = 9000
host = "0.0.0.0"
token = "s3cret"
[logging]
level = "debug"
[storage]
segment_size = "1MiB"
tier1_max = "1MB"
tier2_max = "2GB"
block_segments = 10
parity_shards = 4
chunk_size = "4KiB"
"""
    )
    cfg = load_config()
    assert cfg.mount_default_mountpoint == Path("/mnt/bf")
    assert cfg.mount_default_remote == "http://127.0.0.1:9000"
    assert (cfg.cache_max_segments, cfg.cache_max_size) == (10, 10**9)
    assert (cfg.server_default_port, cfg.server_host, cfg.server_token) == (
        9000,
        "0.0.0.0",
        "s3cret",
    )
    assert cfg.logging_level == "debug"
    s = cfg.storage
    assert (s.segment_size, s.tier1_max, s.tier2_max) == (2**20, 10**6, 2 * 10**9)
    assert (s.block_segments, s.parity_shards, s.chunk_size) == (10, 4, 4096)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage\n", "line 1"),
        ("[storage]\nparity_shards = 0\n", "parity_shards"),
        ("[storage]\nblock_segments = 40000\n", "block_segments"),
        ('[storage]\nchunk_size = "100B"\n', "chunk_size"),
        ('[storage]\ntier1_max = "2GB"\ntier2_max = "1GB"\n', "tier1_max"),
        ("[server]\ndefault_port = 70000\n", "default_port"),
        ('[logging]\nlevel = "loud"\n', "logging.level"),
        ("archive = 3\n", "[archive] must be a table"),
        ("[archive]\ndirectory = 5\n", "archive.directory"),
    ],
)
def test_invalid_values_name_the_file_and_key(isolated: Path, text: str, message: str) -> None:
    (isolated / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config()
    assert "config.toml" in str(e.value) and message in str(e.value)


def test_unknown_keys_warn(isolated: Path, caplog: pytest.LogCaptureFixture) -> None:
    (isolated / "config.toml").write_text("[storage]\nsegmnt_size = 5\n[extra]\n")
    with caplog.at_level(logging.WARNING):
        load_config()
    assert "storage.segmnt_size" in caplog.text and "[extra]" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Each of these crashed with a traceback (OverflowError, RecursionError) before.
        (f'[storage]\nsegment_size = "{"9" * 400}"\n', "cannot read size"),
        ('[cache]\nmax_size = "100000000000TiB"\n', "too large"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        # A token HTTP clients could never present: header values are trimmed.
        ('[server]\ntoken = " secret "\n', "server.token"),
        ('[server]\ntoken = "sec\\tret"\n', "server.token"),
    ],
)
def test_hostile_values_are_one_line_errors(isolated: Path, text: str, message: str) -> None:
    (isolated / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config()
    assert "config.toml" in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_sizes_are_exact_and_capped() -> None:
    assert parse_size("8589934591.5GiB") == 8589934591 * 2**30 + 2**29
    assert parse_size("0.001KB") == 1
    with pytest.raises(ConfigError, match="too large"):
        parse_size(2**63)
    with pytest.raises(ConfigError, match="whole number"):
        parse_size("0.0001KB")


def test_port_zero_means_any_free_port(isolated: Path) -> None:
    (isolated / "config.toml").write_text("[server]\ndefault_port = 0\n")
    assert load_config().server_default_port == 0


def test_a_token_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockframe.config import token_from

    monkeypatch.setenv("BLOCKFRAME_TOKEN", "abc def")
    assert token_from("x") == "abc def"
    monkeypatch.setenv("BLOCKFRAME_TOKEN", "abc\n")
    with pytest.raises(ConfigError, match="BLOCKFRAME_TOKEN"):
        token_from("x")


def test_server_header_timeout_and_max_connections(isolated: Path) -> None:
    assert (Config().server_header_timeout, Config().server_max_connections) == (10.0, 256)
    (isolated / "config.toml").write_text("[server]\nheader_timeout = 0.5\nmax_connections = 8\n")
    cfg = load_config()
    assert (cfg.server_header_timeout, cfg.server_max_connections) == (0.5, 8)
    (isolated / "config.toml").write_text("[server]\nheader_timeout = 30\n")
    assert load_config().server_header_timeout == 30.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "more than 0"),
        ("-1", "more than 0"),
        ("nan", "more than 0"),
        ("inf", "more than 0"),
        ("86401", "at most 86400"),
        ('"10s"', "expected a number of seconds"),
        ("true", "expected a number of seconds"),
        ("[1]", "expected a number of seconds"),
    ],
)
def test_bad_header_timeouts_are_one_line_errors(isolated: Path, value: str, message: str) -> None:
    (isolated / "config.toml").write_text(f"[server]\nheader_timeout = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config()
    text = str(e.value)
    assert "config.toml" in text and "server.header_timeout" in text and message in text
    assert "\n" not in text


def test_bad_send_timeout_is_a_one_line_error(isolated: Path) -> None:
    (isolated / "config.toml").write_text("[server]\nsend_timeout = 0\n")
    with pytest.raises(ConfigError, match=r"server\.send_timeout"):
        load_config()
    (isolated / "config.toml").write_text("[server]\nsend_timeout = 5\n")
    assert load_config().server_send_timeout == 5.0
    assert Config().server_send_timeout == 60.0


@pytest.mark.parametrize("value", ["0", "-5", "1000001", '"many"', "1.5"])
def test_bad_max_connections_are_one_line_errors(isolated: Path, value: str) -> None:
    (isolated / "config.toml").write_text(f"[server]\nmax_connections = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config()
    assert "server.max_connections" in str(e.value) and "\n" not in str(e.value)


def test_a_bad_header_timeout_exits_2_from_serve(isolated: Path) -> None:
    import subprocess
    import sys

    (isolated / "config.toml").write_text("[server]\nheader_timeout = -1\n")
    r = subprocess.run(
        [sys.executable, "-m", "blockframe", "serve", "-p", "0"],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(b"\n") == 1 and b"server.header_timeout" in r.stderr
