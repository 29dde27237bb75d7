"""The chunk simulator (metaserver/chunks/sim.py) over many seeds, and proof that its checks
can fail.

CI runs ``SIM_CHUNK_SEEDS`` seeds (default 300) split across two processes; a failure names
its seed and the line that replays it (``scripts/sim chunks --seeds N --verbose``).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from metaserver.chunks import sim
from metaserver.chunks.simserver import Replica

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
