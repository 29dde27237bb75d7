"""Version pushes: what their outcomes mean, and what to do when a new version did not get
through.

Every new version of a chunk (a handle's bump, a truncate's cut, a copy's fence and join)
is pushed to the members before anyone uses it (an empty ``chunk.write``: each cuts
itself to the length and takes the version). Pure: no I/O, no asyncio; the clock is passed
in. The driver (``metaserver/repair.py``) sends the pushes and the ``chunk.info`` calls
that confirm them, hands in what came back and carries out the answers.

THE RULES
- **one push's outcome** (``Pushes.outcome``): a member took the version when its push
  was answered, when it refused it for a newer version (a later bump's push got there
  first), or when ``chunk.info`` shows it holds the version (only the answer was lost:
  dropping it would lose a good copy). A live member that answered neither, push nor
  ``chunk.info`` (both lost, or late), has not failed: it may well hold the version, and
  dropping it would make it stale for good (with bit rot on the other members the
  simulation lost acknowledged bytes so). It stays in the set, not vouched for
  (``ChunkCore.push_unanswered``), and is pushed again every step until it answers, dies
  or leaves (``Pushes.unanswered_due``; one that then refuses it failed and leaves the
  set). A recovery's source must be known to hold the version: for it (``keep_unanswered``
  false) such a member failed. Any other member failed: it stays at the old version,
  never served, and leaves the set once another took the version.
- **none took it** (``Pushes.unpushed``): every member still holds the chunk's bytes at
  the old version, now refused. The version is pushed again every step
  (``Pushes.again_due``) until one takes it, unless every member is short of the table's
  length: then LENGTH RECOVERY first (``Pushes.recovery_members``,
  ``Pushes.recovered_length``).
- **a member behind the table** in a block report (``Pushes.behind``,
  ``Pushes.behind_verdict``): stale (it leaves the set and is deleted) only when another
  live member holds the table's version and length (``chunk.info``). When none does, the
  table's version is one no push delivered (the leader that bumped it failed first, or
  every push failed); every member then holds the chunk's bytes, because a writer gets a
  handle only after some replica took its version, and members that did not take it
  leave the set before that: so a whole one is pushed the version again (and the other
  members behind, once this leader found that, are pushed too without asking again).
  One short of the table's length with no better copy anywhere: LENGTH RECOVERY, or,
  when that cannot be judged, kept (the best copy there is).
- **LENGTH RECOVERY.** A close puts a file's bytes on every replica of the chain (in each
  one's page cache) and commits their length; only an fsync makes them durable. A power
  loss of every replica in between leaves the table counting bytes no replica holds:
  every read of them fails, and every new version is refused (a replica never grows to a
  handle's length with zeros). When every member is up and answers ``chunk.info``
  shorter than the table, no better copy will come back: the length goes down to the
  longest copy at the newest version any member holds (``length_recover``), and the
  members that do not hold exactly that (shorter, or an older version, whose bytes may
  differ) leave the set, to be deleted as stale. As HDFS's block recovery settles a
  pipeline's replicas on a length nobody acknowledged beyond, but here the length had
  been acknowledged: the writer had not asked for durability.

SOFT STATE: the versions no member took, the versions this leader pushed again after a
report; forgotten on ``restart``. The members a push got no answer from are the core's
(``ChunkCore.unanswered``: they are not vouched for).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from metaserver.chunks.core import ChunkCore, ChunkTable
from metaserver.chunks.placement import Registry
from metaserver.chunks.reports import Behind


class Outcome(Enum):
    TOOK = "took"
    UNANSWERED = "unanswered"  # kept in the set, not vouched for, pushed again
    FAILED = "failed"


class BehindVerdict(Enum):
    """What to do with a member behind the table (``Pushes.behind_verdict``)."""

    DROP = "drop"  # stale: out of the set, deleted once the chunk is at goal
    PUSH_AGAIN = "push_again"  # the table's version is one no push delivered
    RECOVER_LENGTH = "recover_length"  # short, with no better copy anywhere
    LATER = "later"  # the table moved on, or a recovery took the chunk: a later report


@dataclass(frozen=True, slots=True)
class BehindCheck:
    """A member behind the table, to judge: ``ask`` the live others with ``chunk.info``
    whether they hold the table's version and length (empty: no need). ``chunk`` is the
    table's entry, read when each answer is judged (the table may move on meanwhile)."""

    cs_id: int
    chunk: Any
    whole: bool  # it holds the table's length, at an older version
    ask: tuple[int, ...]
    version: int  # the table's version when the check began


