"""The chunkserver's repair helpers (``chunkserver/repair.py``) on real files in a tmp dir.

What is checked here: the throttle's pacing (with a fake clock, so nothing sleeps) and its
step sizes; a pass's rate (spread over the scrub period, each replica costing at least
``SCRUB_REPLICA_COST_BYTES``) and its start at a random replica; a scrub pass reads every replica, finds a flipped byte, makes that replica bad
(and tells ``on_bad``), leaves the others alone, and skips replicas that change under it.
``copy_in`` and the scrubber's reports end to end are in
``tests/integration/test_chunkserver_repair.py``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkserver import repair
from chunkserver.disk import AsyncChunkStore
from chunkserver.repair import (
    SCRUB_IDLE_PAUSE_S,
    SCRUB_PASS_MIN_S,
    SCRUB_REPLICA_COST_BYTES,
    SCRUB_STEP_BYTES_MAX,
    Scrubber,
    Throttle,
)
from chunkserver.store import ChunkStore
from dfs.wire.replicafile import BLOCK_BYTES, DATA_OFFSET, ReplicaInfo

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

B = BLOCK_BYTES
MiB = 1024 * 1024


def test_throttle_paces_to_its_rate_without_bursts() -> None:
    now = [100.0]
    throttle = Throttle(MiB, clock=lambda: now[0])
    assert throttle.reserve(MiB // 4) == 0.0  # idle: at once
    assert throttle.reserve(MiB // 4) == pytest.approx(0.25)  # then one piece's time apart
    assert throttle.reserve(MiB // 2) == pytest.approx(0.5)
    now[0] += 10.0  # a long idle time earns no burst
    assert throttle.reserve(MiB) == 0.0
    assert throttle.reserve(1) == pytest.approx(1.0)
    unlimited = Throttle(0, clock=lambda: now[0])
    assert unlimited.reserve(1 << 40) == 0.0


def test_a_new_rate_rescales_what_is_still_owed() -> None:
    """A pass of one replica at a slow rate books its cost ahead; the next pass, at a
    faster rate, owes that time at its own rate, not days at the old one."""
    now = [0.0]
    throttle = Throttle(100, clock=lambda: now[0])
    assert throttle.reserve(10_000) == 0.0  # at once; the next waits 100 s
    now[0] += 20.0
    throttle.set_rate(10_000)  # 80 s owed at 100 B/s: 8,000 bytes, 0.8 s at the new rate
    assert throttle.reserve(1) == pytest.approx(0.8)
    throttle.set_rate(0)
    assert throttle.reserve(1 << 40) == 0.0
    throttle.set_rate(1)
    assert throttle.reserve(5) == 0.0  # from no limit: nothing owed


def test_throttle_steps_are_whole_blocks_near_a_quarter_second() -> None:
    assert Throttle(0).piece_bytes(4 * MiB) == 4 * MiB
    assert Throttle(64 * MiB).piece_bytes(4 * MiB) == 4 * MiB
    assert Throttle(4 * MiB).piece_bytes(4 * MiB) == MiB
    assert Throttle(1000).piece_bytes(4 * MiB) == B  # one block at least
    assert Throttle(5 * B * 4 + 7).piece_bytes(4 * MiB) == 5 * B


@pytest.fixture
def async_store(tmp_path: Path) -> Iterator[Callable[[], AsyncChunkStore]]:
    made: list[AsyncChunkStore] = []

    def make() -> AsyncChunkStore:
        s = AsyncChunkStore(ChunkStore(tmp_path / "cs", fsync=False), disk_jobs_max=2)
        made.append(s)
        return s

    yield make
    for s in made:
        s._pool.shutdown(wait=True)


@pytest.mark.anyio
async def test_a_scrub_pass_finds_a_flipped_byte_and_leaves_the_rest(
    async_store: Callable[[], AsyncChunkStore], expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=7 block=20 reason='checksum mismatch'")
    expect_log(r"event=replica_bad chunk=7 version=2 reason=checksum")
    expect_log(r"event=quarantined chunk=7")
    store = async_store()
    found: list[tuple[int, int]] = []
    store.store.on_bad = lambda chunk_id, version: found.append((chunk_id, version))
    rng = random.Random(1)
    sizes = {3: 0, 5: 100, 7: 2 * SCRUB_STEP_BYTES_MAX + 77, 9: 3 * B}
    for chunk_id, size in sizes.items():
        await store.write(chunk_id, 2, 0, 0, rng.randbytes(size))
    scrubber = Scrubber(store, 1 << 40, 0.0)
    assert await scrubber.scrub_pass() == sum(sizes.values())
    assert found == []
    with open(store.store.path(7), "r+b") as f:  # as a failing disk would
        f.seek(DATA_OFFSET + 20 * B + 5)
        byte = f.read(1)
        f.seek(DATA_OFFSET + 20 * B + 5)
        f.write(bytes([byte[0] ^ 0x10]))
    verified = await scrubber.scrub_pass()
    assert found == [(7, 2)] and store.store.bad_pending(10) == [(7, 2)]
    # Chunk 7 up to its bad block (in steps of SCRUB_STEP_BYTES_MAX), and all the others.
    assert verified == 100 + 3 * B + (20 * B // SCRUB_STEP_BYTES_MAX) * SCRUB_STEP_BYTES_MAX
    assert [r.chunk_id for r in store.list_chunks()] == [3, 5, 9]
    assert scrubber.bytes_verified == sum(sizes.values()) + verified
    await store.close()


@pytest.mark.anyio
async def test_a_scrub_pass_verifies_replicas_as_they_are_at_their_turn(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    """A pass lasts days: a replica deleted since the listing is skipped; one rewritten
    under a newer version is verified at that version (before, it answered ``Stale`` and
    was skipped, pass after pass, for a chunk written more often than a pass lasts); one
    rewritten during its own turn is verified on at its new version."""
    store = async_store()
    for chunk_id in (1, 2, 3):
        await store.write(chunk_id, 1, 0, 0, bytes(3 * B))
    real_list = store.list_chunks

    def listed_then_changed() -> list[ReplicaInfo]:
        listed = real_list()
        store.store.delete(1)  # gone before its turn
        store.store.write(2, 2, 3 * B, 0, b"")  # rewritten under another version
        return listed

    store.list_chunks = listed_then_changed  # type: ignore[method-assign]
    real_verify = store.verify
    bumped = []

    async def verify(chunk_id: int, version: int, offset: int, size: int) -> int:
        if chunk_id == 3 and offset == B and not bumped:
            bumped.append(True)
            store.store.write(3, 2, 3 * B, 0, b"")  # rewritten during its turn
        return await real_verify(chunk_id, version, offset, size)

    store.verify = verify  # type: ignore[method-assign]
    scrubber = Scrubber(store, 1 << 40, 0.0)
    scrubber.throttle = Throttle(0)  # steps of one block: chunk 3 is bumped mid-turn
    scrubber.throttle.piece_bytes = lambda limit: B  # type: ignore[method-assign]
    assert await scrubber.scrub_pass() == 3 * B + 3 * B  # chunks 2 and 3, whole
    assert bumped
    await store.close()


@pytest.mark.anyio
async def test_an_idle_scrubber_pauses_between_passes(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    store = async_store()
    assert await Scrubber(store, 1 << 40, 0.0).scrub_pass() == 0  # nothing to read
    busy = Scrubber(store, 1 << 40, 0.0)
    assert busy.pause_s(0, 0.0) == SCRUB_IDLE_PAUSE_S  # no spinning over an empty store
    assert busy.pause_s(1, 2.0) == 0.0  # scrub_interval_ms = 0: after a long pass, at once
    # A pass over tiny replicas is over at once: passes are still SCRUB_PASS_MIN_S apart.
    assert busy.pause_s(1, 0.25) == pytest.approx(SCRUB_PASS_MIN_S - 0.25)
    assert Scrubber(store, 1, 5.0).pause_s(1, 0.0) == 5.0
    await store.close()


def test_a_pass_is_spread_over_the_period_and_never_faster_than_the_rate() -> None:
    store: AsyncChunkStore = None  # type: ignore[assignment]  # not touched
    day = 86_400.0
    weekly = Scrubber(store, 16 * MiB, 0.0, period_s=7 * day)
    assert weekly.pass_rate(7 * 86_400 * MiB) == MiB  # a week's worth at 1 MiB/s
    assert weekly.pass_rate(10**15) == 16 * MiB  # more than the rate allows: at the rate
    assert weekly.pass_rate(3) == 1  # a tiny store still moves
    assert Scrubber(store, 16 * MiB, 0.0).pass_rate(3) == 16 * MiB  # no period: the rate


class _Recorder(Throttle):
    """A throttle that lets everything through at once and remembers what it was charged."""

    def __init__(self) -> None:
        super().__init__(0)
        self.charged: list[int] = []

    def reserve(self, n: int) -> float:
        self.charged.append(n)
        return 0.0


@pytest.mark.anyio
async def test_small_replicas_cost_the_throttle_a_floor_each_and_the_first_pass_goes_round(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    """Before, each replica cost one page: over a store of small replicas the scrubber
    verified thousands a second (a third of a core per chunkserver, for good)."""
    store = async_store()
    sizes = {1: 0, 2: 4096, 3: SCRUB_REPLICA_COST_BYTES + 5, 4: 100, 5: 1}
    for chunk_id, size in sizes.items():
        await store.write(chunk_id, 1, 0, 0, bytes(size))
    order: list[int] = []
    real_verify = store.verify

    async def verify(chunk_id: int, version: int, offset: int, size: int) -> int:
        order.append(chunk_id)
        return await real_verify(chunk_id, version, offset, size)

    store.verify = verify  # type: ignore[method-assign]
    scrubber = Scrubber(store, 64 * MiB, 0.0, period_s=100.0, rng=random.Random(3))
    recorder = _Recorder()
    scrubber.throttle = recorder
    assert await scrubber.scrub_pass() == sum(sizes.values())
    cost = sum(max(n, SCRUB_REPLICA_COST_BYTES) for n in sizes.values())
    assert sum(recorder.charged) == cost
    assert recorder.bytes_per_s == scrubber.pass_rate(cost) == -(-cost // 100)
    # The first pass starts at a random replica and goes round (chunk 1 is empty: no read).
    start = random.Random(3).randrange(len(sizes))
    ids = sorted(sizes)
    assert list(dict.fromkeys(order)) == [i for i in ids[start:] + ids[:start] if sizes[i]]
    assert start != 0  # (the seed's choice: the check above could fail)
    order.clear()
    await scrubber.scrub_pass()
    assert list(dict.fromkeys(order)) == [i for i in ids if sizes[i]]  # later: id order
    await store.close()


@pytest.mark.anyio
async def test_a_restart_resumes_the_pass_where_the_last_run_got(
    async_store: Callable[[], AsyncChunkStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a pass spread over a week, a server restarted more often than that verified a
    random arc each run: some replicas waited several periods. The pass's progress is
    kept in ``scrub_cursor``; the next run starts after it."""
    monkeypatch.setattr(repair, "SCRUB_CURSOR_SAVE_S", 0.0)  # record after every replica
    store = async_store()
    for chunk_id in (1, 2, 3, 5):
        await store.write(chunk_id, 1, 0, 0, bytes(100))
    cursor = tmp_path / "scrub_cursor"
    cursor.write_text("2\n")
    order: list[int] = []
    seen_cursor: list[str] = []
    real_verify = store.verify

    async def verify(chunk_id: int, version: int, offset: int, size: int) -> int:
        order.append(chunk_id)
        seen_cursor.append(cursor.read_text().strip())
        return await real_verify(chunk_id, version, offset, size)

    store.verify = verify  # type: ignore[method-assign]
    scrubber = Scrubber(store, 1 << 40, 0.0, cursor_path=cursor)
    await scrubber.scrub_pass()
    assert order == [3, 5, 1, 2]  # after the recorded 2, then round
    assert seen_cursor == ["2", "3", "5", "1"]  # each replica recorded once verified
    assert cursor.read_text().strip() == "0"  # a pass done: the next starts at the first
    cursor.write_text("junk\n")
    assert scrubber._load_cursor() is None  # unreadable: a random start, no error
    await store.close()
