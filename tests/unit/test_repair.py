"""The leader's chunk upkeep (metaserver/repair.py) against a real namespace and registry,
with the chunkservers and Raft faked: proposals apply directly, chunkserver calls are
recorded and answered by a script."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from dfs.wire.errors import NotFound, Stale, Timeout, Unavailable, error_from_wire
from metaserver.chunks.placement import Placer, Registry
from metaserver.namespace import Namespace, encode_command
from metaserver.namespace.state import ROOT_INO
from metaserver.repair import SURVEY_PAUSE_RATIO, Repair, next_pause

pytestmark = pytest.mark.timeout(30)

CHUNK = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Link:
    """The metaserver as Repair sees it."""

    def __init__(self, servers: int, clock: Clock) -> None:
        self.ns = Namespace(chunk_size_bytes=CHUNK, trash_s_default=0)  # removals free at once
        self.registry = Registry(dead_timeout_s=10.0, started_s=clock.now - 100)
        self.placer = Placer("round_robin")
        self.clock = clock
        self.calls: list[tuple[int, str, dict[str, Any]]] = []
        self.fail: set[tuple[int, str]] = set()  # (cs_id, op) pairs that fail
        self.proposals: list[tuple[str, dict[str, Any]]] = []
        self.held: dict[tuple[int, int], tuple[int, int]] = {}  # (cs, chunk) -> (version, length)
        self.newer: dict[int, int] = {}  # cs -> a version its replica holds, refusing older
        self.missed: dict[tuple[int, int], int] = {}  # (cs, chunk) -> a version it failed
        self.seq = 0
        self.repair: Repair | None = None
        self.auto_vouch = True
        for i in range(servers):
            cs_id = self.apply("cs_register", {"uuid": f"u{i}", "address": f"h:{i + 1}"})["cs_id"]
            self.beat(cs_id)

    @property
    def is_leader(self) -> bool:
        return True

    def beat(self, cs_id: int, free: int = 100 * CHUNK) -> None:
        self.registry.heartbeat(cs_id, f"h:{cs_id}", self.clock.now, capacity_bytes=free,
                                used_bytes=0, chunks=0, load=0, pid=1)  # fmt: skip
        if self.repair is not None and self.auto_vouch:
            # As if a block report of it had been judged with each heartbeat: it counts
            # toward the goal for trims and deletes (ChunkCore.vouched).
            self.repair.core.report_done(cs_id, self.clock.now)

    def apply(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        result = self.ns.apply(encode_command(op, 0, 0, self.seq, args))
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    async def propose_internal(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.proposals.append((op, args))
        return self.apply(op, args)

    async def cs_call(self, cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        self.calls.append((cs_id, op, f))
        if (cs_id, op) in self.fail:
            if op == "chunk.write":
                self.missed[(cs_id, f["chunk_id"])] = f["version"]
            raise Unavailable("scripted failure")
        newer = self.newer.get(cs_id)
        if op == "chunk.write" and newer is not None and newer > f["version"]:
            raise Stale("write for an older version than the replica's",
                        chunk_id=f["chunk_id"], version=f["version"],
                        replica_version=newer)  # fmt: skip
        if op == "chunk.info":
            # What the replica holds: scripted in ``held``, else the table's version.
            chunk = self.ns.chunk(f["chunk_id"])
            version, length = self.held.get((cs_id, f["chunk_id"]),
                                            (chunk["version"], chunk["length"]))  # fmt: skip
            if self.missed.get((cs_id, f["chunk_id"])) == version:
                version -= 1  # a push that failed there did not get through
            return {"version": version, "length": length}
        return {}

    def token(self, chunk_id: int, version: int) -> tuple[bytes, int]:
        return b"t" * 32, 1

    def know_all_chunkservers(self) -> None:
        for cs_id, entry in self.ns.chunkservers().items():
            self.registry.known(cs_id, entry["address"])

    def file_with_chunk(self, name: bytes, replicas: list[int], length: int = 100) -> int:
        ino = self.apply("create", {"parent": ROOT_INO, "name": name, "mode": 0o100644,
                                    "uid": 0, "gid": 0})["attr"]["ino"]  # fmt: skip
        h = self.apply("write_handle", {"ino": ino, "index": 0, "replicas": replicas})
        self.apply("commit", {"ino": ino, "size": length, "mtime_ns": 1,
                              "chunks": [[0, length, h["chunk_id"], h["version"]]]})  # fmt: skip
        return int(h["chunk_id"])


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(servers: int, clock: Clock, **kw: Any) -> tuple[Link, Repair]:
    link = Link(servers, clock)
    link.repair = Repair(link, quiet_s=kw.pop("quiet_s", 0.0), clock=clock, **kw)
    for cs_id in link.ns.chunkservers():
        link.beat(cs_id)
    return link, link.repair


async def settle(repair: Repair) -> None:
    for _ in range(100):
        if not repair._tasks:
            return
        await asyncio.sleep(0)
    await asyncio.gather(*repair._tasks)


def test_survey_counts_and_orders_fewest_live_first(clock: Clock) -> None:
    link, repair = make(5, clock)
    full = link.file_with_chunk(b"full", [1, 2, 3])
    two = link.file_with_chunk(b"two", [1, 2, 4])
    one = link.file_with_chunk(b"one", [1, 4, 5])
    over = link.file_with_chunk(b"over", [1, 2, 3, 5])
    lost = link.file_with_chunk(b"lost", [4, 5])
    link.file_with_chunk(b"empty", [4], length=0)  # no data: fine even on a dead server
    clock.now += 11
    for cs_id in (1, 2, 3):  # 4 and 5 die
        link.beat(cs_id)
    health, under, trim = repair.survey(clock.now)
    assert health.as_dict() == {
        "total": 6, "empty": 1, "missing": 1, "one_copy": 1, "under_goal": 2, "over_goal": 0,
        "corrupt": 0, "garbage": 0, "replicating": 0,
    }  # fmt: skip
    assert under == [(1, one), (2, two)]
    assert over in trim and full not in trim and lost not in trim  # over: a dead member


def test_copy_is_fenced_goes_to_a_new_server_then_joins_with_a_bump(clock: Clock) -> None:
    link, repair = make(4, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    clock.now += 11
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    version = link.ns.chunk(cid)["version"]

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    # The dead member cannot hold the fence's version: it leaves the set at the fence
    # (back before a report, it would count toward the goal while stale).
    assert [p[0] for p in link.proposals] == ["version_bump", "replica_drop", "replica_add"]
    assert link.proposals[1][1] == {"chunk_id": cid, "cs_id": 3, "keep_one": True}
    # The fence: the live replicas take a version no writer holds, before the copy reads.
    writes = [(c[0], c[2]["version"]) for c in link.calls if c[1] == "chunk.write"]
    assert sorted(writes[:2]) == [(1, version + 1), (2, version + 1)]  # 3 is dead: not pushed
    copies = [c for c in link.calls if c[1] == "chunk.replicate"]
    assert len(copies) == 1
    target, _, f = copies[0]
    assert target == 4 and f["chunk_id"] == cid and f["version"] == version + 1
    assert f["length"] == 100 and set(f["sources"]) == {"h:1", "h:2"}
    chunk = link.ns.chunk(cid)
    assert chunk["replicas"] == [1, 2, 4] and chunk["version"] == version + 2
    assert {c[0] for c in writes[2:]} == {1, 2, 4}
    assert repair.survey(clock.now)[0].under_goal == 0


def test_a_writer_of_the_old_version_cannot_change_what_the_copy_reads(clock: Clock) -> None:
    link, repair = make(4, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    clock.now += 11
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    chunk = link.ns.chunk(cid)
    real_call = link.cs_call
    refused: list[Exception] = []

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        if op == "chunk.replicate":
            # A writer holding the old handle overwrote bytes the copy read, and commits:
            # refused, whatever the length.
            try:
                link.apply("commit", {"ino": chunk["ino"], "size": 100, "mtime_ns": 2,
                                      "chunks": [[0, 100, cid, chunk["version"]]]})  # fmt: skip
            except Stale as e:
                refused.append(e)
            # It takes a new handle (a bump): the copy, made at the fence's version, is
            # refused when it would join.
            link.apply("write_handle", {"ino": chunk["ino"], "index": 0, "replicas": []})
        return await real_call(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    assert len(refused) == 1
    assert link.ns.chunk(cid)["replicas"] == [1, 2]  # 3 was dead at the fence
    assert link.ns.chunk(cid)["version"] == chunk["version"] + 2
    assert (4, "chunk.delete", {"chunks": [[cid, chunk["version"] + 1]]}) in link.calls


def test_no_copy_when_no_live_replica_takes_the_fence(clock: Clock) -> None:
    link, repair = make(4, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    clock.now += 11
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    link.fail |= {(1, "chunk.write"), (2, "chunk.write")}
    version = link.ns.chunk(cid)["version"]

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    assert not [c for c in link.calls if c[1] == "chunk.replicate"]
    chunk = link.ns.chunk(cid)
    assert chunk["replicas"] == [1, 2, 3] and chunk["version"] == version + 1
    assert repair.is_unpushed(cid)  # pushed again until a replica takes it
    link.fail.clear()
    clock.now += 10
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    asyncio.run(go())
    assert not repair.is_unpushed(cid)


def test_jobs_limit_and_quiet_window(clock: Clock) -> None:
    link, repair = make(5, clock, jobs=2, quiet_s=10.0)
    ids = [link.file_with_chunk(b"f%d" % i, [1, 2, 3]) for i in range(4)]
    clock.now += 11
    for cs_id in (1, 2, 4, 5):
        link.beat(cs_id)
    repair.touch(ids[0])  # a writer just took a handle

    async def go() -> set[int]:
        await repair.step()
        started = set(repair._copies)
        await settle(repair)
        return started

    started = asyncio.run(go())
    assert len(started) == 2 and ids[0] not in started


def test_report_deletes_stale_unknown_and_extra_and_drops_lost(clock: Clock) -> None:
    link, repair = make(3, clock, gc_grace_s=0.0)  # unknown chunks go at once
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    good = link.file_with_chunk(b"good", [1, 2])
    stale = link.file_with_chunk(b"stale", [1, 2, 3])
    extra = link.file_with_chunk(b"extra", [2, 3])
    spare = link.file_with_chunk(b"spare", [2])  # under goal: a copy outside it is kept
    lost = link.file_with_chunk(b"lost", [1, 2])
    gone = link.file_with_chunk(b"gone", [1])
    link.apply("unlink", {"parent": ROOT_INO, "name": b"gone"})
    link.apply("gc_done", {"chunk_ids": [gone]})
    v = {c: link.ns.chunk(c)["version"] for c in (good, stale, extra, spare)}
    link.apply("write_handle", {"ino": link.ns.chunk(stale)["ino"], "index": 0, "replicas": []})
    clock.now += 1
    entries = [[good, v[good], 100], [stale, v[stale], 100], [extra, v[extra], 100],
               [spare, v[spare], 100], [gone, 1, 100]]  # fmt: skip

    async def go() -> None:
        await repair.report(1, entries[:2], 0, False)
        await repair.report(1, entries[2:], 1, True)
        await settle(repair)

    asyncio.run(go())
    deleted = [c[2]["chunks"] for c in link.calls if c[0] == 1 and c[1] == "chunk.delete"]
    flat = sorted(x for batch in deleted for x in batch)
    assert flat == sorted([[stale, v[stale]], [extra, v[extra]], [gone, 1]])
    assert link.ns.chunk(stale)["replicas"] == [2, 3]
    assert link.ns.chunk(lost)["replicas"] == [2]  # a complete report lacked it
    assert link.ns.chunk(good)["replicas"] == [1, 2]
    assert link.ns.chunk(spare)["replicas"] == [2]


def test_an_unknown_chunk_is_deleted_only_after_the_grace(clock: Clock) -> None:
    """A chunk no file has (collected earlier, or written after the backup a group was
    restored from) waits the garbage's grace from when this leader first saw it, as
    garbage does; a new term starts the wait again."""
    link, repair = make(3, clock, gc_grace_s=30.0)
    gone = link.file_with_chunk(b"gone", [1])
    link.apply("unlink", {"parent": ROOT_INO, "name": b"gone"})
    link.apply("gc_done", {"chunk_ids": [gone]})

    def deletes() -> list[Any]:
        return [c[2]["chunks"] for c in link.calls if c[1] == "chunk.delete"]

    async def report() -> None:
        await repair.report(1, [[gone, 1, 100]], 0, True)
        await settle(repair)

    asyncio.run(report())
    clock.now += 29
    asyncio.run(report())
    assert deletes() == []
    repair.reports.restart()  # a new term: the wait starts again
    clock.now += 2
    asyncio.run(report())
    assert deletes() == []
    clock.now += 30
    asyncio.run(report())
    assert deletes() == [[[gone, 1]]]


def test_a_version_no_replica_took_is_pushed_again_never_deleted(clock: Clock) -> None:
    """A leader bumped a chunk's version through Raft and failed before its push reached a
    replica: every replica holds the chunk's bytes at the old version. The next leader's
    reports must not delete them as stale (that would lose the chunk): with no replica at
    the table's version, it pushes the version again."""
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    old = link.ns.chunk(cid)["version"]
    link.apply("version_bump", {"chunk_id": cid, "version": old, "length": 100})
    for cs_id in (1, 2, 3):
        link.held[(cs_id, cid)] = (old, 100)
    clock.now += 1

    async def go() -> None:
        for cs_id in (1, 2, 3):
            await repair.report(cs_id, [[cid, old, 100]], 0, True)
        await settle(repair)

    real_call = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        result = await real_call(cs_id, op, timeout_s, **f)
        if op == "chunk.write":  # the push lands: that replica holds the version now
            link.held[(cs_id, f["chunk_id"])] = (f["version"], f["length"])
        return result

    link.cs_call = call  # type: ignore[method-assign]
    asyncio.run(go())
    # The first report finds no member at the version and pushes it; the others, then
    # behind a member that holds it only because of that push, are pushed too.
    assert not [c for c in link.calls if c[1] == "chunk.delete"]
    assert link.ns.chunk(cid)["replicas"] == [1, 2, 3]
    pushed = sorted(c[0] for c in link.calls if c[1] == "chunk.write")
    assert pushed == [1, 2, 3]
    assert all(c[2]["version"] == old + 1 for c in link.calls if c[1] == "chunk.write")


