"""Replica placement and the chunkserver registry: distinct servers, weighted by free space,
on distinct hosts then racks, never on a draining server; liveness from heartbeats with a
grace period for a new leader."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from metaserver.chunks.placement import ChunkserverInfo, Placer, Registry
from metaserver.chunks.policy import ClusterPolicy, Labels

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

GIB = 1 << 30


def servers(free_gib: list[int]) -> list[ChunkserverInfo]:
    return [
        ChunkserverInfo(i + 1, f"127.0.0.1:{7000 + i}", capacity_bytes=100 * GIB,
                        used_bytes=(100 - f) * GIB)
        for i, f in enumerate(free_gib)
    ]  # fmt: skip


@pytest.mark.parametrize("policy", ["weighted", "random", "round_robin"])
def test_replicas_are_distinct_and_capped_by_eligible(policy: str) -> None:
    placer = Placer(policy, random.Random(1))
    pool = servers([50, 50, 50, 50])
    for _ in range(200):
        chosen = placer.place(pool, 3, reserve_bytes=GIB)
        assert len(chosen) == 3 and len(set(chosen)) == 3
    assert sorted(placer.place(pool, 9, reserve_bytes=GIB)) == [1, 2, 3, 4]


def test_full_servers_are_not_eligible() -> None:
    placer = Placer("weighted", random.Random(2))
    pool = servers([0, 50, 1])  # server 1 full, server 3 has exactly the reserve
    for _ in range(50):
        assert placer.place(pool, 3, reserve_bytes=GIB) == [2]
    assert placer.place(servers([0, 0]), 3, reserve_bytes=GIB) == []


def test_weighted_prefers_free_space_without_starving_others() -> None:
    placer = Placer("weighted", random.Random(3))
    pool = servers([90, 10, 10, 10])
    first = Counter(placer.place(pool, 1, reserve_bytes=GIB)[0] for _ in range(3000))
    # Expected shares 75% / 8.3% each: the emptiest server gets most, the others some.
    assert 0.68 < first[1] / 3000 < 0.82
    assert all(first[i] > 100 for i in (2, 3, 4))


def test_round_robin_rotates() -> None:
    placer = Placer("round_robin")
    pool = servers([50, 50, 50])
    assert [placer.place(pool, 1, reserve_bytes=0)[0] for _ in range(6)] == [1, 2, 3, 1, 2, 3]


def test_unknown_policy_refused() -> None:
    with pytest.raises(ValueError, match="placement policy"):
        Placer("greedy")


def test_liveness_from_heartbeats_and_grace_after_restart() -> None:
    reg = Registry(dead_timeout_s=10.0, started_s=100.0)
    reg.known(1, "a:1")
    reg.known(2, "b:2")
    assert reg.is_alive(1, 105.0)  # never heard, but within the grace period of a new leader
    assert not reg.is_alive(1, 110.0)
    reg.heartbeat(2, "b:2", 108.0, capacity_bytes=10, used_bytes=1, chunks=0, load=0, pid=9)
    assert reg.is_alive(2, 117.9) and not reg.is_alive(2, 118.0)
    assert [c.cs_id for c in reg.alive(112.0)] == [2]
    reg.restart(200.0)  # a new term of leadership: soft state forgotten, grace again
    assert reg.is_alive(2, 205.0) and not reg.is_alive(2, 210.0)
    assert not reg.is_alive(3, 100.0)  # unknown id


def test_restart_forgets_capacity_so_nothing_is_placed_blind() -> None:
    reg = Registry(dead_timeout_s=10.0, started_s=0.0)
    reg.heartbeat(1, "a:1", 1.0, capacity_bytes=100 * GIB, used_bytes=0, chunks=0, load=0, pid=1)
    reg.restart(50.0)  # leader again, later: server 1 may have died meanwhile
    assert reg.is_alive(1, 51.0)  # grace: not declared dead yet...
    assert Placer("weighted").place(reg.alive(51.0), 3, reserve_bytes=GIB) == []  # ...nor used
    reg.heartbeat(1, "a:1", 52.0, capacity_bytes=100 * GIB, used_bytes=0, chunks=0, load=0, pid=1)
    assert Placer("weighted").place(reg.alive(52.0), 3, reserve_bytes=GIB) == [1]


def _labelled(hosts: list[str], racks: list[str]) -> tuple[list[ChunkserverInfo], ClusterPolicy]:
    pool = servers([50] * len(hosts))
    labels = {c.cs_id: Labels(h, r) for c, h, r in zip(pool, hosts, racks, strict=True)}
    return pool, ClusterPolicy(labels=labels)


@pytest.mark.parametrize("policy", ["weighted", "random", "round_robin"])
def test_replicas_go_to_distinct_hosts_then_racks_when_there_are_enough(policy: str) -> None:
    pool, cluster = _labelled(["a", "a", "b", "c", "c"], ["r1", "r1", "r1", "r2", "r2"])
    placer = Placer(policy, random.Random(4), cluster=lambda: cluster)
    host = {c.cs_id: cluster.labels[c.cs_id].host for c in pool}
    rack = {c.cs_id: cluster.labels[c.cs_id].rack for c in pool}
    for _ in range(100):
        chosen = placer.place(pool, 3, reserve_bytes=GIB)
        assert len({host[c] for c in chosen}) == 3
        two = placer.place(pool, 2, reserve_bytes=GIB)
        assert len({rack[c] for c in two}) == 2  # two racks exist: both used
    # More replicas than hosts: the rest repeat a host rather than fail.
    assert len(placer.place(pool, 5, reserve_bytes=GIB)) == 5


def test_a_copy_avoids_the_hosts_of_the_replicas_that_stay() -> None:
    pool, cluster = _labelled(["a", "b", "a", "c"], ["", "", "", ""])
    placer = Placer("weighted", random.Random(5), cluster=lambda: cluster)
    for _ in range(50):
        assert placer.place(pool[2:], 1, reserve_bytes=GIB, taken=[1, 2]) == [4]


def test_draining_servers_take_nothing_new() -> None:
    cluster = ClusterPolicy(draining=frozenset({2}))
    placer = Placer("weighted", random.Random(6), cluster=lambda: cluster)
    for _ in range(50):
        assert 2 not in placer.place(servers([50, 90, 50]), 2, reserve_bytes=GIB)
