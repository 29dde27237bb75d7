"""The cluster of the failure tests (issue 5's proofs): a real cluster of 3 metaservers and 4
chunkservers with short timeouts (a chunkserver is dead after 3 s, garbage waits 2 s,
scrubbing is fast), a real mount, helpers to kill and restart servers by PID and to poll
the leader's own chunk report with a deadline.

Like the FUSE tests they need root and /dev/fuse: with ``CI`` set nothing is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from dfs.cli import cluster as local
from dfs.secret import load_secret
from dfs.testing.poll import wait_for

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
}
CS_OPTIONS = {
    "heartbeat_ms": 200,
    "report_interval_ms": 3000,
    "scrub_bytes_per_s": 32 << 20,
}


wait_until = wait_for


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.layout = local.init_layout(
            directory,
            chunkservers=4,
            chunk_size=CHUNK,
            meta_options=META_OPTIONS,
            cs_options=CS_OPTIONS,
        )
        self.secret = load_secret(self.layout.secret_file)
        self.mount_pid_files: list[Path] = []
        self.start()

    def start(self) -> None:
        local.start_daemons(self.layout)
        anyio.run(local.wait_ready, self.layout, 60.0)

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
        local.stop_daemons(self.layout, timeout_s=10)
        for log in sorted((self.layout.dir / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text or " ERROR " in text or "mount" in log.name:
                print(f"----- {log.name}\n{text[-6000:]}")
