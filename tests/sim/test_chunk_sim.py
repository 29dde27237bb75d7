"""The chunk simulator (metaserver/chunks/sim.py) over many seeds, and proof that its checks
can fail.

CI runs ``SIM_CHUNK_SEEDS`` seeds (default 300) split across two processes; a failure names
its seed and the line that replays it (``scripts/sim chunks --seeds N --verbose``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dfs.wire.errors import NoSpace
from metaserver.chunks import sim
from metaserver.chunks.simserver import Replica, Violation

# The simulated faults make the driver log warnings (a bad last replica, an adoption).
pytestmark = pytest.mark.allow_warnings

SEEDS = int(os.environ.get("SIM_CHUNK_SEEDS", "300"))
ROOT = Path(__file__).resolve().parents[2]


def _run_range(job: tuple[int, int]) -> tuple[int, list[str]]:
    return sim.run_seeds(job[0], job[1])


@pytest.mark.timeout(600)
def test_many_seeds_hold_every_invariant() -> None:
    workers = max(1, min(2, os.cpu_count() or 1))
    step = -(-SEEDS // workers)
    jobs = [(1 + i * step, min(SEEDS, (i + 1) * step)) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_run_range, jobs)
    failures = [f for _, fs in results for f in fs]
    acked = sum(a for a, _ in results)
    assert not failures, "\n".join(failures[:10])
    assert acked > SEEDS * 5, "writers got too few writes acknowledged: liveness is broken"


@pytest.mark.timeout(120)
def test_a_known_bad_decision_is_seen() -> None:
    """A trim of a chunk at its goal (the core's decision, corrupted): the trim check fires."""
    seen = []
    for seed in range(1, 11):
        try:
            sim.run_seed(seed, options=sim.Options(bad_decision="trim_below_goal"))
        except sim.Violation as e:
            seen.append(str(e))
    assert len(seen) >= 5, seen
    assert all("trim" in s or "deleted a good replica" in s for s in seen), seen


@pytest.mark.timeout(60)
def test_the_lost_and_the_same_bytes_checks_fire() -> None:
    s = sim.Simulation(5, options=sim.Options(fault_rate=0))
    s.run()  # green: the checks pass on a healthy cluster
    chunk = next(c for c in s.ns.chunk_table.values() if c.length)
    members = [s.servers[c] for c in chunk.replicas]
    assert len(members) >= 2
    # One member's bytes differ at the table's version.
    rep = members[0].replicas[chunk.chunk_id]
    flipped = bytes([rep.data[0] ^ 0xFF]) + rep.data[1:]
    members[0].replicas[chunk.chunk_id] = Replica(rep.version, flipped)
    with pytest.raises(sim.Violation, match="differ"):
        s.check([chunk.chunk_id])
    # Every copy gone: lost.
    for server in s.servers.values():
        server.replicas.pop(chunk.chunk_id, None)
    with pytest.raises(sim.Violation, match="lost"):
        s.check([chunk.chunk_id])


@pytest.mark.timeout(60)
def test_a_writer_dropped_member_counts_as_failed_in_the_fault_bound() -> None:
    """Seeds 3486, 3780, 3883, 5000, 6327, 9963 (of 10,000): bit rot on one member, then a
    writer's chain write to the other failed (a lost message, a full disk) and its next
    handle dropped that member (left behind by the bump, as HDFS's pipeline recovery leaves
    a datanode), so the two faults took every good copy: beyond the bound, not the
    system's loss. Such a member counts as failed from the fault on, and no such fault
    takes a chunk's last healthy member."""
    s = sim.Simulation(5, options=sim.Options(fault_rate=0))
    s.run()
    chunk = next(c for c in s.ns.chunk_table.values() if c.length and len(c.replicas) >= 2)
    cid, (first, *others) = chunk.chunk_id, chunk.replicas
    assert s._may_fail(cid, first) and s._healthy(chunk) == chunk.replicas
    for cs_id in others:  # bit rot nobody found yet on every other member
        s.servers[cs_id].replicas[cid].rotten = True
    assert s._healthy(chunk) == [first]
    assert s._unfound(chunk) == len(others)  # no more bit rot where goal are unfound
    assert not s._may_fail(cid, first)  # the last healthy one: no fault fails its write
    assert s._may_fail(cid, others[0])
    s.failing[cid] = {first}  # a fault failed its chain write: the writer will drop it
    assert s._healthy(chunk) == []
    s.failing.clear()

    # A full disk: the last healthy member's chain write goes through, another's fails.
    def append(cs_id: int) -> dict[str, Any]:
        server = s.servers[cs_id]
        server.capacity = server.used()
        rep = server.replicas[cid]
        return s._serve(server, "chunk.write", {
            "chunk_id": cid, "version": rep.version, "length": chunk.length,
            "offset": len(rep.data), "data": b"x" * 10,
        })  # fmt: skip

    before = len(s.servers[first].replicas[cid].data)
    assert append(first)["length"] == before + 10
    for cs_id in others:
        s.servers[cs_id].replicas[cid].rotten = False
    with pytest.raises(NoSpace):
        append(others[0])
    assert s.failing[cid] == {others[0]}


@pytest.mark.timeout(60)
def test_the_delete_check_judges_a_member_found_bad_as_the_leader_knew_it() -> None:
    """Seed 9041: a report judged a copy outside the set at goal while a member's bit rot
    had just been found (its report not at the leader yet); the delete landed after the
    bad member's drop committed, and the check no longer counted that member. A member
    found bad counts as good for ``KNOWN_S`` whether or not its drop committed since."""
    seed = next(n for n in range(1, 20) if random.Random(n).choice((2, 2, 3)) == 2)
    s = sim.Simulation(seed, options=sim.Options(fault_rate=0))
    assert s.goal == 2  # (the simulation's first draw)
    s.run()
    chunk = next(c for c in s.ns.chunk_table.values() if c.length and len(c.replicas) == 2)
    cid, (bad, good) = chunk.chunk_id, chunk.replicas
    outside = next(c for c in s.servers if c not in chunk.replicas)
    s.servers[outside].replicas[cid] = Replica(chunk.version, s.servers[good].replicas[cid].data)
    s.servers[bad].replicas[cid].rotten = True
    s._found_bad(s.servers[bad], cid)
    chunk.replicas.remove(bad)  # the bad report came and the drop committed
    s._check_delete(s.servers[outside], cid, chunk.version)  # decided before: fine
    s.now += 2 * sim.KNOWN_S
    with pytest.raises(Violation, match="deleted a good replica"):
        s._check_delete(s.servers[outside], cid, chunk.version)


@pytest.mark.timeout(60)
def test_seed_replays_identically() -> None:
    a, b = sim.run_seed(11), sim.run_seed(11)
    assert (a.writes_acked, a.events_done, a.counts) == (b.writes_acked, b.events_done, b.counts)
    table = {k: (c.version, c.length, list(c.replicas)) for k, c in a.ns.chunk_table.items()}
    assert table == {
        k: (c.version, c.length, list(c.replicas)) for k, c in b.ns.chunk_table.items()
    }


@pytest.mark.timeout(120)
def test_drains_and_rebalances_finish() -> None:
    """Some seeds drain a chunkserver, some rebalance onto new empty ones; both end."""
    drained = balanced = 0
    for seed in range(1, 40):
        s = sim.run_seed(seed)
        if s.drained is not None:
            held = [c for c in s.ns.chunk_table.values() if s.drained in c.replicas and c.length]
            assert not held and not s.servers[s.drained].replicas
            drained += 1
        if s.scenario == "rebalance":
            # "no_moves": whole chunks cannot bring a server in (one whose disk filled up
            # reports a tiny capacity, say); the rebalance still ends.
            assert s.rebalance_stopped in ("balanced", "no_moves"), (seed, s.rebalance_stopped)
            balanced += s.rebalance_stopped == "balanced"
    assert drained >= 3 and balanced >= 3


@pytest.mark.timeout(120)
def test_scripts_sim_ends_with_the_summary_line() -> None:
    for which, seeds in (("chunks", "1-2"), ("raft", "1")):
        out = subprocess.run(
            [str(ROOT / "scripts" / "sim"), which, "--seeds", seeds],
            capture_output=True, text=True, timeout=100, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        n = 2 if seeds == "1-2" else 1
        assert out.stdout.strip().splitlines()[-1] == f"seeds {n}, violations 0"


def test_the_simulated_store_keeps_bit_rot_as_the_real_one() -> None:
    """As ``chunkserver/store.py``: bit rot stays through writes of any version that leave
    its block alone (it forgot it on a newer version's write, lenient); a block cut away
    or rewritten whole goes with it; a cut or write that keeps part of it finds it bad."""
    from dfs.wire.errors import Corrupt
    from metaserver.chunks.simserver import BLOCK, Server

    def server() -> Server:
        s = Server(1, "h:1", 1 << 20)
        s.replicas[7] = Replica(3, b"a" * (3 * BLOCK), rotten=True, rot_at=BLOCK)
        return s

    def write(s: Server, version: int, length: int, offset: int, data: bytes) -> None:
        s.write({"chunk_id": 7, "version": version, "length": length, "offset": offset,
                 "data": data})  # fmt: skip

    s = server()
    write(s, 4, 3 * BLOCK, 0, b"")  # a version push
    assert s.replicas[7].rotten and s.replicas[7].version == 4
    write(s, 4, 3 * BLOCK, 2 * BLOCK, b"b" * BLOCK)  # another block
    assert s.replicas[7].rotten
    write(s, 5, 3 * BLOCK, BLOCK, b"c" * BLOCK)  # the rotten block, whole
    assert not s.replicas[7].rotten
    s = server()
    write(s, 4, BLOCK, 0, b"")  # a bump's cut takes the block away
    assert not s.replicas[7].rotten
    for version, length, offset, data in ((4, BLOCK + 10, 0, b""), (3, 0, BLOCK + 1, b"d")):
        s = server()
        with pytest.raises(Corrupt):
            write(s, version, length or 3 * BLOCK, offset, data)
        assert s.replicas[7].version == 3  # nothing written


def test_the_file_model_forgets_bytes_an_acknowledged_write_replaced() -> None:
    """A write in progress may leave its bytes (``maybe``); once a later write at those
    positions is acknowledged, every member at the chunk's version holds the later bytes,
    and the earlier ones there are no longer what the file may hold (the model kept every
    value ever written, lenient)."""
    from metaserver.chunks.simserver import FileModel

    model = FileModel(2, b"f")
    model.acknowledged(0, b"\x01" * 8)
    model.maybe.update({i: {2} for i in range(4)})  # a write of 2s that did not land
    assert model.allowed(0, b"\x02\x02\x01\x01")
    model.acknowledged(0, b"\x03\x03")
    assert not model.allowed(0, b"\x02\x02")
    assert model.allowed(0, b"\x03\x03\x02\x01")  # past the new write: still may hold 2s
