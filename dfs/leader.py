"""Following the metaserver leader: the one retry loop of every caller that sends a request
to "the leader" (the client's ``MetaClient``, hence the CLI and the mount; a chunkserver's
registration, heartbeats and reports; the Raft benchmark's key-value client).

What it owns: the guess of who leads, the order in which the metaservers are tried, the
backoff and the deadline. What it must not do: connect (the caller's ``attempt`` does, over
whichever driver it runs on) or know what an op means. It runs on anyio, so under trio (the
mount) and under asyncio (the daemons, the CLI) alike.

Rules. An op is attempted at the presumed leader: the last one that answered, else the
configured addresses in turn. Each attempt has its own deadline (``attempt_timeout_s``,
passed to ``attempt``) and the whole op an overall one (``timeout_s``). A ``NotLeader``
with a hint goes to the hinted address at once, at most ``HINT_HOPS_MAX`` times in a row
(during an election stale views may point in a ring); a hinted address not among the
configured ones joins them (a member added since we started). After ``NotLeader`` without
a hint (an election is going on), ``Unavailable``, ``Timeout``, ``Busy`` (and whatever else
the owner names in ``also_retry``) the next address is tried after a backoff, exponential
and jittered, from ``backoff_min_s`` to ``backoff_max_s``. Past the deadline the op fails
with ``Timeout`` (if the last attempt timed out, or none was made) or ``Unavailable``: it
never hangs. Any other error is the answer and is raised as it is. A caller that tries
again on its own schedule (a chunkserver's next heartbeat) asks for ``one_round``: the op
then tries each address at most once (hints included) and fails once none is left.

The caller sends the same fields on every attempt: for a mutation, the same session
(client, seq), so that the leader applies it at most once (design.md §3 invariant 6).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from dfs.wire.errors import Busy, DfsError, NotLeader, Timeout, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Leader hints followed in a row before backing off (during an election views disagree).
HINT_HOPS_MAX = 3
# Backoff between attempts when no leader is known: the first retry is quick (a leader
# change is usually over within a few heartbeats), later ones settle at a few per second.
BACKOFF_MIN_S = 0.02
BACKOFF_MAX_S = 0.5
# What is worth another attempt elsewhere (or later); anything else is the answer.
RETRYABLE: tuple[type[DfsError], ...] = (NotLeader, Unavailable, Timeout, Busy)

Attempt = Callable[[str, float], Awaitable[T]]  # (address, attempt_timeout_s) -> result


class LeaderFollower:
    """Where "the leader" is, and the loop that finds it (module docstring)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        attempt_timeout_s: float,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        also_retry: tuple[type[DfsError], ...] = (),
        rng: random.Random | None = None,
        name: str = "meta",
    ) -> None:
        if not addresses:
            raise ValueError("at least one metaserver address")
        self.addresses = list(addresses)
        self.attempt_timeout_s = attempt_timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.retryable = RETRYABLE + also_retry
        self.leader: str | None = None
        self.name = name
        self._next = 0
        self._rng = rng or random.Random()

    def candidate(self) -> str:
        """Where the next attempt goes."""
        if self.leader is not None:
            return self.leader
        return self.addresses[self._next % len(self.addresses)]

    def failed(self, address: str) -> None:
        """``address`` did not serve us: forget it as leader and move on to the next one."""
        if self.leader == address:
            self.leader = None
        if address in self.addresses:
            self._next = self.addresses.index(address) + 1
        else:
            self._next += 1

    def learn_members(self, addresses: Sequence[Any]) -> None:
        """The leader's current voters' addresses: where leader discovery goes from now on
        (a removed metaserver is no longer tried; an added one is)."""
        learned = [a for a in addresses if isinstance(a, str) and a]
        if learned and learned != self.addresses:
            log.info("%s: metaservers are now %s (were %s)", self.name, learned, self.addresses)
            self.addresses = learned
            self._next = 0

    async def call(
        self,
        op: str,
        attempt: Attempt[T],
        *,
        timeout_s: float,
        attempt_timeout_s: float | None = None,
        one_round: bool = False,
    ) -> T:
        """``attempt(address, attempt_s)`` at the leader until one answers or ``timeout_s``
        passes (the rules of the module docstring)."""
        attempt_max_s = attempt_timeout_s or self.attempt_timeout_s
        # Real time, read with time.monotonic: anyio.current_time (the same clock under
        # asyncio and trio's default) costs 1 µs a read, a sizeable part of a call's
        # client-side cost here; only relative durations reach anyio.
        deadline = time.monotonic() + timeout_s
        backoff_s = self.backoff_min_s
        last_error: DfsError | None = None
        hops = 0
        tried: set[str] = set()  # for one_round
        while True:
            remaining = deadline - time.monotonic()
            address = self.candidate()
            if one_round and address in tried:
                address = next((a for a in self.addresses if a not in tried), "")
            if remaining <= 0 or not address:
                message = f"{op}: no metaserver answered in {timeout_s} s (last: {last_error})"
                if remaining > 0:
                    message = f"{op}: no metaserver answered (last: {last_error})"
                if last_error is None or isinstance(last_error, Timeout):
                    raise Timeout(message, op=op)
                raise Unavailable(message, op=op)
            tried.add(address)
            try:
                result = await attempt(address, min(remaining, attempt_max_s))
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
                    self.failed(address)
            except self.retryable as e:
                last_error = e
                self.failed(address)
                log.debug("%s: %s at %s failed (%s); retrying", self.name, op, address, e)
            else:
                self.leader = address
                return result
            hops = 0
            pause_s = min(backoff_s * (0.5 + self._rng.random()), deadline - time.monotonic())
            await anyio.sleep(max(pause_s, 0.0))
            backoff_s = min(backoff_s * 2, self.backoff_max_s)


__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "HINT_HOPS_MAX", "RETRYABLE", "LeaderFollower"]
