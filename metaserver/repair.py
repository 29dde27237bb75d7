"""The leader's upkeep of chunks: the driver of the chunk core. It decides nothing
itself: it feeds the pure core (``metaserver/chunks/``) events and carries its commands
out over the network and through Raft, as MooseFS's and HDFS's masters run their chunk
loops. The decisions, and their rules, are the core's (docs/ARCHITECTURE.md, "The chunk
core"):
- ``chunks/core.py``: which chunk to copy where, which replica to trim, what draining,
  rebalancing and a writer's recovery do, goal counting and the survey behind ``Health``;
- ``chunks/reports.py``: what a chunkserver's block report (``cs.report``) and its bad
  replicas (``cs.bad_chunks``) mean;
- ``chunks/pushes.py``: what a version push's outcome means, and what to do when a new
  version did not get through (pushed again, a member behind the table, LENGTH RECOVERY);
- ``chunks/garbage.py``: when the replicas of deleted and truncated chunks go.

What it carries out:
- **the core's commands**: every ``interval`` (leader only) ``ChunkCore.decide`` gets the
  namespace, the registry, the policy and the clock. A ``Copy`` is fenced
  (``version_bump``, pushed), made by the target pulling from a live replica
  (``chunk.replicate``), joins through Raft (``replica_add``, another bump) and is settled
  (``settle_version``: members that miss the new version leave the set; members dead at
  the fence leave at once); its end goes back to the core (``copy_done``). A ``Trim`` is a
  ``replica_drop`` through Raft, re-checked against the set when proposed
  (``ChunkCore.still_trimmable``; this leader's drops of one chunk go one at a time), then
  ``chunk.delete`` of a live member if the chunk is still at goal (``ChunkCore.at_goal``).
  A ``Recover`` (a writer gone without a commit) is carried out by ``_recover``, from
  the sources it names in their order (``Recover.candidates`` judges the members'
  answers). The writes to mark open or settled are one ``write_marks`` proposal. A
  ``stop`` is proposed as ``rebalance_stop``. What writers upload to and commit comes in
  through ``writing`` and ``committed`` (the server's handles, keepalives and commits).
  ``rebalance_plan`` and ``rebalance_progress`` answer the admin ops from the core.
- **version pushes**: ``push_version`` sends a new version (a handle's bump, a truncate's
  cut, a copy's fence and join) to the members, confirms a lost answer with
  ``chunk.info`` and hands each outcome to ``Pushes.outcome``; ``settle_version`` drops
  the members that failed once another took the version, or records that none did.
  Every step it pushes again what ``Pushes`` says is due (``_push_again``,
  ``_push_unanswered``), and ``recover_length`` asks the members and proposes
  ``length_recover`` when ``Pushes.recovered_length`` says so.
- **reports**: each page of a block report goes to ``Reports.page``; its ``Verdict`` is
  carried out: deletes, members behind the table judged after asking the other members
  (``_behind``), lost members dropped, lone whole copies adopted (``adopt``). Each bad
  replica goes to ``Reports.bad``: its drop, then its delete unless it stays in
  quarantine (``Reports.quarantined``).
- **garbage**: a round at a time, ``Garbage.collect``'s deletes, then ``gc_done`` for
  what they deleted.

What it must not do: decide anything on a follower (it runs only while leading, and
forgets all its soft state, the core's included, when a new term of leadership starts), or
change the namespace except through Raft.

Concurrency with writers. Whatever touched a chunk recently (a write handle, a commit, a
truncate's cut, a change of its replica set) marks it; a chunk touched within ``quiet_s``
is neither repaired nor judged by a report (its replicas may be mid-change: a report built
before a version push would look stale). The safety does not depend on the marks: a copy
joins only at the version and length it was made from, and with a version bump.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from functools import partial
from typing import Any, Protocol, TypeVar

from dfs.ratelog import RateLimitedLog
from dfs.wire.errors import DfsError, Exists, Invalid, NotFound, Stale, Timeout, Unavailable
from metaserver.chunks.core import ChunkCore, Copy, Health, Recover, Trim
from metaserver.chunks.garbage import Garbage
from metaserver.chunks.placement import Placer, Registry
from metaserver.chunks.pushes import BehindVerdict, Outcome, Pushes
from metaserver.chunks.reports import Behind, Reports
from metaserver.namespace import Namespace
from metaserver.namespace.commands import INT63_MAX
from metaserver.namespace.ops import GC_BATCH_MAX

log = logging.getLogger(__name__)
# What repeats each step while a chunkserver or the disk is sick: a line per key per
# interval, with the count of those left out (dfs/ratelog.py).
_rlog = RateLimitedLog(log)

# Deadline of one chunk.replicate: a 64 MiB chunk at the chunkservers' default throttle
# takes about a second; this covers a loaded machine. The chunkserver's own deadline is
# the request's timeout_ms (at most 60 s there), a little shorter than ours.
REPLICATE_TIMEOUT_S = 60.0
REPLICATE_TIMEOUT_MS_SERVER = 58_000
# Deadline of a version push, a delete.
PUSH_TIMEOUT_S = 3.0
DELETE_TIMEOUT_S = 10.0
# The pause between two steps is at least this many times the last survey's own time, so
# that surveying a big chunk table takes at most about a fifth of the leader's time (a
# survey of 1,000,000 chunks takes about a second here: one every five seconds).
SURVEY_PAUSE_RATIO = 4.0


_T = TypeVar("_T")


def next_pause(interval_s: float, survey_s: float) -> float:
    """The pause before the next step, after a survey that took ``survey_s``."""
    return max(interval_s, SURVEY_PAUSE_RATIO * survey_s)


def _unanswered(e: BaseException) -> bool:
    """Whether a call's failure says nothing of what the chunkserver did: no answer came
    (the request or the answer lost, or late), as opposed to a refusal or a refused
    connection."""
    return isinstance(e, TimeoutError | Timeout)


class ServerLink(Protocol):
    """What repair needs of the metaserver (``metaserver.server.MetaServer``)."""

    ns: Namespace
    registry: Registry
    placer: Placer

    @property
    def is_leader(self) -> bool: ...

    async def propose_internal(self, op: str, args: dict[str, Any]) -> dict[str, Any]: ...

    async def cs_call(
        self, cs_id: int, op: str, timeout_s: float, **fields: Any
    ) -> dict[str, Any]: ...

    def token(self, chunk_id: int, version: int) -> tuple[bytes, int]: ...

    def know_all_chunkservers(self) -> None: ...


class Repair:
    """The driver of the chunk core (``metaserver/chunks/``): feeds it the namespace, the
    registry, the policy, the clock, reports and the outcomes of calls, and carries out
    what it decides (see the module docstring)."""

    def __init__(
        self,
        link: ServerLink,
        *,
        interval_s: float = 1.0,
        quiet_s: float = 10.0,
        gc_grace_s: float = 30.0,
        jobs: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.interval_s = interval_s
        self.quiet_s = quiet_s
        self.clock = clock
        self.core = ChunkCore(link.placer, quiet_s=quiet_s, jobs=jobs)
        self.reports = Reports(self.core, unknown_grace_s=gc_grace_s)
        self.garbage = Garbage(gc_grace_s)
        self.pushes = Pushes(self.core)
        self.health = Health()
        self.survey_s = 0.0  # the last survey's own time, its slices summed
        self._tasks: set[asyncio.Task[None]] = set()
        self._gc_running = False
        self._overtaking: set[int] = set()  # chunks whose version goes past a member's
        self._marking = False  # a write_marks proposal in flight
        self._stopping = False  # a rebalance_stop proposal in flight
        # chunk id -> (its drops one at a time, how many wait or hold it)
        self._set_locks: dict[int, tuple[asyncio.Lock, int]] = {}

    # --------------------------------------------------------------- soft state

    def restart(self) -> None:
        """A new term of leadership: forget everything heard before."""
        self.core.restart(self.clock(), grace_s=self.link.registry.dead_timeout_s)
        self.garbage.restart()
        self.reports.restart()
        self.pushes.restart()
        # Until the registry's grace is over every known chunkserver counts as alive, so
        # nothing is repaired before the new leader has heard the chunkservers.
        self.health = Health()

    def touch(self, chunk_id: int) -> None:
        self.core.touch(chunk_id, self.clock())

    def writing(self, chunk_id: int) -> None:
        """A writer got a handle of the chunk, or its keepalive names it: it uploads to it."""
        self.core.writing(chunk_id, self.clock())

    def committed(self, chunk_id: int) -> None:
        """A writer's commit recorded what it uploaded to the chunk."""
        self.core.committed(chunk_id, self.clock())

    def _quiet(self, chunk_id: int, now: float, since: float | None = None) -> bool:
        return self.core.quiet(chunk_id, now, since)

    @property
    def _copies(self) -> dict[int, Copy]:
        return self.core.copies

    # --------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Survey and act every ``interval_s`` while leading (``next_pause``); never
        raises."""
        while True:
            # A period, not a wait for a condition.
            await asyncio.sleep(next_pause(self.interval_s, self.survey_s))
            if not self.link.is_leader:
                continue
            try:
                await self.step()
            except Exception:  # keep the upkeep alive whatever one round met
                _rlog.log(logging.ERROR, "step_failed", "repair event=step_failed", exc_info=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def survey(self, now: float) -> tuple[Health, list[tuple[int, int]], list[int]]:
        """(health, under-goal chunks as (live count, chunk id) in repair order, chunks
        whose sets need a trim or clean-up): the core's survey."""
        link = self.link
        return self.core.survey(link.ns, link.registry, link.ns.policy(), now)

    async def health_now(self, now: float) -> Health | None:
        """The health of a survey made now, a slice at a time (``status``); None once
        this server is no longer the leader."""
        link = self.link
        found, _ = await self._sliced(
            self.core.survey_steps(link.ns, link.registry, link.ns.policy(), now)
        )
        return None if found is None else found[0]

    async def step(self) -> None:
        now = self.clock()
        link = self.link
        link.know_all_chunkservers()
        policy = link.ns.policy()
        decisions, self.survey_s = await self._sliced(
            self.core.decide_steps(link.ns, link.registry, policy, now)
        )
        if decisions is None:
            return  # deposed meanwhile: the next leader surveys for itself
        self.health = decisions.health
        self.pushes.prune(link.ns)
        for copy in decisions.copies:
            self._spawn(self._copy(copy))
        for rec in decisions.recover:
            self._spawn(self._recover(rec))
        await self._trim(decisions.trims)
        if (decisions.opened or decisions.settled) and not self._marking:
            self._marking = True
            self._spawn(self._mark_writes(decisions.opened, decisions.settled))
        if decisions.stop is not None and not self._stopping and policy.rebalance is not None:
            self._stopping = True
            self._spawn(self._stop_rebalance(decisions.stop, policy.rebalance.run))
        await self._push_again()
        await self._push_unanswered()
        if not self._gc_running:
            self._gc_running = True
            self._spawn(self._collect_garbage(now))

    async def _sliced(self, steps: Generator[None, None, _T | None]) -> tuple[_T | None, float]:
        """Run one of the core's ``*_steps`` a slice at a time, the loop serving requests
        and Raft between slices: (what it returned, or None once this server is no longer
        the leader; the slices' own time, summed)."""
        busy = 0.0
        while True:
            started = time.perf_counter()
            try:
                next(steps)
            except StopIteration as done:
                value: _T | None = done.value
                return value, busy + time.perf_counter() - started
            busy += time.perf_counter() - started
            await asyncio.sleep(0)
            if not self.link.is_leader:
                return None, busy

    async def _stop_rebalance(self, reason: str, run: int) -> None:
        """End rebalance ``run``, the one the core judged (a newer start stays running)."""
        try:
            await self.link.propose_internal("rebalance_stop", {"reason": reason, "run": run})
            log.info("repair event=rebalance_stopped reason=%s", reason)
        except DfsError as e:
            log.info("repair event=rebalance_stop_failed reason=%s error=%s", reason, e)
        finally:
            self._stopping = False

    async def _mark_writes(
        self, opened: list[tuple[int, int]], settled: list[tuple[int, int]]
    ) -> None:
        """Record the core's view of writers in the namespace (``write_marks``): what a
        new leader must recover if this one goes."""
        try:
            await self.link.propose_internal(
                "write_marks",
                {"open": [list(e) for e in opened], "settled": [list(e) for e in settled]},
            )
        except DfsError as e:
            log.info("repair event=write_marks_failed error=%s", e)
        finally:
            self._marking = False

    # --------------------------------------------------------------- re-replication

    async def _copy(self, copy: Copy) -> None:
        """Carry out the core's ``copy``: the chunk to ``copy.target`` from ``copy.sources``
        (live replicas, least loaded first), then the copy joins its set. First the fence: a
        new version, which no writer holds, goes to the live replicas (``version_bump``),
        and the copy is made at it.
        Without the fence a writer holding a handle of the table's version could overwrite
        bytes the copy had already read, and even commit (an overwrite keeps the length):
        the copy would join with the old bytes, every replica at the same version. With it,
        such a writer is refused (``Stale``) and takes a new handle, which bumps the version
        again, so the copy is refused at ``replica_add`` and made again later."""
        link = self.link
        chunk_id, version, length = copy.chunk_id, copy.version, copy.length
        sources, target_id = copy.sources, copy.target
        joined = False
        try:
            bumped = await link.propose_internal(
                "version_bump", {"chunk_id": chunk_id, "version": version, "length": length}
            )
            version = int(bumped["version"])
            now = self.clock()
            live = [c for c in bumped["replicas"] if link.registry.is_alive(c, now)]
            _, took, settled = await self.settle_version(chunk_id, version, length, live)
            if settled != length:
                raise Stale("the chunk's length was recovered", chunk_id=chunk_id)
            addresses = [link.registry.servers[c].address for c in sources if c in took]
            if not addresses:
                raise Stale("no live replica took the fence's version", chunk_id=chunk_id)
            # Members dead at the fence cannot hold its version: out of the set now, or one
            # that comes back before a report would count toward the goal while stale.
            for cs_id in bumped["replicas"]:
                if cs_id not in live:
                    await self._drop(chunk_id, cs_id, keep_one=True, why="dead_at_fence")
            token, expiry_ms = link.token(chunk_id, version)
            await link.cs_call(
                target_id, "chunk.replicate", REPLICATE_TIMEOUT_S, chunk_id=chunk_id,
                version=version, length=length, sources=addresses, token=token,
                expiry_ms=expiry_ms, timeout_ms=REPLICATE_TIMEOUT_MS_SERVER,
            )  # fmt: skip
            try:
                result = await link.propose_internal(
                    "replica_add",
                    {"chunk_id": chunk_id, "version": version, "length": length,
                     "cs_id": target_id},
                )  # fmt: skip
            except Timeout:
                # It may have committed: then the copy joined, and its version must still
                # be pushed, or the copy would be judged stale by the next report and
                # dropped while it holds the chunk's bytes.
                result = self._joined(chunk_id, version, target_id)
            except Exists:
                return
            except (Stale, NotFound, Invalid) as e:
                # The chunk moved on while we copied (or went away): the copy is wrong now.
                log.info("repair event=copy_refused chunk=%d cs=%d reason=%s",
                         chunk_id, target_id, e)  # fmt: skip
                await self._delete(target_id, [[chunk_id, version]])
                return
            joined = True
            self.touch(chunk_id)
            log.info("repair event=replicated chunk=%d cs=%d version=%d length=%d why=%s",
                     chunk_id, target_id, result["version"], length, copy.why)  # fmt: skip
            # Members that miss the new version leave the set (as after any bump): one left
            # in it at the old version would count toward the goal while stale.
            await self.settle_version(
                chunk_id, int(result["version"]), int(result["length"]), result["replicas"]
            )
        except (DfsError, OSError, TimeoutError) as e:
            _rlog.log(logging.INFO, ("copy_failed", target_id),
                      "repair event=copy_failed chunk=%d cs=%d error=%s",
                      chunk_id, target_id, e)  # fmt: skip
        finally:
            self.core.copy_done(copy, joined, self.clock())

    async def _recover(self, rec: Recover) -> None:
        """Carry out a WRITER RECOVERY (``chunks.core.Recover``): the fence (a new version no
        writer holds), then the first of the core's ``sources`` still live that holds the
        table's version takes it, alone, and every other live member copies that one's
        bytes at it. A member that cannot
        (dead, unreachable) is left behind at the old version, stale: it leaves the set.
        Until then the members may differ at one version (a writer's chain broke and it
        never wrote again), as HDFS's lease recovery settles a dead writer's pipeline."""
        link, ok = self.link, False
        chunk_id, length = rec.chunk_id, rec.length
        try:
            bumped = await link.propose_internal(
                "version_bump", {"chunk_id": chunk_id, "version": rec.version, "length": length}
            )
            version = int(bumped["version"])
            now = self.clock()
            live = [c for c in bumped["replicas"] if link.registry.is_alive(c, now)]

            async def held(cs_id: int) -> dict[str, Any] | None:
                try:
                    return await link.cs_call(
                        cs_id, "chunk.info", PUSH_TIMEOUT_S, chunk_id=chunk_id
                    )
                except (DfsError, OSError, TimeoutError):
                    return None

            members = list(bumped["replicas"])
            answers = dict(zip(members, await asyncio.gather(
                *(held(c) if c in live else asyncio.sleep(0) for c in members)
            ), strict=True))  # fmt: skip
            source = None
            for cs_id in rec.candidates(answers, version):
                if not await self.push_version(
                    chunk_id, version, length, [cs_id], keep_unanswered=False
                ):
                    source = cs_id
                    break
            if source is None:
                # Tried again once quiet (the chunk stays suspect); its members are not
                # pushed the fence's version meanwhile, which would make the differing
                # bytes current (``Recover.candidates`` settles a version no push
                # delivered instead).
                raise Stale("no live member took the recovery's version", chunk_id=chunk_id)
            address = link.registry.servers[source].address
            token, expiry_ms = link.token(chunk_id, version)
            for cs_id in bumped["replicas"]:
                if cs_id == source:
                    continue
                try:
                    if cs_id not in live:
                        raise Unavailable("dead at the recovery")
                    await link.cs_call(
                        cs_id, "chunk.replicate", REPLICATE_TIMEOUT_S, chunk_id=chunk_id,
                        version=version, length=length, sources=[address], token=token,
                        expiry_ms=expiry_ms, timeout_ms=REPLICATE_TIMEOUT_MS_SERVER,
                    )  # fmt: skip
                except (DfsError, OSError, TimeoutError) as e:
                    newer = e.details.get("replica_version") if isinstance(e, Stale) else None
                    if type(newer) is int and newer > version:
                        raise  # a writer took a new handle meanwhile: recovered later
                    if isinstance(e, Unavailable) and "sources" in e.details:
                        # The source could not supply it (bad, gone): not this member's
                        # fault, and it may hold the only good bytes. Tried again later,
                        # from the core's next choice once the source is judged.
                        raise
                    if _unanswered(e):
                        # The copy may have been made (its answer lost): asked, as a push.
                        copied = await self._has_version(cs_id, chunk_id, version)
                        if copied:
                            continue
                        if copied is None:  # no answer either: kept, tried again later
                            raise Unavailable("a member did not answer the recovery") from e
                    if not await self._drop(chunk_id, cs_id, keep_one=True, why="not_recovered"):
                        # Left in the set at the old version, the next push would make
                        # its bytes current: not done, tried again.
                        raise Unavailable("a member not recovered is still in the set") from e
            ok = True
            log.info("repair event=writer_recovered chunk=%d version=%d source=%d",
                     chunk_id, version, source)  # fmt: skip
        except (DfsError, OSError, TimeoutError) as e:
            log.info("repair event=recovery_failed chunk=%d error=%s", chunk_id, e)
        finally:
            self.core.recovered(chunk_id, ok, self.clock())

    def _joined(self, chunk_id: int, version: int, target_id: int) -> dict[str, Any]:
        """The chunk as a ``replica_add`` at ``version`` whose answer was lost left it, if
        it committed (``Timeout`` again otherwise)."""
        chunk = self.link.ns.chunk_table.get(chunk_id)
        if chunk is None or target_id not in chunk.replicas or chunk.version != version + 1:
            raise Timeout("replica_add: no answer", chunk_id=chunk_id)
        return {"version": chunk.version, "length": chunk.length, "replicas": list(chunk.replicas)}

    async def push_version(
        self,
        chunk_id: int,
        version: int,
        length: int,
        replicas: Iterable[int],
        *,
        keep_unanswered: bool = True,
        again: bool = False,
    ) -> list[int]:
        """Give every replica the chunk's new version (an empty ``chunk.write``: each cuts
        itself to ``length`` and takes the version); a failed push is confirmed with
        ``chunk.info`` (``Pushes.confirm``) and judged by ``Pushes.outcome``. Returns the
        replicas that failed: they stay at the old version, never served. A live member
        that answered neither is not among them: it stays in the set, not vouched for,
        pushed again every step (``_push_unanswered``). ``keep_unanswered`` false (a
        recovery's source, which must be known to hold the version): such a member failed.
        ``again``: a version no member took, pushed again (``_push_again``): the chunk
        counts as touched (from the push's start) only if some member may have taken it.
        When every member refused it, none changed, and a touch every step would keep the
        chunk out of the block reports' sight for good: a chunk whose every replica file
        is gone was pushed forever and never found lost."""
        replicas = tuple(replicas)
        started = self.clock()
        if not again:
            self.touch(chunk_id)
        token, expiry_ms = self.link.token(chunk_id, version)
        failed: list[int] = []
        pushes = self.pushes

        async def push(cs_id: int) -> None:
            try:
                await self.link.cs_call(
                    cs_id, "chunk.write", PUSH_TIMEOUT_S, chunk_id=chunk_id, version=version,
                    length=length, offset=0, token=token, expiry_ms=expiry_ms, chain=[],
                    sync=False,
                )  # fmt: skip
            except (DfsError, OSError, TimeoutError) as e:
                newer = e.details.get("replica_version") if isinstance(e, Stale) else None
                newer = newer if type(newer) is int else None
                held = None
                if pushes.confirm(isinstance(e, Stale), newer, version):
                    held = await self._has_version(cs_id, chunk_id, version)
                outcome = pushes.outcome(
                    chunk_id, cs_id, version, newer=newer, held=held, lost=_unanswered(e),
                    alive=self.link.registry.is_alive(cs_id, self.clock()),
                    keep_unanswered=keep_unanswered,
                )  # fmt: skip
                if outcome is Outcome.UNANSWERED:
                    _rlog.log(logging.INFO, ("push_unanswered", cs_id),
                              "repair event=push_unanswered chunk=%d cs=%d version=%d",
                              chunk_id, cs_id, version)  # fmt: skip
                elif outcome is Outcome.FAILED:
                    failed.append(cs_id)
                    _rlog.log(logging.INFO, ("push_failed", cs_id),
                              "repair event=push_failed chunk=%d cs=%d version=%d error=%s",
                              chunk_id, cs_id, version, e)  # fmt: skip
            else:
                pushes.outcome(chunk_id, cs_id, version)

        await asyncio.gather(*(push(cs_id) for cs_id in replicas))
        if again and len(failed) < len(replicas):
            self.core.touch(chunk_id, started)
        return failed

    async def _has_version(self, cs_id: int, chunk_id: int, version: int) -> bool | None:
        """Whether ``cs_id`` holds the chunk at ``version`` or newer; None: no answer."""
        try:
            h = await self.link.cs_call(cs_id, "chunk.info", PUSH_TIMEOUT_S, chunk_id=chunk_id)
            return bool(h["version"] >= version)  # newer: a later bump's push got there
        except (DfsError, OSError, TimeoutError, KeyError) as e:
            return None if _unanswered(e) else False

    async def _push_unanswered(self) -> None:
        """Push again to the members a version push got no answer from (see
        ``push_version``); one that now refuses it failed and leaves the set."""
        ns, registry, now = self.link.ns, self.link.registry, self.clock()

        async def again(chunk_id: int, cs_id: int, version: int) -> None:
            length = self.pushes.unanswered_due(ns, registry, chunk_id, cs_id, version, now)
            if length is None:
                return
            failed = await self.push_version(chunk_id, version, length, [cs_id])
            if failed and await self._drop(chunk_id, cs_id, keep_one=True, why="push_failed"):
                self.core.push_answered(chunk_id, cs_id)  # out of the set

        await asyncio.gather(*(again(*member) for member in self.pushes.unanswered()))

    async def settle_version(
        self, chunk_id: int, version: int, length: int, replicas: list[int]
    ) -> tuple[list[int], list[int], int]:
        """Push a chunk's new version (a handle's bump, a truncate's cut, the fence before
        a copy) to ``replicas`` and settle what failed (``metaserver/chunks/pushes.py``): a
        replica that does not take it leaves the set here when another one took it. When
        none took it, LENGTH RECOVERY if every member is short of the table
        (``recover_length``), else the version is pushed again later (``_push_again``).
        Returns (the replicas in the set afterwards, those that took the version, the
        chunk's length)."""
        failed = await self.push_version(chunk_id, version, length, replicas)
        took = [c for c in replicas if c not in failed]
        if replicas and not took:
            recovered = await self.recover_length(chunk_id)
            if recovered is not None:
                # Every member was short of the table: the length went down to the best
                # copy, and the members that do not hold it left the set.
                length, replicas = recovered
                failed = await self.push_version(chunk_id, version, length, replicas)
                took = [c for c in replicas if c not in failed]
        if replicas and not took:
            self.unpushed(chunk_id, version, length)
            return list(replicas), [], length
        self.pushed(chunk_id)
        kept = list(took)
        for cs_id in failed:
            if not await self._drop(chunk_id, cs_id, keep_one=True, why="push_failed"):
                kept.append(cs_id)
        return kept, took, length

    async def settle_handle(
        self, chunk_id: int, version: int, length: int, replicas: list[int]
    ) -> tuple[list[int], int]:
        """A write handle's new version pushed and settled (``settle_version``): returns
        (the members kept, the writer's chain; the chunk's length). ``Unavailable`` when no
        replica took it: it is pushed again later, and the writer asks again."""
        kept, _, length = await self.settle_version(chunk_id, version, length, replicas)
        if replicas and self.is_unpushed(chunk_id):
            raise Unavailable("no replica of the chunk took its new version", chunk_id=chunk_id)
        self.touch(chunk_id)  # the push may have taken a while: quiet from now
        return kept, length

    async def recover_length(self, chunk_id: int) -> tuple[int, list[int]] | None:
        """Carry out LENGTH RECOVERY (``metaserver/chunks/pushes.py``): ask every member
        (``chunk.info``), propose ``length_recover`` down to the best copy, and drop the
        members that do not hold exactly that. The chunk then reads zeros past its new
        length (up to the file's size) and can be written again. Returns (the new length,
        the members left), or None when it is not due (a member down, one that did not
        answer, or one at the table's length: then it is a push to retry, not data lost)."""
        link = self.link
        judged = self.pushes.recovery_members(link.ns, link.registry, chunk_id, self.clock())
        if judged is None:
            return None
        version, length, members = judged

        async def held(cs_id: int) -> tuple[int, int] | None:
            try:
                h = await link.cs_call(cs_id, "chunk.info", PUSH_TIMEOUT_S, chunk_id=chunk_id)
                return int(h["version"]), int(h["length"])
            except (DfsError, OSError, TimeoutError, KeyError, TypeError, ValueError):
                return None

        answers = await asyncio.gather(*(held(c) for c in members))
        recovered = self.pushes.recovered_length(version, length, members, answers)
        if recovered is None:
            return None
        best, to = recovered.best, recovered.to
        try:
            await link.propose_internal(
                "length_recover",
                {"chunk_id": chunk_id, "version": version, "length": length, "to": to},
            )
        except DfsError as e:
            log.info("repair event=length_recover_refused chunk=%d reason=%s", chunk_id, e)
            return None
        self.touch(chunk_id)
        log.warning("repair event=length_recovered chunk=%d version=%d length=%d to=%d "
                    "best_version=%d", chunk_id, version, length, to, best)  # fmt: skip
        kept = list(recovered.keep)
        for cs_id in recovered.drop:
            if not await self._drop(chunk_id, cs_id, keep_one=True, why="short_after_power_loss"):
                kept.append(cs_id)
        return to, kept

    def unpushed(self, chunk_id: int, version: int, length: int) -> None:
        self.pushes.unpushed(chunk_id, version, length)

    def is_unpushed(self, chunk_id: int) -> bool:
        return self.pushes.is_unpushed(chunk_id)

    def pushed(self, chunk_id: int) -> None:
        self.pushes.pushed(chunk_id)

    async def _push_again(self) -> None:
        for again in self.pushes.again_due(self.link.ns):
            chunk = again.chunk
            failed = await self.push_version(
                chunk.chunk_id, again.version, again.length, chunk.replicas, again=True
            )
            if self.pushes.again_done(again, failed):
                log.info("repair event=version_pushed_late chunk=%d version=%d",
                         chunk.chunk_id, again.version)  # fmt: skip

    # --------------------------------------------------------------- trimming

    async def _trim(self, trims: list[Trim]) -> None:
        """Carry out the core's trims: each drop through Raft (never the last replica),
        then the delete of a live one. A chunk's later trims wait for the next step when
        one of its drops is refused."""
        refused: set[int] = set()
        for trim in trims:
            if trim.chunk_id in refused:
                continue
            if not await self._drop(trim.chunk_id, trim.cs_id, keep_one=True, why=trim.why,
                                    check=partial(self._still_trimmable, trim)):  # fmt: skip
                refused.add(trim.chunk_id)
                continue
            chunk = self.link.ns.chunk_table.get(trim.chunk_id)
            if (
                trim.delete
                and chunk is not None
                and trim.chunk_id not in self.core.bad
                and self._at_goal(chunk, self.clock())
            ):
                # Still at goal after the drop committed (a member may have been reported
                # bad meanwhile: then the copy waits, and a report deletes it later).
                self._spawn(self._delete_quietly(trim.cs_id, [[trim.chunk_id, trim.version]]))

    def _still_trimmable(self, trim: Trim) -> bool:
        link = self.link
        return self.core.still_trimmable(link.ns, link.registry, link.ns.policy(), trim,
                                         self.clock())  # fmt: skip

    # --------------------------------------------------------------- deletion

    async def _delete(self, cs_id: int, chunks: list[list[int]]) -> bool:
        try:
            await self.link.cs_call(cs_id, "chunk.delete", DELETE_TIMEOUT_S, chunks=chunks)
            return True
        except (DfsError, OSError, TimeoutError) as e:
            log.info("repair event=delete_failed cs=%d chunks=%d error=%s",
                     cs_id, len(chunks), e)  # fmt: skip
            return False

    async def _collect_garbage(self, now: float) -> None:
        """Carry out a round of garbage collection (``metaserver/chunks/garbage.py``)."""
        try:
            collect = self.garbage.collect(self.link.ns.garbage, self.link.registry, now)
            if collect is None:
                return
            failed: set[int] = set()

            async def delete(cs_id: int, ids: list[int]) -> None:
                if not await self._delete(cs_id, [[c, INT63_MAX] for c in ids]):
                    failed.update(ids)

            await asyncio.gather(*(delete(cs, ids) for cs, ids in collect.deletes.items()))
            done = collect.done(failed)
            if done:
                await self.link.propose_internal("gc_done", {"chunk_ids": done})
                log.info("repair event=garbage_collected chunks=%d", len(done))
        except DfsError as e:
            log.info("repair event=gc_failed error=%s", e)
        finally:
            self._gc_running = False

    # --------------------------------------------------------------- reports

    async def report(self, cs_id: int, entries: list[list[int]], part: int, final: bool) -> None:
        """Carry out the verdict on one page of ``cs_id``'s block report (the rules:
        ``metaserver/chunks/reports.py``)."""
        now = self.clock()
        verdict = self.reports.page(
            self.link.ns, self.link.registry, cs_id, entries, part, final, now
        )
        if verdict is None:
            return
        for chunk_id, version, table_version in verdict.future:
            log.warning("repair event=replica_from_the_future chunk=%d cs=%d version=%d "
                        "table=%d", chunk_id, cs_id, version, table_version)  # fmt: skip
            if chunk_id not in self._overtaking:
                self._overtaking.add(chunk_id)
                self._spawn(self._overtake(chunk_id, version))
        delete = verdict.delete
        for b in verdict.behind:
            if await self._behind(cs_id, b, now):
                delete.append([b.chunk_id, b.version])
        for chunk_id in verdict.lost:
            await self._drop(chunk_id, cs_id, keep_one=False, why="lost")
        for chunk_id in verdict.adopt:
            await self.adopt(cs_id, chunk_id)
        if delete:
            self._spawn(self._delete_quietly(cs_id, delete))

    async def _overtake(self, chunk_id: int, seen: int) -> None:
        """A member holds a newer version than the table: only a group restored from a
        backup taken before that version's write sees this (every bump is committed before
        it is pushed). The table's version goes past it (``version_bump`` with ``past``)
        and is pushed: the members cut themselves to the table's length, the backup's, and
        serve again."""
        link = self.link
        try:
            chunk = link.ns.chunk_table.get(chunk_id)
            if chunk is None or chunk.version > seen:
                return
            bumped = await link.propose_internal(
                "version_bump", {"chunk_id": chunk_id, "version": chunk.version,
                                 "length": chunk.length, "past": seen},
            )  # fmt: skip
            self.touch(chunk_id)
            now = self.clock()
            live = [c for c in bumped["replicas"] if link.registry.is_alive(c, now)]
            version, length = int(bumped["version"]), int(bumped["length"])
            await self.settle_version(chunk_id, version, length, live)
            log.warning("repair event=overtaken chunk=%d version=%d past=%d", chunk_id,
                        version, seen)  # fmt: skip
        except DfsError as e:
            log.info("repair event=overtake_refused chunk=%d reason=%s", chunk_id, e)
        finally:
            self._overtaking.discard(chunk_id)

    async def adopt(self, cs_id: int, chunk_id: int) -> None:
        """ADOPTION. ``cs_id`` holds a whole copy of a chunk at the table's version, outside
        its set, and no member is alive: the set gets it back (``replica_add``, which bumps
        the version, then the push). Such a copy is a member dropped while it held the
        version (a push whose answer was lost twice, a trim whose delete has not come),
        so it holds the chunk's bytes; without it the chunk would stay missing. Members
        that are down leave behind by the bump, stale."""
        chunk = self.link.ns.chunk_table.get(chunk_id)
        if chunk is None:
            return
        try:
            result = await self.link.propose_internal(
                "replica_add",
                {"chunk_id": chunk_id, "version": chunk.version, "length": chunk.length,
                 "cs_id": cs_id},
            )  # fmt: skip
        except DfsError as e:
            log.info("repair event=adopt_refused chunk=%d cs=%d reason=%s", chunk_id, cs_id, e)
            return
        self.touch(chunk_id)
        log.warning("repair event=adopted chunk=%d cs=%d version=%d", chunk_id, cs_id,
                    result["version"])  # fmt: skip
        await self.settle_version(chunk_id, int(result["version"]), int(result["length"]), [cs_id])

    def _at_goal(self, chunk: Any, now: float) -> bool:
        link = self.link
        return self.core.at_goal(link.ns, link.registry, link.ns.policy(), chunk, now)

    async def _behind(self, cs_id: int, b: Behind, now: float) -> bool:
        """Carry out the judgement of a member that reported ``b``, behind the table
        (``metaserver/chunks/pushes.py``): ask the other live members (``chunk.info``),
        then drop it as stale (True: delete it, the chunk at goal), push it the version
        again, or recover the chunk's length; a member short of the table's length with
        no better copy anywhere is the best copy there is: kept, and logged."""
        link = self.link
        check = self.pushes.behind(link.ns, link.registry, cs_id, b, now)
        if check is None:
            return False
        chunk = check.chunk

        async def current(other: int) -> bool:
            try:
                h = await link.cs_call(other, "chunk.info", PUSH_TIMEOUT_S, chunk_id=b.chunk_id)
                return self.pushes.current(check, h)
            except (DfsError, OSError, TimeoutError, KeyError):
                return False

        any_current = bool(check.ask) and any(
            await asyncio.gather(*(current(c) for c in check.ask))
        )
        verdict = self.pushes.behind_verdict(check, any_current)
        if verdict is BehindVerdict.LATER:
            return False
        if verdict is BehindVerdict.DROP:
            dropped = await self._drop(b.chunk_id, cs_id, keep_one=True, why="stale")
            return dropped and self._at_goal(chunk, now)
        if verdict is BehindVerdict.PUSH_AGAIN:
            failed = await self.push_version(b.chunk_id, chunk.version, chunk.length, [cs_id])
            log.info("repair event=version_pushed_again chunk=%d cs=%d version=%d ok=%s",
                     b.chunk_id, cs_id, chunk.version, not failed)  # fmt: skip
            return False
        if await self.recover_length(b.chunk_id) is not None:
            return False  # the members that do not hold the recovered length left the set
        log.warning("repair event=stale_kept chunk=%d cs=%d version=%d length=%d "
                    "table_version=%d table_length=%d", b.chunk_id, cs_id, b.version,
                    b.length, chunk.version, chunk.length)  # fmt: skip
        return False

    async def _delete_quietly(self, cs_id: int, chunks: list[list[int]]) -> None:
        for i in range(0, len(chunks), GC_BATCH_MAX):
            await self._delete(cs_id, chunks[i : i + GC_BATCH_MAX])

    async def _drop(
        self,
        chunk_id: int,
        cs_id: int,
        *,
        keep_one: bool,
        why: str,
        check: Callable[[], bool] | None = None,
    ) -> bool:
        """Propose ``cs_id``'s drop from ``chunk_id``'s set. This leader's drops of one
        chunk go one at a time, and ``check`` (a trim's: is the chunk still at goal
        without it?) is asked once the drops before it committed: a trim decided from a
        set that another drop (a failed push) has shrunk since would take it below goal."""
        lock, users = self._set_locks.get(chunk_id) or (asyncio.Lock(), 0)
        self._set_locks[chunk_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._drop_now(chunk_id, cs_id, keep_one, why, check)
        finally:
            lock, users = self._set_locks[chunk_id]
            if users > 1:
                self._set_locks[chunk_id] = (lock, users - 1)
            else:
                del self._set_locks[chunk_id]

    async def _drop_now(
        self,
        chunk_id: int,
        cs_id: int,
        keep_one: bool,
        why: str,
        check: Callable[[], bool] | None,
    ) -> bool:
        if check is not None and not check():
            log.info("repair event=drop_skipped chunk=%d cs=%d why=%s", chunk_id, cs_id, why)
            return False
        try:
            await self.link.propose_internal(
                "replica_drop", {"chunk_id": chunk_id, "cs_id": cs_id, "keep_one": keep_one}
            )
        except DfsError as e:
            log.info("repair event=drop_refused chunk=%d cs=%d why=%s reason=%s",
                     chunk_id, cs_id, why, e)  # fmt: skip
            return False
        self.touch(chunk_id)
        log.info("repair event=replica_dropped chunk=%d cs=%d why=%s", chunk_id, cs_id, why)
        return True

    async def bad_replicas(self, cs_id: int, entries: list[list[int]]) -> None:
        """``cs_id`` found these replicas bad: carry out the core's judgement
        (``metaserver/chunks/reports.py``): the drop from the set, then the delete, unless
        the replica stays in its chunkserver's quarantine (no other live member)."""
        ns, registry = self.link.ns, self.link.registry
        now = self.clock()
        delete: list[list[int]] = []
        for chunk_id, version in entries:
            known = chunk_id in ns.chunk_table
            drop = self.reports.bad(ns, cs_id, chunk_id, version)
            if drop is not None:
                await self._drop(chunk_id, cs_id, keep_one=drop.keep_one, why=drop.why)
            if known and self.reports.quarantined(ns, registry, cs_id, chunk_id, now):
                log.warning("repair event=last_replica_bad chunk=%d cs=%d version=%d "
                            "kept=quarantine", chunk_id, cs_id, version)  # fmt: skip
                continue
            delete.append([chunk_id, version])
        if delete:
            self._spawn(self._delete_quietly(cs_id, delete))

    # --- rebalance (the admin ops' view of the core; ``metaserver/admin.py``)

    def rebalance_plan(self, threshold_pct: float) -> dict[str, Any]:
        """What a rebalance at ``threshold_pct`` would move now (``dfs admin rebalance
        --dry-run``): the core's plan over the live, non-draining chunkservers."""
        link = self.link
        plan = self.core.plan(link.ns, link.registry, link.ns.policy(), self.clock(),
                              threshold_pct)  # fmt: skip
        return plan.as_dict()

    def rebalance_progress(self) -> dict[str, Any]:
        """The running rebalance's figures (``moved_bytes`` and ``moves_done`` since this
        leader took over; ``left_bytes``: the bytes that must still move for every chunkserver
        to be within the threshold, ``rebalance.bytes_left``)."""
        link = self.link
        return self.core.progress(link.ns, link.registry, link.ns.policy(), self.clock())
