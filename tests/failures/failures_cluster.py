"""The cluster of the failure tests (issue 5's proofs): a real cluster of 3 metaservers and 4
chunkservers with short timeouts (a chunkserver is dead after 3 s, garbage waits 2 s,
scrubbing is fast; a module may override any option), a real mount, helpers to kill and
restart servers by PID, to poll the leader's own chunk report with a deadline, and to
locate a file's chunks and read a replica directly with a token signed from the secret.

Like the FUSE tests they need root and /dev/fuse: with ``CI`` set nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from dfs import rpc
from dfs.cli import cluster as local
from dfs.credentials import token_minter
from dfs.wire.token import READ
from tools.testing import localcluster
from tools.testing.fuseenv import tls_by_default
from tools.testing.poll import wait_for

CHUNK = 1 << 20
DEAD_TIMEOUT_S = 3.0
GC_GRACE_S = 2.0
META_OPTIONS = {
    "tick_ms": 50,
    "dead_timeout_ms": int(DEAD_TIMEOUT_S * 1000),
    "repair_interval_ms": 200,
    "repair_quiet_ms": 1000,
    "gc_grace_ms": int(GC_GRACE_S * 1000),
    "replication_jobs": 8,
    # Removed files are freed at once (the trash is tested in tests/fuse/test_fuse_trash.py):
    # these tests watch deleted chunks leave the chunkservers.
    "trash_time_s": 0,
}
CS_OPTIONS = {
    "heartbeat_ms": 200,
    "report_interval_ms": 3000,
    "scrub_bytes_per_s": 32 << 20,
    "scrub_period_ms": 0,
}


wait_until = wait_for


class Cluster:
    """``meta_options`` and ``cs_options`` override (or add to) META_OPTIONS and CS_OPTIONS;
    ``chunkservers`` is how many start (4 unless a module needs another count)."""

    def __init__(
        self,
        directory: Path,
        *,
        chunkservers: int = 4,
        meta_options: dict[str, Any] | None = None,
        cs_options: dict[str, Any] | None = None,
    ) -> None:
        self.layout = local.init_layout(
            directory,
            chunkservers=chunkservers,
            chunk_size=CHUNK,
            meta_options={**META_OPTIONS, **(meta_options or {})},
            cs_options={**CS_OPTIONS, **(cs_options or {})},
            tls=tls_by_default(),
        )
        self.secret = local.client_credentials(self.layout)
        self.mount_pid_files: list[Path] = []
        self.start()

    def start(self) -> None:
        localcluster.start(self.layout)

    def status(self) -> dict[str, Any]:
        return anyio.run(local.cluster_status, self.layout.meta_addresses, self.secret)

    def health(self) -> dict[str, int] | None:
        try:
            return self.status().get("health")
        except Exception:
            return None

    def pid(self, name: str) -> int:
        return int((self.layout.dir / "run" / f"{name}.pid").read_text())

    def kill(self, name: str) -> None:
        os.kill(self.pid(name), 9)
        assert local.wait_exit(self.pid(name), 10.0)

    def leader_name(self) -> str:
        st = self.status()
        return f"meta{st['leader']}"

    def mount(self, where: Path, timeout_s: float = 30.0) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        pid_file = local.mount_pid_file(self.layout.dir / "run", where)
        self.mount_pid_files.append(pid_file)
        local.start_mount(
            ["--dir", str(self.layout.dir), "--timeout", str(timeout_s)],
            where,
            pid_file,
            self.layout.dir / "logs" / f"{pid_file.stem}.log",
            timeout_s,
        )
        return where

    def umount_all(self) -> None:
        for pid_file in self.mount_pid_files:
            local.stop_mount(pid_file, timeout_s=30)
        self.mount_pid_files.clear()

    def stop(self) -> None:
        self.umount_all()
        local.stop_mounts(self.layout)
        # Read again: dfs up --add-chunkservers and metaserver add --local grow it on disk.
        self.layout = local.load_layout(self.layout.dir)
        localcluster.stop(self.layout.dir, always="mount")  # the mounts' logs, whatever they say


@contextlib.contextmanager
def running(directory: Path, **options: Any) -> Iterator[Cluster]:
    """A ``Cluster`` (``options``: its overrides) for the block; stopped after it."""
    c = Cluster(directory, **options)
    try:
        yield c
    finally:
        c.stop()


def healthy(cluster: Cluster, dead: int = 0) -> dict[str, Any] | None:
    """The leader's status when every chunk is back at its goal and ``dead`` chunkservers
    are dead (None otherwise)."""
    try:
        st = cluster.status()
    except Exception:
        return None
    h = st.get("health")
    if not h or h["missing"] or h["under_goal"] or h["over_goal"] or h["corrupt"]:
        return None
    if sum(1 for c in st["chunkservers"] if c["state"] == "dead") != dead:
        return None
    return st


async def _meta_call(cluster: Cluster, op: str, **fields: Any) -> dict[str, Any]:
    """An op on the leader, following NotLeader."""
    st = await local.cluster_status(cluster.layout.meta_addresses, cluster.secret)
    host, _, port = st["leader_address"].rpartition(":")
    conn = await rpc.connect(host, int(port), cluster.secret, name="test")
    try:
        header, _ = await conn.call(op, b"", **fields)
        return header
    finally:
        conn.close()


def locate(cluster: Cluster, path_in_root: list[bytes]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        ino = 1
        for name in path_in_root:
            ino = (await _meta_call(cluster, "fs.lookup", parent=ino, name=name))["attr"]["ino"]
        located = await _meta_call(cluster, "fs.locate", ino=ino, index=0, count=1024)
        chunks: list[dict[str, Any]] = located["chunks"]
        return chunks

    return anyio.run(go)


def read_replica(cluster: Cluster, address: str, chunk_id: int, version: int, size: int) -> bytes:
    async def go() -> bytes:
        host, _, port = address.rpartition(":")
        conn = await rpc.connect(host, int(port), cluster.secret, name="test")
        try:
            expiry_ms = time.time_ns() // 1_000_000 + 60_000
            # Signed as a metaserver signs (the cluster's kind of token), bound to this
            # connection's certificate in a TLS cluster (dfs/wire/token.py).
            bound = cluster.secret.tls.cert_id if cluster.secret.tls is not None else ""
            token = token_minter(cluster.secret)(chunk_id, version, READ, expiry_ms, bound)
            _, payload = await conn.call(
                "chunk.read", b"", chunk_id=chunk_id, version=version, offset=0, size=size,
                token=token, expiry_ms=expiry_ms,
            )  # fmt: skip
            return bytes(payload)
        finally:
            conn.close()

    return anyio.run(go)


def cs_name(cluster: Cluster, address: str) -> str:
    return next(f"cs{i}" for i, a in cluster.layout.chunkservers.items() if a == address)
