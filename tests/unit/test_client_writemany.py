"""dfs.client.writemany: GROUP COMMIT of small unsynced writes per replica set, against a
stub connection pool, under asyncio and trio.

- a write that finds nothing of its replica set in flight goes at once, alone, as a plain
  ``chunk.write``; those that come meanwhile go together in one ``chunk.write_many``,
  bytes in order, within the item limit;
- each writer gets its own outcome: its error from the answer's list, the whole request's
  error (named by the chain's head), or done;
- replica sets do not mix; a writer cancelled while it waits is never sent; one cancelled
  while it sends others' writes lets the request end as the chunkserver answers it;
- a chunkserver that does not know ``chunk.write_many`` gets the writes one by one.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from dfs.client.chunkio import ChunkIo
from dfs.client.records import Replica, WriteHandle
from dfs.client.writemany import WriteMany
from dfs.wire.errors import DfsError, Stale, Unavailable, Unsupported, error_to_wire
from dfs.wire.limits import WRITE_MANY_ITEMS_MAX

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(30)]

A = (Replica(1, "h:1"), Replica(2, "h:2"), Replica(3, "h:3"))
B = (Replica(4, "h:4"), Replica(5, "h:5"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def handle(chunk_id: int, chain: tuple[Replica, ...] = A) -> WriteHandle:
    return WriteHandle(index=0, chunk_id=chunk_id, version=1, length=0, chain=chain,
                       token=b"t", expiry_ms=1 << 50)  # fmt: skip


class StubPool:
    """Records calls; each waits for ``gate`` while it is closed; answers ``answers``'s
    next (a header or an error to raise), else ``{}``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.gate = anyio.Event()
        self.gate.set()
        self.answers: dict[str, dict[str, Any] | DfsError] = {}  # by op
        self.in_flight = 0
        self.cancelled = 0  # calls cancelled while they waited

    async def call(
        self, address: str, op: str, payload: bytes = b"", /, *, timeout_s: float, **fields: Any
    ) -> tuple[dict[str, Any], bytes]:
        self.calls.append((address, op, bytes(payload), fields))
        self.in_flight += 1
        try:
            await self.gate.wait()
        except BaseException:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        answer = self.answers.get(op, {})
        if isinstance(answer, DfsError):
            raise answer
        return answer, b""


async def wait_for(probe: Any) -> None:
    with anyio.fail_after(5):
        while not probe():
            await anyio.sleep(0.001)  # polling interval, not a wait for the condition


async def test_writes_that_come_while_one_is_in_flight_go_together_each_told_its_own() -> None:
    pool = StubPool()
    many = ChunkIo(pool, io_timeout_s=1.0).many  # type: ignore[arg-type]
    pool.gate = anyio.Event()
    outcomes: dict[int, BaseException | None] = {}

    async def write(chunk_id: int, data: bytes) -> None:
        try:
            await many.write(handle(chunk_id), 0, data, expect_length=chunk_id % 2 or None)
            outcomes[chunk_id] = None
        except DfsError as e:
            outcomes[chunk_id] = e

    stale = Stale("older version", address="h:3")
    async with anyio.create_task_group() as tg:
        tg.start_soon(write, 1, b"first")
        await wait_for(lambda: pool.in_flight == 1)
        for n, chunk_id in enumerate((2, 3, 4), 1):  # one by one: trio starts tasks in any order
            tg.start_soon(write, chunk_id, bytes([chunk_id]) * chunk_id)
            await wait_for(lambda n=n: len(many._sets[("h:1", "h:2", "h:3")].queue) == n)
        pool.answers = {"chunk.write_many": {"errors": [None, error_to_wire(stale), None]}}
        pool.gate.set()
    (a1, op1, p1, f1), (a2, op2, p2, f2) = pool.calls
    assert (a1, op1, p1, f1["chunk_id"], f1["chain"], f1["sync"]) == (
        "h:1", "chunk.write", b"first", 1, ["h:2", "h:3"], False)  # fmt: skip
    assert (a2, op2, f2["chain"]) == ("h:1", "chunk.write_many", ["h:2", "h:3"])
    assert p2 == b"\x02\x02\x03\x03\x03\x04\x04\x04\x04"
    assert [(w["chunk_id"], w["size"], w.get("expect_length")) for w in f2["writes"]] == [
        (2, 2, None), (3, 3, 1), (4, 4, None)]  # fmt: skip
    assert outcomes[1] is None and outcomes[2] is None and outcomes[4] is None
    assert isinstance(outcomes[3], Stale) and outcomes[3].details["address"] == "h:3"
    assert many.requests == 1 and not many._sets


