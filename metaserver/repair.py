"""The leader's upkeep of chunks: the driver of the chunk core, and what the core does not
decide yet (block reports, version pushes, bad replicas, garbage).

What moved out: the decisions of which chunk to copy where, which replica to trim, what
draining and rebalancing move, and the survey behind ``Health`` are the chunk core's
(``metaserver/chunks/core.py``, pure; its docstring and docs/ARCHITECTURE.md, "The chunk
core", give the rules). What it owns, as MooseFS's and HDFS's masters do:
- **driving the core**: every ``interval`` (leader only) ``ChunkCore.decide`` gets the
  namespace, the registry, the policy and the clock, and its commands are carried out:
  a ``Copy`` is fenced (``version_bump``, pushed), made by the target pulling from a live
  replica (``chunk.replicate``), joins through Raft (``replica_add``, another bump) and is
  settled (``settle_version``: members that miss the new version leave the set; members
  dead at the fence leave at once); its end goes back to the core (``copy_done``). A
  ``Trim`` is a ``replica_drop`` through Raft, re-checked against the set when proposed
  (this leader's drops of one chunk go one at a time), then ``chunk.delete`` of a live
  member if the chunk is still at goal. A ``Recover`` (a writer gone without a commit) is
  carried out by ``_recover``. A ``stop`` is proposed as ``rebalance_stop``. What writers
  upload to and commit comes in through ``writing`` and ``committed`` (the server's
  handles, keepalives and commits).
  ``rebalance_plan`` and ``rebalance_progress`` answer the admin ops from the core.
- **version pushes**: every new version (a handle's bump, a truncate's cut, a copy's fence
  and join) is pushed to the members before anyone uses it; a member that does not take it
  leaves the set once another took it (a lost answer is first confirmed with
  ``chunk.info``; a live member that answers neither stays, not vouched for, and is pushed
  again until it answers: ``_push_unanswered``); when none takes it, it is pushed again
  (``_push_again``) or, when every member is short of the table, the length is recovered
  (``recover_length``).
- **reports**: a chunkserver's block report (``cs.report``) is checked against the table:
  a replica at an older version than the table's, or shorter than the chunk, is stale: it
  leaves the set and is deleted (invariant 2), once another member is found to hold the
  table's version (``chunk.info``); when none does, the version is one no push delivered,
  and it is pushed again (``_behind``); a copy the set does not name, or of a chunk
  no file has (and no client holds reserved for a create: ``namespace/pools.py``), is
  deleted once the chunk has its goal of members vouched for by reports; a whole copy at
  the table's version while no member is alive is adopted (``_adopt``); a chunk the set
  places there but a complete report lacks was lost. A complete report vouches for its
  chunkserver (``ChunkCore.report_done``). A replica reported bad (``cs.bad_chunks``:
  scrubber, read checksum, disk error) leaves the set and is deleted (the last one is
  not: it stays in quarantine, see ``bad_replicas``); re-replication then copies a good one.
- **garbage**: chunks of deleted and truncated files wait ``gc_grace_s`` (so a slow reader
  of the old data still finds it, as GFS's lazy deletion), then every live replica deletes
  them and the namespace forgets them (``gc_done``). A replica on a server dead at the time
  is deleted when that server reports again.

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from dfs.wire.errors import DfsError, Exists, Invalid, NotFound, Stale, Timeout, Unavailable
from metaserver.chunks.core import ChunkCore, Copy, Health, Recover, Trim
from metaserver.chunks.placement import Placer, Registry
from metaserver.namespace import Namespace
from metaserver.namespace.commands import INT63_MAX
from metaserver.namespace.ops import GC_BATCH_MAX

log = logging.getLogger(__name__)

# Deadline of one chunk.replicate: a 64 MiB chunk at the chunkservers' default throttle
# takes about a second; this covers a loaded machine. The chunkserver's own deadline is
# the request's timeout_ms (at most 60 s there), a little shorter than ours.
REPLICATE_TIMEOUT_S = 60.0
REPLICATE_TIMEOUT_MS_SERVER = 58_000
# Deadline of a version push, a delete.
PUSH_TIMEOUT_S = 3.0
DELETE_TIMEOUT_S = 10.0
# Members behind the table judged per report page (each asks the other members with
# chunk.info, inside the chunkserver's cs.report call); the rest wait for the next report.
BEHIND_PER_REPORT = 64


@dataclass(slots=True)
class _Report:
    started_s: float
    next_part: int = 0
    seen: set[int] = field(default_factory=set)
    doubt: set[int] = field(default_factory=set)  # members it could not vouch for


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
    """The driver of the chunk core (``metaserver/chunks/core.py``): feeds it the
    namespace, the registry, the policy and the clock, carries out its copies and trims,
    and keeps the upkeep the core does not decide yet (reports, version pushes, garbage)."""

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
        self.gc_grace_s = gc_grace_s
        self.clock = clock
        self.core = ChunkCore(link.placer, quiet_s=quiet_s, jobs=jobs)
        self.health = Health()
        self._garbage_seen: dict[int, float] = {}
        self._reports: dict[int, _Report] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._gc_running = False
        self._stopping = False  # a rebalance_stop proposal in flight
        # chunk id -> (its drops one at a time, how many wait or hold it)
        self._set_locks: dict[int, tuple[asyncio.Lock, int]] = {}
        # chunk id -> (version, length): a new version no replica took (every push
        # failed) and that no writer was given: pushed again until one takes it, so that
        # the replicas, which hold the chunk's data at the old version, serve again.
        self._unpushed: dict[int, tuple[int, int]] = {}
        # chunk id -> version: versions this leader found on no member and pushed again
        # (``_behind``).
        self._repushed: dict[int, int] = {}

    # --------------------------------------------------------------- soft state

    def restart(self) -> None:
        """A new term of leadership: forget everything heard before."""
        self.core.restart(self.clock(), grace_s=self.link.registry.dead_timeout_s)
        self._garbage_seen.clear()
        self._reports.clear()
        self._unpushed.clear()
        self._repushed.clear()
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
        """Survey and act every ``interval_s`` while leading; never raises."""
        while True:
            await asyncio.sleep(self.interval_s)  # a period, not a wait for a condition
            if not self.link.is_leader:
                continue
            try:
                await self.step()
            except Exception:  # keep the upkeep alive whatever one round met
                log.exception("repair event=step_failed")

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

    async def step(self) -> None:
        now = self.clock()
        link = self.link
        link.know_all_chunkservers()
        policy = link.ns.policy()
        decisions = self.core.decide(link.ns, link.registry, policy, now)
        self.health = decisions.health
        self._prune()
        for copy in decisions.copies:
            self._spawn(self._copy(copy))
        for rec in decisions.recover:
            self._spawn(self._recover(rec))
        await self._trim(decisions.trims)
        if decisions.stop is not None and not self._stopping and policy.rebalance is not None:
            self._stopping = True
            self._spawn(self._stop_rebalance(decisions.stop, policy.rebalance.run))
        await self._push_again()
        await self._push_unanswered()
        if not self._gc_running:
            self._gc_running = True
            self._spawn(self._collect_garbage(now))

    def _prune(self) -> None:
        table = self.link.ns.chunk_table
        for chunk_id, version in list(self._repushed.items()):
            chunk = table.get(chunk_id)
            if chunk is None or chunk.version != version:
                del self._repushed[chunk_id]

    async def _stop_rebalance(self, reason: str, run: int) -> None:
        """End rebalance ``run``, the one the core judged (a newer start stays running)."""
        try:
            await self.link.propose_internal("rebalance_stop", {"reason": reason, "run": run})
            log.info("repair event=rebalance_stopped reason=%s", reason)
        except DfsError as e:
            log.info("repair event=rebalance_stop_failed reason=%s error=%s", reason, e)
        finally:
            self._stopping = False

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
            log.info("repair event=copy_failed chunk=%d cs=%d error=%s",
                     chunk_id, target_id, e)  # fmt: skip
        finally:
            self.core.copy_done(copy, joined, self.clock())

    async def _recover(self, rec: Recover) -> None:
        """Carry out a WRITER RECOVERY (``chunks.core.Recover``): the fence (a new version no
        writer holds), then one live member holding the table's version takes it, alone,
        and every other live member copies that one's bytes at it. A member that cannot
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
            source = None
            for cs_id in live:  # the first that holds the table's version and length
                try:
                    h = await link.cs_call(cs_id, "chunk.info", PUSH_TIMEOUT_S, chunk_id=chunk_id)
                except (DfsError, OSError, TimeoutError):
                    continue
                holds = h.get("version") in (rec.version, version) and h.get("length", 0) >= length
                if holds and not await self.push_version(
                    chunk_id, version, length, [cs_id], keep_unanswered=False
                ):
                    source = cs_id
                    break
            if source is None:
                # As after any bump no member took: they hold the bytes at the old version,
                # now refused; the version is pushed again until one takes it.
                self.unpushed(chunk_id, version, length)
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
    ) -> list[int]:
        """Give every replica the chunk's new version (an empty ``chunk.write``: each cuts
        itself to ``length`` and takes the version). Returns the replicas that failed:
        they stay at the old version, never served, until a report gets them deleted.
        A live member that did not answer at all (the push and the ``chunk.info`` that
        would confirm it both lost, or late) has not failed: it may well hold the version,
        and dropping it would make it stale for good, which with bit rot on the other
        members lost acknowledged bytes (the chunk simulation). It stays in the set,
        not vouched for (``ChunkCore.push_unanswered``), and is pushed again every step
        (``_push_unanswered``) until it answers, dies or leaves; a writer's write at the
        new version gives it the version too. ``keep_unanswered`` false (a recovery's
        source, which must be known to hold the version): such a member failed."""
        self.touch(chunk_id)
        token, expiry_ms = self.link.token(chunk_id, version)
        failed: list[int] = []

        async def push(cs_id: int) -> None:
            try:
                await self.link.cs_call(
                    cs_id, "chunk.write", PUSH_TIMEOUT_S, chunk_id=chunk_id, version=version,
                    length=length, offset=0, token=token, expiry_ms=expiry_ms, chain=[],
                    sync=False,
                )  # fmt: skip
            except (DfsError, OSError, TimeoutError) as e:
                newer = e.details.get("replica_version") if isinstance(e, Stale) else None
                if type(newer) is int and newer > version:
                    self.core.push_answered(chunk_id, cs_id)
                    return  # a later bump's push got there first: it is not behind
                held = None if isinstance(e, Stale) else await self._has_version(
                    cs_id, chunk_id, version
                )  # fmt: skip
                if held:
                    self.core.push_answered(chunk_id, cs_id)
                    return  # only the answer was lost: dropping it would lose a good copy
                if (
                    held is None
                    and keep_unanswered
                    and _unanswered(e)
                    and self.link.registry.is_alive(cs_id, self.clock())
                ):
                    self.core.push_unanswered(chunk_id, cs_id, version)
                    log.info("repair event=push_unanswered chunk=%d cs=%d version=%d",
                             chunk_id, cs_id, version)  # fmt: skip
                    return
                failed.append(cs_id)
                log.info("repair event=push_failed chunk=%d cs=%d version=%d error=%s",
                         chunk_id, cs_id, version, e)  # fmt: skip
            else:
                self.core.push_answered(chunk_id, cs_id)

        await asyncio.gather(*(push(cs_id) for cs_id in replicas))
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
            chunk = ns.chunk_table.get(chunk_id)
            if (
                chunk is None
                or chunk.version != version  # a later bump's push asks it again
                or cs_id not in chunk.replicas
                or not registry.is_alive(cs_id, now)  # dead: as any dead member
            ):
                self.core.push_answered(chunk_id, cs_id)
                return
            failed = await self.push_version(chunk_id, version, chunk.length, [cs_id])
            if failed and await self._drop(chunk_id, cs_id, keep_one=True, why="push_failed"):
                self.core.push_answered(chunk_id, cs_id)  # out of the set

        await asyncio.gather(*(
            again(chunk_id, cs_id, version)
            for chunk_id, members in list(self.core.unanswered.items())
            for cs_id, version in list(members.items())
        ))  # fmt: skip

    async def settle_version(
        self, chunk_id: int, version: int, length: int, replicas: list[int]
    ) -> tuple[list[int], list[int], int]:
        """Push a chunk's new version (a handle's bump, a truncate's cut, the fence before
        a copy) to ``replicas`` and settle what failed. A replica that does not take it is
        stale from now on, never served (it refuses reads of the new version); it leaves
        the set here when another one took the version. When none took it they all still
        hold the data at the old version, now refused: the version is pushed again until
        one takes it (``_push_again``), unless every one is short of the table's length:
        then the length goes down to the best copy first (``recover_length``). Returns (the
        replicas in the set afterwards, those that took the version, the chunk's length)."""
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

    async def recover_length(self, chunk_id: int) -> tuple[int, list[int]] | None:
        """LENGTH RECOVERY. A close puts a file's bytes on every replica of the chain (in
        each one's page cache) and commits their length; only an fsync makes them durable.
        A power loss of every replica in between leaves the table counting bytes no
        replica holds: every read of them fails (``Corrupt``: short everywhere), and every
        new version is refused (a replica never grows to a handle's length with zeros).
        When every member of the set is up and answers ``chunk.info`` shorter than the
        table, no better copy will come back: the table's length goes down to the longest
        copy at the newest version any member holds (``length_recover``), and the members
        that do not hold exactly that (shorter, or an older version, whose bytes may differ)
        leave the set, to be deleted as stale. The chunk then reads zeros past its new
        length (up to the file's size) and can be written again. As HDFS's block recovery
        settles a pipeline's replicas on a length nobody acknowledged beyond, but here the
        length had been acknowledged: the writer had not asked for durability.
        Returns (the new length, the members left), or None when any member is down, did
        not answer, or holds the table's length (then it is a push to retry, not data lost).
        """
        link = self.link
        chunk = link.ns.chunk_table.get(chunk_id)
        if chunk is None or not chunk.replicas:
            return None
        now = self.clock()
        members = list(chunk.replicas)
        if not all(link.registry.is_alive(c, now) for c in members):
            return None
        version, length = chunk.version, chunk.length

        async def held(cs_id: int) -> tuple[int, int] | None:
            try:
                h = await link.cs_call(cs_id, "chunk.info", PUSH_TIMEOUT_S, chunk_id=chunk_id)
                return int(h["version"]), int(h["length"])
            except (DfsError, OSError, TimeoutError, KeyError, TypeError, ValueError):
                return None

        answers = await asyncio.gather(*(held(c) for c in members))
        known = [a for a in answers if a is not None]
        if len(known) < len(members) or any(v > version or n >= length for v, n in known):
            return None
        best = max(v for v, _ in known)
        to = max(n for v, n in known if v == best)
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
        kept = [c for c, a in zip(members, answers, strict=True) if a == (best, to)]
        for cs_id, answer in zip(members, answers, strict=True):
            if answer != (best, to) and not await self._drop(
                chunk_id, cs_id, keep_one=True, why="short_after_power_loss"
            ):
                kept.append(cs_id)
        return to, kept

    def unpushed(self, chunk_id: int, version: int, length: int) -> None:
        self._unpushed[chunk_id] = (version, length)

    def is_unpushed(self, chunk_id: int) -> bool:
        return chunk_id in self._unpushed

    def pushed(self, chunk_id: int) -> None:
        self._unpushed.pop(chunk_id, None)

    async def _push_again(self) -> None:
        ns = self.link.ns
        for chunk_id, (version, length) in list(self._unpushed.items()):
            chunk = ns.chunk_table.get(chunk_id)
            if chunk is None or chunk.version != version or chunk.length != length:
                self._unpushed.pop(chunk_id, None)
                continue
            failed = await self.push_version(chunk_id, version, length, chunk.replicas)
            if len(failed) < len(chunk.replicas):
                # (A handle's settle_version may have cleared it during the push.)
                self._unpushed.pop(chunk_id, None)
                log.info("repair event=version_pushed_late chunk=%d version=%d",
                         chunk_id, version)  # fmt: skip

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
        """Whether, now, the chunk keeps its goal of counted, vouched members without
        ``trim.cs_id`` (the core decided on the set of its step)."""
        link, now = self.link, self.clock()
        chunk = link.ns.chunk_table.get(trim.chunk_id)
        if chunk is None or trim.cs_id not in chunk.replicas:
            return False
        draining, bad = (
            link.ns.policy().draining,
            self.core.bad_member(trim.chunk_id, chunk.version),
        )
        left = sum(
            1
            for c in chunk.replicas
            if c != trim.cs_id and c not in draining and c != bad
            and self.core.vouched(link.registry, c, now, trim.chunk_id)
        )  # fmt: skip
        return left >= (link.ns.inodes[chunk.ino].goal if chunk.length else 1)

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
        try:
            ns, registry = self.link.ns, self.link.registry
            seen = self._garbage_seen
            for chunk_id in ns.garbage:
                seen.setdefault(chunk_id, now)
            for chunk_id in [c for c in seen if c not in ns.garbage]:
                del seen[chunk_id]
            ripe = [c for c, t in seen.items() if now - t >= self.gc_grace_s][:GC_BATCH_MAX]
            if not ripe:
                return
            by_cs: dict[int, list[int]] = {}
            for chunk_id in ripe:
                for cs_id in ns.garbage.get(chunk_id, ()):
                    if registry.is_alive(cs_id, now):
                        by_cs.setdefault(cs_id, []).append(chunk_id)
            failed: set[int] = set()

            async def delete(cs_id: int, ids: list[int]) -> None:
                if not await self._delete(cs_id, [[c, INT63_MAX] for c in ids]):
                    failed.update(ids)

            await asyncio.gather(*(delete(cs, ids) for cs, ids in by_cs.items()))
            done = [c for c in ripe if c not in failed]
            if done:
                await self.link.propose_internal("gc_done", {"chunk_ids": done})
                log.info("repair event=garbage_collected chunks=%d", len(done))
        except DfsError as e:
            log.info("repair event=gc_failed error=%s", e)
        finally:
            self._gc_running = False

    # --------------------------------------------------------------- reports

    async def report(self, cs_id: int, entries: list[list[int]], part: int, final: bool) -> None:
        """One page of ``cs_id``'s block report (see the module docstring)."""
        now = self.clock()
        ns = self.link.ns
        state = self._reports.get(cs_id)
        if part == 0 or state is None:
            if part != 0:
                return  # the start was missed (new term): wait for the next report
            state = self._reports[cs_id] = _Report(started_s=now)
        if part != state.next_part:
            del self._reports[cs_id]
            return
        state.next_part += 1
        delete: list[list[int]] = []
        behind: list[tuple[int, int, int]] = []
        adopt: list[int] = []
        for chunk_id, version, length in entries:
            state.seen.add(chunk_id)
            chunk = ns.chunk_table.get(chunk_id)
            if chunk is None:
                if (
                    chunk_id not in ns.garbage
                    and chunk_id < ns.next_chunk_id
                    and chunk_id not in ns.reserved_chunks  # a create still on its way
                ):
                    delete.append([chunk_id, version])  # collected earlier, or never known
                continue
            if (
                not self._quiet(chunk_id, now, state.started_s)
                or self._copying_to(chunk_id) == cs_id
            ):
                state.doubt.add(chunk_id)
                continue
            if cs_id in chunk.replicas:
                if version < chunk.version or (version == chunk.version and length < chunk.length):
                    behind.append((chunk_id, version, length))
                    state.doubt.add(chunk_id)
                elif version > chunk.version:
                    log.warning("repair event=replica_from_the_future chunk=%d cs=%d "
                                "version=%d table=%d", chunk_id, cs_id, version,
                                chunk.version)  # fmt: skip
            elif version <= chunk.version and self._at_goal(chunk, now):
                delete.append([chunk_id, version])  # dropped from the set earlier
            elif (
                version == chunk.version
                and length >= chunk.length > 0
                and not any(self.link.registry.is_alive(c, now) for c in chunk.replicas)
            ):
                adopt.append(chunk_id)
        lost: list[int] = []
        if final:
            del self._reports[cs_id]
            for chunk_id, chunk in ns.chunk_table.items():
                if chunk.length > 0 and cs_id in chunk.replicas and chunk_id not in state.seen:
                    if self._quiet(chunk_id, now, state.started_s):
                        lost.append(chunk_id)
                    else:
                        state.doubt.add(chunk_id)
            self.core.report_done(cs_id, state.started_s, state.doubt)
        for chunk_id, version, length in behind[:BEHIND_PER_REPORT]:
            if await self._behind(cs_id, chunk_id, version, length, now):
                delete.append([chunk_id, version])
        for chunk_id in lost:
            await self._drop(chunk_id, cs_id, keep_one=False, why="lost")
        for chunk_id in adopt[:BEHIND_PER_REPORT]:
            await self._adopt(cs_id, chunk_id)
        if delete:
            self._spawn(self._delete_quietly(cs_id, delete))

    async def _adopt(self, cs_id: int, chunk_id: int) -> None:
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

    def _copying_to(self, chunk_id: int) -> int | None:
        copy = self.core.copies.get(chunk_id)
        return copy.target if copy is not None else None

    def _at_goal(self, chunk: Any, now: float) -> bool:
        """Whether the chunk's set has its goal of live members, not draining, not reported
        bad, each vouched for by a block report (``ChunkCore.vouched``). Only then is a copy outside the set
        (or a stale member) deleted, as HDFS invalidates excess and stale
        replicas only then: until the goal is met again such a copy may be the best one
        left (a writer that could not reach a good replica drops it from the set)."""
        if chunk.length == 0:
            return True  # no data: nothing a copy outside the set could be the last of
        ns, registry = self.link.ns, self.link.registry
        draining = ns.policy().draining
        bad = self.core.bad_member(chunk.chunk_id, chunk.version)  # its drop on its way
        live = sum(
            1
            for c in chunk.replicas
            if c not in draining and c != bad
            and self.core.vouched(registry, c, now, chunk.chunk_id)
        )  # fmt: skip
        return live >= ns.inodes[chunk.ino].goal

    async def _behind(
        self, cs_id: int, chunk_id: int, version: int, length: int, now: float
    ) -> bool:
        """A member of the chunk's set reported an older version, or fewer bytes, than the
        table. It is stale, and goes (True: delete it), only when another live member holds
        the table's version and length (``chunk.info``). When none does, the table's
        version is one no push delivered: the leader that bumped it failed first, or every
        push failed. Every member then holds the chunk's bytes, because a writer gets a
        handle only after some replica took its version, and members that did not take it
        leave the set before that; so the version is pushed again. Deleting them would lose
        the chunk. A member short of the table's length with no better copy anywhere is
        the best copy there is: kept, and logged."""
        link = self.link
        chunk = link.ns.chunk_table.get(chunk_id)
        if chunk is None or cs_id not in chunk.replicas:
            return False
        others = [c for c in chunk.replicas if c != cs_id and link.registry.is_alive(c, now)]

        async def current(other: int) -> bool:
            try:
                h = await link.cs_call(other, "chunk.info", PUSH_TIMEOUT_S, chunk_id=chunk_id)
                return bool(h["version"] == chunk.version and h["length"] >= chunk.length)
            except (DfsError, OSError, TimeoutError, KeyError):
                return False

        whole = length >= chunk.length and version < chunk.version
        # Once this leader found no member at the version and pushed it again, the other
        # members behind are in the same case: pushed too, not deleted.
        repushed = self._repushed.get(chunk_id) == chunk.version
        if not (whole and repushed) and any(await asyncio.gather(*(current(c) for c in others))):
            dropped = await self._drop(chunk_id, cs_id, keep_one=True, why="stale")
            return dropped and self._at_goal(chunk, now)
        if whole:
            self._repushed[chunk_id] = chunk.version
            failed = await self.push_version(chunk_id, chunk.version, chunk.length, [cs_id])
            log.info("repair event=version_pushed_again chunk=%d cs=%d version=%d ok=%s",
                     chunk_id, cs_id, chunk.version, not failed)  # fmt: skip
            return False
        if await self.recover_length(chunk_id) is not None:
            return False  # the members that do not hold the recovered length left the set
        log.warning("repair event=stale_kept chunk=%d cs=%d version=%d length=%d "
                    "table_version=%d table_length=%d", chunk_id, cs_id, version, length,
                    chunk.version, chunk.length)  # fmt: skip
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
        """``cs_id`` found these replicas bad: out of the set, deleted; a good copy follows.
        Not deleted while no other live member holds the chunk: never served again, its
        other blocks may be all that is left of it. Its chunkserver keeps it in
        quarantine/ for an operator until the file goes (as HDFS keeps a corrupt last
        replica); the survey counts the chunk missing."""
        ns, registry = self.link.ns, self.link.registry
        now = self.clock()
        delete: list[list[int]] = []
        for chunk_id, version in entries:
            chunk = ns.chunk_table.get(chunk_id)
            if chunk is not None:
                if cs_id in chunk.replicas and version == chunk.version:
                    self.core.mark_bad(chunk_id, cs_id, chunk.version)
                    await self._drop(chunk_id, cs_id, keep_one=False, why="bad")
                elif cs_id in chunk.replicas and version < chunk.version:
                    # Behind, and now bad too: nothing of it can serve again.
                    self.core.mark_bad(chunk_id, cs_id, chunk.version)
                    await self._drop(chunk_id, cs_id, keep_one=True, why="stale_bad")
                chunk = ns.chunk_table.get(chunk_id)
                if chunk is not None and not any(
                    c != cs_id and registry.is_alive(c, now) for c in chunk.replicas
                ):
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
