"""Clusters and mounts for the FUSE tests (imported by ``conftest.py`` and the tests).

A cluster is started as ``tests/integration/test_cluster_io.py`` does (``dfs.cli.cluster``,
1 MiB chunks, fast ticks); a mount is ``dfs mount --foreground`` run as a daemon by
``dfs.cli.cluster.start_mount``, which returns once the mount is live. Everything is
stopped by PID (the mounts first: SIGTERM, which commits and unmounts; a mount left behind
is detached), and the logs of a failed run are printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from dfs.cli import cluster as local
from dfs.fuse.mountinfo import mount_info
from tools.testing.fuseenv import tls_by_default
from tools.testing.poll import wait_for

CHUNK = 1 << 20


def print_logs(directory: Path) -> None:
    for log in sorted((directory / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text or " ERROR " in text:
            print(f"----- {log.name}\n{text[-6000:]}")


def start_cluster(
    directory: Path, *, tls: bool | None = None, **meta_options: object
) -> local.Layout:
    """A cluster (``tls``: speaking TLS; None: as ``DFS_TEST_TLS`` says); ``meta_options`` added to the metaservers' config
    (by default the trash is off: removed files are freed at once, as the tests of removal
    expect)."""
    layout = local.init_layout(
        directory,
        tls=tls_by_default() if tls is None else tls,
        chunk_size=CHUNK,
        meta_options={"tick_ms": 50, "hold_grace_ms": 2000, "trash_time_s": 0, **meta_options},
        cs_options={"heartbeat_ms": 200},
    )
    local.start_daemons(layout)
    try:
        anyio.run(local.wait_ready, layout, 60.0)
    except BaseException:
        local.stop_daemons(layout, timeout_s=10)
        raise
    return layout


def stop_cluster(layout: local.Layout) -> None:
    local.stop_mounts(layout)
    local.stop_daemons(layout, timeout_s=10)
    print_logs(layout.dir)


def leader_view(layout: local.Layout) -> dict[str, Any]:
    """The leader's ``status`` ({} while there is none)."""
    creds = local.client_credentials(layout)
    for address in layout.meta_addresses:
        view = anyio.run(local._status_of, address, creds)
        if view and view.get("role") == "leader":
            return view
    return {}


def chunk_counts(layout: local.Layout) -> tuple[int, int]:
    """(chunks in the chunk table, chunks the chunkservers hold, as they last said)."""
    view = leader_view(layout)
    return view.get("chunks", -1), sum(c["chunks"] for c in view.get("chunkservers", []))


class Mounts:
    """Mounts of one cluster made during a test module; all unmounted at its end."""

    def __init__(self, layout: local.Layout, base: Path) -> None:
        self.layout = layout
        self.base = base
        self.pid_files: list[Path] = []

    def mount(
        self, name: str, *, timeout_s: float = 20.0, allow_other: bool = True, remote: bool = False
    ) -> Path:
        """Mount at ``base/name``; ``allow_other`` (the default here) lets the tests act
        as other users (FUSE refuses everyone but the mounting user otherwise). ``remote``:
        as a client host would, with the metaservers' addresses and the client's file
        (``Layout.client_file``) instead of the cluster directory."""
        where = self.base / name
        where.mkdir(parents=True, exist_ok=True)
        pid_file = local.mount_pid_file(self.layout.dir / "run", where)
        self.pid_files.append(pid_file)
        local.start_mount(
            [*(self._remote() if remote else ["--dir", str(self.layout.dir)])]
            + ["--timeout", str(timeout_s)]
            + (["--allow-other"] if allow_other else []),
            where,
            pid_file,
            self.layout.dir / "logs" / f"{pid_file.stem}.log",
            timeout_s,
        )
        return where

    def _remote(self) -> list[str]:
        meta = ",".join(self.layout.meta_addresses)
        return ["--meta", meta, "--secret", str(self.layout.client_file)]

    def close(self) -> None:
        for pid_file in self.pid_files:
            stopped = local.stop_mount(pid_file, timeout_s=30)
            if stopped is not None:
                mountpoint, _ = stopped
                info = mount_info(mountpoint)
                assert info is None, f"{mountpoint} still mounted after its process ended"


wait_until = wait_for
