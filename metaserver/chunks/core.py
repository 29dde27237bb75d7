"""The chunk core: what the leader decides about chunks' replicas, as decisions.

Pure: no I/O, no asyncio; the clock is passed in (``now``), randomness is the placer's
injected ``random.Random``. The driver (``metaserver/repair.py``) feeds it events and
carries out what it returns:
- events in: the chunk table (the namespace, read only), the registry's liveness and usage
  (heartbeats), the cluster policy (``ClusterPolicy``: draining, labels, rebalance), touches
  (a writer, a commit or a set change touched a chunk), the outcome of each copy
  (``copy_done``), a replica reported bad (``mark_bad``), a complete block report
  (``report_done``), what writers upload and commit (``writing``, ``committed``; the
  namespace's ``writes``), the end of a recovery (``recovered``), a version
  push that got no answer (``push_unanswered``, ``push_answered``), the clock;
- commands out (``decide``): ``Copy`` (fence, ``chunk.replicate`` to the target, join by
  ``replica_add``), ``Trim`` (``replica_drop`` through Raft, then ``chunk.delete`` of a live
  one), ``Recover`` (a dead writer's chunk, from the sources it names), the writes to
  mark open or settled (propose ``write_marks``), and ``stop`` (propose
  ``rebalance_stop``: nothing left to move, nothing in flight).
Its neighbours judge the rest, each one concern, on the core's counting: ``reports.py``
(block reports, bad replicas), ``pushes.py`` (version pushes and what did not get
through), ``garbage.py`` (collection after the grace).

THE DECISIONS
- **goal counting**: a replica counts toward its chunk's goal when its chunkserver is alive,
  not draining, and it was not reported bad. A draining server's replica still serves reads
  (it is a copy source and counts in ``Health``) but the chunk is copied elsewhere as if it
  were under goal. For a trim, or a delete of a copy outside the set or of a stale
  member (``at_goal``, ``still_trimmable``), a member must also be *vouched for*
  (``vouched``: a complete block report of it judged since this leader heard it after a
  silence, and no push of the chunk's version to it left unanswered since).
- **re-replication**: chunks under goal (fewest counted replicas first; those with fewest
  live ones, really at risk, before those that only wait for a drain) get one copy at a
  time, at most ``jobs`` in all and ``TARGET_JOBS`` per target, never within ``quiet_s``
  of a touch, never again within ``RETRY_AFTER_S`` of a failed copy. The target is placed
  as a new chunk's replicas are (``Placer``: weighted by free space, never draining, on a
  host and rack the chunk's other replicas are not on when the cluster has one).
- **trimming** (add before remove): once a chunk has its goal of counted, vouched
  replicas, its members reported bad, on dead and on draining servers leave the set, then
  counted members over the goal: the source of a finished rebalance move first, then one
  sharing a host (then a rack) with another member, then the fullest server's. A live
  member that leaves is deleted after its drop commits (the driver re-checks both against
  the set it meets). A chunk is never trimmed below its goal, nor while a copy of it is in
  flight or within ``quiet_s`` of a touch. A chunk without data only leaves a draining
  server's set (another live member there, else it is copied first).
- **writer recovery**: a chunk a writer uploads to (``writing``: its handle, its
  keepalives) and that no commit ended (``committed``) for twice ``quiet_s`` is suspect:
  once quiet, ``Recover`` (see there), naming the members to try as its source in order
  (``candidates``). Suspects are neither copied nor moved before, and block reports push
  their members no version (``writer_left``). Which chunks may hold a writer's unsettled
  uploads is also hard state (the namespace's ``writes``: a handle marks its chunk), so
  that a new leader recovers what a writer that died under its predecessor left: at the
  start of a term every marked chunk is taken over as being written; ``decide`` says
  which to settle (no writer uploads to it, quiet) and which a keepalive names unmarked
  (``Decisions.settled``, ``opened``: one ``write_marks`` proposal).
- **rebalancing** (``policy.rebalance``): the plan of ``rebalance.plan`` over the live,
  non-draining servers, counted in the bytes the chunk table places on each; its moves are
  copies (``Copy.source`` set) behind the same fence as repair copies, at most
  ``REBALANCE_JOBS`` in flight and ``bandwidth_bps`` on average (``TokenBucket``), only of
  chunks at goal; the source leaves through trimming once the copy joined. When the plan is
  empty and nothing is in flight, ``decide`` says ``stop``. Nothing here outlives a leader:
  the policy is in the namespace and the plan is recomputed at every step.

SOFT STATE: touches, copies in flight, failures, bad reports, moves waiting for their trim,
complete reports judged, writers heard of, suspects; all forgotten on ``restart`` (a new term of leadership), when the
start of the term counts as a touch of every chunk (for at least the registry's grace).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from metaserver.chunks import rebalance
from metaserver.chunks.placement import ChunkserverInfo, Placer, Registry
from metaserver.chunks.policy import ClusterPolicy

# Copies per target chunkserver at a time (the target throttles bytes itself).
TARGET_JOBS = 2
# A copy that fails is not tried again for this long (the cause is often still there).
RETRY_AFTER_S = 5.0
# Trims proposed per step (each is a Raft commit).
TRIMS_PER_STEP = 64
# Rebalance moves in flight at most.
REBALANCE_JOBS = 4
# Chunks marked open or settled per step (one ``write_marks`` proposal).
MARKS_PER_STEP = 1024
# Chunks surveyed between two yields of ``decide_steps`` (about 10 ms here): the leader's
# loop serves requests and Raft in between. A survey of 1,000,000 chunks took 1.0 s, every
# second, in one piece.
SURVEY_SLICE = 10_000


class ChunkTable(Protocol):
    """What the core reads of the namespace (``metaserver.namespace.Namespace``)."""

    chunk_table: dict[int, Any]
    inodes: dict[int, Any]
    garbage: dict[int, list[int]]
    writes: dict[int, int]


@dataclass(slots=True)
class Health:
    """Chunk counts from one survey (``status``'s ``health``). A chunk with no data yet
    (length 0, counted in ``empty``) is always fine. ``under_goal`` includes ``one_copy``
    (chunks with a goal above 1 down to their last live replica); ``missing`` chunks have
    no live replica. Live replicas on draining servers count here (they serve reads)."""

    total: int = 0
    empty: int = 0  # chunks with no data yet (a created file not written): no replica
    missing: int = 0
    one_copy: int = 0
    under_goal: int = 0
    over_goal: int = 0
    corrupt: int = 0  # chunks with a replica reported bad, not yet back at goal
    garbage: int = 0  # deleted chunks not yet collected
    replicating: int = 0  # copies in progress

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy ``chunk_id`` (as the table has it: ``version``, ``length``) to ``target`` from
    ``sources`` (live members, least loaded first). ``source``: a rebalance move's replica
    to trim once the copy joined."""

    chunk_id: int
    version: int
    length: int
    sources: tuple[int, ...]
    target: int
    why: str  # "repair" | "drain" | "rebalance"
    source: int | None = None


@dataclass(frozen=True, slots=True)
class Trim:
    """Drop ``cs_id`` from ``chunk_id``'s set (never the last one); ``delete``: it is live,
    delete its replica (at ``version`` or older) once the drop committed."""

    chunk_id: int
    cs_id: int
    version: int
    delete: bool
    why: str  # "dead" | "draining" | "over_goal" | "moved"


@dataclass(frozen=True, slots=True)
class Recover:
    """WRITER RECOVERY of ``chunk_id`` (as the table has it: ``version``, ``length``): a
    writer stopped without committing what it was uploading (it died, or gave up after its
    chain broke), so its members may differ at one version. The driver fences the chunk,
    gives the new version to the first of ``sources`` (live members, in the order to try)
    that answers holding the table's version (``held_by``) and takes it, alone, and has
    every other live member copy that one (``chunk.replicate`` onto an older replica
    replaces it); members that cannot leave the set."""

    chunk_id: int
    version: int
    length: int
    sources: tuple[int, ...] = ()

    def held_by(self, answer: dict[str, Any], fence: int) -> bool:
        """Whether a member's ``chunk.info`` ``answer`` shows it may be the source: at the
        table's version (or already at the fence's ``fence`` version), with its length."""
        return (
            answer.get("version") in (self.version, fence)
            and int(answer.get("length", 0)) >= self.length
        )

    def candidates(self, answers: dict[int, dict[str, Any] | None], fence: int) -> list[int]:
        """The members to try as the source, in ``sources`` order, from every member's
        ``chunk.info`` after the fence (None: no answer). Those that hold the table's
        version (``held_by``); when none does but every member answered, the table's
        version is one no push delivered (a fence whose push, or whose answer, was lost:
        a new leader then finds every member behind it), and those at the newest version
        any member holds, with the chunk's length, hold its bytes, as a block report's
        judgement concludes (``pushes.Pushes.behind_verdict``)."""
        order = [c for c in self.sources if c in answers] + [
            c for c in answers if c not in self.sources
        ]
        held = [c for c in order if (a := answers[c]) is not None and self.held_by(a, fence)]
        if held or not answers or any(a is None for a in answers.values()):
            return held
        newest = max(int(a["version"]) for a in answers.values() if a is not None)
        if newest >= self.version:
            return []
        return [
            c for c in order
            if (a := answers[c]) is not None and int(a["version"]) == newest
            and int(a.get("length", 0)) >= self.length
        ]  # fmt: skip


@dataclass(slots=True)
class Decisions:
    health: Health
    under: list[tuple[int, int]]  # (counted replicas, chunk id), in repair order
    copies: list[Copy] = field(default_factory=list)
    trims: list[Trim] = field(default_factory=list)
    stop: str | None = None  # propose rebalance_stop with this reason
    recover: list[Recover] = field(default_factory=list)
    # Propose ``write_marks`` (``State.writes``): chunks to mark open, and to settle, each
    # as (chunk id, version).
    opened: list[tuple[int, int]] = field(default_factory=list)
    settled: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class _Flow:
    """Rebalance figures since this leader took over."""

    moved_bytes: int = 0
    moves_done: int = 0
    first_s: float | None = None
    last_s: float = 0.0


class ChunkCore:
    def __init__(
        self,
        placer: Placer,
        *,
        quiet_s: float = 10.0,
        jobs: int = 4,
        retry_after_s: float = RETRY_AFTER_S,
        rebalance_jobs: int = REBALANCE_JOBS,
    ) -> None:
        self.placer = placer
        self.quiet_s = quiet_s
        self.jobs = jobs
        self.retry_after_s = retry_after_s
        self.survey_slice = SURVEY_SLICE  # (the simulator's are small: slices interleave)
        self.rebalance_jobs = rebalance_jobs
        self.term_started = float("-inf")
        self.touched: dict[int, float] = {}
        self.copies: dict[int, Copy] = {}
        self.target_jobs: dict[int, int] = {}
        self.failed: dict[int, float] = {}
        # chunk id -> (the chunkserver that reported it bad, the chunk's version then)
        self.bad: dict[int, tuple[int, int]] = {}
        self.moved: dict[int, int] = {}  # chunk id -> source to trim (a move's copy joined)
        self.reported: dict[int, float] = {}  # cs id -> start of its last complete report
        self.doubt: dict[int, set[int]] = {}  # cs id -> chunks that report did not vouch for
        # chunk id -> when a writer last said it uploads to it (a handle, a keepalive); a
        # commit ends it. Silent for twice ``quiet_s`` (a client's keepalives come three
        # times in one): the writer is gone, the chunk is suspect.
        self.uploading: dict[int, float] = {}
        self.suspect: set[int] = set()  # chunks to recover (``Recover``); only that clears
        self.recovering: set[int] = set()
        # Chunks of the namespace's ``writes`` this leader knows the writer of: it heard
        # of them (a handle, a keepalive), or took them over at the start of its term.
        self.noted: set[int] = set()
        # chunk id -> {live member a version push got no answer from (not even to the
        # chunk.info that confirms it) -> that version}: kept in the set, not vouched for
        # until a push answers; pushed again while due (``pushes.Pushes.unanswered_due``).
        self.unanswered: dict[int, dict[int, int]] = {}
        self.flow = _Flow()
        self.bucket = rebalance.TokenBucket(0, 0.0)

    # ------------------------------------------------------------------ events

    def restart(self, now: float, grace_s: float = 0.0) -> None:
        """A new term of leadership: forget everything heard before. Copies started in an
        earlier term finish (or fail) on their own: their ``replica_add`` is refused unless
        the chunk is unchanged; they are not counted here. ``grace_s``: how long the
        registry counts a chunkserver it has not heard yet as alive (``Registry``); no chunk
        is judged before that is over either, since until then "alive" is a guess (a
        report judged in it could delete a copy outside the set while a member counted
        alive is dead: below goal)."""
        self.term_started = now + max(0.0, grace_s - self.quiet_s)
        self.touched.clear()
        self.copies.clear()
        self.target_jobs.clear()
        self.failed.clear()
        self.bad.clear()
        self.moved.clear()
        self.reported.clear()
        self.doubt.clear()
        self.uploading.clear()
        self.suspect.clear()
        self.recovering.clear()
        self.noted.clear()
        self.unanswered.clear()
        self.flow = _Flow()
        self.bucket = rebalance.TokenBucket(0, now)

    def touch(self, chunk_id: int, now: float) -> None:
        """Something changed the chunk at ``now`` (the latest touch counts)."""
        self.touched[chunk_id] = max(now, self.touched.get(chunk_id, now))

    def quiet(self, chunk_id: int, now: float, since: float | None = None) -> bool:
        """Whether nothing touched the chunk in the ``quiet_s`` before ``since`` (a block
        report's start) or before now. The start of this term counts as a touch of every
        chunk: what touched them under an earlier leader is unknown."""
        t = max(self.touched.get(chunk_id, self.term_started), self.term_started)
        return (now if since is None else since) - t >= self.quiet_s

    def writing(self, chunk_id: int, now: float) -> None:
        """A writer holds a handle of the chunk and uploads to it (not committed yet)."""
        self.uploading[chunk_id] = now
        self.noted.add(chunk_id)
        self.touch(chunk_id, now)

    def committed(self, chunk_id: int, now: float) -> None:
        """A writer committed what it uploaded to the chunk."""
        self.uploading.pop(chunk_id, None)
        self.touch(chunk_id, now)

    def writer_left(self, chunk_id: int) -> bool:
        """Whether the chunk may hold a writer's uploads not settled: being written (its
        writer may be gone), suspect, or being recovered. Its members may differ at one
        version: a block report's judgement must not push them a version (that would make
        the differing bytes current); the recovery settles them."""
        return (
            chunk_id in self.uploading or chunk_id in self.suspect or (chunk_id in self.recovering)
        )

    def recovered(self, chunk_id: int, ok: bool, now: float) -> None:
        """A recovery ended; a failed one is tried again once the chunk is quiet."""
        self.recovering.discard(chunk_id)
        if ok:
            self.suspect.discard(chunk_id)
        self.touch(chunk_id, now)

    def report_done(self, cs_id: int, started_s: float, doubt: Iterable[int] = ()) -> None:
        """This leader judged a complete block report of ``cs_id`` (started at
        ``started_s``), but for the chunks in ``doubt``: those it lists behind the table or
        lacks, or could not judge (touched around the report)."""
        self.reported[cs_id] = started_s
        self.doubt[cs_id] = set(doubt)

    def vouched(
        self, registry: Registry, cs_id: int, now: float, chunk_id: int | None = None
    ) -> bool:
        """Whether a live member may count toward the goal for a decision that removes a
        copy (a trim, a delete): this leader has judged a complete block report of it since
        it heard it after a silence. Until then it may be stale (it missed a version while
        away) or have lost the replica, and the report that tells it may have gone to an
        earlier leader, as HDFS postpones excess-replica deletion on datanodes whose block
        report is stale."""
        info = registry.servers.get(cs_id)
        if info is None or info.back_s is None or not registry.is_alive(cs_id, now):
            return False
        started = self.reported.get(cs_id)
        if chunk_id is not None and chunk_id in self.doubt.get(cs_id, ()):
            return False  # its last report did not vouch for this chunk
        if chunk_id is not None and cs_id in self.unanswered.get(chunk_id, ()):
            return False  # it may have missed the chunk's version
        return started is not None and started >= info.back_s

    def _counted_vouched(
        self,
        registry: Registry,
        policy: ClusterPolicy,
        chunk: Any,
        now: float,
        without: int | None = None,
    ) -> int:
        """The chunk's members (but ``without``) that count toward its goal for a decision
        that removes a copy: not draining, not reported bad, vouched for."""
        draining = policy.draining
        bad = self.bad_member(chunk.chunk_id, chunk.version)  # its drop on its way
        return sum(
            1
            for c in chunk.replicas
            if c != without and c not in draining and c != bad
            and self.vouched(registry, c, now, chunk.chunk_id)
        )  # fmt: skip

    def at_goal(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, chunk: Any, now: float
    ) -> bool:
        """Whether the chunk's set has its goal of live members, not draining, not reported
        bad, each vouched for by a block report (``vouched``). Only then is a copy outside
        the set (or a stale member) deleted, as HDFS invalidates excess and stale replicas
        only then: until the goal is met again such a copy may be the best one left (a
        writer that could not reach a good replica drops it from the set)."""
        if chunk.length == 0:
            return True  # no data: nothing a copy outside the set could be the last of
        goal: int = ns.inodes[chunk.ino].goal
        return self._counted_vouched(registry, policy, chunk, now) >= goal

    def still_trimmable(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, trim: Trim, now: float
    ) -> bool:
        """Whether, now, the chunk keeps its goal of counted, vouched members without
        ``trim.cs_id`` (a trim is decided on the set of its step; the driver asks this when
        it proposes the drop, after this leader's earlier drops of the chunk committed)."""
        chunk = ns.chunk_table.get(trim.chunk_id)
        if chunk is None or trim.cs_id not in chunk.replicas:
            return False
        left = self._counted_vouched(registry, policy, chunk, now, without=trim.cs_id)
        return left >= (ns.inodes[chunk.ino].goal if chunk.length else 1)

    def push_unanswered(self, chunk_id: int, cs_id: int, version: int) -> None:
        """A push of the chunk's version to ``cs_id``, a live member, got no answer (nor did
        the ``chunk.info`` that would confirm it): it stays in the set, as GFS keeps a replica
        its master could not confirm until a report says it is stale, but is not vouched for
        (``vouched``) until a push answers (``push_answered``) or it leaves the set."""
        self.unanswered.setdefault(chunk_id, {})[cs_id] = version

    def push_answered(self, chunk_id: int, cs_id: int) -> None:
        """A push to ``cs_id`` answered (or it is no longer to be asked: the version moved
        on, it died, it left the set)."""
        members = self.unanswered.get(chunk_id)
        if members is not None:
            members.pop(cs_id, None)
            if not members:
                del self.unanswered[chunk_id]

    def mark_bad(self, chunk_id: int, cs_id: int, version: int) -> None:
        """``cs_id`` reported its replica of the chunk bad while the table was at
        ``version``: the mark holds while the chunk stays at that version (a copy that
        joins later, on that server too, comes with a bump)."""
        self.bad[chunk_id] = (cs_id, version)

    def bad_member(self, chunk_id: int, version: int) -> int | None:
        mark = self.bad.get(chunk_id)
        return mark[0] if mark is not None and mark[1] == version else None

    def copy_started(self, copy: Copy) -> None:
        self.copies[copy.chunk_id] = copy
        self.target_jobs[copy.target] = self.target_jobs.get(copy.target, 0) + 1

    def copy_done(self, copy: Copy, joined: bool, now: float) -> None:
        """A copy ended: ``joined`` (its replica is in the set) or not (failed, refused)."""
        if self.copies.get(copy.chunk_id) is copy:
            del self.copies[copy.chunk_id]
            left = self.target_jobs.get(copy.target, 1) - 1
            if left > 0:
                self.target_jobs[copy.target] = left
            else:
                self.target_jobs.pop(copy.target, None)
        if not joined:
            self.failed[copy.chunk_id] = now
            return
        if copy.source is not None:
            self.moved[copy.chunk_id] = copy.source
            self.flow.moved_bytes += copy.length
            self.flow.moves_done += 1
            self.flow.last_s = now

    def prune(self, ns: ChunkTable, now: float) -> None:
        horizon = max(self.quiet_s, self.retry_after_s) * 2
        for d in (self.touched, self.failed):
            for k in [k for k, t in d.items() if now - t > horizon]:
                del d[k]
        table = ns.chunk_table
        for chunk_id in [c for c in self.bad if c not in table]:
            del self.bad[chunk_id]
        for chunk_id, source in list(self.moved.items()):
            chunk = table.get(chunk_id)
            if chunk is None or source not in chunk.replicas:
                del self.moved[chunk_id]
        for chunk_id, members in list(self.unanswered.items()):
            chunk = table.get(chunk_id)
            for cs_id in [c for c in members if chunk is None or c not in chunk.replicas]:
                self.push_answered(chunk_id, cs_id)  # out of the set: nothing to confirm

    # ------------------------------------------------------------------ survey

    def survey(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> tuple[Health, list[tuple[int, int]], list[int]]:
        """(health, under-goal chunks as (counted replicas, chunk id) in repair order,
        chunks whose sets need a trim), in one piece (``survey_steps``)."""
        return run_steps(self.survey_steps(ns, registry, policy, now))

    def survey_steps(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> Generator[None, None, tuple[Health, list[tuple[int, int]], list[int]]]:
        """``survey``, yielding after every ``survey_slice`` chunks. The table may change
        at a yield: the survey goes over the chunk ids it had at its start, skipping the
        ones gone since, and counts each chunk as it finds it."""
        inodes = ns.inodes
        table = ns.chunk_table
        draining = policy.draining
        health = Health(garbage=len(ns.garbage), replicating=len(self.copies))
        under: list[tuple[int, int, int]] = []
        trim: list[int] = []
        alive_cache: dict[int, bool] = {}

        def alive(cs_id: int) -> bool:
            a = alive_cache.get(cs_id)
            if a is None:
                a = alive_cache[cs_id] = registry.is_alive(cs_id, now)
            return a

        for i, chunk_id in enumerate(list(table)):
            if i and i % self.survey_slice == 0:
                yield
            chunk = table.get(chunk_id)
            if chunk is None:
                continue  # deleted while the survey yielded
            health.total += 1
            if chunk.length == 0:
                health.empty += 1
                if draining and not draining.isdisjoint(chunk.replicas):
                    # No data to keep at goal, but a drain must leave no set naming the
                    # server: dropped once another live member is there, else copied.
                    stay = [c for c in chunk.replicas if c not in draining and alive(c)]
                    if stay:
                        trim.append(chunk_id)
                    elif any(alive(c) for c in chunk.replicas):
                        under.append((1, -1, chunk_id))
                continue
            goal = inodes[chunk.ino].goal
            live = counted = 0
            bad_cs = self.bad_member(chunk_id, chunk.version)
            for cs_id in chunk.replicas:
                if alive(cs_id):
                    live += 1
                    counted += cs_id not in draining and cs_id != bad_cs
            if live == 0:
                health.missing += 1
            elif live < goal:
                health.under_goal += 1
                if live == 1:
                    health.one_copy += 1
            elif live > goal:
                health.over_goal += 1
            if counted <= goal:
                self.moved.pop(chunk_id, None)  # the move's source is needed now: it stays
            if live > 0 and counted < goal:
                under.append((live, counted - goal, chunk_id))
            elif counted >= goal and (counted > goal or len(chunk.replicas) > counted):
                trim.append(chunk_id)
            if chunk_id in self.bad and bad_cs not in chunk.replicas and counted >= goal:
                del self.bad[chunk_id]  # the bad one is out (or its mark lapsed), at goal
        health.corrupt = len(self.bad)
        under.sort()
        return health, [(live, cid) for live, _, cid in under], trim

    # ------------------------------------------------------------------ decide

    def decide(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> Decisions:
        """What to do now. The copies returned are recorded as started (``copy_started``);
        the driver reports each one's end (``copy_done``)."""
        return run_steps(self.decide_steps(ns, registry, policy, now))

    def decide_steps(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> Generator[None, None, Decisions]:
        """``decide``, yielding during its survey (``survey_steps``); what follows the
        survey reads the table as it is then, in one piece (each decision checks its
        chunk again, as ``_trims`` and ``_repair_copy`` do)."""
        self.prune(ns, now)
        health, under, trim = yield from self.survey_steps(ns, registry, policy, now)
        out = Decisions(health, under)
        alive = registry.alive(now)
        for _, chunk_id in under:
            if len(self.copies) >= self.jobs:
                break
            copy = self._repair_copy(ns, registry, policy, chunk_id, alive, now)
            if copy is not None:
                self.copy_started(copy)
                out.copies.append(copy)
        out.trims = self._trims(ns, registry, policy, trim, now)
        out.recover = self._recover(ns, registry, policy, now)
        out.opened, out.settled = self._write_marks(ns, now)
        if policy.rebalance is not None:
            out.stop = self._rebalance(ns, registry, policy, now, out)
        return out

    def _recover(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> list[Recover]:
        for chunk_id, t in list(self.uploading.items()):
            if now - t >= 2 * self.quiet_s:  # no handle, no keepalive for six: writer gone
                del self.uploading[chunk_id]
                self.suspect.add(chunk_id)
        out = []
        for chunk_id in list(self.suspect):
            chunk = ns.chunk_table.get(chunk_id)
            if chunk is None or chunk.length == 0:
                self.suspect.discard(chunk_id)  # gone, or nothing committed to differ in
                continue
            if chunk_id in self.recovering or chunk_id in self.uploading:
                continue
            if chunk_id in self.copies or not self.quiet(chunk_id, now):
                continue
            self.recovering.add(chunk_id)
            sources = self._recovery_sources(registry, policy, chunk, now)
            out.append(Recover(chunk_id, chunk.version, chunk.length, sources))
        return out

    def _recovery_sources(
        self, registry: Registry, policy: ClusterPolicy, chunk: Any, now: float
    ) -> tuple[int, ...]:
        """The live members a recovery tries as its source, best first: not reported bad
        (never: its replica is in quarantine), then vouched for by a block report, not
        draining, least loaded. Any member holding the table's version will do (the
        writer's uncommitted bytes may be on it or not: either is what the file may
        hold); these only make the first try the likeliest to answer."""
        bad = self.bad_member(chunk.chunk_id, chunk.version)
        servers = registry.servers
        live = [c for c in chunk.replicas if c != bad and registry.is_alive(c, now)]

        def order(c: int) -> tuple[bool, bool, int, int]:
            vouched = self.vouched(registry, c, now, chunk.chunk_id)
            return (not vouched, c in policy.draining, servers[c].load, c)

        return tuple(sorted(live, key=order))

    def _write_marks(
        self, ns: ChunkTable, now: float
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """What to record of writers in the namespace (``State.writes``), so that a new
        leader recovers a chunk whose writer died under its predecessor: (chunks a
        keepalive names that no handle marked, chunks to settle). A chunk is settled once
        this leader knows its writer is done with it: no writer uploads to it (a commit
        ended the upload, or the recovery that a silent writer led to ended well), and
        nothing touched it for ``quiet_s``. At the start of a term every marked chunk is
        taken over as if its writer had just said it uploads: a live writer's keepalive
        keeps it so, a dead writer's silence makes it suspect (``_recover``)."""
        writes = ns.writes
        if now < self.term_started + self.quiet_s:
            for chunk_id in writes:
                if chunk_id not in self.noted:
                    self.noted.add(chunk_id)
                    self.uploading.setdefault(chunk_id, now)
        for chunk_id in [c for c in self.noted if c not in writes and c not in self.uploading]:
            self.noted.discard(chunk_id)
        table = ns.chunk_table
        opened = [(c, table[c].version) for c in self.uploading if c not in writes and c in table]
        settled = [
            (c, v)
            for c, v in writes.items()
            if c in self.noted and c not in self.uploading and c not in self.suspect
            and c not in self.recovering and self.quiet(c, now)
        ]  # fmt: skip
        return opened[:MARKS_PER_STEP], settled[:MARKS_PER_STEP]

    def _eligible(self, chunk_id: int, now: float) -> bool:
        if chunk_id in self.copies or not self.quiet(chunk_id, now):
            return False
        if chunk_id in self.suspect or chunk_id in self.uploading:
            return False  # recovered first: a copy would spread one member's bytes
        failed = self.failed.get(chunk_id)
        return failed is None or now - failed >= self.retry_after_s

    def _repair_copy(
        self,
        ns: ChunkTable,
        registry: Registry,
        policy: ClusterPolicy,
        chunk_id: int,
        alive: list[ChunkserverInfo],
        now: float,
    ) -> Copy | None:
        chunk = ns.chunk_table.get(chunk_id)
        if chunk is None or not self._eligible(chunk_id, now):
            return None  # (deleted while the survey yielded)
        live = [registry.servers[c] for c in chunk.replicas if registry.is_alive(c, now)]
        # Sources in the order the target tries them: never one reported bad (its replica
        # is in quarantine), least loaded first.
        bad = self.bad_member(chunk_id, chunk.version)
        sources = sorted((i for i in live if i.cs_id != bad), key=lambda info: info.load)
        counted = [info for info in live if info.cs_id not in policy.draining]
        candidates = [
            info
            for info in alive
            if info.cs_id not in chunk.replicas
            and self.target_jobs.get(info.cs_id, 0) < TARGET_JOBS
        ]
        target = self.placer.place(candidates, 1, reserve_bytes=chunk.length, taken=counted)
        if not sources or not target:
            return None
        why = "repair" if len(live) < ns.inodes[chunk.ino].goal else "drain"
        return Copy(chunk_id, chunk.version, chunk.length,
                    tuple(s.cs_id for s in sources), target[0], why)  # fmt: skip

    def _trims(
        self,
        ns: ChunkTable,
        registry: Registry,
        policy: ClusterPolicy,
        chunk_ids: list[int],
        now: float,
    ) -> list[Trim]:
        out: list[Trim] = []
        chunks_trimmed = 0
        for chunk_id in chunk_ids:
            if chunks_trimmed >= TRIMS_PER_STEP:
                break
            chunk = ns.chunk_table.get(chunk_id)
            if chunk is None or chunk_id in self.copies or not self.quiet(chunk_id, now):
                continue
            if chunk_id in self.recovering:
                continue
            goal = ns.inodes[chunk.ino].goal
            dead = [c for c in chunk.replicas if not registry.is_alive(c, now)]
            # A member reported bad counts for nothing: its drop may have failed, or still
            # be on its way; it goes first once the others meet the goal.
            bad_cs = self.bad_member(chunk_id, chunk.version)
            bad = [c for c in chunk.replicas if c == bad_cs and c not in dead]
            draining = [c for c in chunk.replicas
                        if c not in dead and c not in bad and c in policy.draining]  # fmt: skip
            counted = [c for c in chunk.replicas if c not in dead + bad + draining]
            # Only vouched members count here; the others are never the ones trimmed.
            counted = [c for c in counted if self.vouched(registry, c, now, chunk_id)]
            if len(counted) < (goal if chunk.length else 1):
                continue
            trims = [Trim(chunk_id, c, chunk.version, True, "bad") for c in bad]
            trims += [Trim(chunk_id, c, chunk.version, False, "dead") for c in dead]
            trims += [Trim(chunk_id, c, chunk.version, True, "draining") for c in draining]
            for cs_id in self._surplus(chunk_id, counted, goal, registry, policy):
                why = "moved" if self.moved.get(chunk_id) == cs_id else "over_goal"
                trims.append(Trim(chunk_id, cs_id, chunk.version, True, why))
            if trims:
                chunks_trimmed += 1
                out.extend(trims)
        return out

    def _surplus(
        self,
        chunk_id: int,
        counted: list[int],
        goal: int,
        registry: Registry,
        policy: ClusterPolicy,
    ) -> list[int]:
        """Which of the counted members go when there are more than ``goal``."""
        extra = len(counted) - goal
        if extra <= 0:
            return []
        servers = registry.servers
        hosts: dict[str, int] = {}
        racks: dict[str, int] = {}
        labels = {c: policy.labels_of(c, servers[c].address) for c in counted}
        for lab in labels.values():
            hosts[lab.host] = hosts.get(lab.host, 0) + 1
            racks[lab.rack] = racks.get(lab.rack, 0) + 1
        moved = self.moved.get(chunk_id)

        def order(c: int) -> tuple[bool, bool, bool, int, int]:
            lab = labels[c]
            return (c != moved, hosts[lab.host] < 2, racks[lab.rack] < 2 or not lab.rack,
                    servers[c].free_bytes, c)  # fmt: skip

        return sorted(counted, key=order)[:extra]

    # ------------------------------------------------------------------ rebalance

    def servers_for_balance(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> dict[int, rebalance.Server]:
        """The live, non-draining servers with a known capacity, with the bytes the chunk
        table places on each (a copy in flight counts on its target, a move waiting for its
        trim no longer on its source)."""
        servers = {
            info.cs_id: rebalance.Server(
                info.cs_id, 0, info.capacity_bytes, policy.labels_of(info.cs_id, info.address)
            )
            for info in registry.alive(now)
            if info.cs_id not in policy.draining and info.capacity_bytes > 0
        }
        for chunk_id, chunk in ns.chunk_table.items():
            moved = self.moved.get(chunk_id)
            for cs_id in chunk.replicas:
                s = servers.get(cs_id)
                if s is not None and cs_id != moved:
                    s.used_bytes += chunk.length
        for copy in self.copies.values():
            s = servers.get(copy.target)
            if s is not None:
                s.used_bytes += copy.length
            if copy.source is not None:
                s = servers.get(copy.source)
                if s is not None:
                    s.used_bytes -= copy.length
        return servers

    def candidates(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float,
        transient: bool = True,
    ) -> list[rebalance.Candidate]:  # fmt: skip
        """Chunks a rebalance may move: with data, exactly at goal in counted replicas,
        no dead member; with ``transient``, also quiet, no copy in flight, no recent failure."""
        out = []
        inodes = ns.inodes
        for chunk_id, chunk in ns.chunk_table.items():
            if chunk.length == 0 or chunk_id in self.moved or chunk_id in self.copies:
                continue
            if transient and not self._eligible(chunk_id, now):
                continue
            reps = chunk.replicas
            if any(not registry.is_alive(c, now) or c in policy.draining for c in reps):
                continue
            if len(reps) != inodes[chunk.ino].goal:
                continue
            out.append(rebalance.Candidate(chunk_id, chunk.length, tuple(reps)))
        return out

    def plan(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float,
        threshold_pct: float, transient: bool = False, limit: int = rebalance.PLAN_MOVES_MAX,
    ) -> rebalance.Plan:  # fmt: skip
        servers = self.servers_for_balance(ns, registry, policy, now)
        cands = self.candidates(ns, registry, policy, now, transient)
        return rebalance.plan(servers, cands, threshold_pct, limit)

    def _rebalance(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float,
        out: Decisions,
    ) -> str | None:  # fmt: skip
        rb = policy.rebalance
        assert rb is not None
        if not self.quiet(-1, now) or any(
            info.last_heard_s is None for info in registry.alive(now)
        ):
            # A new leader has not heard every chunkserver's usage yet: an empty plan now
            # would only mean it knows no capacity (and would stop the rebalance).
            return None
        if self.bucket.rate != rb.bandwidth_bps:
            self.bucket.set_rate(rb.bandwidth_bps)
        in_flight = sum(1 for c in self.copies.values() if c.source is not None)
        slots = min(self.rebalance_jobs - in_flight, self.jobs - len(self.copies))
        if slots <= 0:  # repairs took their slots first
            return None
        # One plan a step (each walks the chunk table): the verdict's own plan, over every
        # chunk and not only the quiet ones, only when this one found nothing to move.
        step = self.plan(ns, registry, policy, now, rb.threshold_pct, transient=True, limit=slots)
        if not step.moves and not in_flight and not self.moved:
            left = self.plan(ns, registry, policy, now, rb.threshold_pct, limit=1)
            if not left.moves:
                return "balanced" if left.spread_before_pct <= rb.threshold_pct else "no_moves"
        for move in step.moves:
            if move.chunk_id in self.copies:  # a plan may move a chunk twice: one at a time
                continue
            if self.target_jobs.get(move.target, 0) >= TARGET_JOBS:
                continue
            if not self.bucket.take(move.bytes, now):
                break
            chunk = ns.chunk_table[move.chunk_id]
            sources = [move.source] + [c for c in chunk.replicas if c != move.source]
            copy = Copy(move.chunk_id, chunk.version, chunk.length, tuple(sources),
                        move.target, "rebalance", move.source)  # fmt: skip
            self.copy_started(copy)
            out.copies.append(copy)
            if self.flow.first_s is None:
                self.flow.first_s = now
        return None

    def progress(
        self, ns: ChunkTable, registry: Registry, policy: ClusterPolicy, now: float
    ) -> dict[str, Any]:
        """``rebalance_progress`` (see ``Repair``)."""
        rb = policy.rebalance
        threshold = rb.threshold_pct if rb is not None else None
        servers = self.servers_for_balance(ns, registry, policy, now)
        left = rebalance.bytes_left(servers, rb.threshold_pct) if rb is not None else 0
        flow = self.flow
        elapsed = now - flow.first_s if flow.first_s is not None else 0.0
        return {
            "running": rb is not None,
            "threshold_pct": threshold,
            "bandwidth_bps": rb.bandwidth_bps if rb is not None else None,
            "moved_bytes": flow.moved_bytes,
            "moves_done": flow.moves_done,
            "in_flight": sum(1 for c in self.copies.values() if c.source is not None),
            "left_bytes": left,
            "spread_pct": round(rebalance.spread_pct(servers), 3),
            "rate_bps": int(flow.moved_bytes / elapsed) if elapsed > 0 else 0,
        }


_T = TypeVar("_T")


def run_steps(steps: Generator[None, None, _T]) -> _T:
    """Run a generator of ``*_steps`` to its end, without yielding; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value: _T = done.value
            return value
