"""The chunk core's decisions (metaserver/chunks/core.py, rebalance.py): draining,
rebalancing by bytes, labels, throttling, vouching, against a real namespace and registry;
commands are carried out by hand here (the driver and the simulator do it for real)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dfs.wire.errors import error_from_wire
from metaserver.chunks import core, rebalance
from metaserver.chunks.core import ChunkCore, Copy
from metaserver.chunks.placement import Placer, Registry
from metaserver.chunks.policy import ClusterPolicy, Labels, Rebalance
from metaserver.namespace import Namespace, encode_command
from metaserver.namespace.state import ROOT_INO

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

CHUNK = 1 << 20


class Cluster:
    def __init__(self, servers: int, goal: int, hosts: list[str] | None = None) -> None:
        self.ns = Namespace(chunk_size_bytes=CHUNK, trash_s_default=0)  # removals free at once
        self.now = 100.0
        self.registry = Registry(dead_timeout_s=10.0, started_s=0.0)
        self.policy = ClusterPolicy()
        self.placer = Placer("weighted", random.Random(1), cluster=lambda: self.policy)
        self.core = ChunkCore(self.placer, quiet_s=0.0, jobs=8)
        self.seq = 0
        self.apply("set_goal", {"ino": ROOT_INO, "goal": goal})
        labels = {}
        for i in range(servers):
            cs_id = self.apply("cs_register", {"uuid": f"u{i}", "address": f"h{i}:1"})["cs_id"]
            labels[cs_id] = Labels(hosts[i] if hosts else f"h{cs_id}")
        self.policy = ClusterPolicy(labels=labels)
        self.beat_all()

    def apply(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        result = self.ns.apply(encode_command(op, 0, 0, self.seq, args))
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    def beat_all(self, capacity: int = 100 * CHUNK) -> None:
        for cs_id in self.ns.chunkservers():
            self.registry.heartbeat(cs_id, f"h{cs_id}:1", self.now, capacity_bytes=capacity,
                                    used_bytes=0, chunks=0, load=0, pid=1)  # fmt: skip
            self.core.report_done(cs_id, self.now)

    def file(self, name: bytes, replicas: list[int], length: int = CHUNK) -> int:
        ino = self.apply("create", {"parent": ROOT_INO, "name": name, "mode": 0o100644,
                                    "uid": 0, "gid": 0})["attr"]["ino"]  # fmt: skip
        h = self.apply("write_handle", {"ino": ino, "index": 0, "replicas": replicas})
        self.apply("commit", {"ino": ino, "size": length, "mtime_ns": 1,
                              "chunks": [[0, length, h["chunk_id"], h["version"]]]})  # fmt: skip
        return int(h["chunk_id"])

    def decide(self) -> Any:
        return self.core.decide(self.ns, self.registry, self.policy, self.now)

    def join(self, copy: Copy) -> None:
        """Carry out a copy: the fence, the copy's join (each a version bump)."""
        bumped = self.apply(
            "version_bump",
            {"chunk_id": copy.chunk_id, "version": copy.version, "length": copy.length},
        )
        self.apply("replica_add", {"chunk_id": copy.chunk_id, "version": bumped["version"],
                                   "length": copy.length, "cs_id": copy.target})  # fmt: skip
        self.core.copy_done(copy, True, self.now)

    def replicas(self, chunk_id: int) -> list[int]:
        return list(self.ns.chunk_table[chunk_id].replicas)


def test_a_draining_replica_serves_and_is_trimmed_only_after_a_copy() -> None:
    c = Cluster(4, goal=2)
    cid = c.file(b"f", [1, 2])
    c.policy = ClusterPolicy(draining=frozenset({2}), labels=c.policy.labels)
    out = c.decide()
    assert out.health.under_goal == 0  # it still serves reads: not under goal
    assert len(out.copies) == 1 and not out.trims  # add before remove
    copy = out.copies[0]
    assert copy.why == "drain" and copy.target in (3, 4) and 2 in copy.sources
    c.join(copy)
    trims = c.decide().trims
    assert [(t.cs_id, t.why, t.delete) for t in trims] == [(2, "draining", True)]
    c.apply("replica_drop", {"chunk_id": cid, "cs_id": 2, "keep_one": True})
    assert 2 not in c.replicas(cid) and len(c.replicas(cid)) == 2
    out = c.decide()
    assert not out.copies and not out.trims


def test_nothing_new_is_placed_on_a_draining_server() -> None:
    c = Cluster(3, goal=2)
    c.policy = ClusterPolicy(draining=frozenset({1}), labels=c.policy.labels)
    alive = c.registry.alive(c.now)
    for _ in range(50):
        assert 1 not in c.placer.place(alive, 2, reserve_bytes=CHUNK)


