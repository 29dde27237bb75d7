"""Prometheus metrics of a real cluster (``metrics_port``; dfs/metrics.py,
metaserver/metrics.py, chunkserver/metrics.py), scraped over HTTP as Prometheus would:
request latencies by operation, Raft and namespace readings, chunk health on the leader,
a chunkserver's bytes written; an unknown operation is counted as ``other``."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator

import anyio
import pytest
from quick_timers import QUICK_TIMERS

from dfs import rpc
from dfs.cli import cluster as local
from dfs.client.fsclient import ROOT_INO
from dfs.secret import load_secret
from dfs.wire.errors import Unsupported
from tools.testing.localcluster import client, running

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.M)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    with running(
        tmp_path_factory.mktemp("cluster"), chunk_size=1 << 20, metrics=True,
        **QUICK_TIMERS,
    ) as lay:  # fmt: skip
        yield lay


def scrape(layout: local.Layout, name: str) -> dict[str, float]:
    """Every sample of server ``name``'s metrics: "metric{labels}" -> value."""
    address = local.metrics_address(layout, name)
    assert address is not None
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {m[1] + (m[2] or ""): float(m[3]) for m in SAMPLE.finditer(text)}


async def test_servers_expose_their_readings_and_request_figures(layout: local.Layout) -> None:
    data = os.urandom(300_000)
    async with client(layout) as fs:
        _, f = await fs.create_and_open(ROOT_INO, b"measured", 0o100644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()
    metas = [await anyio.to_thread.run_sync(scrape, layout, f"meta{i}") for i in layout.metaservers]
    assert sum(m["dfs_raft_leader"] for m in metas) == 1
    leader = next(m for m in metas if m["dfs_raft_leader"] == 1)
    assert {m["dfs_raft_term"] for m in metas} == {leader["dfs_raft_term"]}
    assert leader["dfs_raft_applied_index"] >= 1 and leader["dfs_raft_commit_index"] >= 1
    assert leader["dfs_namespace_files"] >= 1 and leader["dfs_namespace_bytes"] >= len(data)
    assert leader['dfs_chunkservers{state="alive"}'] == len(layout.chunkservers)
    assert any(k.startswith("dfs_chunks{") for k in leader)
    answered = sum(v for k, v in leader.items() if k.startswith("dfs_request_seconds_count{"))
    assert answered >= 3  # the create, the commit, heartbeats...
    # Bytes written: every replica's chunk.write payloads (a chain forwards them too).
    written = [
        (await anyio.to_thread.run_sync(scrape, layout, f"cs{i}")).get(
            'dfs_payload_bytes_total{direction="in",op="chunk.write"}', 0.0
        )
        for i in layout.chunkservers
    ]
    assert all(w >= len(data) for w in written), written


async def test_an_unknown_operation_is_counted_as_other(layout: local.Layout) -> None:
    host, port = layout.chunkservers[1].rsplit(":", 1)
    conn = await rpc.connect(host, int(port), load_secret(layout.secret_file), name="test")
    try:
        with pytest.raises(Unsupported):
            await conn.call("evil.made_up_op", {})
    finally:
        conn.close()
    samples = await anyio.to_thread.run_sync(scrape, layout, "cs1")
    assert not any("evil" in k for k in samples)
    assert samples['dfs_request_errors_total{code="UNSUPPORTED",op="other"}'] >= 1
