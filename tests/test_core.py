"""The Rust core's Python surface (``blockframe._core``) at its edges: reads at and past the
end, exceptions raised by the callables it is given, and shard paths that are not plain
files or directories (links, FIFOs) inside an object."""

from __future__ import annotations

from blockframe.archive.entry import Entry
from blockframe.archive.reader import ArchivedObject, core_object

from conftest import Env, data


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
