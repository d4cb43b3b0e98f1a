"""Tier choice and shard names: how a file of a given size is cut into stripes.

- tier 1 (size < tier1_max): the whole file is one data shard, RS(1, m).
- tier 2 (size < tier2_max): segments of ``segment_size``, each its own RS(1, m) stripe.
- tier 3: segments grouped in blocks of ``block_segments``, each block one RS(k, m) stripe
  (the last block may hold fewer segments, its last segment may be short).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from blockframe.config import StorageConfig
from blockframe.format.manifest import ALIGN


@dataclass(frozen=True)
class PlannedStripe:
    data: tuple[tuple[str, int], ...]  # (relative path, length) in file order
    parity: tuple[str, ...]


def choose_tier(size: int, storage: StorageConfig) -> int:
    if size < storage.tier1_max:
        return 1
    if size < storage.tier2_max:
        return 2
    return 3


def _segments(size: int, segment_size: int) -> list[int]:
    full, rest = divmod(size, segment_size)
    return [segment_size] * full + ([rest] if rest else [])


def plan(size: int, storage: StorageConfig) -> tuple[int, list[PlannedStripe]]:
    """The tier and stripes for a file of ``size`` bytes (size > 0)."""
    if size <= 0:
        raise ValueError("cannot plan an empty file")
    m = storage.parity_shards
    tier = choose_tier(size, storage)
    if tier == 1:
        return 1, [
            PlannedStripe((("data.dat", size),), tuple(f"parity/parity_{j}.dat" for j in range(m)))
        ]
    segments = _segments(size, storage.segment_size)
    if tier == 2:
        return 2, [
            PlannedStripe(
                ((f"segments/segment_{i}.dat", n),),
                tuple(f"parity/segment_{i}_parity_{j}.dat" for j in range(m)),
            )
            for i, n in enumerate(segments)
        ]
    stripes = []
    per = storage.block_segments
    for b, start in enumerate(range(0, len(segments), per)):
        block = segments[start : start + per]
        stripes.append(
            PlannedStripe(
                tuple(
                    (f"blocks/block_{b}/segments/segment_{i}.dat", n) for i, n in enumerate(block)
                ),
                tuple(f"blocks/block_{b}/parity/parity_{j}.dat" for j in range(m)),
            )
        )
    return 3, stripes


def pack_segment_size(size: int, storage: StorageConfig) -> int:
    """The segment size of a pack of ``size`` bytes (FORMAT.md §18.2): the pack spread
    over ``block_segments`` segments, so its parity costs parity_shards/block_segments of it
    however small it is; rounded up to whole chunks (to 64 bytes below one chunk), and
    never more than ``segment_size``."""
    per = -(-size // storage.block_segments)
    unit = storage.chunk_size if per >= storage.chunk_size else ALIGN
    return max(ALIGN, min(storage.segment_size, -(-per // unit) * unit))


def pack_storage(size: int, storage: StorageConfig) -> StorageConfig:
    """The geometry a pack of ``size`` bytes is written with: tier 3 at its own segment
    size (which its manifest records)."""
    return replace(storage, segment_size=pack_segment_size(size, storage), tier1_max=0, tier2_max=0)
