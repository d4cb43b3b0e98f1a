"""The Rust core's Python surface (``blockframe._core``) at its edges: reads at and past the
end, exceptions raised by the callables it is given, shard paths that are not plain files
or directories (links, FIFOs) inside an object, and commits of member files (packs)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from blockframe import _core
from blockframe.archive.entry import Entry
from blockframe.archive.reader import ArchivedObject, core_object
from blockframe.config import StorageConfig
from blockframe.format import layout
from blockframe.format.manifest import Shard

from conftest import Env, data, snapshot


def committed(env: Env, size: int, name: str = "f") -> Entry:
    src = env.file(name, size)
    env.archive.commit(src, name)
    return env.archive.get(name)


def test_read_into_at_and_past_the_end_returns_nothing(env: Env) -> None:
    entry = committed(env, 50_000)
    core = core_object(entry)
    size = core.size
    assert size == 50_000
    buf = bytearray(4096)
    for offset in (size, size + 1, size + 10**9):
        assert core.read_into(buf, offset) == (0, [])
        assert core.read(offset, 4096) == (b"", [])
    # The archive's reader (under the mount and the API) passes that on.
    obj = ArchivedObject(entry)
    assert obj.read_into(memoryview(buf), size) == 0
    assert obj.read_into(memoryview(buf), size + 5) == 0
    # The last bytes, then nothing: a reader looping until 0 ends cleanly.
    n, bad = core.read_into(buf, size - 100)
    assert (n, bad) == (100, [])
    assert bytes(buf[:100]) == data(size)[-100:]


# -- exceptions raised by the callables the core is given ---------------------------------


def local_fetch(entry: Entry) -> Callable[[int, int, int, int], bytes | None]:
    """A ``fetch`` over the object's own files (what the remote client does over HTTP)."""

    def fetch(stripe: int, shard: int, start: int, length: int) -> bytes | None:
        path = entry.path / entry.manifest.stripes[stripe].shards[shard].path
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError:
            return None

    return fetch


def fetched(
    entry: Entry,
    fetch: Callable[[int, int, int, int], bytes | None],
    store: Callable[[int, int, bytes], object] | None = None,
) -> _core.Object:
    m = entry.manifest

    def arg(s: Shard) -> tuple[str, int, bytes]:
        return (s.path, s.size, s.hashes)

    stripes = [([arg(s) for s in st.data], [arg(s) for s in st.parity]) for st in m.stripes]
    return _core.Object(str(entry.path), m.chunk_size, stripes, None, fetch, store)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_stop_raised_by_fetch_reaches_the_caller(env: Env, stop: type[BaseException]) -> None:
    entry = committed(env, 50_000)  # tier 2: one data shard and two parity per stripe
    plain = local_fetch(entry)

    def fetch(stripe: int, shard: int, start: int, length: int) -> bytes | None:
        if (stripe, shard) == (1, 0):
            raise stop("stop")
        return plain(stripe, shard, start, length)

    def store(stripe: int, shard: int, data: bytes) -> None:
        raise AssertionError("nothing may be stored")

    core = fetched(entry, fetch, store)
    start = entry.manifest.stripes[0].data[0].size  # stripe 1's data
    with pytest.raises(stop):
        core.read(start, 100)
    with pytest.raises(stop):
        core.read_into(bytearray(100), start)
    with pytest.raises(stop):
        core.verify_shard(1, 0)
    with pytest.raises(stop):
        core.repair_shard(1, 0)
    # Other stripes are not affected.
    assert core.read(0, 100) == (data(50_000)[:100], [])


def test_an_exception_raised_by_fetch_means_unreadable(env: Env) -> None:
    entry = committed(env, 50_000)
    plain = local_fetch(entry)

    def fetch(stripe: int, shard: int, start: int, length: int) -> bytes | None:
        if (stripe, shard) == (1, 0):
            raise OSError("connection reset")
        return plain(stripe, shard, start, length)

    core = fetched(entry, fetch)
    start = entry.manifest.stripes[0].data[0].size
    got, bad = core.read(start, 100)
    assert got == data(50_000)[start : start + 100]
    assert bad == [(1, 0, "unreadable")]
    assert core.verify_shard(1, 0)[1] == "unreadable"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_stop_raised_by_store_reaches_the_caller(env: Env, stop: type[BaseException]) -> None:
    entry = committed(env, 50_000)
    plain = local_fetch(entry)

    def fetch(stripe: int, shard: int, start: int, length: int) -> bytes | None:
        return None if (stripe, shard) == (0, 1) else plain(stripe, shard, start, length)

    def store(stripe: int, shard: int, data: bytes) -> None:
        raise stop("stop")

    with pytest.raises(stop):
        fetched(entry, fetch, store).repair_shard(0, 1)

    def refuse(stripe: int, shard: int, data: bytes) -> None:
        raise ValueError("bucket is read-only")

    with pytest.raises(_core.CoreError, match="bucket is read-only"):
        fetched(entry, fetch, refuse).repair_shard(0, 1)