def test_a_repair_copy_goes_to_a_host_the_chunk_is_not_on() -> None:
    c = Cluster(4, goal=3, hosts=["a", "b", "a", "c"])
    c.file(b"f", [1, 2])  # hosts a, b: server 3 (a) would double a host, 4 (c) does not
    for _ in range(5):
        c.core.restart(c.now)
        c.beat_all()
        (copy,) = c.decide().copies
        assert copy.target == 4


def test_over_goal_trims_a_replica_that_shares_a_host_first() -> None:
    c = Cluster(4, goal=2, hosts=["a", "b", "a", "c"])
    cid = c.file(b"f", [1, 2, 3])  # 1 and 3 share host a
    (trim,) = c.decide().trims
    assert trim.cs_id in (1, 3) and trim.why == "over_goal" and trim.chunk_id == cid


def test_only_members_vouched_for_by_a_report_count_for_a_trim() -> None:
    c = Cluster(3, goal=2)
    c.file(b"f", [1, 2, 3])
    c.core.restart(c.now)  # a new leader: no report judged yet
    c.now += 1
    assert not c.decide().trims
    c.core.report_done(1, c.now)
    c.core.report_done(2, c.now)
    c.now += 1
    assert not c.decide().trims  # 3, not vouched for, neither counts nor is trimmed
    c.core.report_done(3, c.now)
    c.now += 1
    assert len(c.decide().trims) == 1


def test_a_member_reported_bad_counts_for_nothing_until_it_is_out() -> None:
    c = Cluster(4, goal=2)
    cid = c.file(b"f", [1, 2, 3])
    c.policy = ClusterPolicy(draining=frozenset({3}), labels=c.policy.labels)
    c.core.mark_bad(cid, 1, c.ns.chunk_table[cid].version)  # its drop is on its way
    out = c.decide()
    assert not out.trims  # 2 alone counts: the draining 3 stays
    assert [copy.why for copy in out.copies] == ["drain"] and out.health.corrupt == 1


