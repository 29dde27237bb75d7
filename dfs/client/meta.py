"""Metaserver calls: leader discovery, retries, and sessions ("lanes") for exactly-once
mutations (design.md §3 invariant 6, docs/PROTOCOL.md "Mutations").

What it owns: the guess of who leads, the retry loop, and the lanes. What it must not do:
know what an op means; ``FsClient`` builds the fields and reads the answers.

Retry rules. An op is attempted at the presumed leader; each attempt has its own deadline
(``attempt_timeout_s``) and the whole op an overall one (``timeout_s``). After ``Timeout``,
``Unavailable``, ``Busy`` or ``NotLeader`` the op is sent again, *with the same fields*:
for a mutation that means the same (``client``, ``seq``), so the state machine applies it
at most once and answers a duplicate with the first result. Past the overall deadline the
op fails with ``Timeout`` (if the last attempt timed out) or ``Unavailable``: it never
hangs. Any other error (``NotFound``, ``Exists``, ``AuthError``, ...) is the answer.

Leader discovery. Try the last known leader, else the configured addresses in turn. A
``NotLeader`` with a hint goes to the hinted address at once (at most ``HINT_HOPS_MAX``
times in a row: during an election stale views may point in a ring); without one (an
election is going on) the next address is tried after a backoff (exponential, jittered).

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

import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from dfs.client.pool import ConnectionPool
from dfs.wire.errors import Busy, DfsError, NotLeader, Timeout, Unavailable

log = logging.getLogger(__name__)

# Leader hints followed in a row before backing off (during an election views disagree).
HINT_HOPS_MAX = 3
# Backoff between attempts when no leader is known: the first retry is quick (a leader
# change is usually over within a few heartbeats), later ones settle at a few per second.
BACKOFF_MIN_S = 0.02
BACKOFF_MAX_S = 0.5

_RETRYABLE = (NotLeader, Unavailable, Timeout, Busy)
# Requests that do not wait for ``before``: the flush itself, the answer to a recall, and
# the reservation of inode numbers (nothing queued changes it).
UNORDERED = frozenset({"fs.batch", "fs.lease_release", "fs.reserve"})


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
        if not addresses:
            raise ValueError("at least one metaserver address")
        self._pool = pool
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.leader: str | None = None
        self._next = 0
        self._rng = rng or random.Random()
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
            except _RETRYABLE:
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
            except _RETRYABLE:
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

    def learn_members(self, addresses: Sequence[Any]) -> None:
        """The leader's current voters' addresses: where leader discovery goes from now on
        (a removed metaserver is no longer tried; an added one is)."""
        learned = [a for a in addresses if isinstance(a, str) and a]
        if learned and learned != self.addresses:
            log.info("meta: metaservers are now %s (were %s)", learned, self.addresses)
            self.addresses = learned
            self._next = 0

    def _candidate(self) -> str:
        if self.leader is not None:
            return self.leader
        return self.addresses[self._next % len(self.addresses)]

    def _failed(self, address: str) -> None:
        """``address`` did not serve us: forget it as leader and move on to the next one."""
        if self.leader == address:
            self.leader = None
        if address in self.addresses:
            self._next = self.addresses.index(address) + 1
        else:
            self._next += 1

    async def _call_leader(
        self, op: str, timeout_s: float, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], bytes]:
        deadline = anyio.current_time() + timeout_s
        backoff_s = BACKOFF_MIN_S
        last_error: DfsError | None = None
        hops = 0
        while True:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                message = f"{op}: no metaserver answered in {timeout_s} s (last: {last_error})"
                if last_error is None or isinstance(last_error, Timeout):
                    raise Timeout(message, op=op)
                raise Unavailable(message, op=op)
            attempt_s = min(remaining, self.attempt_timeout_s)
            address = self._candidate()
            try:
                # The server gives up a little before us, so that its Timeout answer arrives.
                result = await self._pool.call(
                    address,
                    op,
                    timeout_s=attempt_s,
                    timeout_ms=max(1, int(attempt_s * 900)),
                    **fields,
                )
            except NotLeader as e:
                last_error = e
                hint = e.leader_hint
                if hint and hint != address:
                    self.leader = hint
                    if hint not in self.addresses:
                        self.addresses.append(hint)  # a member added since we started
                    hops += 1
                    if hops <= HINT_HOPS_MAX:
                        continue
                else:
                    self._failed(address)
            except _RETRYABLE as e:
                last_error = e
                self._failed(address)
                log.debug("meta: %s at %s failed (%s); retrying", op, address, e)
            else:
                self.leader = address
                return result
            hops = 0
            pause_s = min(backoff_s * (0.5 + self._rng.random()), deadline - anyio.current_time())
            await anyio.sleep(max(pause_s, 0.0))
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)


__all__ = ["MetaClient", "Resume"]