# -- links, FIFOs and vanished objects ----------------------------------------------------


def tree(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes (or link target), inode and mtime of everything under ``directory``."""
    out = {}
    for p in sorted(directory.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            raw = os.readlink(p).encode()
        elif p.is_file():
            raw = p.read_bytes()
        else:
            raw = b""
        out[p.relative_to(directory).as_posix()] = (raw, st.st_ino, st.st_mtime_ns)
    return out


def move_behind_link(path: Path, outside: Path) -> None:
    path.rename(outside)
    path.symlink_to(outside, target_is_directory=outside.is_dir())


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
@pytest.mark.parametrize("command", ["restore", "health"])
def test_a_linked_directory_inside_an_object_is_not_followed(env: Env, command: str) -> None:
    # The parity directory goes behind a link to an outside copy that still verifies:
    # were the link followed, nothing would look wrong, and repairs would write there.
    entry = committed(env, 50_000)
    original = entry.path
    before = snapshot(original)
    outside = env.root / "outside"
    outside.mkdir()
    move_behind_link(original / "parity", outside / "parity")
    (outside / "parity" / "planted.txt").write_bytes(b"the user's")
    outside_before = tree(outside)

    if command == "restore":
        # Restore reads the (intact) segments and repairs the parity found unreadable.
        r = env.run("restore", "f", "-o", str(env.root / "out"))
        assert r.returncode == 0, r.stderr
        assert (env.root / "out").read_bytes() == data(50_000)
        assert b"unreadable" in r.stderr
    else:
        r = env.run("health")
        assert r.returncode == 0, r.stdout + r.stderr
    assert tree(outside) == outside_before, "something was written through the link"
    # Repair replaced the link by a real directory holding the committed parity.
    assert not (original / "parity").is_symlink()
    after = snapshot(original)
    assert {p: v[0] for p, v in after.items()} == {p: v[0] for p, v in before.items()}


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_a_linked_shard_is_rebuilt_from_parity_and_replaced(env: Env) -> None:
    entry = committed(env, 15_000)  # tier 1: data.dat and parity/
    outside = env.root / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_bytes(b"the user's")
    (entry.path / "data.dat").unlink()
    (entry.path / "data.dat").symlink_to(precious)
    outside_before = tree(outside)
    r = env.run("restore", "f", "-o", str(env.root / "out"))
    assert r.returncode == 0, r.stderr
    assert (env.root / "out").read_bytes() == data(15_000)
    assert tree(outside) == outside_before
    assert not (entry.path / "data.dat").is_symlink()
    assert (entry.path / "data.dat").read_bytes() == data(15_000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_fifo_in_place_of_a_shard_does_not_hang_restore_or_health(env: Env) -> None:
    entry = committed(env, 50_000)
    victim = entry.path / entry.manifest.stripes[2].data[0].path
    victim.unlink()
    os.mkfifo(victim)
    # The CLI runs under a timeout: a blocked open would fail the test.
    r = env.run("restore", "f", "-o", str(env.root / "out"))
    assert r.returncode == 0, r.stderr
    assert (env.root / "out").read_bytes() == data(50_000)
    assert victim.is_file() and not victim.is_fifo()
    victim.unlink()
    os.mkfifo(victim)
    r = env.run("health")
    assert r.returncode == 0, r.stdout + r.stderr
    assert victim.is_file()


def test_repair_after_the_object_was_replaced_leaves_no_zombie(env: Env) -> None:
    entry = committed(env, 15_000)
    old_dir = entry.path
    obj = ArchivedObject(entry)
    (old_dir / "parity" / "parity_0.dat").unlink()
    obj.verify_parity()
    assert obj.damaged
    # Replaced meanwhile: the new content has a new object directory; the old one goes.
    env.archive.commit(env.file("g", 16_000, seed=3), "f", replace=True)
    assert not old_dir.exists()
    repaired, failed = obj.repair()
    assert repaired == []
    assert len(failed) == 1 and "gone" in failed[0], failed
    assert not old_dir.exists(), "repair re-created the replaced object's directory"


# -- commits of member files (packs) ------------------------------------------------------


def members(env: Env, sizes: list[int]) -> list[tuple[str, int]]:
    """Files of ``sizes`` bytes (their content: consecutive pieces of ``data``)."""
    base = env.root / "members"
    base.mkdir()
    blob = data(sum(sizes), seed=7)
    out, at = [], 0
    for i, n in enumerate(sizes):
        path = base / f"m{i:04}"
        path.write_bytes(blob[at : at + n])
        out.append((str(path), n))
        at += n
    return out


def pack_plan(size: int) -> tuple[int, list[tuple[list[tuple[str, int]], list[str]]]]:
    """(chunk size, stripes) of a pack of ``size`` bytes, as a directory commit plans it."""
    storage = layout.pack_storage(size, StorageConfig())
    _, stripes = layout.plan(size, storage)
    return storage.chunk_size, [([(p, n) for p, n in st.data], list(st.parity)) for st in stripes]


def files(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def pack_sizes() -> list[int]:
    # 400 files of 0 to 3 KB (every seventh empty, two empty at the end): about 600 KB.
    return [0 if i % 7 == 3 else (i * 7919) % 3000 + 1 for i in range(400)] + [0, 0]


def test_members_commit_like_their_concatenation(env: Env) -> None:
    listed = members(env, pack_sizes())
    size = sum(n for _, n in listed)
    chunk, stripes = pack_plan(size)
    whole = env.root / "whole.bin"
    whole.write_bytes(b"".join(Path(p).read_bytes() for p, _ in listed))
    (env.root / "a").mkdir()
    (env.root / "b").mkdir()
    done: list[int] = []
    content, hashes, each = _core.commit(
        listed, [(str(env.root / "a"), True)], chunk, stripes, done.append
    )
    # A file still gives a 2-tuple.
    content_f, hashes_f = _core.commit(str(whole), [(str(env.root / "b"), True)], chunk, stripes)
    assert (content, hashes) == (content_f, hashes_f)
    assert content == _core.hash_file(str(whole))
    assert each == [_core.blake3(Path(p).read_bytes()) for p, _ in listed]
    assert each[-1] == _core.blake3(b"")
    assert files(env.root / "a") == files(env.root / "b")
    assert len(files(env.root / "a")) == sum(len(d) + len(p) for d, p in stripes)


def refused(env: Env, bad: int, spoil: Callable[[Path], None]) -> None:
    """A pack commit with member ``bad`` spoiled raises SourceChangedError naming it, and
    leaves nothing half-written: no shard (a non-empty member is found bad while the pack's
    one stripe is being read), or at most (an empty member, which only the content hasher
    opens, may be found bad after the stripe was written) complete shards, as a file
    found changed at the end of its commit does; the caller removes them either way."""
    sizes = pack_sizes()
    listed = members(env, sizes)
    chunk, stripes = pack_plan(sum(sizes))
    assert len(stripes) == 1
    reference = env.root / "reference"
    reference.mkdir()
    _core.commit(listed, [(str(reference), True)], chunk, stripes)
    path = Path(listed[bad][0])
    spoil(path)
    stage = env.root / "stage"
    stage.mkdir()
    with pytest.raises(_core.SourceChangedError, match=str(path)):
        _core.commit(listed, [(str(stage), True)], chunk, stripes)
    left = files(stage)
    if sizes[bad]:
        assert left == {}
    else:
        assert left in ({}, files(reference))


@pytest.mark.parametrize("change", ["longer", "shorter", "missing", "directory"])
def test_a_member_of_the_wrong_length_or_kind_is_refused(env: Env, change: str) -> None:
    def spoil(path: Path) -> None:
        if change == "longer":
            path.write_bytes(path.read_bytes() + b"x")
        elif change == "shorter":
            path.write_bytes(path.read_bytes()[:-1])
        else:
            path.unlink()
            if change == "directory":
                path.mkdir()

    refused(env, 200, spoil)


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_a_linked_member_is_refused_not_followed(env: Env) -> None:
    def spoil(path: Path) -> None:
        # The link's target has exactly the listed bytes: only the link itself is wrong.
        copy = env.root / "copy"
        copy.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(copy)

    assert pack_sizes()[151] > 0
    refused(env, 151, spoil)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_fifo_member_is_refused_not_waited_on(env: Env) -> None:
    def spoil(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    # In place of a member with bytes, and of an empty one (its length matches: only its
    # kind refuses it). A blocking open would hang here; the Rust tests run the same
    # under a deadline.
    refused(env, 151, spoil)
    shutil.rmtree(env.root / "members")
    shutil.rmtree(env.root / "reference")
    shutil.rmtree(env.root / "stage")
    refused(env, pack_sizes().index(0), spoil)


def test_member_lengths_must_add_up_to_the_plan(env: Env) -> None:
    listed = members(env, [100, 200, 300])
    chunk, stripes = pack_plan(600)
    listed[1] = (listed[1][0], 199)
    stage = env.root / "stage"
    stage.mkdir()
    with pytest.raises(_core.CoreError, match="add up"):
        _core.commit(listed, [(str(stage), True)], chunk, stripes)
    assert files(stage) == {}


def test_hash_file_of_several_files_is_the_hash_of_their_concatenation(tmp_path: Path) -> None:
    parts = [data(n, seed=n) for n in (0, 1, 70_000, 3 << 20)]
    paths = []
    for i, part in enumerate(parts):
        paths.append(str(tmp_path / f"m{i}"))
        Path(paths[-1]).write_bytes(part)
    assert _core.hash_file(paths) == _core.blake3(b"".join(parts))
    assert _core.hash_file(paths[2]) == _core.blake3(parts[2])
    # A member that is a FIFO or a link is refused, never waited on or followed.
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(paths[1])
    for bad in ("fifo", "link"):
        with pytest.raises(_core.CoreError, match="not a regular file"):
            _core.hash_file([paths[0], str(tmp_path / bad)])
