"""Nothing of a cluster across namespaces outlives it: not after an error inside it, not
after its owner was killed (``cleanup_stale``), not after the CLI's ``down``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns_helpers import wait_for

from dfs.cli import cluster as local
from tools.testing import netns
from tools.testing.netns import NetCluster, cleanup_stale

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def our_namespaces(run_id: str) -> list[str]:
    return [ns for ns in netns._list_netns() if ns.startswith(run_id + "-")]


def test_everything_is_removed_even_after_an_error(netns_ready: None, tmp_path: Path) -> None:
    net = NetCluster(tmp_path / "c", metaservers=1, chunkservers=1, clients=1)
    with pytest.raises(RuntimeError, match="boom"), net:
        assert len(our_namespaces(net.run_id)) == 4  # switch, meta1, cs1, client1
        daemons = [net.hosts[h].pid for h in ("meta1", "cs1")]
        # Leave every kind of thing behind: a paused daemon, a rule, a proxy, a process
        # that never ends on the client host.
        net.pause("cs1")
        net.partition("client1", "meta1")
        proxy = net.delay("client1", "cs1", delay_ms=10)
        proxy_pid = net._state.proxies[0].pid
        hang = net.spawn("client1", ["cat"], stdin=subprocess.PIPE)
        raise RuntimeError("boom")
    assert net.leftovers() == []
    assert our_namespaces(net.run_id) == []
    for pid in [*daemons, proxy_pid, hang.pid]:
        assert pid is not None and not local.pid_alive(pid), pid
    assert not (tmp_path / "c" / netns.STATE_FILE).exists()
    with pytest.raises(OSError):
        proxy.stats()


def test_cleanup_stale_removes_the_runs_of_dead_owners(netns_ready: None) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = [f"{netns.NETNS_PREFIX}-{dead_pid}-abcdef-{h}" for h in ("switch", "meta1")]
    alive = f"{netns.NETNS_PREFIX}-{os.getpid()}-abcdef-meta1"
    for ns in [*stale, alive]:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    # A process left running in a stale namespace (a daemon whose owner was killed).
    orphan = subprocess.Popen(["ip", "netns", "exec", stale[1], "cat"], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: netns._netns_pids(stale[1]), 10, "the orphan to run")
        deleted = cleanup_stale()
        assert sorted(deleted) == sorted(stale)
        assert orphan.wait(10) != 0  # killed
        remaining = netns._list_netns()
        assert not set(stale) & set(remaining)
        assert alive in remaining  # its owner (this process) lives
    finally:
        orphan.kill()
        orphan.wait()
        for ns in [*stale, alive]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_cli_up_faults_down(netns_ready: None, tmp_path: Path) -> None:
    d = tmp_path / "cli"

    def netcluster(*args: str, timeout_s: float = 90) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "tools.testing.netns", *args, "--dir", str(d)]
            if args[0] not in ("exec", "dfs")
            else [sys.executable, "-m", "tools.testing.netns", "--dir", str(d), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = netcluster("up", "--metaservers", "1", "--chunkservers", "1")
    state = json.loads((d / netns.STATE_FILE).read_text())
    run_id = state["run_id"]
    try:
        assert state["owner_pid"] == 0  # detached: it outlives the command
        assert "leader: meta1" in out
        assert "meta1    up leader" in netcluster("status")
        netcluster("partition", "client1", "meta1")
        netcluster("isolate", "cs1")
        netcluster("drop", "client1", "0.5", "--peer", "cs1")
        status = netcluster("status")
        # A partition is a rule each way on each side; loss one each way; isolation two.
        assert status.count("fault on client1") == 4 and status.count("fault on cs1") == 2
        assert status.count("fault on meta1") == 2
        netcluster("heal", "cs1")  # the isolation and the loss involve cs1
        assert netcluster("status").count("fault on") == 4
        netcluster("heal")
        assert "fault on" not in netcluster("status")
        # The client host has loopback and its one address on the cluster's subnet.
        addresses = netcluster("exec", "client1", "ip", "-o", "-4", "addr").splitlines()
        assert [line.split()[3] for line in addresses] == ["127.0.0.1/8", "10.77.0.201/24"]
        netcluster("dfs", "client1", "mkdir", "/made-by-cli")
        assert "made-by-cli" in netcluster("dfs", "client1", "ls", "/")
        netcluster("pause", "cs1")
        assert "PAUSED" in netcluster("status")
        netcluster("resume", "cs1")
    finally:
        netcluster("down")
    assert our_namespaces(run_id) == []
    for host in state["hosts"].values():
        assert host["pid"] is None or not local.pid_alive(host["pid"])

    # Up again on the same directory: new hosts, the same data.
    netcluster("up", "--metaservers", "1", "--chunkservers", "1")
    try:
        assert json.loads((d / netns.STATE_FILE).read_text())["run_id"] != run_id
        assert "made-by-cli" in netcluster("dfs", "client1", "ls", "/")
    finally:
        netcluster("down")
