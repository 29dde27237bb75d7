"""Which replica a chunk read goes to (``dfs/client/chunkio.py``, REGION AFFINITY)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from dfs.client.chunkio import AFFINITY_BYTES, BUSY_IN_FLIGHT_MARGIN, ChunkIo
from dfs.client.records import Replica

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

REPLICAS = (
    Replica(1, "127.0.0.1:7001"),
    Replica(2, "127.0.0.1:7002"),
    Replica(3, "127.0.0.1:7003"),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakePool:
    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}


def chunk_io(pool: Any) -> ChunkIo:
    return ChunkIo(pool, io_timeout_s=1.0)


async def test_every_read_of_a_region_goes_to_one_replica_and_regions_spread() -> None:
    io = chunk_io(FakePool())
    firsts: Counter[str] = Counter()
    for chunk_id in range(1, 31):
        for region in range(10):
            base = region * AFFINITY_BYTES
            first = io.order(REPLICAS, chunk_id, base)[0]
            # Any offset in the region, any order of the replica set: the same replica.
            for offset in (base + 4096, base + AFFINITY_BYTES - 1):
                assert io.order(REPLICAS, chunk_id, offset)[0] == first
                assert io.order(REPLICAS[::-1], chunk_id, offset)[0] == first
            firsts[first.address] += 1
    assert sum(firsts.values()) == 300
    assert all(60 <= n <= 140 for n in firsts.values()), firsts


async def test_a_busy_replica_gives_way_and_a_suspect_one_goes_last() -> None:
    pool = FakePool()
    io = chunk_io(pool)
    ranked = io.order(REPLICAS, 7, 0)
    first = ranked[0]
    pool.in_flight[first.address] = BUSY_IN_FLIGHT_MARGIN - 1
    assert io.order(REPLICAS, 7, 0) == ranked  # not busy enough to move
    pool.in_flight[first.address] = BUSY_IN_FLIGHT_MARGIN
    assert io.order(REPLICAS, 7, 0) == [*ranked[1:], first]
    pool.in_flight.clear()
    io._failed(first.address)
    assert io.order(REPLICAS, 7, 0) == [*ranked[1:], first]
    io._answered(first.address)
    assert io.order(REPLICAS, 7, 0) == ranked
