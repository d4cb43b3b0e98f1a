"""The Python API (`blockframe.open_archive`) and the fsspec filesystem, for real: pandas and
pyarrow read CSV and parquet through the verified file object and through
``blockframe://`` URLs, from a local archive and from a `blockframe serve` subprocess;
zipfile and tarfile seek around in it; damage within parity is read exact (and repaired on
close, locally), damage beyond parity raises; the README's examples run as written."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy
import pandas
import pyarrow
import pyarrow.parquet as pq
import pytest
from test_serve import Server

import blockframe
from blockframe.access.api import BlockFrameArchive, ObjectReader
from blockframe.access.fsspec import BlockFrameFileSystem
from blockframe.errors import IntegrityError, NotFoundError, ReadOnlyError, UsageError

from conftest import CONFIG_TOML, SMALL, Env, data, flip

SIZES = {"t1.bin": 15_000, "t2.bin": 50_000, "dir/sub/t3.bin": 300_017}  # tiers 1, 2, 3


def frame(rows: int = 3000) -> pandas.DataFrame:
    return pandas.DataFrame(
        {
            "id": numpy.arange(rows, dtype="int64"),
            "value": numpy.linspace(0.0, 1.0, rows),
            "label": [f"row-{i:05d}" for i in range(rows)],
        }
    )


def make_tables(env: Env, archive: BlockFrameArchive) -> pandas.DataFrame:
    """tables/t.csv (tier 3 in SMALL geometry) and tables/t.parquet, committed via the API."""
    df = frame()
    src = env.root / "src"
    src.mkdir(exist_ok=True)
    df.to_csv(src / "t.csv", index=False)
    pq.write_table(pyarrow.Table.from_pandas(df), src / "t.parquet", compression="none")
    archive.commit(src / "t.csv", "tables/t.csv")
    archive.commit(src / "t.parquet", "tables/t.parquet")
    return df


def local(env: Env) -> BlockFrameArchive:
    return blockframe.open_archive(env.archive_dir, storage=SMALL)


def damage_first_data_shard(env: Env, name: str) -> tuple[Path, bytes]:
    entry = env.archive.get(name)
    path = entry.path / entry.manifest.stripes[0].data[0].path
    before = path.read_bytes()
    flip(path, len(before) // 2, 3)
    assert path.read_bytes() != before
    return path, before


# -- the file object ----------------------------------------------------------------------


def test_open_archive_is_lazy() -> None:
    code = "import sys, blockframe; print('blockframe.access.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_list_stat_and_exact_reads_every_tier(env: Env) -> None:
    with local(env) as archive:
        for i, (name, size) in enumerate(SIZES.items()):
            info = archive.commit(env.file(f"f{i}", size, seed=i), name)
            assert (info.name, info.size, info.tier) == (name, size, i + 1)
        again = archive.commit(env.root / "src" / "f0", "t1.bin")  # identical: a no-op
        assert again == archive.stat("t1.bin")
        assert [x.name for x in archive.list()] == sorted(SIZES)
        assert (
            archive.stat("t2.bin").content_hash == env.archive.get("t2.bin").manifest.content_hash
        )
        with pytest.raises(NotFoundError):
            archive.stat("missing")
        rng = numpy.random.default_rng(1)
        for i, (name, size) in enumerate(SIZES.items()):
            want = data(size, seed=i)
            with archive.open(name) as f:
                assert isinstance(f, io.BufferedReader) and isinstance(f.raw, ObjectReader)
                assert f.seekable() and f.readable() and not f.writable()
                assert f.read() == want
                assert f.read() == b""
                for _ in range(30):
                    pos, n = int(rng.integers(0, size + 10)), int(rng.integers(0, 5000))
                    assert f.seek(pos) == pos
                    assert f.read(n) == want[pos : pos + n]
                    assert f.tell() == min(pos + n, max(pos, size))
                assert f.seek(-100, os.SEEK_END) == size - 100
                assert f.read() == want[-100:]
                with pytest.raises(OSError):
                    f.seek(-1)
            # The raw reader writes into any writable buffer, of any item size.
            buffered = archive.open(name, buffer_size=1)  # kept: collecting it closes raw
            raw = buffered.raw
            assert isinstance(raw, ObjectReader)
            ints = numpy.zeros(1000, dtype="int32")
            assert raw.readinto(ints) == 4000
            assert ints.tobytes() == want[:4000]
            raw.seek(size - 10)
            assert raw.readinto(bytearray(100)) == 10
            assert raw.readinto(bytearray(100)) == 0
            raw.seek(5)
            assert raw.readall() == want[5:]
            raw.close()
            with pytest.raises(ValueError):
                raw.readinto(bytearray(1))


def test_pandas_pyarrow_zipfile_tarfile(env: Env) -> None:
    with local(env) as archive:
        df = make_tables(env, archive)
        src = env.root / "src"
        with zipfile.ZipFile(src / "a.zip", "w") as z:
            for i in range(5):
                z.writestr(f"m{i}.bin", data(7_000 + i, seed=i))
        with tarfile.open(src / "a.tar", "w") as t:
            for i in range(5):
                (src / f"m{i}.bin").write_bytes(data(9_000 + i, seed=i))
                t.add(src / f"m{i}.bin", f"m{i}.bin")
        archive.commit(src / "a.zip")
        archive.commit(src / "a.tar")
        with archive.open("tables/t.csv") as f:
            pandas.testing.assert_frame_equal(pandas.read_csv(f), df)
        with archive.open("tables/t.parquet") as f:
            assert pq.read_table(f).to_pandas().equals(df)
        with archive.open("a.zip") as f, zipfile.ZipFile(f) as z:
            assert z.read("m3.bin") == data(7_003, seed=3)
            assert z.testzip() is None
        with archive.open("a.tar") as f, tarfile.open(fileobj=f) as t:
            member = t.extractfile("m4.bin")
            assert member is not None and member.read() == data(9_004, seed=4)


def test_damage_within_parity_is_read_exact_and_repaired_on_close(env: Env) -> None:
    with local(env) as archive:
        df = make_tables(env, archive)
        path, before = damage_first_data_shard(env, "tables/t.parquet")
        with archive.open("tables/t.parquet") as f:
            assert pq.read_table(f).to_pandas().equals(df)
            raw = f.raw
            assert isinstance(raw, ObjectReader) and raw.damaged
        assert path.read_bytes() == before  # rewritten from parity when the file closed
        damage_first_data_shard(env, "tables/t.csv")
        options = {"archive": str(env.archive_dir)}
        got = pandas.read_csv("blockframe://tables/t.csv", storage_options=options)
        pandas.testing.assert_frame_equal(got, df)


def test_damage_beyond_parity_raises(env: Env) -> None:
    with local(env) as archive:
        archive.commit(env.file("x", 15_000), "x.bin")  # tier 1: 1 data + 2 parity shards
        entry = env.archive.get("x.bin")
        for shard in entry.manifest.stripes[0].shards:
            flip(entry.path / shard.path, 5000, 1)  # chunk 4 (1 KiB chunks) is lost
        want = data(15_000)
        with archive.open("x.bin") as f:
            # A refill that reaches the lost chunk returns what precedes it.
            assert f.read(4000) == want[:4000]
            assert f.read(96) == want[4000:4096]
            with pytest.raises(IntegrityError):
                f.read(10)
            f.seek(6000)  # the chunks after it still read
            assert f.read() == want[6000:]
            f.seek(4095)
            with pytest.raises(IntegrityError):
                f.read()


def test_commit_and_health_local_only(env: Env) -> None:
    with local(env) as archive:
        archive.commit(env.file("y", 3_000), "y.bin")
        report = archive.health()
        assert report.status == "healthy" and [o.name for o in report.objects] == ["y.bin"]
        remote = blockframe.open_archive("http://127.0.0.1:9")
        assert remote.is_remote and not archive.is_remote
        with pytest.raises(ReadOnlyError):
            remote.commit(env.root / "src" / "y")
        with pytest.raises(UsageError):
            remote.health()
        remote.close()


# -- fsspec -------------------------------------------------------------------------------


def test_fsspec_local(env: Env) -> None:
    with local(env) as archive:
        df = make_tables(env, archive)
        archive.commit(env.file("z", 3_000), "z.bin")
    options = {"archive": str(env.archive_dir)}
    fs, path = fsspec.core.url_to_fs("blockframe://tables/t.parquet", **options)
    assert isinstance(fs, BlockFrameFileSystem) and path == "tables/t.parquet"
    assert fs.ls("", detail=False) == ["tables", "z.bin"]
    assert fs.ls("/tables/", detail=False) == ["tables/t.csv", "tables/t.parquet"]
    info = fs.info("tables/t.csv")
    assert info["type"] == "file" and info["size"] == env.archive.get("tables/t.csv").manifest.size
    assert info["tier"] == 3
    assert fs.isdir("tables") and fs.isfile("z.bin") and not fs.exists("nope")
    assert sorted(fs.find("")) == ["tables/t.csv", "tables/t.parquet", "z.bin"]
    assert fs.glob("tables/*.parquet") == ["tables/t.parquet"]
    whole = data(3_000)
    assert fs.cat_file("z.bin") == whole
    assert fs.cat_file("z.bin", 10, 20) == whole[10:20]
    assert fs.cat_file("z.bin", -5) == whole[-5:]
    assert fs.cat("blockframe://z.bin") == whole
    with pytest.raises(FileNotFoundError):
        fs.info("tables/nope")
    with pytest.raises(FileNotFoundError):
        fs.open("nope")
    with pytest.raises(IsADirectoryError):
        fs.open("tables")
    with pytest.raises(PermissionError):
        fs.open("new.bin", "wb")
    got = pandas.read_parquet("blockframe://tables/t.parquet", storage_options=options)
    assert got.equals(df)
    csv = pandas.read_csv("blockframe://tables/t.csv", storage_options=options)
    pandas.testing.assert_frame_equal(csv, df)
    with fsspec.open("blockframe://tables/t.csv", "rt", **options) as f:
        assert f.readline() == "id,value,label\n"
    assert fs.modified("z.bin").year >= 2024


# -- remote -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, pandas.DataFrame]]:
    root = tmp_path_factory.mktemp("api-remote")
    (root / "config.toml").write_text(CONFIG_TOML)
    env = Env(root)
    with local(env) as archive:
        df = make_tables(env, archive)
    server = Server(env)
    yield server, df
    assert server.stop() == 0, server.log
    assert not any("Traceback" in x for x in server.log), server.log


def test_remote_file_object(remote: tuple[Server, pandas.DataFrame]) -> None:
    server, df = remote
    with blockframe.open_archive(server.url) as archive:
        assert [x.name for x in archive.list()] == ["tables/t.csv", "tables/t.parquet"]
        assert archive.stat("tables/t.csv").tier == 3
        with archive.open("tables/t.parquet") as f:
            assert pq.read_table(f).to_pandas().equals(df)
        with archive.open("tables/t.csv") as f:
            pandas.testing.assert_frame_equal(pandas.read_csv(f), df)
            f.seek(3)
            assert f.read(5) == b"value"
        with pytest.raises(NotFoundError):
            archive.open("nope")


def test_remote_fsspec_and_damage_on_the_server(remote: tuple[Server, pandas.DataFrame]) -> None:
    server, df = remote
    options = {"archive": server.url}
    got = pandas.read_parquet("blockframe://tables/t.parquet", storage_options=options)
    assert got.equals(df)
    fs = fsspec.filesystem("blockframe", url=server.url)
    assert fs.archive.is_remote
    assert fs.ls("tables", detail=False) == ["tables/t.csv", "tables/t.parquet"]
    # A shard damaged on the server: the client verifies, rebuilds from remote parity.
    damage_first_data_shard(server.env, "tables/t.parquet")
    damage_first_data_shard(server.env, "tables/t.csv")
    got = pandas.read_parquet(
        "blockframe://tables/t.parquet", storage_options={**options, "listing_ttl": 0.5}
    )
    assert got.equals(df)
    with blockframe.open_archive(server.url) as archive, archive.open("tables/t.csv") as f:
        pandas.testing.assert_frame_equal(pandas.read_csv(f), df)
        raw = f.raw
        assert isinstance(raw, ObjectReader) and raw.damaged


# -- the README's examples ----------------------------------------------------------------


def readme_blocks() -> list[str]:
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = readme_blocks()
    local_example, remote_example = blocks[0], blocks[1]
    monkeypatch.chdir(tmp_path)
    exec(compile(local_example, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tables/weather.parquet" in out and "Oslo" in out and "healthy" in out
    (tmp_path / "config.toml").write_text("")
    server = Server(Env(tmp_path), "-a", "archive_directory")
    try:
        assert "http://127.0.0.1:8080" in remote_example
        code = remote_example.replace("http://127.0.0.1:8080", server.url)
        exec(compile(code, "README.md", "exec"), {})
        out = capsys.readouterr().out
        assert "['tables/weather.parquet']" in out and "Lima" in out
    finally:
        assert server.stop() == 0, server.log
