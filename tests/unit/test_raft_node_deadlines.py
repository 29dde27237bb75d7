"""The node's waiter deadlines (``RaftNode._expire_at``): never early, at most a tick late."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dfs.types import NodeId
from dfs.wire.errors import Timeout
from metaserver.raft.node import NodeConfig, RaftNode


class _Nothing:
    def apply(self, data: bytes) -> Any:
        return None

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


def test_a_deadline_fails_its_waiter_in_the_first_sweep_after_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = NodeConfig(id=NodeId(1), data_dir=Path("unused"), peers={}, tick_ms=100)
        node = RaftNode(config, _Nothing(), b"secret")
        futures = {d: loop.create_future() for d in (0.95, 1.0, 1.05, 1.3, 7.0)}
        for deadline, future in futures.items():
            node._expire_at(deadline, future, f"waiter {deadline}")
        done = loop.create_future()
        done.set_result(None)
        node._expire_at(0.5, done, "already answered")  # a done waiter is left alone

        def expired() -> set[float]:
            return {d for d, f in futures.items() if f.done()}

        node._expire_deadlines(0.94)
        assert expired() == set()
        node._expire_deadlines(1.01)  # a tick: the period ending at 1.0 s has ended
        assert expired() == {0.95, 1.0}
        node._expire_deadlines(1.04)
        assert expired() == {0.95, 1.0}
        node._expire_deadlines(1.11)
        assert expired() == {0.95, 1.0, 1.05}
        # A deadline in a period already swept fails once the current period ends.
        late = loop.create_future()
        node._expire_at(0.2, late, "late")
        node._expire_deadlines(1.15)
        assert not late.done()
        node._expire_deadlines(1.21)
        assert late.done()
        node._expire_deadlines(1.41)  # ticks may come late: every ended period is swept
        assert expired() == {0.95, 1.0, 1.05, 1.3}
        for deadline in (0.95, 1.0, 1.05, 1.3):
            exc = futures[deadline].exception()
            assert isinstance(exc, Timeout) and f"waiter {deadline}" in str(exc)
        assert not futures[7.0].done() and done.result() is None
        assert isinstance(late.exception(), Timeout)

    asyncio.run(main())
