"""The Raft simulator over many seeds, and proof that its checks can fail.

CI runs ``SIM_SEEDS`` seeds (default 1,000) split across the machine's cores, with leader
leases on and the nodes' clocks apart by up to the drift bound the cores assume, and a tenth
as many with reads by ReadIndex only; a failure names its seed, and the line it prints
(``python -m metaserver.raft.sim --seeds N ... --verbose``) replays it.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from metaserver.raft import core, sim

SEEDS = int(os.environ.get("SIM_SEEDS", "1000"))


def _run_range(job: tuple[int, int, sim.Options]) -> tuple[int, list[str]]:
    ops, _, reports = sim.run_seeds(job[0], job[1] - 1, options=job[2])
    return ops, reports


def _run_seeds_in_parallel(seeds: int, options: sim.Options) -> None:
    workers = max(1, min(4, os.cpu_count() or 1))
    step = -(-seeds // workers)
    jobs = [(1 + i * step, 1 + min(seeds, (i + 1) * step), options) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_run_range, jobs)
    failures = [f for _, fs in results for f in fs]
    ops = sum(o for o, _ in results)
    assert not failures, "\n".join(failures[:10])
    assert ops > seeds * 50, "clients got too few operations through: liveness is broken"


@pytest.mark.timeout(1500)
def test_many_seeds_hold_every_invariant() -> None:
    _run_seeds_in_parallel(SEEDS, sim.Options())


@pytest.mark.timeout(600)
def test_seeds_with_read_index_only_hold_every_invariant() -> None:
    _run_seeds_in_parallel(max(1, SEEDS // 10), sim.Options(read_lease=False))


def test_reads_take_both_paths_and_clocks_differ() -> None:
    """With leases on, most reads are served on the lease and some by ReadIndex (after an
    election, during a transfer); the nodes' clocks tick at different rates."""
    s = sim.Simulation(8)
    s.run()
    assert s.lease_reads > 10 * s.index_reads > 0
    assert len({n.tick_ms for n in s.nodes.values()}) > 1


def test_seed_replays_identically() -> None:
    a = sim.Simulation(42)
    a.run()
    b = sim.Simulation(42)
    b.run()
    assert (a.ops_done, a.fault_count, a.event_count) == (b.ops_done, b.fault_count, b.event_count)
    assert a.history == b.history


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_cli_prints_summary_last(jobs: str) -> None:
    cmd = [sys.executable, "-m", "metaserver.raft.sim", "--seeds", "1-3", "--nodes", "5"]
    out = subprocess.run(
        [*cmd, "--jobs", jobs], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("seeds 3, violations 0, ops ")


def _find_violation(seeds: range, options: sim.Options | None = None) -> str | None:
    for seed in seeds:
        try:
            sim.run_seed(seed, options=options or sim.Options())
        except (sim.Violation, AssertionError) as e:
            return str(e)
    return None


@pytest.mark.timeout(600)
def test_detects_a_lease_longer_than_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease as long as two election timeouts outlives the followers' promise: the old
    leader serves reads after another was elected."""
    monkeypatch.setattr(core.Config, "lease_ticks", property(lambda c: 2 * c.election_ticks))
    found = _find_violation(range(1, 200))  # the first is seed 22
    assert found is not None and "lease read" in found


@pytest.mark.timeout(900)
def test_detects_a_clock_faster_than_the_bound() -> None:
    """Clocks three times apart while the cores assume 1.1: a fast follower's promise ends
    before a slow leader's lease does."""
    found = _find_violation(range(1, 300), sim.Options(clock_ratio=3.0))  # the first: 52
    assert found is not None and "lease read" in found


def test_detects_double_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that votes for anyone whose log is up to date breaks election safety."""

    def careless(self: core.RawNode, m: core.Message) -> None:
        pre = m.type == core.MessageType.PRE_VOTE
        resp = core.MessageType.PRE_VOTE_RESP if pre else core.MessageType.VOTE_RESP
        self._send(core.Message(resp, m.frm, self.id, m.term))
        if not pre:
            self.vote = m.frm

    monkeypatch.setattr(core.RawNode, "_handle_vote", careless)
    assert _find_violation(range(1, 60)) is not None


def test_detects_commit_without_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that commits what only it holds loses entries when it is replaced."""

    def eager(self: core.RawNode) -> bool:
        last = self.progress[self.id].match
        if last > self.committed and self.log.term(last) == self.term:
            self._commit_to(last)
            return True
        return False

    monkeypatch.setattr(core.RawNode, "_maybe_commit", eager)
    assert _find_violation(range(1, 60)) is not None


def test_detects_unsynced_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ready that does not ask for a sync when the vote changes is caught at send time."""
    real = core.RawNode.ready

    def lazy(self: core.RawNode) -> core.Ready:
        rd = real(self)
        return core.Ready(**{**{f: getattr(rd, f) for f in rd.__slots__}, "must_sync": False})

    monkeypatch.setattr(core.RawNode, "ready", lazy)
    assert _find_violation(range(1, 20)) is not None
