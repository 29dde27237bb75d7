"""A server process's budgets: bytes in flight and connections, and its fd limit.

What it owns: the limits themselves (``Limits``, the config keys of every daemon that
serves ``dfs.rpc``, ``limits_from``), the process's account of bytes in flight
(``ByteBudget``), the count of accepted connections per peer host and in total
(``ConnectionCount``), and raising the file descriptor limit at start (``raise_fd_limit``).
What it must not do: touch a socket. ``dfs/rpc.py`` measures what each connection holds,
stops reading from it while a budget is used up, and closes connections it is told to
refuse; docs/ARCHITECTURE.md ("Budgets") says what each limit bounds.

BYTES IN FLIGHT. What a connection holds is the cost of its requests being handled (their
payload, plus the answer a handler was told to make: a ``chunk.read``'s size, given by the
server's ``request_bytes``) and the bytes of its answers not yet written to the socket
(queued, or in the transport's buffer). A request is admitted (read off the connection and
handed to its handler) only while the connection holds less than ``conn_inflight_bytes_max``
and the process's connections together less than ``inflight_bytes_max``; otherwise the
connection stops reading (TCP backpressure: the peer's sends block) until answers are
written and handlers finish. Each limit may be passed by at most one request (admission
looks at what is held, not at what comes next), so a process holds at most
``inflight_bytes_max`` plus one largest request.

Requests from servers (a peer that proved a server role) are not charged, only their
unwritten answers, per connection: a chunkserver forwarding a chain write waits for the
next one's answer while holding its own budget, and charging the forwarded copy too could
close a cycle of servers each waiting for the next one's budget. What servers send each
other is bounded by the budgets under which the first of the chain admitted the client's
request.

Between the events that free bytes (a handler finishing, the transport's buffer falling
below its low-water mark), the connections that hold bytes or are stalled are looked at
again every ``POLL_S`` (an answer drained below the transport's watermarks raises no event),
and only while some do.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Defaults. A connection may hold 32 MiB: a mount's read-ahead window (32 MiB of 4 MiB
# blocks, spread over the replicas) or four 4 MiB writes in flight per file stream at full
# speed under it. A process holds at most 96 MiB of requests and answers (plus one largest
# request): three connections streaming at once, tens of MiB of memory whatever peers do.
CONN_INFLIGHT_BYTES_MAX = 32 * MiB
INFLIGHT_BYTES_MAX = 96 * MiB
# Connections per peer host and in total. A host runs a few daemons and mounts, each with
# one connection per server, plus short-lived command-line clients; 256 leaves a wide
# margin. The total is further capped below the fd limit (``fd_connection_cap``).
HOST_CONNS_MAX = 256
CONNS_MAX = 4096
# Descriptors kept for everything but accepted connections (chunk files: the
# chunkserver's fd cache keeps up to 256; outgoing connections, logs, the loop), at most
# half of the limit.
FD_RESERVE = 320
# Connections allowed whatever the fd limit.
FD_CONNS_MIN = 16
# The highest fd limit asked for when the hard limit is unlimited.
FD_LIMIT_WANTED = 1 << 20
# How often a stalled connection looks again at what it holds.
POLL_S = 0.01
# The smallest budgets a config may set: a 16 MiB chunk.read must fit in one.
BYTES_MIN = 1 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    conn_inflight_bytes_max: int = CONN_INFLIGHT_BYTES_MAX
    inflight_bytes_max: int = INFLIGHT_BYTES_MAX
    host_conns_max: int = HOST_CONNS_MAX
    conns_max: int = CONNS_MAX


# The config keys, the same in every daemon's file (docs/ARCHITECTURE.md, "Budgets").
LIMIT_KEYS = frozenset(
    {"conn_inflight_bytes_max", "inflight_bytes_max", "host_conns_max", "conns_max"}
)


def limits_from(raw: dict[str, Any], path: Path | str) -> Limits:
    """The ``LIMIT_KEYS`` of a daemon's config file (``raw``, as read), defaults for the
    missing ones; ``ValueError`` says what is wrong."""
    values: dict[str, int] = {}
    for key in LIMIT_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if type(value) is not int or value < 1:
            raise ValueError(f"{path}: {key} must be an integer >= 1, not {value!r}")
        values[key] = value
    limits = Limits(**values)
    if limits.conn_inflight_bytes_max < BYTES_MIN:
        raise ValueError(f"{path}: conn_inflight_bytes_max must be at least {BYTES_MIN}")
    if limits.inflight_bytes_max < limits.conn_inflight_bytes_max:
        raise ValueError(f"{path}: inflight_bytes_max must be >= conn_inflight_bytes_max")
    if limits.conns_max < limits.host_conns_max:
        raise ValueError(f"{path}: conns_max must be >= host_conns_max")
    return limits


# ---------------------------------------------------------------------- bytes in flight


class ByteBudget:
    """The process's bytes in flight: each connection's charge, and the connections stalled
    until bytes are freed. Loop-bound; one per process (shared by its servers)."""

    def __init__(self, bytes_max: int = INFLIGHT_BYTES_MAX, *, poll_s: float = POLL_S) -> None:
        self.bytes_max = bytes_max
        self.used = 0
        self._poll_s = poll_s
        self._charges: dict[Account, int] = {}
        self._stalled: set[Account] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._wake_soon = False

    @property
    def exhausted(self) -> bool:
        return self.used >= self.bytes_max

    @property
    def stalled(self) -> int:
        return len(self._stalled)

    def charge(self, member: Account, amount: int) -> None:
        """Set ``member``'s charge to ``amount`` bytes; freeing bytes wakes the stalled."""
        old = self._charges.get(member, 0)
        if amount == old:
            return
        if amount:
            self._charges[member] = amount
            self._arm()  # answers drained below the watermarks raise no event
        else:
            del self._charges[member]
        self.used += amount - old
        if amount < old and self._stalled and self.used < self.bytes_max and not self._wake_soon:
            self._wake_soon = True
            asyncio.get_running_loop().call_soon(self._wake)

    def stall(self, member: Account) -> None:
        """``member`` stopped reading: retry it when bytes are freed, and every ``poll_s``."""
        self._stalled.add(member)
        self._arm()

    def unstall(self, member: Account) -> None:
        self._stalled.discard(member)

    def forget(self, member: Account) -> None:
        """``member`` is closed: it holds nothing and waits for nothing."""
        self.unstall(member)
        self.charge(member, 0)

    def _wake(self) -> None:
        self._wake_soon = False
        for member in list(self._stalled):
            if self.used >= self.bytes_max:
                break
            member.retry()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._poll_s, self._tick)

    def _tick(self) -> None:
        """Look again at every connection that holds bytes or is stalled, while any does."""
        self._timer = None
        for member in list(self._charges):
            member.refresh()
        for member in list(self._stalled):
            member.retry()
        if self._stalled or self._charges:
            self._arm()