def test_a_stale_replica_goes_only_when_another_holds_the_version(
    clock: Clock, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=stale_kept chunk=\d+ cs=1 version=1 length=50 table_version=1")
    link, repair = make(3, clock)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    old = link.ns.chunk(cid)["version"]
    link.apply("version_bump", {"chunk_id": cid, "version": old, "length": 100})
    link.held[(3, cid)] = (old, 100)  # 1 and 2 took the new version, 3 did not
    short = link.file_with_chunk(b"short", [1, 2])
    link.held[(1, short)] = link.held[(2, short)] = (1, 50)  # nobody has all 100 bytes
    clock.now += 1
    link.fail.add((2, "chunk.info"))  # 2 does not answer: it may still hold all 100

    async def go() -> None:
        await repair.report(3, [[cid, old, 100]], 0, True)
        await repair.report(1, [[cid, old + 1, 100], [short, 1, 50]], 0, True)
        await settle(repair)

    asyncio.run(go())
    assert link.ns.chunk(cid)["replicas"] == [1, 2]
    assert (3, "chunk.delete", {"chunks": [[cid, old]]}) in link.calls
    # A short replica with no better one anywhere is the best copy there is: kept, and
    # the table is left as it is while a member may still hold more.
    assert link.ns.chunk(short)["replicas"] == [1, 2]
    assert link.ns.chunk(short)["length"] == 100
    assert not [c for c in link.calls if c[1] == "chunk.delete" and c[0] == 1]


def test_every_member_short_after_a_power_loss_recovers_the_length(
    clock: Clock, expect_log: Callable[..., None]
) -> None:
    """A close committed 100 bytes that no fsync made durable, and every replica lost
    power: each came back shorter. Once every member has answered, the table's length
    goes down to the best copy, and the members holding less (or an older version) leave
    the set: the chunk reads and can be written again."""
    expect_log(r"event=length_recovered chunk=\d+ version=1 length=100 to=60 best_version=1")
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    link.held[(1, cid)] = (1, 50)
    link.held[(2, cid)] = (1, 60)
    link.held[(3, cid)] = (1, 0)
    clock.now += 1

    async def go() -> None:
        await repair.report(1, [[cid, 1, 50]], 0, True)
        await settle(repair)

    asyncio.run(go())
    chunk = link.ns.chunk(cid)
    assert (chunk["length"], chunk["version"]) == (60, 1)
    assert chunk["replicas"] == [2]
    assert [p[0] for p in link.proposals] == ["length_recover", "replica_drop", "replica_drop"]


def test_a_handle_on_a_chunk_every_replica_lost_bytes_of_recovers_then_pushes(
    clock: Clock, expect_log: Callable[..., None]
) -> None:
    """The write-handle path: a bump's push is refused by every replica (each shorter than
    the table's length, after a power loss); the length is recovered and the version pushed
    at it, instead of a chunk no writer can ever bump again."""
    expect_log(r"event=length_recovered chunk=\d+ version=2 length=100 to=40 best_version=1")
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    for cs_id, length in ((1, 40), (2, 40), (3, 10)):
        link.held[(cs_id, cid)] = (1, length)
    bumped = link.apply("write_handle", {"ino": link.ns.chunk(cid)["ino"], "index": 0,
                                         "replicas": []})  # fmt: skip
    refused = {1, 2, 3}

    async def cs_call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        held = link.held[(cs_id, cid)]
        if op == "chunk.write" and (cs_id in refused and f["length"] > held[1]):
            link.calls.append((cs_id, op, f))
            raise Stale("replica shorter than the handle's length", chunk_id=cid,
                        replica_length=held[1], length=f["length"])  # fmt: skip
        return await Link.cs_call(link, cs_id, op, timeout_s, **f)

    link.cs_call = cs_call  # type: ignore[method-assign]

    async def go() -> tuple[list[int], list[int], int]:
        return await repair.settle_version(cid, bumped["version"], 100, [1, 2, 3])

    kept, took, length = asyncio.run(go())
    assert (kept, took, length) == ([1, 2], [1, 2], 40)
    assert link.ns.chunk(cid)["length"] == 40 and link.ns.chunk(cid)["replicas"] == [1, 2]
    assert not repair.is_unpushed(cid)


def test_a_replica_already_newer_than_a_push_stays_in_the_set(clock: Clock) -> None:
    """Two pushes of one chunk raced (a copy's fence and a writer's handle): a replica that
    took the later one first refuses the earlier with Stale; it is not behind."""
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    version = link.ns.chunk(cid)["version"]
    link.newer[1] = version + 5
    link.fail.add((2, "chunk.write"))

    async def go() -> tuple[list[int], list[int], int]:
        return await repair.settle_version(cid, version + 1, 100, [1, 2, 3])

    kept, took, _ = asyncio.run(go())
    assert took == [1, 3] and kept == [1, 3]
    assert link.ns.chunk(cid)["replicas"] == [1, 3]  # 2 failed for real: out


def test_report_leaves_recently_touched_chunks_alone(clock: Clock) -> None:
    link, repair = make(2, clock, quiet_s=10.0)
    cid = link.file_with_chunk(b"f", [1, 2])
    link.apply("write_handle", {"ino": link.ns.chunk(cid)["ino"], "index": 0, "replicas": []})
    repair.touch(cid)  # the push of the new version may not have reached the replica
    clock.now += 1

    asyncio.run(repair.report(1, [[cid, 1, 100]], 0, True))
    assert link.ns.chunk(cid)["replicas"] == [1, 2]
    assert not [c for c in link.calls if c[1] == "chunk.delete"]


def test_a_long_report_does_not_judge_chunks_touched_around_its_start(clock: Clock) -> None:
    """The chunkserver listed its replicas a moment before part 0 arrived; a chunk written
    then is missing from the list. However long the report takes, such a chunk is not
    lost: it was not quiet for ``quiet_s`` before the report began."""
    link, repair = make(2, clock, quiet_s=10.0)
    cid = link.file_with_chunk(b"f", [1])
    repair.touch(cid)  # its first write, just before the report started
    clock.now += 0.5

    async def go() -> None:
        await repair.report(1, [], 0, False)
        clock.now += 30  # a report of many pages
        await repair.report(1, [], 1, True)
        await settle(repair)

    asyncio.run(go())
    assert link.ns.chunk(cid)["replicas"] == [1]


def test_a_new_term_judges_nothing_before_its_quiet_window(clock: Clock) -> None:
    """A new leader does not know what an earlier leader touched: for ``quiet_s`` every
    chunk counts as touched (a report listed under the old leader may be behind)."""
    link, repair = make(2, clock, quiet_s=10.0)
    cid = link.file_with_chunk(b"f", [1])
    repair.restart()
    clock.now += 1
    asyncio.run(repair.report(1, [], 0, True))
    assert link.ns.chunk(cid)["replicas"] == [1]
    clock.now += 20
    asyncio.run(repair.report(1, [], 0, True))  # quiet now, and truly lacking: lost
    assert link.ns.chunk(cid)["replicas"] == []


def test_a_bad_replica_leaves_the_set_and_is_deleted_unless_it_is_the_last(
    clock: Clock, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=last_replica_bad chunk=\d+ cs=1 version=\d+ kept=quarantine")
    expect_log(r"event=last_replica_bad chunk=\d+ cs=3 version=\d+ kept=quarantine")
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1])
    two = link.file_with_chunk(b"two", [2, 3])
    behind = link.file_with_chunk(b"behind", [3])  # its version never reached cs 3
    version = link.ns.chunk(cid)["version"]
    v2 = link.ns.chunk(two)["version"]
    vb = link.ns.chunk(behind)["version"]
    link.apply("version_bump", {"chunk_id": behind, "version": vb, "length": 100})

    async def go() -> None:
        await repair.bad_replicas(1, [[cid, version]])
        await repair.bad_replicas(2, [[two, v2]])
        await repair.bad_replicas(3, [[behind, vb]])
        await settle(repair)

    asyncio.run(go())
    assert not [c for c in link.calls if c[1] == "chunk.delete" and c[0] == 3]
    # Never served again, so out of the set even as the last; but its other blocks may be
    # all that is left: not deleted (its chunkserver keeps it in quarantine).
    assert link.ns.chunk(cid)["replicas"] == []
    assert not [c for c in link.calls if c[1] == "chunk.delete" and c[0] == 1]
    # With a copy left elsewhere, it goes.
    assert link.ns.chunk(two)["replicas"] == [3]
    assert (2, "chunk.delete", {"chunks": [[two, v2]]}) in link.calls
    # Behind and bad: out of the set too, but for the last member (its drop is refused).
    assert link.ns.chunk(behind)["replicas"] == [3]
    health = repair.survey(clock.now)[0]
    assert (health.missing, health.corrupt) == (1, 3)


