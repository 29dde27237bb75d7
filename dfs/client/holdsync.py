"""Open-file holds, as this client announces them (``fs.keepalive``, ``fs.release``).

What it owns: telling the leader which inodes this client has open (docs/PROTOCOL.md,
"Open-file holds": the leader keeps a file unlinked while some client holds it as an
orphan): the periodic announcement of every open inode (and the chunks being written,
so that the leader's upkeep leaves them alone), and the release of the holds of files
whose last handle closed, in batches. What it must not do: know the open-file table's
layout (``FsClient`` passes what it needs as callables) or import asyncio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from dfs.client.meta import MetaClient
from dfs.types import HOLDS_PER_REQUEST_MAX
from dfs.wire.errors import DfsError
from dfs.wire.messages import uint_field

log = logging.getLogger(__name__)

# Open-file holds are announced this often until the leader says otherwise (fs.keepalive).
KEEPALIVE_DEFAULT_S = 5.0
# How long the holds of closed files wait to be let go together, in one fs.release (a
# `cp -r` closes hundreds of files a second: one RPC each cost the leader as much as the
# commit). A hold kept this much longer only delays freeing a file unlinked meanwhile.
RELEASE_BATCH_S = 0.05
# The last batch, sent as the client closes, waits at most this long for its answer.
RELEASE_ON_CLOSE_S = 1.0


class HoldSync:
    """This client's holds, kept in step with the leader (module docstring)."""

    def __init__(
        self,
        meta: MetaClient,
        task_group: TaskGroup,
        holder: int,
        *,
        open_inos: Callable[[], list[int]],
        writing: Callable[[], list[int]],
    ) -> None:
        self._meta = meta
        self._tg = task_group
        self._holder = holder
        self._open_inos = open_inos  # the inodes this client has open, sorted
        self._writing = writing  # the chunk ids it is writing, sorted
        self._releasing: set[int] = set()  # closed, to let go of in the next batch
        self._keepalive_started = False

    @property
    def pending(self) -> bool:
        """Whether holds of closed files wait for their batch."""
        return bool(self._releasing)

    def released(self, ino: int) -> None:
        """The last handle on ``ino`` closed: tell the leader, in the background, together
        with the other holds let go of within ``RELEASE_BATCH_S`` (if it never hears, the
        hold ends with our next keepalive, or when we go silent)."""
        if not self._releasing:
            self._tg.start_soon(self._send_later, name="release holds")
        self._releasing.add(ino)

    async def _send_later(self) -> None:
        await anyio.sleep(RELEASE_BATCH_S)  # a batching delay, not a wait for a condition
        await self.send_pending()

    async def send_pending(self) -> None:
        """Send the holds waiting for their batch now. Also before this client's own unlink
        or rename: a hold still kept would make the name's file an orphan, and freeing it
        later a Raft command of its own (sqlite's journal, an editor's or git's lock file
        are unlinked right after their close)."""
        still_open = set(self._open_inos())
        inos = sorted(i for i in self._releasing if i not in still_open)  # not reopened
        self._releasing.clear()
        for i in range(0, len(inos), HOLDS_PER_REQUEST_MAX):
            batch = inos[i : i + HOLDS_PER_REQUEST_MAX]
            try:
                await self._meta.read("fs.release", inos=batch, holder=self._holder)
            except DfsError as e:
                log.debug("%d holds: release not delivered (%s); the keepalive will",
                          len(batch), e)  # fmt: skip

    def start_keepalive(self) -> None:
        if not self._keepalive_started:
            self._keepalive_started = True
            self._tg.start_soon(self._keepalive_loop, name="keepalive")

    async def _keepalive_loop(self) -> None:
        """Announce our holds while we have files open (the leader forgets holds not
        announced for a while, and a new leader learns them only from this)."""
        interval_s = KEEPALIVE_DEFAULT_S
        while True:
            # The first goes at once: it tells us the leader's interval, which may be
            # shorter than the default.
            if self._open_inos():
                interval_s = await self._keepalive(interval_s)
            await anyio.sleep(interval_s)  # a period, not a wait for a condition

    async def _keepalive(self, interval_s: float) -> float:
        """One announcement; returns the interval until the next."""
        try:
            header = await self._meta.read(
                "fs.keepalive", inos=self._open_inos(), holder=self._holder,
                writing=self._writing()[:HOLDS_PER_REQUEST_MAX],
            )  # fmt: skip
        except DfsError as e:
            log.debug("keepalive not delivered (%s)", e)
            return interval_s
        members = header.get("metaservers")
        if isinstance(members, list):
            self._meta.learn_members(members)
        return min(max(uint_field(header, "keepalive_ms", 5000), 500), 60_000) / 1000

    async def aclose(self) -> None:
        """Holds of files closed in the last batch window: let go of them now, or the
        leader keeps them until we have been silent for its hold grace."""
        if not self._releasing:
            return
        inos, self._releasing = sorted(self._releasing), set()
        with anyio.move_on_after(RELEASE_ON_CLOSE_S):
            try:
                await self._meta.read("fs.release", inos=inos[:HOLDS_PER_REQUEST_MAX],
                                      holder=self._holder)  # fmt: skip
            except DfsError as e:
                log.debug("holds not released at close (%s)", e)


__all__ = ["KEEPALIVE_DEFAULT_S", "RELEASE_BATCH_S", "HoldSync"]