class Account:
    """One connection's bytes in flight, against its own budget and the process's.

    The connection gives ``unwritten()`` (its answers queued or in the transport's buffer),
    ``go_on()`` (dispatch what was read, read again) and ``stuck()`` (its peer has read none
    of its answers for ``stuck_s``: drop it, it holds bytes others wait for). It adds the
    cost of each request it hands to a handler to ``reserved`` (only when ``charged``: the
    peer is not a server) and gives it back with ``release``.
    """

    def __init__(
        self,
        budget: ByteBudget,
        conn_bytes_max: int,
        unwritten: Callable[[], int],
        go_on: Callable[[], None],
        stuck: Callable[[], None],
        stuck_s: float,
    ) -> None:
        self.budget = budget
        self.conn_bytes_max = conn_bytes_max
        self._unwritten = unwritten
        self._go_on = go_on
        self._stuck = stuck
        self._stuck_s = stuck_s
        self.reserved = 0
        self.charged = False
        self.stalled = False  # over a budget: the connection reads and dispatches nothing
        self.closed = False
        self._unwritten_seen = 0
        self._moved_at = 0.0  # when the unwritten answers last went down

    def over(self) -> bool:
        """Whether a budget is used up; if so the connection is stalled until ``retry``
        finds room."""
        held = self.reserved + self._unwritten()
        budget = self.budget
        if self.charged:
            budget.charge(self, held)
        over = held >= self.conn_bytes_max or (self.charged and budget.exhausted)
        if over and not self.stalled:
            self.stalled = True
            self._unwritten_seen = 0
            self._moved_at = asyncio.get_running_loop().time()
            budget.stall(self)
        return over

    def release(self, cost: int) -> None:
        """A request's handler is done; its answer, if not written yet, is unwritten."""
        self.reserved -= cost
        self.refresh()

    def refresh(self) -> None:
        """Charge the process's budget with what the connection holds now."""
        if self.charged and not self.closed:
            self.budget.charge(self, self.reserved + self._unwritten())

    def retry(self) -> None:
        """Stalled: go on if the budgets allow, else watch that the peer reads."""
        if not self.stalled or self.closed:
            self.budget.unstall(self)
            return
        if not self.over():
            self.stalled = False
            self.budget.unstall(self)
            asyncio.get_running_loop().call_soon(self._go_on)
            return
        unwritten = self._unwritten()
        now = asyncio.get_running_loop().time()
        if unwritten == 0 or unwritten < self._unwritten_seen:
            self._moved_at = now
        self._unwritten_seen = unwritten
        if now - self._moved_at > self._stuck_s:
            self._stuck()

    def forget(self) -> None:
        """The connection is closed."""
        self.closed = True
        self.stalled = False
        self.budget.forget(self)


# ---------------------------------------------------------------------- connections


def fd_connection_cap(conns_max: int) -> int:
    """``conns_max``, lowered to fit the fd limit with ``FD_RESERVE`` left for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return conns_max
    return min(conns_max, max(FD_CONNS_MIN, soft - min(FD_RESERVE, soft // 2)))


class ConnectionCount:
    """Accepted connections per peer host and in total, against ``Limits``."""

    def __init__(self, limits: Limits) -> None:
        self.host_max = limits.host_conns_max
        self.total_max = fd_connection_cap(limits.conns_max)
        self.total = 0
        self._by_host: dict[Hashable, int] = {}

    def admit(self, host: Hashable) -> str | None:
        """Count a new connection from ``host``; None if admitted, else why it is refused."""
        if self.total >= self.total_max:
            return f"conns_max={self.total_max}"
        count = self._by_host.get(host, 0)
        if count >= self.host_max:
            return f"host_conns_max={self.host_max}"
        self._by_host[host] = count + 1
        self.total += 1
        return None

    def release(self, host: Hashable) -> None:
        count = self._by_host.get(host, 0)
        if count <= 0:
            return
        self.total -= 1
        if count == 1:
            del self._by_host[host]
        else:
            self._by_host[host] = count - 1


# ---------------------------------------------------------------------- fd limit


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (``FD_LIMIT_WANTED`` if that is
    unlimited); returns the soft limit in force. A server holds a descriptor per
    connection and per open chunk file: the usual soft default (1024) is a few hundred
    clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            log.info("fd limit stays at %d (cannot raise to %d: %s)", soft, wanted, e)
    return soft


__all__ = [
    "LIMIT_KEYS",
    "Account",
    "ByteBudget",
    "ConnectionCount",
    "Limits",
    "limits_from",
    "raise_fd_limit",
]