async def test_a_failed_request_fails_each_of_its_writes_and_sets_do_not_mix() -> None:
    pool = StubPool()
    many = ChunkIo(pool, io_timeout_s=1.0).many  # type: ignore[arg-type]
    pool.gate = anyio.Event()
    errors: dict[int, BaseException | None] = {}

    async def write(chunk_id: int, chain: tuple[Replica, ...]) -> None:
        try:
            await many.write(handle(chunk_id, chain), 0, b"x")
            errors[chunk_id] = None
        except DfsError as e:
            errors[chunk_id] = e

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, 1, A)
        await wait_for(lambda: pool.in_flight == 1)
        tg.start_soon(write, 100, B)  # another set: at once, alone, not behind set A
        await wait_for(lambda: pool.in_flight == 2)
        # Reversed chain order, same replicas: the same set, queued behind chunk 1.
        for n, chunk_id in enumerate(range(2, 2 + WRITE_MANY_ITEMS_MAX + 1), 1):
            tg.start_soon(write, chunk_id, A[::-1])
            await wait_for(lambda n=n: len(many._sets[("h:1", "h:2", "h:3")].queue) == n)
        pool.answers = {"chunk.write_many": Unavailable("connection lost")}
        pool.gate.set()
    ops = [(call[0], call[1], len(call[3].get("writes", [None]))) for call in pool.calls]
    # The first write alone, set B's alone, then the 65 queued: 64, then 1 alone.
    assert ops == [("h:1", "chunk.write", 1), ("h:4", "chunk.write", 1),
                   ("h:3", "chunk.write_many", 64), ("h:3", "chunk.write", 1)]  # fmt: skip
    failed = sorted(k for k, e in errors.items() if e is not None)
    assert failed == list(range(2, 2 + WRITE_MANY_ITEMS_MAX))
    for k in failed:
        e = errors[k]
        assert isinstance(e, Unavailable) and e.details["address"] == "h:3"
    assert len({id(errors[k]) for k in failed}) == len(failed), "one error object each"
    assert errors[1] is None and errors[100] is None and errors[66] is None


async def test_a_writer_cancelled_while_it_waits_is_never_sent() -> None:
    pool = StubPool()
    many = ChunkIo(pool, io_timeout_s=1.0).many  # type: ignore[arg-type]
    pool.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(many.write, handle(1), 0, b"a")
        await wait_for(lambda: pool.in_flight == 1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await many.write(handle(2), 0, b"cancelled")
        tg.start_soon(many.write, handle(3), 0, b"c")
        await wait_for(lambda: len(many._sets[("h:1", "h:2", "h:3")].queue) == 1)
        pool.gate.set()
    assert [c[2] for c in pool.calls] == [b"a", b"c"]
    assert WriteMany.takes(b"x" * 1024) and not WriteMany.takes(bytes(1 << 20))


async def test_a_writer_cancelled_mid_request_lets_it_end_and_the_others_get_its_answer() -> None:
    pool = StubPool()
    many = ChunkIo(pool, io_timeout_s=1.0).many  # type: ignore[arg-type]
    first_gate = pool.gate = anyio.Event()
    outcomes: dict[int, BaseException | None] = {}

    async def write(chunk_id: int) -> None:
        try:
            await many.write(handle(chunk_id), 0, bytes([chunk_id]))
            outcomes[chunk_id] = None
        except BaseException as e:
            outcomes[chunk_id] = e
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, 1)
        await wait_for(lambda: pool.in_flight == 1)
        for n, chunk_id in enumerate((2, 3), 1):
            tg.start_soon(write, chunk_id)
            await wait_for(lambda n=n: len(many._sets[("h:1", "h:2", "h:3")].queue) == n)
        pool.gate = anyio.Event()  # the next request waits for this one
        first_gate.set()
        await wait_for(lambda: len(pool.calls) == 2 and pool.in_flight == 1)
        tg.cancel_scope.cancel()  # both writers, the one sending their request too
        pool.gate.set()
    assert [(c[1], c[2]) for c in pool.calls] == [
        ("chunk.write", b"\x01"), ("chunk.write_many", b"\x02\x03")]  # fmt: skip
    assert pool.cancelled == 0, "the request ended as the chunkserver answered it"
    # Each writer of it was told that answer, or cancelled: none that a replica failed.
    for chunk_id in (2, 3):
        assert outcomes[chunk_id] is None or not isinstance(outcomes[chunk_id], DfsError)


async def one_then_two(many: WriteMany, pool: StubPool) -> None:
    """Chunk 1's write alone, in flight while chunks 2 and 3 queue; then the gate opens."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(many.write, handle(1), 0, b"a")
        await wait_for(lambda: pool.in_flight == 1)
        for n, chunk_id in enumerate((2, 3), 1):
            tg.start_soon(many.write, handle(chunk_id), 0, bytes([chunk_id]))
            await wait_for(lambda n=n: len(many._sets[("h:1", "h:2", "h:3")].queue) == n)
        pool.gate.set()


async def test_a_chunkserver_without_write_many_gets_the_writes_one_by_one() -> None:
    pool = StubPool()
    many = ChunkIo(pool, io_timeout_s=1.0).many  # type: ignore[arg-type]
    pool.gate = anyio.Event()
    pool.answers = {"chunk.write_many": Unsupported("unknown op chunk.write_many")}
    await one_then_two(many, pool)
    assert [(c[1], c[2]) for c in pool.calls] == [
        ("chunk.write", b"a"), ("chunk.write_many", b"\x02\x03"),
        ("chunk.write", b"\x02"), ("chunk.write", b"\x03")]  # fmt: skip
    # One further down the chain: its refusals come back in the list, and go again alone.
    pool.calls.clear()
    refused = error_to_wire(Unsupported("unknown op", address="h:3"))
    pool.answers = {"chunk.write_many": {"errors": [refused, None]}}
    pool.gate = anyio.Event()
    await one_then_two(many, pool)
    assert [(c[1], c[2]) for c in pool.calls][1:] == [
        ("chunk.write_many", b"\x02\x03"), ("chunk.write", b"\x02")]  # fmt: skip