@dataclass(frozen=True, slots=True)
class Again:
    """Push ``version`` (and ``length``) of ``chunk`` (the table's entry) again to its
    members."""

    chunk: Any
    version: int
    length: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """LENGTH RECOVERY's answer: propose ``length_recover`` down to ``to`` (the newest
    version any member holds is ``best``); ``keep`` the members holding exactly that,
    ``drop`` the others."""

    best: int
    to: int
    keep: tuple[int, ...]
    drop: tuple[int, ...]


class Pushes:
    def __init__(self, core: ChunkCore) -> None:
        self.core = core
        # chunk id -> (version, length): a new version no replica took (every push failed)
        # and that no writer was given: pushed again until one takes it, so that the
        # replicas, which hold the chunk's data at the old version, serve again.
        self.untaken: dict[int, tuple[int, int]] = {}
        # chunk id -> version: versions this leader found on no member after a report and
        # pushed again (``behind``).
        self.repushed: dict[int, int] = {}

    def restart(self) -> None:
        """A new term of leadership: forget everything heard before."""
        self.untaken.clear()
        self.repushed.clear()

    def prune(self, ns: ChunkTable) -> None:
        table = ns.chunk_table
        for chunk_id, version in list(self.repushed.items()):
            chunk = table.get(chunk_id)
            if chunk is None or chunk.version != version:
                del self.repushed[chunk_id]

    # ------------------------------------------------------------------ one push

    def outcome(
        self,
        chunk_id: int,
        cs_id: int,
        version: int,
        *,
        newer: int | None = None,
        held: bool | None = True,
        lost: bool = False,
        alive: bool = True,
        keep_unanswered: bool = True,
    ) -> Outcome:
        """What the push of ``version`` to ``cs_id`` came to, and the core told so. It was
        answered (the defaults), or it failed: ``newer``, the newer version the member
        refused it for; ``held``, what ``chunk.info`` said after (whether it holds
        ``version`` or newer; None: no answer, or not asked); ``lost``, no answer came to
        the push (as opposed to a refusal); ``alive``, the registry's word on it now."""
        core = self.core
        if newer is not None and newer > version:
            core.push_answered(chunk_id, cs_id)  # a later bump's push got there first
            return Outcome.TOOK
        if held:
            core.push_answered(chunk_id, cs_id)  # only the answer was lost
            return Outcome.TOOK
        if held is None and keep_unanswered and lost and alive:
            core.push_unanswered(chunk_id, cs_id, version)
            return Outcome.UNANSWERED
        return Outcome.FAILED

    @staticmethod
    def confirm(stale: bool, newer: int | None, version: int) -> bool:
        """Whether a failed push is confirmed with ``chunk.info``: not when the member
        refused the version as stale (it said what it holds), nor for a newer one."""
        return not stale and not (newer is not None and newer > version)

    def unanswered(self) -> list[tuple[int, int, int]]:
        """The members a push of the chunk's version got no answer from: (chunk id, cs id,
        version), each to be pushed again (``unanswered_due``)."""
        return [
            (chunk_id, cs_id, version)
            for chunk_id, members in self.core.unanswered.items()
            for cs_id, version in members.items()
        ]

    def unanswered_due(
        self, ns: ChunkTable, registry: Registry, chunk_id: int, cs_id: int, version: int,
        now: float,
    ) -> int | None:  # fmt: skip
        """The length to push ``version`` again with to ``cs_id``, a member a push of it
        got no answer from; None: no longer to be asked (the chunk moved on to a later
        version, whose push asks it again; it left the set, or died, as any dead member),
        and forgotten."""
        chunk = ns.chunk_table.get(chunk_id)
        if (
            chunk is None
            or chunk.version != version
            or cs_id not in chunk.replicas
            or not registry.is_alive(cs_id, now)
        ):
            self.core.push_answered(chunk_id, cs_id)
            return None
        return int(chunk.length)

    # ------------------------------------------------------------------ none took it

    def unpushed(self, chunk_id: int, version: int, length: int) -> None:
        """No member took ``version`` of the chunk: pushed again (``again_due``)."""
        self.untaken[chunk_id] = (version, length)

    def is_unpushed(self, chunk_id: int) -> bool:
        return chunk_id in self.untaken

    def pushed(self, chunk_id: int) -> None:
        """A member took the chunk's latest version."""
        self.untaken.pop(chunk_id, None)

    def again_due(self, ns: ChunkTable) -> Iterator[Again]:
        """The versions no member took, to push again to the chunk's set; those the chunk
        moved on from (a later version, a recovered length, gone) are forgotten. Lazily:
        each is judged when the driver gets to it (after the pushes before it)."""
        for chunk_id, (version, length) in list(self.untaken.items()):
            chunk = ns.chunk_table.get(chunk_id)
            if (
                chunk is None
                or chunk.version != version
                or chunk.length != length
                or not chunk.replicas  # every member was found lost: nobody to push to
            ):
                self.untaken.pop(chunk_id, None)
                continue
            yield Again(chunk, version, length)

    def again_done(self, again: Again, failed: Sequence[int]) -> bool:
        """Whether the push ``again`` got through: a member took it (``failed`` are those
        that did not, of the set as it is now). A handle's ``settle_version`` may have
        cleared it during the push."""
        if len(failed) < len(again.chunk.replicas):
            self.untaken.pop(again.chunk.chunk_id, None)
            return True
        return False

    # ------------------------------------------------------------------ behind the table

    def behind(
        self, ns: ChunkTable, registry: Registry, cs_id: int, b: Behind, now: float
    ) -> BehindCheck | None:
        """A member's report of ``b``, behind the table, to judge (None: no longer a
        member, or the chunk is gone)."""
        chunk = ns.chunk_table.get(b.chunk_id)
        if chunk is None or cs_id not in chunk.replicas or self.core.writer_left(b.chunk_id):
            return None  # a WRITER RECOVERY settles its members itself
        whole = b.length >= chunk.length and b.version < chunk.version
        # Once this leader found no member at the version and pushed it again, the other
        # members behind are in the same case: pushed too, not deleted.
        repushed = self.repushed.get(b.chunk_id) == chunk.version
        ask: tuple[int, ...] = ()
        if not (whole and repushed):
            ask = tuple(c for c in chunk.replicas if c != cs_id and registry.is_alive(c, now))
        return BehindCheck(cs_id, chunk, whole, ask, chunk.version)

    @staticmethod
    def current(check: BehindCheck, info: dict[str, Any]) -> bool:
        """Whether another member's ``chunk.info`` shows the table's version and length."""
        chunk = check.chunk
        return bool(info["version"] == chunk.version and info["length"] >= chunk.length)

    def behind_verdict(self, check: BehindCheck, any_current: bool) -> BehindVerdict:
        """The verdict on a member behind, once the others answered (``any_current``:
        one of ``check.ask`` holds the table's version and length). LATER when the chunk
        moved on while the others were asked (a bump, or a WRITER RECOVERY began: pushing
        its fence's version to a member would make that member's bytes current before the
        recovery's copy replaces them, and a copy onto a replica already at its version is
        dropped as needless)."""
        chunk = check.chunk
        if chunk.version != check.version or self.core.writer_left(chunk.chunk_id):
            return BehindVerdict.LATER
        if any_current:
            return BehindVerdict.DROP
        if check.whole:
            self.repushed[check.chunk.chunk_id] = check.chunk.version
            return BehindVerdict.PUSH_AGAIN
        return BehindVerdict.RECOVER_LENGTH

    # ------------------------------------------------------------------ length recovery

    @staticmethod
    def recovery_members(
        ns: ChunkTable, registry: Registry, chunk_id: int, now: float
    ) -> tuple[int, int, list[int]] | None:
        """(the table's version, its length, the members to ask with ``chunk.info``) when
        LENGTH RECOVERY may be due; None: not judged now (no member, or one is down: a
        better copy may come back)."""
        chunk = ns.chunk_table.get(chunk_id)
        if chunk is None or not chunk.replicas:
            return None
        members = list(chunk.replicas)
        if not all(registry.is_alive(c, now) for c in members):
            return None
        return chunk.version, chunk.length, members

    @staticmethod
    def recovered_length(
        version: int,
        length: int,
        members: Sequence[int],
        answers: Sequence[tuple[int, int] | None],
    ) -> Recovered | None:
        """LENGTH RECOVERY of a chunk at ``version`` and ``length`` from its members'
        answers (version, length; None: no answer): None when any did not answer, holds a
        newer version or the table's length (then it is a push to retry, not data lost)."""
        known = [a for a in answers if a is not None]
        if len(known) < len(members) or any(v > version or n >= length for v, n in known):
            return None
        best = max(v for v, _ in known)
        to = max(n for v, n in known if v == best)
        keep = tuple(c for c, a in zip(members, answers, strict=True) if a == (best, to))
        drop = tuple(c for c, a in zip(members, answers, strict=True) if a != (best, to))
        return Recovered(best, to, keep, drop)