def test_garbage_waits_for_grace_and_is_forgotten_only_when_deleted(clock: Clock) -> None:
    link, repair = make(3, clock, gc_grace_s=30.0)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    link.apply("unlink", {"parent": ROOT_INO, "name": b"f"})
    link.fail.add((2, "chunk.delete"))

    async def step() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(step())
    assert not [c for c in link.calls if c[1] == "chunk.delete"]  # within the grace
    clock.now += 31
    for cs_id in (1, 2, 3):
        link.beat(cs_id)
    asyncio.run(step())
    assert {c[0] for c in link.calls if c[1] == "chunk.delete"} == {1, 2, 3}
    assert cid in link.ns.garbage  # server 2 failed: kept, tried again
    link.fail.clear()
    asyncio.run(step())
    assert cid not in link.ns.garbage


def test_a_failed_copy_is_not_retried_at_once(clock: Clock) -> None:
    link, repair = make(4, clock)
    link.file_with_chunk(b"f", [1, 2, 3])
    clock.now += 11
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    link.fail.add((4, "chunk.replicate"))

    async def step() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(step())
    asyncio.run(step())
    assert len([c for c in link.calls if c[1] == "chunk.replicate"]) == 1
    clock.now += 6
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    asyncio.run(step())
    assert len([c for c in link.calls if c[1] == "chunk.replicate"]) == 2


