"""A cluster across network namespaces started from ``dfs init``'s output: every server on
a host of its own runs the config ``dfs init`` wrote for it (data under ``--data-root``,
the secret where ``--secret-path`` says, metrics on its port + 1000), and a client on
another host writes and reads a file through it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from netns_helpers import dump_logs

from dfs.cli import cluster as local
from dfs.cli.main import cli
from tools.testing.netns import NetCluster

pytestmark = [pytest.mark.timeout(300)]


def test_a_cluster_from_dfs_init_serves_across_hosts(netns_ready: None, tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    net = NetCluster(directory, metaservers=3, chunkservers=2, clients=1, chunk_size=1 << 20)
    endpoints = {name: net.hosts[name].endpoint for name in net.metaservers + net.chunkservers}
    data_root = tmp_path / "hosts-data"
    result = CliRunner().invoke(cli, [
        "init", "--out", str(directory), "--chunk-size", "1M",
        "--metaservers", ",".join(endpoints[m] for m in net.metaservers),
        "--chunkservers", ",".join(endpoints[c] for c in net.chunkservers),
        "--data-root", str(data_root), "--secret-path", str(directory / "secret"),
        "--credential-dir", str(directory / "tls"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    try:
        with net:  # takes the directory as dfs init left it (same servers, same addresses)
            for name in net.metaservers + net.chunkservers:
                assert (data_root / name).is_dir(), f"{name} did not run dfs init's config"
            data = b"from dfs init\n" * 100_000
            src = tmp_path / "src"
            src.write_bytes(data)
            put = net.dfs("client1", "put", str(src), "/deployed")
            assert put.returncode == 0, put.stderr
            out = tmp_path / "out"
            get = net.dfs("client1", "get", "/deployed", str(out))
            assert get.returncode == 0, get.stderr
            assert out.read_bytes() == data
            assert net.layout.tls  # dfs init's default: TLS, the client with its credential
            assert net.secret_file == directory / "tls" / "client.pem"
            # Metrics where dfs init put them, reached from the client's host.
            address = local.metrics_address(net.layout, "meta1")
            assert address == endpoints["meta1"].replace(":9000", ":10000")
            fetch = net.run("client1", [
                "python3", "-c",
                f"import urllib.request; print(urllib.request.urlopen("
                f"'http://{address}/metrics', timeout=10).read().decode())",
            ], check=True)  # fmt: skip
            assert b"dfs_raft_term" in fetch.stdout
    finally:
        dump_logs(directory)
    assert net.leftovers() == []
