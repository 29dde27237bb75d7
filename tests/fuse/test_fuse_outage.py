"""Bounded waits: with every metaserver stopped, ``ls`` on the mount fails with an error
within the mount's timeout (``dfs mount --timeout 3``) instead of hanging; once they are
started again, the same mount works, without remounting.

The cluster here is this module's own (its metaservers are stopped and restarted); every
process is stopped by PID in the finalizers (``conftest.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fuse_cluster import Mounts, start_cluster, stop_cluster, wait_until

from dfs.cli import cluster as local

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(150)]

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def outage_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    layout = start_cluster(tmp_path_factory.mktemp("outage"))
    try:
        yield layout
    finally:
        stop_cluster(layout)


def metaserver_pids(layout: local.Layout) -> dict[str, int]:
    pids = {}
    for name, _argv, config in layout.daemons():
        if name.startswith("meta"):
            pid = local._running_pid(layout, name, config)
            if pid is not None:
                pids[name] = pid
    return pids


def ls(path: Path) -> subprocess.CompletedProcess[str]:
    # The subprocess timeout is the test's guard against a hang, well above the mount's.
    return subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, timeout=60)


def test_ls_fails_within_the_timeout_then_recovers(
    outage_cluster: local.Layout, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mounts = Mounts(outage_cluster, tmp_path_factory.mktemp("outage-mnt"))
    try:
        mnt = mounts.mount("m", timeout_s=TIMEOUT_S)
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_bytes(b"before")
        assert "f" in ls(mnt / "d").stdout

        pids = metaserver_pids(outage_cluster)
        assert len(pids) == 3
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(local.pid_alive(p) for p in pids.values()), 30, "exit")

        started = time.monotonic()
        proc = ls(mnt / "d")
        elapsed = time.monotonic() - started
        print(f"ls during the outage: {elapsed:.2f} s, {proc.stderr.strip()!r}")
        assert proc.returncode != 0, proc.stdout
        assert "Input/output error" in proc.stderr or "timed out" in proc.stderr, proc.stderr
        # Cached attributes may answer ls's stat, but a listing always asks the cluster:
        # one failed request costs at most the timeout; ls makes a few (stat, readdir).
        assert elapsed < 4 * TIMEOUT_S + 2, f"ls took {elapsed:.1f} s"

        local.start_daemons(outage_cluster)
        anyio.run(local.wait_ready, outage_cluster, 60.0)
        # The same mount, not remounted: the client reconnects by itself.
        deadline = time.monotonic() + 30
        while True:
            proc = ls(mnt / "d")
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the new leader may need a moment to take client requests
        assert proc.returncode == 0 and "f" in proc.stdout, proc.stderr
        assert (mnt / "d" / "f").read_bytes() == b"before"
        (mnt / "d" / "g").write_bytes(b"after")
        assert (mnt / "d" / "g").read_bytes() == b"after"
    finally:
        mounts.close()