def test_a_bad_replica_of_an_unknown_chunk_is_just_deleted(clock: Clock) -> None:
    link, repair = make(1, clock)

    async def go() -> None:
        await repair.bad_replicas(1, [[999, 1]])
        await settle(repair)

    asyncio.run(go())
    assert link.calls == [(1, "chunk.delete", {"chunks": [[999, 1]]})]
    assert link.proposals == []


# --- transcripts of what the chunk simulator found (metaserver/chunks/sim.py) -----------


def test_a_push_again_survives_a_handle_settling_the_chunk_meanwhile(clock: Clock) -> None:
    """``_push_again`` deleted its entry after the push, which a handle's settle_version
    may have removed meanwhile: KeyError, and the rest of the step (garbage) skipped."""
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    chunk = link.ns.chunk(cid)
    repair.unpushed(cid, chunk["version"], chunk["length"])
    real = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        if op == "chunk.write":
            repair.pushed(cid)  # a write handle's push settled it during ours
        return await real(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]
    asyncio.run(repair._push_again())
    assert not repair.is_unpushed(cid)


def test_a_new_leader_judges_nothing_while_it_guesses_who_is_alive(clock: Clock) -> None:
    """With a dead timeout longer than the quiet window, a new leader judged reports while
    its registry still counted unheard chunkservers alive: it deleted a copy outside the
    set, the chunk's members being dead."""
    link, repair = make(3, clock, quiet_s=2.0)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    cid = link.file_with_chunk(b"f", [1, 2])
    version = link.ns.chunk(cid)["version"]
    link.registry.restart(clock.now)
    repair.restart()  # 1 and 2 are not heard again: dead, but alive by grace for 10 s
    clock.now += 3  # past the quiet window
    link.beat(3)

    async def go() -> None:
        await repair.report(3, [[cid, version, 100]], 0, True)  # a copy outside the set
        await settle(repair)

    asyncio.run(go())
    assert not [c for c in link.calls if c[1] == "chunk.delete"]


