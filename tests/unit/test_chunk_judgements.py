"""The chunk core's judgements of what chunkservers and writers say
(metaserver/chunks/reports.py, pushes.py, garbage.py, handles.py), pure, against a real
namespace and registry: events in, what the driver is to do out (the driver's own tests,
tests/unit/test_repair.py, carry them out)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dfs.wire.errors import Unavailable, error_from_wire
from metaserver.chunks import handles
from metaserver.chunks.core import ChunkCore
from metaserver.chunks.garbage import Garbage
from metaserver.chunks.placement import Placer, Registry
from metaserver.chunks.pushes import BehindVerdict, Outcome, Pushes
from metaserver.chunks.reports import Behind, Reports
from metaserver.namespace import Namespace, encode_command
from metaserver.namespace.state import ROOT_INO

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

CHUNK = 1 << 20


class Cluster:
    def __init__(self, servers: int, goal: int) -> None:
        self.ns = Namespace(chunk_size_bytes=CHUNK, trash_s_default=0)  # removals free at once
        self.now = 100.0
        self.registry = Registry(dead_timeout_s=10.0, started_s=0.0)
        self.core = ChunkCore(Placer("weighted", random.Random(1)), quiet_s=0.0)
        self.reports = Reports(self.core)
        self.pushes = Pushes(self.core)
        self.seq = 0
        self.apply("set_goal", {"ino": ROOT_INO, "goal": goal})
        for i in range(servers):
            self.apply("cs_register", {"uuid": f"u{i}", "address": f"h{i}:1"})
        for cs_id in self.ns.chunkservers():
            self.beat(cs_id)

    def apply(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        result = self.ns.apply(encode_command(op, 0, 0, self.seq, args))
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    def beat(self, cs_id: int) -> None:
        self.registry.heartbeat(cs_id, f"h{cs_id}:1", self.now, capacity_bytes=100 * CHUNK,
                                used_bytes=0, chunks=0, load=0, pid=1)  # fmt: skip
        self.core.report_done(cs_id, self.now)  # vouched for

    def file(self, name: bytes, replicas: list[int], length: int = 100) -> int:
        ino = self.apply("create", {"parent": ROOT_INO, "name": name, "mode": 0o100644,
                                    "uid": 0, "gid": 0})["attr"]["ino"]  # fmt: skip
        h = self.apply("write_handle", {"ino": ino, "index": 0, "replicas": replicas})
        self.apply("commit", {"ino": ino, "size": length, "mtime_ns": 1,
                              "chunks": [[0, length, h["chunk_id"], h["version"]]]})  # fmt: skip
        return int(h["chunk_id"])

    def version(self, chunk_id: int) -> int:
        return int(self.ns.chunk_table[chunk_id].version)


def test_a_report_page_judges_each_replica_against_the_table() -> None:
    c = Cluster(4, goal=2)
    good = c.file(b"good", [1, 2])
    behind = c.file(b"behind", [1, 2])
    extra = c.file(b"extra", [2, 3])  # at goal without server 1: its copy goes
    under = c.file(b"under", [2])  # under goal: a copy outside the set stays
    lone = c.file(b"lone", [4])  # its only member dead: a whole copy is adopted
    lost = c.file(b"lost", [1, 2])
    future = c.file(b"future", [1, 2])
    c.now += 20  # server 4 is dead now
    for cs_id in (1, 2, 3):
        c.beat(cs_id)
    v = c.version
    entries = [
        [good, v(good), 100], [behind, v(behind) - 1, 100], [extra, v(extra), 100],
        [under, v(under), 100], [lone, v(lone), 100], [future, v(future) + 1, 100],
        [c.ns.next_chunk_id - 1 + 50, 1, 100],  # beyond the counter: not judged unknown
    ]  # fmt: skip
    gone = c.file(b"gone", [1])
    c.apply("unlink", {"parent": ROOT_INO, "name": b"gone"})
    assert c.reports.page(c.ns, c.registry, 1, [[gone, 1, 100]], 0, False, c.now) is not None
    c.apply("gc_done", {"chunk_ids": [gone]})  # collected: an unknown chunk now
    assert c.reports.page(c.ns, c.registry, 1, entries, 2, False, c.now) is None  # order
    assert c.reports.page(c.ns, c.registry, 1, entries, 1, False, c.now) is None  # ended
    first = c.reports.page(c.ns, c.registry, 1, [[gone, 1, 100]], 0, False, c.now)
    out = c.reports.page(c.ns, c.registry, 1, entries, 1, True, c.now)
    assert first is not None and first.delete == [[gone, 1]]
    assert out is not None
    assert out.delete == [[extra, v(extra)]]
    assert out.behind == [Behind(behind, v(behind) - 1, 100)]
    assert out.adopt == [lone]
    assert out.lost == [lost]
    assert out.future == [(future, v(future) + 1, v(future))]
    # The complete report vouches for server 1, but not for a chunk it lists behind.
    assert c.core.vouched(c.registry, 1, c.now, good)
    assert not c.core.vouched(c.registry, 1, c.now, behind)


def test_a_report_does_not_judge_a_chunk_touched_before_it_began() -> None:
    c = Cluster(3, goal=1)
    cid = c.file(b"f", [2])
    c.core.quiet_s = 5.0
    c.core.touch(cid, c.now)
    out = c.reports.page(c.ns, c.registry, 1, [[cid, c.version(cid), 100]], 0, True, c.now)
    assert out is not None and not out.delete  # outside the set, at goal, but busy
    c.now += 6
    c.beat(2)
    out = c.reports.page(c.ns, c.registry, 1, [[cid, c.version(cid), 100]], 0, True, c.now)
    assert out is not None and out.delete == [[cid, c.version(cid)]]


def test_a_bad_replica_leaves_its_set_and_only_the_last_one_stays_in_quarantine() -> None:
    c = Cluster(3, goal=2)
    cid = c.file(b"f", [1, 2])
    drop = c.reports.bad(c.ns, 1, cid, c.version(cid))
    assert drop is not None and (drop.keep_one, drop.why) == (False, "bad")
    assert c.core.bad_member(cid, c.version(cid)) == 1
    assert not c.reports.quarantined(c.ns, c.registry, 1, cid, c.now)  # 2 holds it
    drop = c.reports.bad(c.ns, 2, cid, c.version(cid) - 1)
    assert drop is not None and (drop.keep_one, drop.why) == (True, "stale_bad")
    assert c.reports.bad(c.ns, 3, cid, c.version(cid)) is None  # not a member
    c.apply("replica_drop", {"chunk_id": cid, "cs_id": 2, "keep_one": True})
    assert c.reports.quarantined(c.ns, c.registry, 1, cid, c.now)  # nothing else left


def test_garbage_waits_its_grace_and_is_forgotten_only_where_deleted() -> None:
    c = Cluster(3, goal=2)
    a, b = c.file(b"a", [1, 2]), c.file(b"b", [2, 3])
    for name in (b"a", b"b"):
        c.apply("unlink", {"parent": ROOT_INO, "name": name})
    g = Garbage(grace_s=30.0)
    assert g.collect(c.ns.garbage, c.registry, c.now) is None
    c.now += 29
    assert g.collect(c.ns.garbage, c.registry, c.now) is None
    c.now += 1
    c.beat(1)
    c.beat(2)  # server 3, not heard for 30 s, is dead: it deletes when it reports again
    collect = g.collect(c.ns.garbage, c.registry, c.now)
    assert collect is not None and sorted(collect.chunk_ids) == [a, b]
    assert collect.deletes == {1: [a], 2: [a, b]}
    assert collect.done({b}) == [a]
    g.restart()
    assert g.collect(c.ns.garbage, c.registry, c.now) is None  # a new term waits again


def test_a_push_outcome_keeps_a_silent_live_member_and_fails_a_refusal() -> None:
    c = Cluster(3, goal=2)
    cid = c.file(b"f", [1, 2, 3])
    p, v = c.pushes, c.version(cid)
    assert p.outcome(cid, 1, v) is Outcome.TOOK
    assert p.outcome(cid, 1, v, newer=v + 1, held=None) is Outcome.TOOK
    assert not p.confirm(False, v + 1, v) and not p.confirm(True, None, v)
    assert p.confirm(False, None, v)
    assert p.outcome(cid, 2, v, held=None, lost=True) is Outcome.UNANSWERED
    assert not c.core.vouched(c.registry, 2, c.now, cid)
    assert p.outcome(cid, 3, v, held=None, lost=True, alive=False) is Outcome.FAILED
    assert p.outcome(cid, 3, v, held=None, lost=True, keep_unanswered=False) is Outcome.FAILED
    assert p.outcome(cid, 3, v, held=False, lost=True) is Outcome.FAILED
    assert p.unanswered() == [(cid, 2, v)]
    assert p.unanswered_due(c.ns, c.registry, cid, 2, v, c.now) == 100
    c.apply("version_bump", {"chunk_id": cid, "version": v, "length": 100})
    assert p.unanswered_due(c.ns, c.registry, cid, 2, v, c.now) is None  # moved on
    assert p.unanswered() == [] and c.core.vouched(c.registry, 2, c.now, cid)


def test_a_member_behind_is_dropped_only_when_another_holds_the_version() -> None:
    c = Cluster(3, goal=2)
    cid = c.file(b"f", [1, 2, 3])
    p, v = c.pushes, c.version(cid)
    check = p.behind(c.ns, c.registry, 1, Behind(cid, v - 1, 100), c.now)
    assert check is not None and check.whole and check.ask == (2, 3)
    assert p.current(check, {"version": v, "length": 100})
    assert not p.current(check, {"version": v - 1, "length": 100})
    assert p.behind_verdict(check, any_current=True) is BehindVerdict.DROP
    assert p.behind_verdict(check, any_current=False) is BehindVerdict.PUSH_AGAIN
    # Found on no member and pushed again: the others behind are not asked again.
    again = p.behind(c.ns, c.registry, 2, Behind(cid, v - 1, 100), c.now)
    assert again is not None and again.ask == ()
    short = p.behind(c.ns, c.registry, 3, Behind(cid, v, 50), c.now)
    assert short is not None and not short.whole
    assert p.behind_verdict(short, any_current=False) is BehindVerdict.RECOVER_LENGTH
    assert p.behind(c.ns, c.registry, 4, Behind(cid, v - 1, 100), c.now) is None


def test_length_recovery_goes_down_to_the_best_copy_only_when_every_member_is_short() -> None:
    rec = Pushes.recovered_length(5, 100, [1, 2, 3], [(5, 60), (5, 80), (4, 90)])
    assert rec is not None and (rec.best, rec.to, rec.keep, rec.drop) == (5, 80, (2,), (1, 3))
    assert Pushes.recovered_length(5, 100, [1, 2], [(5, 60), None]) is None  # no answer
    assert Pushes.recovered_length(5, 100, [1, 2], [(5, 60), (5, 100)]) is None  # a push
    assert Pushes.recovered_length(5, 100, [1, 2], [(5, 60), (6, 10)]) is None  # newer


def test_a_version_no_member_took_is_due_until_one_takes_it() -> None:
    c = Cluster(3, goal=2)
    cid = c.file(b"f", [1, 2])
    p, v = c.pushes, c.version(cid)
    p.unpushed(cid, v, 100)
    (again,) = list(p.again_due(c.ns))
    assert (again.chunk.chunk_id, again.version, again.length) == (cid, v, 100)
    assert not p.again_done(again, [1, 2]) and p.is_unpushed(cid)
    assert p.again_done(again, [1]) and not p.is_unpushed(cid)
    p.unpushed(cid, v, 100)
    c.apply("version_bump", {"chunk_id": cid, "version": v, "length": 100})
    assert list(p.again_due(c.ns)) == [] and not p.is_unpushed(cid)  # moved on


def test_a_write_handle_drops_dead_and_reported_members_and_waits_for_heartbeats() -> None:
    c = Cluster(4, goal=2)
    cid = c.file(b"f", [1, 2, 3])
    (chunk,) = c.ns.chunks(c.ns.chunk_table[cid].ino, 0, 1)
    c.now += 20
    for cs_id in (1, 2, 4):
        c.beat(cs_id)
    handles.check_writable(chunk)
    assert handles.handle_drop(chunk, [2], c.registry, c.now) == [2, 3]
    with pytest.raises(Unavailable):
        handles.check_writable({**chunk, "replicas": []})
    handles.check_writable({**chunk, "length": 0, "replicas": []})  # nothing to lose
    placer = Placer("round_robin")
    assert len(handles.place_chunk(placer, c.registry, 2, CHUNK, c.now)) == 2
    # A new leader (its registry's grace running) that has not heard server 5 yet cannot
    # place a goal of 5 now.
    c.registry.started_s = c.now
    c.registry.known(5, "h5:1")
    with pytest.raises(Unavailable):
        handles.place_chunk(placer, c.registry, 5, CHUNK, c.now)
    assert handles.place_first_chunk(placer, c.registry, 5, CHUNK, c.now) == []
    assert len(handles.place_first_chunk(placer, c.registry, 3, CHUNK, c.now)) == 3