def _uneven(goal: int = 1) -> Cluster:
    """Servers 1 and 2 hold equal chunk counts but 1 holds four times the bytes; 3 is new."""
    c = Cluster(3, goal=goal)
    for i in range(4):
        c.file(b"big%d" % i, [1], length=CHUNK)
        c.file(b"small%d" % i, [2], length=CHUNK // 4)
    c.beat_all(capacity=10 * CHUNK)
    return c


def test_the_plan_counts_bytes_not_chunks() -> None:
    c = _uneven()
    plan = c.core.plan(c.ns, c.registry, c.policy, c.now, threshold_pct=10.0)
    assert plan.spread_before_pct > 10 >= plan.spread_after_pct
    assert plan.moves and all(m.source == 1 for m in plan.moves)
    assert {m.target for m in plan.moves} <= {2, 3}
    d = plan.as_dict()
    assert set(d) == {"threshold_pct", "moves", "moves_total", "bytes", "spread_before_pct",
                      "spread_after_pct", "servers"}  # fmt: skip
    assert set(d["moves"][0]) == {"chunk_id", "from", "to", "bytes"}
    assert set(d["servers"][0]) == {"cs_id", "used_bytes", "capacity_bytes", "used_pct",
                                    "used_pct_after"}  # fmt: skip
    assert d["bytes"] == sum(m["bytes"] for m in d["moves"]) == d["moves_total"] * CHUNK


def test_two_empty_servers_next_to_three_full_ones_are_filled_to_within_the_threshold() -> None:
    """Goal 3 on three full servers, two empty ones added: evening them out takes a second
    move of most chunks (from another of their servers); a plan that moved each chunk once
    ended 5.8 points out with 1 MiB chunks on 48 MiB servers."""
    mib = 1 << 20
    labels = Labels("h")
    servers = {i: rebalance.Server(i, 28 * mib if i <= 3 else 0, 48 * mib, labels)
               for i in range(1, 6)}  # fmt: skip
    cands = [rebalance.Candidate(i, mib, (1, 2, 3)) for i in range(1, 29)]
    plan = rebalance.plan(servers, cands, threshold_pct=5.0)
    assert plan.spread_before_pct > 5 >= plan.spread_after_pct
    assert len({m.chunk_id for m in plan.moves}) < len(plan.moves)  # some chunks move twice
    for chunk_id in {m.chunk_id for m in plan.moves}:  # never two replicas on one server
        held = {1, 2, 3}
        for m in (m for m in plan.moves if m.chunk_id == chunk_id):
            assert m.source in held and m.target not in held
            held = (held - {m.source}) | {m.target}


def test_a_rebalance_copies_then_trims_the_source_and_stops_when_balanced() -> None:
    c = _uneven()
    c.policy = ClusterPolicy(labels=c.policy.labels, rebalance=Rebalance(10.0, 0))
    before = c.core.progress(c.ns, c.registry, c.policy, c.now)
    assert before["left_bytes"] >= CHUNK and before["spread_pct"] > 10
    stop = None
    for _ in range(20):
        c.now += 10
        c.beat_all(capacity=10 * CHUNK)
        out = c.decide()
        for trim in out.trims:
            assert trim.why == "moved"
            c.apply("replica_drop", {"chunk_id": trim.chunk_id, "cs_id": trim.cs_id,
                                     "keep_one": True})  # fmt: skip
            assert len(c.replicas(trim.chunk_id)) == 1  # never below goal
        for copy in out.copies:
            assert copy.why == "rebalance" and copy.source == 1
            c.join(copy)
        if out.stop:
            stop = out.stop
            break
    assert stop == "balanced"
    servers = c.core.servers_for_balance(c.ns, c.registry, c.policy, c.now)
    assert rebalance.spread_pct(servers) <= 10
    progress = c.core.progress(c.ns, c.registry, c.policy, c.now)
    assert progress["moves_done"] >= 1 and progress["moved_bytes"] == progress["moves_done"] * CHUNK
    assert progress["in_flight"] == 0 and progress["running"] is True
    assert progress["left_bytes"] == 0


def test_a_rebalance_is_throttled_by_its_bandwidth() -> None:
    c = _uneven()
    c.policy = ClusterPolicy(labels=c.policy.labels, rebalance=Rebalance(1.0, CHUNK // 2))
    started = 0
    for _ in range(10):  # 10 s at half a chunk a second: about 5 chunks' worth, no more
        c.now += 1
        c.beat_all(capacity=10 * CHUNK)
        for copy in c.decide().copies:
            started += 1
            c.core.copy_done(copy, False, c.now)  # failed: the chunk stays, no move counted
            c.core.failed.clear()
    assert 3 <= started <= 6


def test_a_move_whose_source_became_needed_ends() -> None:
    """Found by the simulator: a move's copy joined, then another member left the set; the
    source, needed now, was never trimmed and the rebalance never stopped."""
    c = _uneven(goal=1)
    c.policy = ClusterPolicy(labels=c.policy.labels, rebalance=Rebalance(10.0, 0))
    copy = c.decide().copies[0]
    c.join(copy)
    c.apply("replica_drop", {"chunk_id": copy.chunk_id, "cs_id": copy.target, "keep_one": True})
    c.now += 1
    c.decide()
    assert copy.chunk_id not in c.core.moved


def test_token_bucket() -> None:
    bucket = rebalance.TokenBucket(100, now=0.0)
    assert bucket.take(150, 0.0)  # the first may overdraw
    assert not bucket.take(1, 0.0) and not bucket.take(1, 0.4)
    assert bucket.take(1, 0.6)
    assert rebalance.TokenBucket(0, 0.0).take(10**9, 0.0)  # 0: no limit


def test_a_survey_in_slices_tolerates_a_table_that_changes_between_them() -> None:
    """The driver runs ``decide_steps`` a slice at a time, with requests served in
    between: chunks deleted meanwhile are skipped, and what it decides is what ``decide``
    decides of the table as it then is."""
    c = Cluster(4, goal=3)
    c.core.survey_slice = 3
    chunks = [c.file(b"f%d" % i, [1, 2]) for i in range(10)]  # each under its goal of 3
    steps = c.core.decide_steps(c.ns, c.registry, c.policy, c.now)
    next(steps)  # three surveyed
    c.apply("unlink", {"parent": ROOT_INO, "name": b"f9"})  # not surveyed yet: skipped
    c.apply("unlink", {"parent": ROOT_INO, "name": b"f0"})  # surveyed: its copy is not made
    yields = 1
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as done:
            decisions = done.value
            break
    assert yields == 3  # ten chunks in slices of three
    assert decisions.health.total == 9 and decisions.health.under_goal == 9
    assert [cid for _, cid in decisions.under] == chunks[:9]
    copied = {copy.chunk_id for copy in decisions.copies}
    assert copied and copied <= set(chunks[1:9])


def test_run_steps_runs_a_survey_whole() -> None:
    c = Cluster(3, goal=3)
    for i in range(5):
        c.file(b"f%d" % i, [1, 2, 3])
    health, under, trim = core.run_steps(c.core.survey_steps(c.ns, c.registry, c.policy, c.now))
    assert (health.total, under, trim) == (5, [], [])
