"""What a write handle decides of a chunk's replicas (``fs.write_handle``, and
``fs.create`` with ``first_chunk``): which members an existing chunk's handle drops, where a
new chunk goes.

Pure: no I/O, no asyncio; the clock is passed in, randomness is the placer's. The server
(``MetaServer._write_handle``, ``_create_with_chunk``) and the chunk simulation's writers
(``metaserver/chunks/simclients.py``) both ask it, so the simulation runs the server's
rules. The handle's version push and its settling are the driver's
(``Repair.settle_handle``).

THE RULES
- **an existing chunk with data and no replica left** (its last replica was bad) is
  refused (``Unavailable``): a bump would make stale the copy the upkeep may still adopt
  (``metaserver/chunks/reports.py``). There is nothing to write to.
- **an existing chunk**: its members on dead chunkservers, and those the writer saw fail
  (the handle's ``drop``: PROTOCOL.md), leave the set with the handle's version bump, as
  HDFS's pipeline recovery drops a datanode.
- **a new chunk** is placed on ``goal`` live chunkservers (``Placer``), once, and the
  placement travels in the command (it is not deterministic). A new leader that has not
  heard every live chunkserver yet does not know their free space: when it cannot place
  ``goal`` replicas then, it refuses (``Unavailable``; the client retries) rather than put
  the chunk under its goal for want of one heartbeat. No chunkserver with room: ``NoSpace``.
- **a file created with its first chunk** gets one only when placing it is sound now (the
  goal placed, or every chunkserver heard); else the file is created without a chunk and
  its writer asks for a handle later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dfs.wire.errors import NoSpace, Unavailable
from metaserver.chunks.placement import Placer, Registry


def check_writable(chunk: Mapping[str, Any]) -> None:
    """``Unavailable`` when ``chunk`` (``Namespace.chunks``'s entry) has data and no
    replica left: nothing to write to."""
    if chunk["length"] and not chunk["replicas"]:
        # Missing (its last replica was bad): a bump would make stale the copy the
        # upkeep may still adopt.
        raise Unavailable("the chunk has no replica left", chunk_id=chunk["chunk_id"])


def handle_drop(
    chunk: Mapping[str, Any], reported: Iterable[int], registry: Registry, now: float
) -> list[int]:
    """The members a handle of ``chunk`` (``Namespace.chunks``'s entry) drops: those the
    writer ``reported`` and those on dead chunkservers."""
    reported = set(reported)
    return [c for c in chunk["replicas"] if c in reported or not registry.is_alive(c, now)]


def place_chunk(
    placer: Placer, registry: Registry, goal: int, reserve_bytes: int, now: float
) -> list[int]:
    """A new chunk's replicas (``Unavailable``: a new leader waiting for heartbeats;
    ``NoSpace``: no live chunkserver with room)."""
    alive = registry.alive(now)
    replicas = placer.place(alive, goal, reserve_bytes=reserve_bytes)
    if len(replicas) < goal and any(c.last_heard_s is None for c in alive):
        raise Unavailable("new leader waiting for chunkserver heartbeats")
    if not replicas:
        raise NoSpace("no live chunkserver with free space", alive=len(alive))
    return replicas


def place_first_chunk(
    placer: Placer, registry: Registry, goal: int, reserve_bytes: int, now: float
) -> list[int]:
    """A created file's first chunk's replicas; [] when the file is to be created without
    one (see the module docstring)."""
    alive = registry.alive(now)
    replicas = placer.place(alive, goal, reserve_bytes=reserve_bytes)
    if len(replicas) == goal or not any(c.last_heard_s is None for c in alive):
        return replicas
    return []
