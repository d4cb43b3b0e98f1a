"""Property tests: for any size, geometry and damage pattern, restore returns the original
bytes and repairs the shards when the damage is within parity, and fails without changing
anything on disk when it is not."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockframe.archive import Archive
from blockframe.config import StorageConfig
from blockframe.errors import IntegrityError

from conftest import data, snapshot

geometries = st.builds(
    lambda seg, blocks, parity, chunk, t1, t2: StorageConfig(
        segment_size=seg,
        tier1_max=t1,
        tier2_max=t1 + t2,
        block_segments=blocks,
        parity_shards=parity,
        chunk_size=chunk,
    ),
    seg=st.integers(200, 6000),
    blocks=st.integers(1, 6),
    parity=st.integers(1, 4),
    chunk=st.sampled_from([64, 128, 512, 1024]),
    t1=st.integers(1, 6000),
    t2=st.integers(0, 20000),
)

KINDS = ["flip", "truncate", "delete", "zero"]


def damage(path: Path, kind: str, where: float) -> None:
    raw = bytearray(path.read_bytes())
    pos = int(where * (len(raw) - 1)) if raw else 0
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(bytes(raw[:pos]))
    elif kind == "flip" and raw:
        raw[pos] ^= 0x10
        path.write_bytes(bytes(raw))
    elif kind == "zero" and raw:
        raw[pos : pos + 100] = bytes(len(raw[pos : pos + 100]))
        path.write_bytes(bytes(raw))


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    geometry=geometries,
    size=st.integers(1, 30000),
    seed=st.integers(0, 2**16),
    pick=st.data(),
)
def test_restore_after_random_damage(
    geometry: StorageConfig, size: int, seed: int, pick: st.DataObject
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bf-prop-"))
    try:
        src = tmp / "f"
        original = data(size, seed)
        src.write_bytes(original)
        arch = Archive(tmp / "a", geometry)
        entry = arch.commit(src).entry
        stripes = entry.manifest.stripes
        si = pick.draw(st.integers(0, len(stripes) - 1), "stripe")
        shards = [s.path for s in stripes[si].shards]
        m = len(stripes[si].parity)
        count = pick.draw(st.integers(1, m + 1), "damaged shards")
        victims = pick.draw(st.permutations(shards), "order")[:count]
        kinds = [pick.draw(st.sampled_from(KINDS), "kind") for _ in victims]
        where = pick.draw(st.floats(0, 1), "offset")
        clean = snapshot(entry.path)
        for v, k in zip(victims, kinds, strict=True):
            damage(entry.path / v, k, where)
        damaged = snapshot(entry.path)
        changed = {p for p in clean if damaged.get(p, (None,))[0] != clean[p][0]}
        out = io.BytesIO()
        try:
            report = arch.restore("f", out)
        except IntegrityError as e:
            # Only possible when more shards than parity were really changed; then nothing
            # on disk may change either.
            assert len(changed) > m, (changed, str(e))
            assert snapshot(entry.path) == damaged
            return
        assert out.getvalue() == original
        assert not report.unrepaired
        after = snapshot(entry.path)
        assert {p: v[0] for p, v in after.items()} == {p: v[0] for p, v in clean.items()}
        for p in clean:
            if p not in changed:
                assert after[p][1:] == damaged[p][1:], f"healthy {p} rewritten"
    finally:
        shutil.rmtree(tmp)