def test_a_replica_add_whose_answer_was_lost_still_pushes_its_version(clock: Clock) -> None:
    """The copy joined, the answer was lost (``Timeout``): taken for a failure, its version
    was never pushed, and the next report dropped the new copy as stale."""
    link, repair = make(4, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    clock.now += 11
    for cs_id in (1, 2, 4):
        link.beat(cs_id)
    version = link.ns.chunk(cid)["version"]
    real = link.propose_internal

    async def propose(op: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await real(op, args)
        if op == "replica_add":
            raise Timeout("the answer was lost")
        return result

    link.propose_internal = propose  # type: ignore[method-assign]

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    assert link.ns.chunk(cid)["replicas"] == [1, 2, 4]
    pushed = {c[0] for c in link.calls if c[1] == "chunk.write" and c[2]["version"] == version + 2}
    assert pushed == {1, 2, 4}


def test_a_push_whose_answer_was_lost_is_confirmed_before_a_drop(clock: Clock) -> None:
    """A member whose push answer was lost had taken the version: dropping it took a good
    copy out of the set (and with the push after a copy settled, below goal)."""
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    bumped = link.apply("version_bump", {"chunk_id": cid, "version": 1, "length": 100})
    version = int(bumped["version"])
    real = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        result = await real(cs_id, op, timeout_s, **f)
        if cs_id == 2 and op == "chunk.write":
            raise TimeoutError  # it took the version; the answer never came
        return result

    link.cs_call = call  # type: ignore[method-assign]
    kept, took, _ = asyncio.run(repair.settle_version(cid, version, 100, [1, 2, 3]))
    assert kept == [1, 2, 3] and took == [1, 2, 3]
    assert not [p for p in link.proposals if p[0] == "replica_drop"]


def test_a_push_no_answer_came_for_keeps_its_live_member_until_it_answers(
    clock: Clock,
) -> None:
    """The chunk simulation's seeds 5432 and 6951: a handle's push to a live member lost
    its answer, and so did the ``chunk.info`` confirming it; the member, which held the
    version, was dropped, and bit rot on the last member lost acknowledged bytes. Now it
    stays in the set, not vouched for (no trim counts it), and is pushed again every step
    until it answers; one that refuses, or dies, fails as before."""
    link, repair = make(4, clock)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    version = int(link.apply("write_handle", {"ino": 2, "index": 0, "replicas": []})["version"])
    real = link.cs_call
    silent: set[int] = {2}

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        if cs_id in silent:
            link.calls.append((cs_id, op, f))
            raise TimeoutError  # no answer: the request or the answer lost
        return await real(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]
    kept, took, _ = asyncio.run(repair.settle_version(cid, version, 100, [1, 2, 3]))
    assert kept == [1, 2, 3] and took == [1, 2, 3]
    assert not [p for p in link.proposals if p[0] == "replica_drop"]
    assert [c[1] for c in link.calls if c[0] == 2] == ["chunk.write", "chunk.info"]
    assert not repair.core.vouched(link.registry, 2, clock.now, cid)
    assert repair.core.vouched(link.registry, 1, clock.now, cid)
    decisions = repair.core.decide(link.ns, link.registry, link.ns.policy(), clock.now)
    assert not decisions.trims  # two vouched members: at goal, not over it

    silent.clear()  # it answers the next push: vouched again, still in the set
    asyncio.run(repair.step())
    pushes = [c for c in link.calls if c[0] == 2 and c[1] == "chunk.write"]
    assert len(pushes) == 2 and pushes[-1][2]["version"] == version
    assert repair.core.vouched(link.registry, 2, clock.now, cid)
    assert link.ns.chunk(cid)["replicas"] == [1, 2, 3]

    # No answer again, then a refusal: it failed the version, and leaves.
    silent.add(3)
    asyncio.run(repair.push_version(cid, version, 100, [3]))
    assert link.ns.chunk(cid)["replicas"] == [1, 2, 3]
    silent.clear()
    link.fail.add((3, "chunk.write"))
    asyncio.run(repair.step())
    assert link.ns.chunk(cid)["replicas"] == [1, 2]

    # A member whose heartbeats stopped fails at once when no answer comes.
    silent.add(2)
    clock.now += 11
    for cs_id in (1, 3, 4):
        link.beat(cs_id)
    assert asyncio.run(repair.push_version(cid, version, 100, [2])) == [2]
    assert not repair.core.unanswered


def test_a_copy_outside_the_set_stays_while_a_member_reported_bad_awaits_its_drop(
    clock: Clock,
) -> None:
    """A member reported bad still counted toward the goal when a report judged a copy
    outside the set, until its drop committed: the copy could be deleted with one good
    member left (``_at_goal`` now counts a bad member for nothing, as the trims do)."""
    link, repair = make(3, clock)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    cid = link.file_with_chunk(b"f", [1, 2])
    version = link.ns.chunk(cid)["version"]
    repair.core.mark_bad(cid, 1, version)  # its drop is on its way

    async def go() -> None:
        await repair.report(3, [[cid, version, 100]], 0, True)
        await settle(repair)

    asyncio.run(go())
    assert not [c for c in link.calls if c[1] == "chunk.delete"]
    repair.core.bad.clear()  # (a new term: no mark) at goal, the copy outside goes
    asyncio.run(go())
    assert [c[0] for c in link.calls if c[1] == "chunk.delete"] == [3]


def test_a_lone_copy_at_the_tables_version_is_adopted(
    clock: Clock, expect_log: Callable[..., None]
) -> None:
    """Every member gone, a copy at the table's version outside the set (a member dropped
    after two lost answers): it joins the set again instead of the chunk staying missing."""
    link, repair = make(2, clock)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    cid = link.file_with_chunk(b"f", [1])
    version = link.ns.chunk(cid)["version"]
    clock.now += 11
    link.beat(2)  # 1 is dead
    expect_log("event=adopted")

    async def go() -> None:
        await repair.report(2, [[cid, version, 100]], 0, True)
        await settle(repair)

    asyncio.run(go())
    chunk = link.ns.chunk(cid)
    assert chunk["replicas"] == [1, 2] and chunk["version"] == version + 1
    assert (2, "chunk.write") in {(c[0], c[1]) for c in link.calls}
    assert not [c for c in link.calls if c[1] == "chunk.delete"]


def test_a_trim_decided_before_another_drop_is_skipped(clock: Clock) -> None:
    """A trim decided from a set of three was proposed after a failed push's drop had
    shrunk the set to two: the chunk went below its goal of two."""
    link, repair = make(3, clock)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 2})
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    decisions = repair.core.decide(link.ns, link.registry, link.ns.policy(), clock.now)
    (trim,) = decisions.trims
    other = next(c for c in (1, 2, 3) if c != trim.cs_id)
    link.apply("replica_drop", {"chunk_id": cid, "cs_id": other, "keep_one": True})

    async def go() -> None:
        await repair._trim([trim])
        await settle(repair)

    asyncio.run(go())
    assert len(link.ns.chunk(cid)["replicas"]) == 2
    assert not [c for c in link.calls if c[1] == "chunk.delete"]


