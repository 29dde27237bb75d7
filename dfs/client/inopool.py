"""Inode numbers and first chunks reserved for this client's creates (``fs.reserve``).

What it owns: the entries the leader reserved for this client (an inode number with the
write handle of a chunk placed for it), per replication goal, their local expiry, and
their refill in the background. ``FsClient`` takes one for a create it answers under a
directory lease (dirleases.py, "New files"); the create itself lands in the lease's next
``fs.batch``, where the namespace checks the entry is this client's and still valid
(``metaserver/namespace/pools.py``). What it must not do: know FUSE, the caches or the
queue, or import asyncio.

Validity: an entry is used only within half its life (``USE_FRACTION`` of ``ttl_ms``,
from the local time the request was sent) and while its token has at least half its life
left (minutes), so that the create that uses it lands long before the leader would
refuse it, even when its batch waits out an outage (the entries live a day). Unused
entries are simply dropped: their numbers are never used, and the leader sweeps them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from dfs.client.meta import MetaClient
from dfs.client.records import WriteHandle
from dfs.wire.errors import DfsError, Unsupported
from dfs.wire.messages import field, uint_field

log = logging.getLogger(__name__)

# Entries asked for at a time, and the count below which more are asked for: a tar x or
# cp -r creates a few hundred files a second, one reserve (a Raft commit) per 64 of them.
RESERVE_COUNT = 64
LOW_WATER = 24
# An entry is used only in this part of its life (module docstring).
USE_FRACTION = 0.5
# After a failed reserve, none is asked for again for this long (creates go the
# synchronous way meanwhile).
RETRY_AFTER_S = 2.0


@dataclass(frozen=True, slots=True)
class Reserved:
    ino: int
    handle: WriteHandle  # chunk 0's: version 1, length 0, the chain placed for it
    until: float  # local monotonic time after which it is not used


class InoPool:
    def __init__(self, meta: MetaClient, task_group: TaskGroup, holder: int) -> None:
        self._meta = meta
        self._tg = task_group
        self._holder = holder
        self._entries: dict[int, deque[Reserved]] = {}  # goal -> entries, oldest first
        self._filling: set[int] = set()  # goals with a reserve in flight
        self._quiet_until: dict[int, float] = {}  # goal -> no reserve before then
        self.enabled = True

    def take(self, goal: int) -> Reserved | None:
        """An entry for a file of ``goal`` replicas, if one is at hand (never waits); asks
        for more in the background when running low."""
        if not self.enabled or goal <= 0:
            return None
        now = anyio.current_time()
        entries = self._entries.get(goal)
        entry = None
        while entries:
            candidate = entries.popleft()
            if candidate.until > now:
                entry = candidate
                break
        low = entries is None or len(entries) < LOW_WATER
        if low and goal not in self._filling and self._quiet_until.get(goal, 0.0) <= now:
            self._filling.add(goal)
            self._tg.start_soon(self._fill, goal, name="inode pool refill")
        return entry

    def give_back(self, goal: int, entry: Reserved) -> None:
        """An entry taken but not used (the create went the synchronous way)."""
        self._entries.setdefault(goal, deque()).appendleft(entry)

    async def _fill(self, goal: int) -> None:
        try:
            sent_at = anyio.current_time()
            header = await self._meta.mutate(
                "fs.reserve", count=RESERVE_COUNT, goal=goal, holder=self._holder
            )
            ttl_s = uint_field(header, "ttl_ms") / 1000
            until = sent_at + ttl_s * USE_FRACTION
            fresh = []
            for wire in field(header, "entries", list):
                if type(wire) is not dict:
                    continue
                handle = WriteHandle.from_wire(0, field(wire, "handle", dict))
                token_left_s = handle.expiry_ms / 1000 - time.time()
                usable = min(until, sent_at + token_left_s * USE_FRACTION)
                fresh.append(Reserved(uint_field(wire, "ino"), handle, usable))
            if not fresh:
                self._quiet_until[goal] = anyio.current_time() + RETRY_AFTER_S
            self._entries.setdefault(goal, deque()).extend(fresh)
        except Unsupported:
            log.info("the metaservers reserve no inode numbers: creates stay synchronous")
            self.enabled = False
        except DfsError as e:
            log.debug("no inode numbers reserved for goal %d (%s)", goal, e)
            self._quiet_until[goal] = anyio.current_time() + RETRY_AFTER_S
        except Exception:  # never into the task group: the client must live on
            log.exception("reserving inode numbers failed")
            self._quiet_until[goal] = anyio.current_time() + RETRY_AFTER_S
        finally:
            self._filling.discard(goal)


__all__ = ["InoPool", "Reserved"]
