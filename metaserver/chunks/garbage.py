"""Garbage collection of chunks: when the replicas of deleted and truncated chunks go.

Pure: no I/O, no asyncio; the clock is passed in. The namespace keeps the garbage (chunk
id -> the replicas its set named when its file went or was cut: ``Namespace.garbage``);
the driver (``metaserver/repair.py``) asks ``Garbage.collect`` once no collection of
its is running, carries out the ``Collect`` (``chunk.delete`` on each live chunkserver,
at any version) and proposes ``gc_done`` for the chunks ``Collect.done`` names.

THE RULES
- **grace**: a chunk waits ``grace_s`` from when this leader first saw it in the garbage
  (so a slow reader of the old data still finds it, as GFS's lazy deletion); a new term
  starts every wait again.
- **batches**: at most ``GC_BATCH_MAX`` chunks a round (one ``gc_done`` command).
- **who deletes**: every live chunkserver the garbage names; one dead at the time deletes
  the chunk when it reports again (an unknown chunk: ``metaserver/chunks/reports.py``).
- **forgotten**: a chunk leaves the garbage (``gc_done``) only once every delete sent for
  it succeeded; the others are tried again next round.

SOFT STATE: when each chunk was first seen, forgotten on ``restart``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from metaserver.chunks.placement import Registry
from metaserver.namespace.ops import GC_BATCH_MAX


@dataclass(frozen=True, slots=True)
class Collect:
    """One round: ``deletes`` (live chunkserver -> its chunks to delete) for ``chunk_ids``."""

    chunk_ids: list[int]
    deletes: dict[int, list[int]]

    def done(self, failed: set[int]) -> list[int]:
        """The chunks to forget (``gc_done``): those no failed delete named."""
        return [c for c in self.chunk_ids if c not in failed]


class Garbage:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.seen: dict[int, float] = {}  # chunk id -> when this leader first saw it

    def restart(self) -> None:
        """A new term of leadership: every chunk waits its grace again."""
        self.seen.clear()

    def collect(
        self, garbage: Mapping[int, Sequence[int]], registry: Registry, now: float
    ) -> Collect | None:
        """The garbage whose grace is over, and who deletes it (None: nothing ripe)."""
        seen = self.seen
        for chunk_id in garbage:
            seen.setdefault(chunk_id, now)
        for chunk_id in [c for c in seen if c not in garbage]:
            del seen[chunk_id]
        ripe = [c for c, t in seen.items() if now - t >= self.grace_s][:GC_BATCH_MAX]
        if not ripe:
            return None
        deletes: dict[int, list[int]] = {}
        for chunk_id in ripe:
            for cs_id in garbage.get(chunk_id, ()):
                if registry.is_alive(cs_id, now):
                    deletes.setdefault(cs_id, []).append(chunk_id)
        return Collect(ripe, deletes)
