"""The node's waiter deadlines (``RaftNode._expire_at``): a sweep fails exactly the waiters
whose deadline has passed and that still wait; the others are left alone. Proposals that
call back (``propose_nowait``) are answered once and leave the tables as futures do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dfs.types import LogIndex, NodeId, Term
from dfs.wire.errors import DfsError, Timeout, Unavailable
from metaserver.raft.node import NodeConfig, RaftNode


class _Nothing:
    def apply(self, data: bytes) -> Any:
        return None

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


def test_a_sweep_fails_the_waiters_whose_deadline_passed() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = NodeConfig(id=NodeId(1), data_dir=Path("unused"), peers={}, tick_ms=100)
        node = RaftNode(config, _Nothing(), b"secret")
        futures = {d: loop.create_future() for d in (0.95, 1.0, 1.05, 7.0)}
        for deadline, future in futures.items():
            node._expire_at(deadline, future, f"waiter {deadline}")
        answered = loop.create_future()
        answered.set_result(None)
        node._expire_at(0.5, answered, "already answered")

        def expired() -> set[float]:
            return {d for d, f in futures.items() if f.done()}

        node._expire_deadlines(0.94)
        assert expired() == set()
        node._expire_deadlines(1.0)
        assert expired() == {0.95, 1.0}
        node._expire_deadlines(1.2)
        assert expired() == {0.95, 1.0, 1.05}
        for deadline in (0.95, 1.0, 1.05):
            exc = futures[deadline].exception()
            assert isinstance(exc, Timeout) and f"waiter {deadline}" in str(exc)
        assert not futures[7.0].done() and answered.result() is None

    asyncio.run(main())


class _Core:
    term = Term(3)


def test_a_waiter_that_stops_waiting_leaves_no_deadline_behind() -> None:
    """Deadlines of answered proposals must not pile up (the leader answers thousands a
    second, each with a deadline seconds away)."""

    async def main() -> None:
        config = NodeConfig(id=NodeId(1), data_dir=Path("unused"), peers={}, tick_ms=100)
        node = RaftNode(config, _Nothing(), b"secret")
        node._raw = _Core()  # type: ignore[assignment]  # _wait_applied asks it the term
        waits = [asyncio.ensure_future(node._wait_applied(LogIndex(i), 5.0)) for i in range(1, 4)]
        await asyncio.sleep(0)
        assert len(node._deadlines) == 3
        for _term, future in list(node._proposals.values()):
            future.set_result("ok")
        assert await asyncio.gather(*waits) == ["ok"] * 3
        assert node._deadlines == {} and node._proposals == {}

    asyncio.run(main())


def test_waiters_failed_by_stop_raise_their_error() -> None:
    """stop() fails the waiters and drops every deadline before they resume: each must
    still raise its own error (a KeyError here once became an INTERNAL answer)."""

    async def main() -> None:
        config = NodeConfig(id=NodeId(1), data_dir=Path("unused"), peers={}, tick_ms=100)
        node = RaftNode(config, _Nothing(), b"secret")
        node._raw = _Core()  # type: ignore[assignment]
        waits = [asyncio.ensure_future(node._wait_applied(LogIndex(i), 5.0)) for i in range(1, 3)]
        await asyncio.sleep(0)
        node._fail_waiters(Unavailable("raft node stopped"))
        node._deadlines.clear()  # as stop() does
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), results

    asyncio.run(main())


class _ProposingCore:
    term = Term(3)

    def __init__(self) -> None:
        self.index = 0

    def propose(self, data: bytes) -> LogIndex:
        self.index += 1
        return LogIndex(self.index)


def test_proposals_that_call_back_are_answered_once_and_leave_no_trace() -> None:
    """``propose_nowait``'s callback gets the timeout, the failure of every waiter (a lost
    leadership, a stop), or a result: once each, and the proposal leaves ``_proposals``
    and ``_deadlines`` either way."""

    async def main() -> None:
        config = NodeConfig(id=NodeId(1), data_dir=Path("unused"), peers={}, tick_ms=100)
        node = RaftNode(config, _Nothing(), b"secret")
        node._raw = _ProposingCore()  # type: ignore[assignment]
        answers: dict[int, list[tuple[Any, DfsError | None]]] = {1: [], 2: [], 3: []}
        for i in (1, 2, 3):
            node.propose_nowait(
                b"x", 1.0 if i == 1 else 60.0, lambda r, e, i=i: answers[i].append((r, e))
            )
        assert len(node._proposals) == 3 and len(node._deadlines) == 3
        node._expire_deadlines(asyncio.get_running_loop().time() + 2.0)
        assert len(answers[1]) == 1 and isinstance(answers[1][0][1], Timeout)
        assert set(node._proposals) == {2, 3} and len(node._deadlines) == 2
        _term, waiter = node._proposals.pop(2)  # as _apply does: pop, then answer
        waiter.set_result("ok")
        waiter.set_exception(Unavailable("a second answer is ignored"))
        assert answers[2] == [("ok", None)]
        node._fail_waiters(Unavailable("not leading any more"))
        assert len(answers[3]) == 1 and isinstance(answers[3][0][1], Unavailable)
        assert node._proposals == {} and node._deadlines == {}
        assert [len(a) for a in answers.values()] == [1, 1, 1]

    asyncio.run(main())
