"""Benchmarks: ``scripts/bench NAME [--json] [--seconds S]``.

Each benchmark prints one figure a line, ``name value unit`` (design.md §8), or one JSON
object with ``--json``. What exists:

cluster  Data and metadata speed of a local cluster against the local disk, as ratios
       measured in the same run, through the client library and (``cp``, ``tar x``)
       through a FUSE mount: see ``tools/bench/cluster.py``.

fs     The referee of issue 10: nine workloads (dd, cp -r, ls -lR, rm -rf, tar x, random
       reads) on a dfs mount, the local disk, a pass-through FUSE file system and, with
       ``--peer moosefs``, MooseFS 3, with dfs's ratio to each: see ``tools/bench/fs/``.

raft   A three-node ``metaserver.raft.kvserver`` group on loopback, fsync on, in a temp dir
       on the same disk as the working tree. A load generator in its own process (so that
       its CPU is not the servers') runs sequential puts of 256-byte values from 1 client,
       then from 64 concurrent clients (each its own session, all over one connection, as
       etcd's benchmark does by default), each client writing its own key. Reported: writes
       per second, p50 and p99 commit latency (client-side, put sent -> answer received),
       and, measured in the same run as a baseline, the disk's rate of small appends each
       followed by ``fdatasync`` (what one fsync per write would allow at best). Then one
       client reads (``get``, linearizable: on the leader's lease, or with a ReadIndex
       round when the servers run with ``read_lease = false``, ``--no-lease``): reads per
       second and p50 latency.
       The comparison point (design.md §9): etcd 3.4 on this machine, 3 members, fsync on,
       256-byte puts: ~11,400 writes/s at 64 clients, 0.57 ms p50 at 1 client.

       Reading ``disk_fdatasync_*`` on the project's VMs: a lone fdatasync completes in about
       0.1 ms while some vCPU is busy, but in about 4 ms when both are idle (the completion
       waits for a halted vCPU to wake: the guest's cpuidle is haltpoll with
       guest_halt_poll_ns = 0). The probe runs alone, so it swings between ~250/s and a few
       thousand per second from run to run; under the benchmark's own load the servers'
       fsyncs measured 0.3-1 ms p50. Compare figures from the same run, and several runs.

This module only orchestrates processes and measures; it holds no server logic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dfs.ports import free_loopback_ports
from tools import pythonpath_env
from tools.bench import plot as benchplot
from tools.bench.fs import cli as benchfs_cli

RAFT_VALUE_BYTES = 256
RAFT_CLIENTS = (1, 64)
WARMUP_S = 1.0
FSYNC_PROBE_S = 1.0
STARTUP_TIMEOUT_S = 30.0


def fdatasync_rate(directory: Path, seconds: float = FSYNC_PROBE_S) -> tuple[float, float]:
    """Appends of 256 bytes, each followed by fdatasync: (per second, p50 seconds)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = b"x" * RAFT_VALUE_BYTES
        latencies = []
        start = now = time.perf_counter()
        deadline = start + seconds
        while now < deadline:
            os.write(fd, block)
            os.fdatasync(fd)
            then, now = now, time.perf_counter()
            latencies.append(now - then)
        latencies.sort()
        return len(latencies) / (now - start), _percentile(latencies, 0.5)
    finally:
        os.close(fd)
        path.unlink()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


# ---------------------------------------------------------------------------- raft load


