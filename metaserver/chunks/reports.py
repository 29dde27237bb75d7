"""What chunkservers report, judged: the pages of a block report (``cs.report``) and the
replicas they found bad (``cs.bad_chunks``), against the chunk table.

Pure: no I/O, no asyncio; the clock is passed in. The driver (``metaserver/repair.py``)
hands each page in (``Reports.page``) and carries out the ``Verdict``; it hands each bad
replica in (``Reports.bad``) and carries out its drop, then asks whether the replica stays
in quarantine (``Reports.quarantined``). Goal counting (``ChunkCore.at_goal``), the quiet
window, the copies in flight and what vouches for a chunkserver are the core's.

THE RULES OF A BLOCK REPORT (each replica ``cs_id`` lists as chunk id, version, length)
- **unknown**: a chunk no file has, below the chunk id counter, neither garbage waiting for
  its grace (``metaserver/chunks/garbage.py``) nor reserved by a client for a create still
  on its way (``namespace/pools.py``): deleted (collected earlier, or never known) once
  this leader has seen it unknown for ``unknown_grace_s`` (the driver gives the garbage's
  grace): a group restored from a backup sees every chunk written after the backup so,
  and an operator who restored the wrong backup has that long to stop it.
- **not judged** (the report does not vouch for it, ``ChunkCore.report_done``): a chunk
  touched within ``quiet_s`` before the report began, or whose copy in flight targets
  ``cs_id`` (its replicas may be mid-change: a report built before a version push would
  look stale).
- **behind**: a member at an older version than the table's, or shorter than the chunk.
  The driver judges at most ``BEHIND_PER_REPORT`` per page (each asks the other members
  with ``chunk.info``, inside the chunkserver's ``cs.report`` call; the rest wait for the
  next report): ``metaserver/chunks/pushes.py`` judges it (stale, or a version no push
  delivered, or LENGTH RECOVERY). Not vouched for either way.
- **from the future**: a member at a newer version than the table's (only a group restored
  from an older backup sees one): logged, and the driver takes the table's version past it
  and pushes it (``Repair._overtake``): the members cut themselves to the table's length.
- **outside the set** at the table's version or older: deleted once the chunk has its
  goal of members vouched for (``ChunkCore.at_goal``; until then such a copy may be the
  best one left, as HDFS invalidates excess and stale replicas only then).
- **adoption**: a whole copy at the table's version outside the set while no member is
  alive: the set gets it back (``replica_add``, which bumps the version, then the push),
  at most ``BEHIND_PER_REPORT`` a page. Such a copy is a member dropped while it held the
  version (a push whose answer was lost twice, a trim whose delete has not come), so it
  holds the chunk's bytes; without it the chunk would stay missing.
- **lost**: once the report is complete, a chunk with data the set places on ``cs_id``
  that no page listed (but for chunks touched around the report: not judged).
Pages come in order from part 0; a page out of order ends the report (the next one
starts again); a report whose start this leader missed (a new term) is ignored.

THE RULES OF A BAD REPLICA (``cs_id`` found its replica bad: scrubber, read checksum,
disk error)
- a member at the table's version is marked bad (``ChunkCore.mark_bad``: it counts for
  nothing) and leaves the set, even as the last one (``keep_one`` false: never served
  again; the survey counts the chunk missing);
- a member behind the table is marked and leaves as a stale one would (never the last);
- the replica is then deleted, unless no other live member holds the chunk: it stays in
  its chunkserver's quarantine for an operator until the file goes (its other blocks may
  be all that is left of the chunk, as HDFS keeps a corrupt last replica).

SOFT STATE: the reports in progress and when each unknown chunk was first reported,
forgotten on ``restart`` (a new term of leadership).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from metaserver.chunks.core import ChunkCore, ChunkTable
from metaserver.chunks.placement import Registry
from metaserver.chunks.policy import ClusterPolicy

# Members behind the table (and copies to adopt) judged per report page; the rest wait for
# the next report.
BEHIND_PER_REPORT = 64


class ReportedTable(ChunkTable, Protocol):
    """What judging a report reads of the namespace (``metaserver.namespace.Namespace``)."""

    next_chunk_id: int
    reserved_chunks: dict[int, int]

    def policy(self) -> ClusterPolicy: ...


@dataclass(slots=True)
class _Report:
    started_s: float
    next_part: int = 0
    seen: set[int] = field(default_factory=set)
    doubt: set[int] = field(default_factory=set)  # members it could not vouch for


@dataclass(frozen=True, slots=True)
class Behind:
    """A member's replica behind the table's version or length, as reported."""

    chunk_id: int
    version: int
    length: int


@dataclass(slots=True)
class Verdict:
    """What one page of a block report asks of the driver."""

    delete: list[list[int]] = field(default_factory=list)  # [chunk id, version] to delete
    behind: list[Behind] = field(default_factory=list)  # judged with the other members
    adopt: list[int] = field(default_factory=list)  # whole copies to add back to their sets
    lost: list[int] = field(default_factory=list)  # members to drop (even the last one)
    # (chunk id, version, the table's version): a member newer than the table, logged
    future: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BadDrop:
    """Drop a member reported bad from its set (``keep_one``: never the last member)."""

    keep_one: bool
    why: str  # "bad" | "stale_bad"


class Reports:
    def __init__(self, core: ChunkCore, unknown_grace_s: float = 0.0) -> None:
        self.core = core
        self.unknown_grace_s = unknown_grace_s
        self.pages: dict[int, _Report] = {}  # cs id -> its report in progress
        self.unknown: dict[int, float] = {}  # chunk id -> when first reported unknown

    def restart(self) -> None:
        """A new term of leadership: reports begun before it are not finished, and every
        unknown chunk waits its grace again."""
        self.pages.clear()
        self.unknown.clear()

    def page(
        self,
        ns: ReportedTable,
        registry: Registry,
        cs_id: int,
        entries: Sequence[Sequence[int]],
        part: int,
        final: bool,
        now: float,
    ) -> Verdict | None:
        """Judge page ``part`` of ``cs_id``'s block report (``final``: its last); None:
        the page is out of order, nothing to do. A final page ends the report: the core
        learns what it vouched for (``ChunkCore.report_done``)."""
        core = self.core
        state = self.pages.get(cs_id)
        if part == 0 or state is None:
            if part != 0:
                return None  # the start was missed (new term): wait for the next report
            state = self.pages[cs_id] = _Report(started_s=now)
        if part != state.next_part:
            del self.pages[cs_id]
            return None
        state.next_part += 1
        out = Verdict()
        adopt: list[int] = []
        behind: list[Behind] = []
        policy = ns.policy()
        for chunk_id, version, length in entries:
            state.seen.add(chunk_id)
            chunk = ns.chunk_table.get(chunk_id)
            if chunk is None:
                if (
                    chunk_id not in ns.garbage
                    and chunk_id < ns.next_chunk_id
                    and chunk_id not in ns.reserved_chunks  # a create still on its way
                    and now - self.unknown.setdefault(chunk_id, now) >= self.unknown_grace_s
                ):
                    del self.unknown[chunk_id]
                    out.delete.append([chunk_id, version])  # collected earlier, or never known
                continue
            copy = core.copies.get(chunk_id)
            if not core.quiet(chunk_id, now, state.started_s) or (
                copy is not None and copy.target == cs_id
            ):
                state.doubt.add(chunk_id)
                continue
            if cs_id in chunk.replicas:
                if version < chunk.version or (version == chunk.version and length < chunk.length):
                    behind.append(Behind(chunk_id, version, length))
                    state.doubt.add(chunk_id)
                elif version > chunk.version:
                    out.future.append((chunk_id, version, chunk.version))
            elif version <= chunk.version and core.at_goal(ns, registry, policy, chunk, now):
                out.delete.append([chunk_id, version])  # dropped from the set earlier
            elif (
                version == chunk.version
                and length >= chunk.length > 0
                and not any(registry.is_alive(c, now) for c in chunk.replicas)
            ):
                adopt.append(chunk_id)
        if final:
            del self.pages[cs_id]
            for chunk_id, chunk in ns.chunk_table.items():
                if chunk.length > 0 and cs_id in chunk.replicas and chunk_id not in state.seen:
                    if core.quiet(chunk_id, now, state.started_s):
                        out.lost.append(chunk_id)
                    else:
                        state.doubt.add(chunk_id)
            core.report_done(cs_id, state.started_s, state.doubt)
        out.behind = behind[:BEHIND_PER_REPORT]
        out.adopt = adopt[:BEHIND_PER_REPORT]
        return out

    def bad(self, ns: ChunkTable, cs_id: int, chunk_id: int, version: int) -> BadDrop | None:
        """``cs_id`` found its replica of ``chunk_id`` (at ``version``) bad: marked bad in the
        core, and the drop to propose (None: not a member, or newer than the table)."""
        chunk = ns.chunk_table.get(chunk_id)
        if chunk is None or cs_id not in chunk.replicas or version > chunk.version:
            return None
        self.core.mark_bad(chunk_id, cs_id, chunk.version)
        if version == chunk.version:
            return BadDrop(keep_one=False, why="bad")
        return BadDrop(keep_one=True, why="stale_bad")  # behind, and now bad too

    def quarantined(
        self, ns: ChunkTable, registry: Registry, cs_id: int, chunk_id: int, now: float
    ) -> bool:
        """Whether ``cs_id``'s bad replica of ``chunk_id`` stays (in its quarantine) rather
        than being deleted: the chunk is still known and no other live member holds it."""
        chunk = ns.chunk_table.get(chunk_id)
        return chunk is not None and not any(
            c != cs_id and registry.is_alive(c, now) for c in chunk.replicas
        )
