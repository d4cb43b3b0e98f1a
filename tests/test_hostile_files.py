"""Files that are not what they seem, where the archive expects a small regular file:
FIFOs, devices, symlinks and huge sparse files are refused at once, never waited on,
followed or read into memory."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from blockframe.storage import LocalVolume
from blockframe.storage.local import atomic_write, read_regular


def test_read_regular_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"hello")
    assert read_regular(tmp_path / "ok", 5) == b"hello"
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block without O_NONBLOCK
    with pytest.raises(OSError, match="not a regular file"):
        read_regular(tmp_path / "fifo", 100)
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(OSError) as e:
        read_regular(tmp_path / "link", 100)
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError, match="not a regular file"):
        read_regular(Path("/dev/zero"), 100)
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(4 << 30)  # 4 GiB that occupy nothing: must not be read
    with pytest.raises(OSError) as e:
        read_regular(tmp_path / "sparse", 1 << 30)
    assert e.value.errno == errno.EFBIG
    with pytest.raises(OSError, match="larger than 4 bytes"):
        read_regular(tmp_path / "ok", 4)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing", 4)


def test_a_volume_reads_no_fifo_link_or_huge_file(tmp_path: Path) -> None:
    vol = LocalVolume(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("/etc/hostname")
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(4 << 30)
    for rel in ("fifo", "link", "sparse"):
        with pytest.raises(OSError):
            vol.read(rel)
        if rel != "sparse":
            with pytest.raises(OSError):
                vol.get_range(rel, 0, 10)
    assert vol.read("missing") is None


def test_atomic_write_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    target = tmp_path / "archive" / "manifest.json"
    target.parent.mkdir()
    # A link where the file goes is replaced, not written through.
    target.symlink_to(outside)
    atomic_write(target, b"new")
    assert outside.read_bytes() == b"keep"
    assert not target.is_symlink() and target.read_bytes() == b"new"
    # Temporary names are unpredictable: a link planted at the old fixed name is ignored.
    planted = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    planted.symlink_to(outside)
    atomic_write(target, b"newer")
    assert outside.read_bytes() == b"keep" and target.read_bytes() == b"newer"


def test_a_file_whose_manifest_would_exceed_the_limit_is_refused_up_front(
    tmp_path: Path,
) -> None:
    from blockframe.archive import Archive
    from blockframe.config import StorageConfig
    from blockframe.errors import SourceError

    huge = tmp_path / "huge.img"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse: nothing is read before the refusal
    tiny_chunks = StorageConfig(chunk_size=64, segment_size=1 << 20)
    archive = Archive(tmp_path / "archive", tiny_chunks)
    with pytest.raises(SourceError, match="use a larger \\[storage\\] chunk_size"):
        archive.commit(huge)
    assert not (tmp_path / "archive").exists()


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_atomic_output_on_every_platform_branch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: str
) -> None:
    import sys

    from blockframe.archive.restore import atomic_output

    monkeypatch.setattr(sys, "platform", platform)
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(out) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_output(out) as f:
        f.write(b"new")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
