"""The walk of a directory commit (never following a link, recording times and modes) and
how its files are grouped into packs."""

from __future__ import annotations

import os
from pathlib import Path

from blockframe.archive.folder import PACK_ENTRIES, SourceFile, packable, packs, walk
from blockframe.config import StorageConfig
from blockframe.format import layout


def test_the_walk_records_files_dirs_links_times_and_modes(tmp_path: Path) -> None:
    top = tmp_path / "photos"
    (top / "2024" / "empty").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"abc")
    (top / "2024" / "b.bin").write_bytes(b"x" * 100)
    os.chmod(top / "2024" / "b.bin", 0o751)
    os.utime(top / "a.txt", ns=(1, 1_234_567_890_123_456_789))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"never read")
    os.symlink("../outside", top / "2024" / "out")  # a directory link: kept, not followed
    os.symlink("a.txt", top / "same")
    os.mkfifo(top / "pipe")
    folder = walk(top)
    assert [(f.name, f.size) for f in folder.files] == [
        ("photos/2024/b.bin", 100),
        ("photos/a.txt", 3),
    ]
    a = folder.files[1]
    assert a.mtime_ns == 1_234_567_890_123_456_789 and a.path == top / "a.txt"
    assert folder.files[0].mode == 0o751
    assert [d.name for d in folder.dirs] == ["photos", "photos/2024", "photos/2024/empty"]
    assert [(x.name, x.target) for x in folder.links] == [
        ("photos/2024/out", "../outside"),
        ("photos/same", "a.txt"),
    ]
    assert [(n, str(e)) for n, e in folder.failures] == [
        ("photos/pipe", f"{top / 'pipe'}: not a regular file, directory or link (skipped)")
    ]


def test_files_are_packed_below_pack_max_and_packs_are_capped() -> None:
    storage = StorageConfig(segment_size=1000, block_segments=4, pack_max=500)

    def f(i: int, size: int) -> SourceFile:
        return SourceFile(f"d/{i}", Path("/nonexistent"), size, 0, 0o644)

    assert [packable(f(0, n), storage) for n in (0, 1, 499, 500, 10**9)] == [
        True, True, True, False, False
    ]  # fmt: skip
    files = [f(i, 450) for i in range(20)]  # 9,000 bytes: a pack holds at most 4,000
    sizes = [sum(x.size for x in p) for p in packs(files, storage)]
    assert sizes == [3600, 3600, 1800]
    many = [f(i, 0) for i in range(PACK_ENTRIES + 5)]
    assert [len(p) for p in packs(many, storage)] == [PACK_ENTRIES, 5]


def test_a_pack_costs_a_tenth_in_parity_however_small_its_files() -> None:
    s = StorageConfig()
    for size in (5_000, 300_000, 325_000_000, 2_000_000_000):
        tier, stripes = layout.plan(size, layout.pack_storage(size, s))
        data = sum(n for st in stripes for _, n in st.data)
        parity = sum(len(st.parity) * max(n for _, n in st.data) for st in stripes)
        assert tier == 3 and data == size
        assert parity / size < 0.12, size
    assert layout.pack_segment_size(325_000_000, s) == 166 * 65536  # whole chunks
    assert layout.pack_segment_size(5_000, s) == 192  # below one chunk: 64-byte multiples
    assert layout.pack_segment_size(10**12, s) == s.segment_size