async def _raft_load(
    addresses: list[str],
    secret: bytes,
    clients: int,
    seconds: float,
    value_bytes: int,
    op: str = "put",
) -> dict[str, Any]:
    from metaserver.raft.kvclient import KvClient, KvPool

    pool = KvPool(addresses, secret, name="bench")
    sessions = [KvClient(pool=pool) for _ in range(clients)]
    value = "v" * value_bytes
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + WARMUP_S
    end = measure_from + seconds
    latencies: list[float] = []
    perf = time.perf_counter

    async def run(k: int, client: KvClient) -> None:
        key = f"key{k}"
        record = latencies.append
        while True:
            t0 = perf()
            if op == "put":
                await client.put(key, value)
            else:
                await client.get(key)
            t1 = perf()
            now = loop.time()
            if now >= end:
                return
            if now >= measure_from:
                record(t1 - t0)

    await asyncio.gather(*(run(k, s) for k, s in enumerate(sessions)))
    elapsed = loop.time() - measure_from
    await pool.close()
    latencies.sort()
    return {
        "clients": clients,
        "ops": len(latencies),
        "seconds": elapsed,
        "ops_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


def raft_load_main(args: argparse.Namespace) -> int:
    """The load generator process: prints one JSON line with its measurements.

    It runs on the servers' event loop (uvloop, ``daemon.run``'s ``fast_loop``): both sides
    are dfs's code, and a client of the Raft group is another dfs process (a metaserver's
    peer, a chunkserver), so its loop is measured as the servers' is. Before the eighth
    round of issue 10 it ran on plain asyncio; ``DFS_EVENT_LOOP=asyncio`` still does."""
    from dfs import daemon
    from dfs.secret import load_secret

    secret = load_secret(args.secret_file)
    result: dict[str, Any] = {}

    async def load() -> int:
        result.update(
            await _raft_load(
                args.addresses.split(","),
                secret,
                args.clients,
                args.seconds,
                args.value_bytes,
                args.op,
            )
        )
        return 0

    daemon.run(load(), fast_loop=True)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------- raft group


class _RaftGroup:
    """Three kvserver processes in ``root``; ``close`` ends them by PID."""

    def __init__(self, root: Path, *, fsync: bool, extra: dict[str, Any]) -> None:
        from dfs.secret import generate_secret, write_secret

        self.root = root
        self.secret_file = root / "secret"
        write_secret(self.secret_file, generate_secret())
        ports = free_loopback_ports(3)
        self.addresses = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fsync = fsync
        self.extra = extra

    def start(self) -> None:
        for node_id, address in self.addresses.items():
            config = self.root / f"node{node_id}.toml"
            lines = [
                f"id = {node_id}",
                f'listen = "{address}"',
                f'data_dir = "{self.root / f"node{node_id}"}"',
                f'secret_file = "{self.secret_file}"',
                f"fsync = {'true' if self.fsync else 'false'}",
            ]
            lines += [f"{k} = {v}" for k, v in self.extra.items()]
            lines.append("[peers]")
            lines += [f'{n} = "{a}"' for n, a in self.addresses.items()]
            config.write_text("\n".join(lines) + "\n")
            cmd = [sys.executable, "-m", "metaserver.raft.kvserver", "--config", str(config)]
            with open(self.root / f"node{node_id}.log", "wb") as log_file:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
                )
            self.procs.append(proc)

    async def wait_leader(self) -> str:
        from dfs.secret import load_secret
        from dfs.wire.errors import DfsError
        from metaserver.raft.kvclient import KvPool

        pool = KvPool(list(self.addresses.values()), load_secret(self.secret_file), name="bench")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        try:
            while loop.time() < deadline:
                for address in self.addresses.values():
                    try:
                        header, _ = await pool.call(address, "status", 1.0)
                    except DfsError:
                        continue
                    if header["role"] == "leader" and header["applied"] >= header["commit"] > 0:
                        return address
                await asyncio.sleep(0.05)  # polling interval
        finally:
            await pool.close()
        raise RuntimeError(f"no leader within {STARTUP_TIMEOUT_S} s; logs in {self.root}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def raft_main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="dfs-bench-raft-"))
    figures: list[tuple[str, float, str]] = []
    extra = {"read_lease": "false"} if args.no_lease else {}
    group = _RaftGroup(root, fsync=not args.no_fsync, extra=extra)
    try:
        rate, p50_s = fdatasync_rate(root)
        figures.append(("disk_fdatasync_per_s", rate, "ops/s"))
        figures.append(("disk_fdatasync_p50_ms", p50_s * 1000, "ms"))
        group.start()
        leader = asyncio.run(group.wait_leader())
        # The leader first: fewer redirects, and the same address list for every run.
        addresses = [leader] + [a for a in group.addresses.values() if a != leader]
        runs = [("put", clients) for clients in args.clients] + [("get", 1)]
        for op, clients in runs:
            cmd = [
                sys.executable, "-m", "tools.bench", "raft-load",
                "--addresses", ",".join(addresses), "--secret-file", str(group.secret_file),
                "--clients", str(clients), "--seconds", str(args.seconds),
                "--value-bytes", str(RAFT_VALUE_BYTES), "--op", op,
            ]  # fmt: skip
            out = subprocess.run(
                cmd,
                check=True,
                stdout=subprocess.PIPE,
                timeout=args.seconds + 120,
                env=pythonpath_env(),
            ).stdout
            result = json.loads(out.decode().strip().splitlines()[-1])
            if op == "get":
                figures.append((f"raft_reads_per_s_c{clients}", result["ops_per_s"], "ops/s"))
                figures.append((f"raft_read_p50_ms_c{clients}", result["p50_ms"], "ms"))
                continue
            figures.append((f"raft_writes_per_s_c{clients}", result["ops_per_s"], "ops/s"))
            figures.append((f"raft_commit_p50_ms_c{clients}", result["p50_ms"], "ms"))
            figures.append((f"raft_commit_p99_ms_c{clients}", result["p99_ms"], "ms"))
    finally:
        group.close()
        if args.keep:
            print(f"# kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    _print_figures(figures, args.json)
    if args.plot is not None:
        args.plot.write_text(_raft_plot(figures, args.clients))
        print(f"# plot written to {args.plot}", file=sys.stderr)
    return 0


def _raft_plot(figures: list[tuple[str, float, str]], clients: list[int]) -> str:
    f = {name: value for name, value, _ in figures}
    throughput = benchplot.Panel(
        "Raft commits (3 nodes, fsync on)",
        "/s",
        [(f"{c} client{'s' if c > 1 else ''}", f[f"raft_writes_per_s_c{c}"]) for c in clients],
        [("target 10,000/s at 64", 10_000.0), ("etcd 3.4, 64 clients: 11,400/s", 11_400.0)],
    )
    latency = benchplot.Panel(
        "Commit latency p50 / p99",
        "ms",
        [(f"p50 c{c}", f[f"raft_commit_p50_ms_c{c}"]) for c in clients]
        + [(f"p99 c{c}", f[f"raft_commit_p99_ms_c{c}"]) for c in clients],
        [("target p50 2 ms at 1 client", 2.0), ("etcd p50 c1: 0.57 ms", 0.57)],
    )
    disk = f["disk_fdatasync_p50_ms"]
    return benchplot.svg(
        [throughput, latency],
        caption=f"Same run: the disk's own fdatasync p50 {disk:.2f} ms. 256-byte puts.",
    )


def _print_figures(figures: list[tuple[str, float, str]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({name: {"value": round(v, 3), "unit": u} for name, v, u in figures}))
        return
    for name, value, unit in figures:
        text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"
        print(f"{name} {text} {unit}")


def _cluster_main(args: argparse.Namespace) -> int:
    from tools.bench import (
        cluster as benchcluster,  # imports the client; the raft benchmark does not need it
    )

    figures = benchcluster.cluster_main(args)
    _print_figures([(n, v, u) for n, (v, u) in figures.items()], args.json)
    if args.plot is not None:
        args.plot.write_text(benchcluster.plot(figures))
        print(f"# plot written to {args.plot}", file=sys.stderr)
    return 0


def _fs_main(args: argparse.Namespace) -> int:
    from tools.bench.fs import run  # the client and FUSE code load only for this benchmark

    return run.fs_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    sub = parser.add_subparsers(dest="bench", required=True)

    raft = sub.add_parser("raft", help="3-node Raft key-value group: writes/s and latency")
    raft.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    raft.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    raft.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(RAFT_CLIENTS),
        help="comma-separated client counts (default 1,64)",
    )
    raft.add_argument("--no-fsync", action="store_true", help="servers skip fsync (diagnosis)")
    raft.add_argument(
        "--no-lease", action="store_true", help="reads by ReadIndex rounds, not the lease"
    )
    raft.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    raft.add_argument("--plot", type=Path, default=None, help="also write an SVG chart here")
    raft.set_defaults(func=raft_main)

    cluster = sub.add_parser("cluster", help="local cluster vs local disk: MB/s, files/s")
    cluster.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    cluster.add_argument("--mib", type=int, default=256, help="size of the sequential file")
    cluster.add_argument("--files", type=int, default=500, help="small files to create")
    cluster.add_argument(
        "--mount-files", type=int, default=1000, help="small files to cp through the mount"
    )
    cluster.add_argument(
        "--no-mount", action="store_true", help="skip the figures through a FUSE mount"
    )
    cluster.add_argument("--dir", default=None, help="where the temp dir goes (default: TMPDIR)")
    cluster.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    cluster.add_argument("--plot", type=Path, default=None, help="also write an SVG chart here")
    cluster.set_defaults(func=_cluster_main)

    fs = sub.add_parser("fs", help="dfs mount vs local disk, pass-through FUSE and MooseFS")
    benchfs_cli.add_arguments(fs)
    fs.set_defaults(func=_fs_main)

    load = sub.add_parser("raft-load", help=argparse.SUPPRESS)
    load.add_argument("--addresses", required=True)
    load.add_argument("--secret-file", required=True, type=Path)
    load.add_argument("--clients", type=int, required=True)
    load.add_argument("--seconds", type=float, required=True)
    load.add_argument("--value-bytes", type=int, default=RAFT_VALUE_BYTES)
    load.add_argument("--op", choices=("put", "get"), default="put")
    load.set_defaults(func=raft_load_main)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