def test_a_writer_gone_without_committing_has_its_chunk_recovered(clock: Clock) -> None:
    """WRITER RECOVERY: a writer took a handle and went silent without a commit (it died
    mid-chain, or gave up): its members may differ at one version. The chunk is fenced,
    one member holding the version takes the new one alone, the others copy it."""
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    done = link.file_with_chunk(b"g", [1, 2, 3])
    version = link.ns.chunk(cid)["version"]
    repair.writing(cid)  # a handle, then nothing
    repair.writing(done)
    repair.committed(done)  # a writer that committed leaves nothing to recover
    clock.now += 1

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    chunk = link.ns.chunk(cid)
    assert chunk["version"] == version + 1 and chunk["replicas"] == [1, 2, 3]
    pushes = [c[0] for c in link.calls if c[1] == "chunk.write" and c[2]["chunk_id"] == cid]
    assert pushes == [1]  # the new version goes to one member alone
    copies = [(c[0], c[2]["sources"], c[2]["version"]) for c in link.calls
              if c[1] == "chunk.replicate"]  # fmt: skip
    assert copies == [(2, ["h:1"], version + 1), (3, ["h:1"], version + 1)]
    assert link.ns.chunk(done)["version"] == version
    asyncio.run(go())
    assert link.ns.chunk(cid)["version"] == version + 1  # once


