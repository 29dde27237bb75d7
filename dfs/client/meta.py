"""Metaserver calls: sessions ("lanes") for exactly-once mutations (design.md §3 invariant
6, docs/PROTOCOL.md "Mutations") over the one leader-following loop (``dfs/leader.py``).

What it owns: the lanes, and which leader-following loop its calls go through. What it must
not do: know what an op means (``FsClient`` builds the fields and reads the answers), or
retry on its own (``dfs/leader.py`` says when and where an op is sent again).

Retry rules: ``dfs/leader.py``. Every attempt carries the same fields: for a mutation that
means the same (``client``, ``seq``), so the state machine applies it at most once and
answers a duplicate with the first result. Any error but the retryable ones (``NotFound``,
``Exists``, ``AuthError``, ...) is the answer.

Membership changes. The configured addresses are where discovery starts, not a fixed set:
a hinted leader not among them joins them, and the leader's list of voters, when an answer
carries it (``fs.keepalive``: ``learn_members``), replaces them. A client started with the
addresses of a cluster that has since added and removed metaservers keeps finding its
leader as long as one of them still answers or points at it.

Lanes. A session (``client`` id) may have only one mutation in flight, so concurrent
mutations each take a lane: a random 63-bit client id with its own sequence counter. Lanes
are reused; at most ``lanes_max`` exist, and past that mutations wait for one. A lane whose
mutation ended without an answer (deadline passed) is retired, never reused: its last
command may still be pending in the log, and a new ``seq`` on that id could overtake it.

Who asks. Every ``fs.*`` request carries the client's ``holder`` id (unless the caller set
one), so that the leader can tell this client's requests from others' for directory
leases (docs/PROTOCOL.md). ``before(op, fields)`` (set by the owner) runs before every
request but those in ``UNORDERED``: the directory-lease queue flushes there, so that no
request of this client overtakes a removal it already acknowledged
(dfs/client/dirleases.py).
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from dfs.client.pool import ConnectionPool
from dfs.leader import RETRYABLE, LeaderFollower
from dfs.wire.errors import DfsError

# Requests that do not wait for ``before``: the flush itself, the answer to a recall, the
# renewal of leases and the reservation of inode numbers (nothing queued changes them).
UNORDERED = frozenset({"fs.batch", "fs.lease_release", "fs.lease_renew", "fs.reserve"})


class _Lane:
    __slots__ = ("client_id", "seq")

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seq = 0


class Resume:
    """A mutation's session, kept by its caller across calls: a ``mutate`` that got no
    answer (its deadline passed: the command may still be pending, or applied) leaves its
    (client, seq) here, and a later ``mutate`` with the same ``Resume`` sends it again
    under them, so that the metaservers apply it at most once and answer the first
    result (``metaserver/raft/sessions.py``). Settled once answered."""

    __slots__ = ("session",)

    def __init__(self) -> None:
        self.session: tuple[int, int] | None = None


class MetaClient:
    """Calls to the metaserver group, with leader discovery and exactly-once mutations."""

    def __init__(
        self,
        pool: ConnectionPool,
        addresses: Sequence[str],
        *,
        timeout_s: float,
        attempt_timeout_s: float,
        lanes_max: int,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self.follower = LeaderFollower(addresses, attempt_timeout_s=attempt_timeout_s, rng=rng)
        self.timeout_s = timeout_s
        self._lane_slots = anyio.Semaphore(lanes_max)
        self._free_lanes: list[_Lane] = []
        self._used_client_ids: set[int] = set()
        self.holder = 0  # the client's hold and lease id (0: none)
        self.before: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None

    async def _prepare(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        if self.before is not None and op not in UNORDERED:
            await self.before(op, fields)
        if self.holder and "holder" not in fields and op.startswith("fs."):
            return {**fields, "holder": self.holder}
        return fields

    async def read(
        self, op: str, *, timeout_s: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """A read-only op (no session): retried freely until the deadline."""
        fields = await self._prepare(op, fields)
        header, _ = await self._call_leader(op, timeout_s or self.timeout_s, fields)
        return header

    async def mutate(
        self, op: str, *, timeout_s: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """A mutation: takes a lane, gives the op the lane's next ``seq`` and retries it with
        the same (``client``, ``seq``) until it is answered or the deadline passes."""
        return await self._mutate(op, fields, timeout_s, None)

    async def mutate_resumable(self, op: str, resume: Resume, **fields: Any) -> dict[str, Any]:
        """``mutate``; a call that gets no answer leaves its session in ``resume``, and a
        call with a ``resume`` holding one sends the op again under it."""
        return await self._mutate(op, fields, None, resume)

    async def _mutate(
        self,
        op: str,
        fields: dict[str, Any],
        timeout_s: float | None,
        resume: Resume | None,
    ) -> dict[str, Any]:
        fields = await self._prepare(op, fields)
        if resume is not None and resume.session is not None:
            client_id, seq = resume.session
            fields = {**fields, "client": client_id, "seq": seq}
            try:
                header, _ = await self._call_leader(op, timeout_s or self.timeout_s, fields)
            except RETRYABLE:
                raise  # still no answer: the session stays for the next resend
            except DfsError:
                resume.session = None
                raise
            resume.session = None
            return header
        await self._lane_slots.acquire()
        lane = self._free_lanes.pop() if self._free_lanes else self._new_lane()
        reusable = False
        try:
            lane.seq += 1
            fields = {**fields, "client": lane.client_id, "seq": lane.seq}
            try:
                header, _ = await self._call_leader(op, timeout_s or self.timeout_s, fields)
            except RETRYABLE:
                # No answer: the command may still be pending; retire the lane (or hand
                # its session to the caller's resend).
                if resume is not None:
                    resume.session = (lane.client_id, lane.seq)
                raise
            except DfsError:
                reusable = True  # an answer (an error one): the session is settled
                raise
            reusable = True
            return header
        finally:
            if reusable:
                self._free_lanes.append(lane)
            self._lane_slots.release()

    def _new_lane(self) -> _Lane:
        while True:
            # 63 random bits: unique among clients without coordination; 0 means no session.
            client_id = int.from_bytes(os.urandom(8), "big") >> 1
            if client_id and client_id not in self._used_client_ids:
                self._used_client_ids.add(client_id)
                return _Lane(client_id)

    @property
    def leader(self) -> str | None:
        """The metaserver that answered last (None: unknown)."""
        return self.follower.leader

    @property
    def addresses(self) -> list[str]:
        return self.follower.addresses

    def learn_members(self, addresses: Sequence[Any]) -> None:
        self.follower.learn_members(addresses)

    async def _call_leader(
        self, op: str, timeout_s: float, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], bytes]:
        async def attempt(address: str, attempt_s: float) -> tuple[dict[str, Any], bytes]:
            # The server gives up a little before us, so that its Timeout answer arrives.
            return await self._pool.call(
                address, op, timeout_s=attempt_s, timeout_ms=max(1, int(attempt_s * 900)), **fields
            )

        return await self.follower.call(op, attempt, timeout_s=timeout_s)


__all__ = ["MetaClient", "Resume"]
