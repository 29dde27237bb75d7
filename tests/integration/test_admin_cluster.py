"""``dfs admin`` against a real local cluster (one metaserver, small chunks, small
capacities), as an operator runs it.

Checks: ``dfs up --add-chunkservers`` adds a running chunkserver with the cluster's
options and ``--capacity``, and ``dfs up`` prints the ids ``dfs status`` shows; ``status``
gives every chunkserver's state, host and rack and the rebalance's progress; a rebalance
starts, shows in ``dfs status``, is followed with a progress bar on a terminal (a pty)
and stops; a decommission of an empty chunkserver ends drained at once; ``forget`` is
refused while the chunkserver is alive and while it holds replicas, and afterwards it is
gone from ``status`` (a dead one is forgettable once a new chunkserver took its replicas
over); recommission undoes a decommission.

What these do not check: replicas moving (the chunk core's tests and simulation do).
Every daemon started here is stopped by PID in a finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from admin_cluster import running

from dfs import rpc
from dfs.cli import cluster as local
from tools.testing.localcluster import dfs_cli
from tools.testing.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MIB = 1 << 20
DEADLINE_S = 30.0


def eventually(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """``tools.testing.poll.wait_for`` with this module's deadline."""
    return wait_for(check, timeout_s, what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("admin") / "cluster"
    with running(d, chunk_size=1 * MIB, cs_options={"rack": "r1"}) as out:
        (d / "up.out").write_text(out)
        yield d


def leader_call(d: Path, op: str, **fields: Any) -> dict[str, Any]:
    """One call to the leader, as a client's retry would send it (same session fields)."""

    async def go() -> dict[str, Any]:
        host, _, port = status(d)["leader_address"].rpartition(":")
        conn = await rpc.connect(host, int(port), secret, name="test")
        try:
            header, _ = await conn.call(op, b"", **fields)
            return header
        finally:
            conn.close()

    secret = local.client_credentials(local.load_layout(d))  # the operator's
    return anyio.run(go)


def status(d: Path) -> dict[str, Any]:
    st: dict[str, Any] = json.loads(dfs_cli("status", "--dir", str(d), "--json").stdout)
    return st


def server(d: Path, cs_id: int) -> dict[str, Any] | None:
    return next((c for c in status(d)["chunkservers"] if c["id"] == cs_id), None)


def test_add_chunkservers_status_and_labels(cluster: Path) -> None:
    d = str(cluster)
    st = status(cluster)
    assert [c["state"] for c in st["chunkservers"]] == ["alive"] * 3
    for c in st["chunkservers"]:
        assert (c["host"], c["rack"], c["capacity_bytes"]) == ("127.0.0.1", "r1", 64 * MIB)
        assert c["replicas"] == 0 and not c["draining"]
    assert st["rebalance"]["running"] is False

    out = (cluster / "up.out").read_text()
    for c in st["chunkservers"]:  # dfs up names each chunkserver by the id status shows
        assert f"chunkserver {c['id']}  {c['address']}  pid {c['pid']}" in out, out

    out = dfs_cli("up", "--dir", d, "--add-chunkservers", "1", "--capacity", "32M").stdout
    st = status(cluster)
    assert len(st["chunkservers"]) == 4
    added = st["chunkservers"][3]
    assert out.count("chunkserver ") == 1, out  # only the new one is started and listed
    assert f"chunkserver 4  {added['address']}  pid {added['pid']}" in out, out
    assert (added["capacity_bytes"], added["rack"], added["state"]) == (32 * MIB, "r1", "alive")
    assert "cs4" in local.load_layout(cluster).daemons()[-1][0]


def test_rebalance_start_status_stop_and_wait(cluster: Path) -> None:
    d = str(cluster)
    plan = json.loads(dfs_cli("admin", "rebalance", "--dir", d, "--dry-run", "--json").stdout)
    assert plan["threshold_pct"] == 10.0 and {s["cs_id"] for s in plan["servers"]} >= {1, 2, 3}
    assert {"moves", "moves_total", "bytes", "spread_before_pct", "spread_after_pct"} <= set(plan)
    started = json.loads(
        dfs_cli(
            "admin", "rebalance", "--dir", d, "--threshold", "5", "--bandwidth", "8", "--json"
        ).stdout
    )
    assert started["running"] is True and started["threshold_pct"] == 5.0
    assert started["bandwidth_bps"] == 8 * MIB
    # Running, or already ended by the chunk core: this cluster holds little to move.
    now = status(cluster)["rebalance"]
    if now["running"]:
        out = dfs_cli("status", "--dir", d).stdout
        # (The core may end it between the two calls, on a loaded machine.)
        ended = status(cluster)["rebalance"]
        assert "rebalance to within 5.0 points" in out or not ended["running"], out
        now = ended
    if not now["running"]:
        assert now["stop_reason"] in ("balanced", "no_moves"), now

    # Stopped by the operator, or already ended by the core (then the stop changes
    # nothing); --status --wait then returns at once, exit 0 only for a balanced end. (The
    # progress bar on a terminal: test_cli_admin.py against scripted answers, and
    # tests/failures/test_rebalance_cluster.py on a rebalance that moves data.)
    stopped = json.loads(dfs_cli("admin", "rebalance", "--dir", d, "--stop", "--json").stdout)
    reason = stopped["stop_reason"]
    assert stopped["running"] is False
    assert reason in ("stopped by the operator", "balanced", "no_moves"), stopped
    waited = dfs_cli("admin", "rebalance", "--dir", d, "--status", "--wait", code=None)
    assert waited.returncode == (0 if reason == "balanced" else 1), waited
    assert f"no rebalance running ({reason}" in waited.stdout, waited.stdout
    assert status(cluster)["rebalance"]["running"] is False


def test_decommission_forget_recommission(cluster: Path, tmp_path: Path) -> None:
    d = str(cluster)
    data = tmp_path / "f"
    data.write_bytes(os.urandom(2 * MIB + 100))  # three chunks, goal 3
    # cs4 (added empty, before any data) is drained at once; the data goes elsewhere.
    if server(cluster, 4) is None:
        pytest.skip("needs the chunkserver test_add_chunkservers_status_and_labels adds")
    drained = json.loads(
        dfs_cli("admin", "decommission", "--dir", d, "4", "--wait", "--json").stdout
    )
    assert drained["state"] == "drained" and drained["replicas"] == 0
    assert "safe to remove" in dfs_cli("admin", "decommission", "--dir", d, "4").stdout
    refused = dfs_cli("admin", "forget", "--dir", d, "4", code=1)
    assert "alive" in refused.stderr
    pid = drained["pid"]
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: not server(cluster, 4)["alive"], "cs4 to be dead")  # type: ignore[index]
    assert server(cluster, 4)["state"] == "drained"  # type: ignore[index]
    # Forgotten, and the same request again (a retry after a lost answer) is answered as
    # the first was; a new request for it is refused: no such chunkserver any more.
    session = {"cs_id": 4, "client": 0x5EED, "seq": 1}
    assert leader_call(cluster, "admin.forget", **session)["ok"]
    assert server(cluster, 4) is None
    assert leader_call(cluster, "admin.forget", **session)["ok"]
    dfs_cli("admin", "forget", "--dir", d, "4", code=1)

    # A chunkserver holding replicas: draining (nothing moves them here), then back.
    dfs_cli("put", "--dir", d, str(data), "/f")
    counts = eventually(
        lambda: [c["replicas"] for c in status(cluster)["chunkservers"]] == [3, 3, 3],
        "three replicas of each chunk",
    )
    assert counts
    draining = json.loads(dfs_cli("admin", "decommission", "--dir", d, "1", "--json").stdout)
    assert (draining["state"], draining["replicas"]) == ("draining", 3)
    assert draining["replica_bytes"] == data.stat().st_size
    assert "draining" in dfs_cli("status", "--dir", d).stdout
    dfs_cli("admin", "recommission", "--dir", d, "1")
    assert server(cluster, 1)["state"] == "alive"  # type: ignore[index]

    # A dead chunkserver that still holds replicas (two live ones cannot bring goal 3
    # back, so its replicas stay in the sets): forget is refused until the file goes.
    cs3 = server(cluster, 3)
    assert cs3 is not None
    os.kill(cs3["pid"], signal.SIGTERM)
    eventually(lambda: server(cluster, 3)["state"] == "dead", "cs3 to be dead")  # type: ignore[index]
    refused = dfs_cli("admin", "forget", "--dir", d, "3", code=1)
    assert "holds replicas" in refused.stderr
    # A new chunkserver replaces it: repair copies the chunks there, the dead replicas
    # leave the sets once the live ones meet the goal, and then forget is allowed.
    dfs_cli("up", "--dir", d, "--add-chunkservers", "1")
    started = time.monotonic()
    eventually(
        lambda: dfs_cli("admin", "forget", "--dir", d, "3", code=None).returncode == 0,
        "forget to be allowed",
    )
    print(f"forget allowed {time.monotonic() - started:.1f} s after the new chunkserver")
    st = status(cluster)
    assert [c["id"] for c in st["chunkservers"]] == [1, 2, 5]
    # (status counts replicas from a walk of the chunk table at most once a second)
    eventually(
        lambda: [c["replicas"] for c in status(cluster)["chunkservers"]] == [3, 3, 3],
        "the counts to catch up",
    )