def test_a_chunk_whose_every_replica_file_is_gone_is_found_lost_not_pushed_forever(
    clock: Clock,
) -> None:
    """Every replica file of a chunk was removed while its chunkservers ran: each refuses
    the version no member took (NotFound). Pushing it again every step must not keep the
    chunk 'recently touched' for good: once quiet, the members' complete reports, which
    lack it, find it lost on each, and the chunk ends with no member (missing, as fsck
    says), instead of ~300 refused pushes a minute and members that hold nothing."""
    link, repair = make(3, clock, quiet_s=10.0)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    version = link.ns.chunk(cid)["version"]
    link.apply("version_bump", {"chunk_id": cid, "version": version, "length": 100})
    real_call = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        if f.get("chunk_id") == cid and op in ("chunk.write", "chunk.info"):
            link.calls.append((cs_id, op, f))
            raise NotFound("no replica of this chunk here", chunk_id=cid)
        return await real_call(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]
    repair.pushes.unpushed(cid, version + 1, 100)

    async def go() -> None:
        for _ in range(3):  # each drop touches the chunk: the next reports judge the rest
            for _ in range(15):  # a step a second
                clock.now += 1.0
                for cs_id in (1, 2, 3):
                    link.beat(cs_id)
                await repair._push_again()
            for cs_id in (1, 2, 3):
                await repair.report(cs_id, [], 0, True)
            await settle(repair)

    asyncio.run(go())
    assert [c for c in link.calls if c[1] == "chunk.write"]  # it was pushed again
    assert link.ns.chunk(cid)["replicas"] == []
    assert not repair.pushes.is_unpushed(cid) or not list(repair.pushes.again_due(link.ns))


def test_a_writer_dead_just_before_a_leader_change_is_recovered_by_the_new_leader(
    clock: Clock,
) -> None:
    """WRITER RECOVERY across a leader change: the writer of ``cid`` died right before its
    leader did, so the new leader never heard of it (its suspects were the old leader's
    soft state, and the chunk's members may differ at one version for good). The handle
    marked the chunk in the namespace (``writes``): the new leader takes every marked chunk
    over as being written, and one no writer's keepalive names within twice the quiet
    window is recovered; one a live writer names and commits is settled, not recovered."""
    link, _ = make(3, clock)
    cid = link.file_with_chunk(b"dead", [1, 2, 3])
    busy = link.file_with_chunk(b"busy", [1, 2, 3])
    version = link.ns.chunk(cid)["version"]
    assert set(link.ns.writes) == {cid, busy}
    new = Repair(link, quiet_s=2.0, clock=clock)  # the new leader: nothing heard yet
    link.repair = new
    new.restart()

    async def step(seconds: float) -> None:
        for _ in range(int(seconds * 2)):
            clock.now += 0.5
            for cs_id in (1, 2, 3):
                link.beat(cs_id)
            if clock.now < 1012:
                new.writing(busy)  # its writer's keepalive
            elif clock.now == 1012:
                new.committed(busy)
            await new.step()
            await settle(new)

    asyncio.run(step(20))
    assert link.ns.chunk(cid)["version"] == version + 1  # fenced once, and made whole
    copies = [(c[0], c[2]["chunk_id"]) for c in link.calls if c[1] == "chunk.replicate"]
    assert sorted(copies) == [(2, cid), (3, cid)]
    assert link.ns.chunk(busy)["version"] == version
    assert link.ns.writes == {}  # both settled: a later leader recovers neither again
    assert [p[1] for p in link.proposals if p[0] == "version_bump"] == [
        {"chunk_id": cid, "version": version, "length": 100}
    ]


def test_a_report_does_not_push_a_recoverys_fence_to_a_member_it_has_not_copied_to(
    clock: Clock,
) -> None:
    """Seed 77 (with every dead writer's chunk compared): a block report judged a member
    behind the table while a WRITER RECOVERY was between its fence and its copies; no
    other member answered current yet, so the report pushed the fence's version to it,
    and the recovery's copy onto a replica already at that version was dropped as
    needless: the members differed at one version. Reports leave a chunk being recovered
    alone, and a judgement the table moved on under is made again later."""
    link, repair = make(3, clock)
    cid = link.file_with_chunk(b"f", [1, 2, 3])
    version = link.ns.chunk(cid)["version"]
    repair.core.recovering.add(cid)
    link.apply("version_bump", {"chunk_id": cid, "version": version, "length": 100})
    link.held[(1, cid)] = link.held[(3, cid)] = (version, 100)  # not pushed yet

    async def go() -> None:
        await repair.report(2, [[cid, version, 100]], 0, True)
        await settle(repair)

    asyncio.run(go())
    assert not [c for c in link.calls if c[1] == "chunk.write"]
    assert link.ns.chunk(cid)["replicas"] == [1, 2, 3]


def test_a_recovery_whose_source_fails_keeps_the_member_it_could_not_copy_to(
    clock: Clock,
) -> None:
    """Seed 175 (once the simulated store kept bit rot through a bump): the recovery's
    source held the version but its bytes were rotten; the copy to the other member
    failed on the source, and the recovery dropped that member, which held the only
    good bytes. A copy that fails on its sources (``Unavailable`` naming them) ends the
    recovery without a drop; it is tried again once the source is judged."""
    link, repair = make(2, clock)
    cid = link.file_with_chunk(b"f", [1, 2])
    real_call = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        if op == "chunk.replicate":
            link.calls.append((cs_id, op, f))
            raise Unavailable("no source could supply the chunk", sources=f["sources"])
        return await real_call(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]
    repair.writing(cid)  # a handle, then nothing
    clock.now += 1

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    assert [c[0] for c in link.calls if c[1] == "chunk.replicate"] == [2]
    assert link.ns.chunk(cid)["replicas"] == [1, 2]
    assert cid in repair.core.suspect  # tried again later


def test_a_recovery_copy_whose_answer_was_lost_is_confirmed_not_dropped(clock: Clock) -> None:
    """Seed 3394: a recovery's ``chunk.replicate`` got no answer although the member had
    made the copy; the recovery dropped it as not recovered, and bit rot on the source
    then lost the chunk. A lost answer is confirmed with ``chunk.info``, as a push's is:
    a member holding the fence's version made the copy and stays."""
    link, repair = make(2, clock)
    cid = link.file_with_chunk(b"f", [1, 2])
    version = link.ns.chunk(cid)["version"]
    real_call = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        if op == "chunk.replicate":
            link.calls.append((cs_id, op, f))
            link.held[(cs_id, cid)] = (f["version"], f["length"])  # made, answer lost
            raise Timeout("no answer")
        return await real_call(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]
    repair.writing(cid)
    clock.now += 1

    async def go() -> None:
        await repair.step()
        await settle(repair)

    asyncio.run(go())
    assert [c[0] for c in link.calls if c[1] == "chunk.replicate"] == [2]
    assert link.ns.chunk(cid)["replicas"] == [1, 2]
    assert link.ns.chunk(cid)["version"] == version + 1
    assert cid not in repair.core.suspect  # recovered


@pytest.mark.parametrize("deposed", [False, True])
def test_a_step_serves_the_loop_between_slices_of_its_survey(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, deposed: bool
) -> None:
    """A survey of a million chunks took a second in one piece, every second: each slice
    now gives the loop back (requests, Raft). A leader deposed meanwhile acts on nothing."""
    link, repair = make(3, clock)
    repair.core.survey_slice = 5
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 3})
    for i in range(25):
        link.file_with_chunk(b"f%d" % i, [1, 2])  # each under its goal: a copy to make
    served: list[int] = []
    at_first_call: list[int] = []  # turns served before the step acted at all
    real = link.cs_call

    async def call(cs_id: int, op: str, timeout_s: float, **f: Any) -> dict[str, Any]:
        at_first_call.append(len(served))
        return await real(cs_id, op, timeout_s, **f)

    link.cs_call = call  # type: ignore[method-assign]

    async def go() -> None:
        async def other_requests() -> None:
            while True:
                served.append(len(served))
                if deposed and len(served) == 2:
                    monkeypatch.setattr(Link, "is_leader", property(lambda self: False))
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_requests())
        await repair.step()
        await settle(repair)
        task.cancel()

    asyncio.run(go())
    copies = [c for c in link.calls if c[1] == "chunk.replicate"]
    if deposed:
        assert copies == []
    else:
        assert at_first_call[0] >= 25 // 5 - 1  # a turn of the loop between slices
        assert copies


def test_the_pause_between_steps_grows_with_the_survey(clock: Clock) -> None:
    link, repair = make(3, clock)
    for i in range(5):
        link.file_with_chunk(b"f%d" % i, [1, 2, 3])
    asyncio.run(repair.step())
    assert 0 < repair.survey_s < 1.0
    assert next_pause(1.0, repair.survey_s) == 1.0  # a small table: every interval
    assert next_pause(1.0, 1.0) == SURVEY_PAUSE_RATIO  # a million chunks: every few seconds


def test_status_health_is_surveyed_in_slices(clock: Clock) -> None:
    link, repair = make(3, clock)
    link.apply("set_goal", {"ino": ROOT_INO, "goal": 3})
    repair.core.survey_slice = 2
    for i in range(7):
        link.file_with_chunk(b"f%d" % i, [1, 2] if i % 2 else [1, 2, 3])
    turns: list[int] = []

    async def go() -> Any:
        async def meanwhile() -> None:
            while True:
                turns.append(len(turns))
                await asyncio.sleep(0)

        task = asyncio.ensure_future(meanwhile())
        health = await repair.health_now(clock.now)
        task.cancel()
        return health

    health = asyncio.run(go())
    assert (health.total, health.under_goal) == (7, 3)
    assert len(turns) >= 3  # the loop turned between the slices
