"""Local clusters (``dfs.cli.cluster``) for the tests that run real processes: the ``dfs``
command run as an operator runs it, a cluster started for a block and stopped by PID after
it, a client of it, and the logs of a run printed, so that a failed test shows what the
servers said.

What it must not do: choose a cluster's options (each test module, or its folder's helper
such as ``tests/integration/admin_cluster.py``, says what its cluster needs).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio

from dfs.cli import cluster as local
from dfs.client import FsClient
from dfs.credentials import Credential
from dfs.wire.limits import ROOT_INO

# A command of the CLI; the slow ones (a 300 MiB put, a rebalance that waits) pass more.
CLI_TIMEOUT_S = 120.0
# From start to a leader and every chunkserver registered: a few seconds on a quiet
# machine, a minute on a loaded one.
READY_TIMEOUT_S = 60.0
# What makes a log worth reading after a run, and how much of its end is printed.
LOG_MARKERS = ("Traceback", " ERROR ")
LOG_TAIL_CHARS = 6000


def dfs_cli(
    *args: str, code: int | None = 0, timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``dfs ARGS`` in a process of its own (this interpreter), its output captured; an
    ``AssertionError`` showing that output unless it exits with ``code`` (None: any)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dfs.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if code is not None and proc.returncode != code:
        raise AssertionError(
            f"dfs {' '.join(args)}: exit {proc.returncode}, not {code}:\n{proc.stdout}\n"
            f"{proc.stderr}"
        )
    return proc


def client(cluster: Path | local.Layout, **options: Any) -> AbstractAsyncContextManager[FsClient]:
    """``FsClient.open_cluster`` (``options``: its keywords) on the cluster of a layout, or
    of a directory (its layout read now), as the operator's CLI (``admin``)."""
    layout = local.load_layout(cluster) if isinstance(cluster, Path) else cluster
    return FsClient.open_cluster(layout.meta_addresses, local.client_credentials(layout), **options)


async def write_and_locate(
    addresses: list[str], credentials: Credential, name: bytes, data: bytes
) -> dict[str, Any]:
    """Write ``data`` as file ``name`` in the root, close it, and return its first chunk as
    ``fs.locate`` answers (chunk id, version, replicas, a read token)."""
    async with FsClient.open_cluster(addresses, credentials) as fs:
        _, f = await fs.create_and_open(ROOT_INO, name, 0o100644, os.O_WRONLY | os.O_CREAT)
        await f.write(0, data)
        await f.close()
        attr = await fs.lookup(ROOT_INO, name)
        located = await fs.meta.read("fs.locate", ino=attr.ino, index=0, count=1)
    chunk: dict[str, Any] = located["chunks"][0]
    return chunk


def print_logs(directory: Path, *, always: str | None = None) -> None:
    """The end of each log of the cluster in ``directory`` that holds a traceback or an
    ERROR line (and of each whose name holds ``always``), printed: pytest shows it with a
    failed test."""
    for log in sorted((directory / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        if any(m in text for m in LOG_MARKERS) or (always is not None and always in log.name):
            print(f"----- {log.name}\n{text[-LOG_TAIL_CHARS:]}")


def start(layout: local.Layout) -> None:
    """Start the daemons of ``layout`` that are not running, and wait until a leader is
    elected and every chunkserver is registered."""
    local.start_daemons(layout)
    anyio.run(local.wait_ready, layout, READY_TIMEOUT_S)


def stop(directory: Path, *, always: str | None = None) -> None:
    """Stop every daemon of the cluster in ``directory`` by PID (its mounts first), then
    print its logs (``print_logs``). The layout is read again: ``dfs up
    --add-chunkservers`` and ``metaserver add --local`` grow it on disk."""
    local.stop_daemons(local.load_layout(directory), timeout_s=10)
    print_logs(directory, always=always)


@contextlib.contextmanager
def running(directory: Path, **layout_options: Any) -> Iterator[local.Layout]:
    """A cluster made by ``local.init_layout(directory, **layout_options)``, started and
    ready for the block (``start``); stopped after it (``stop``), even when it fails."""
    layout = local.init_layout(directory, **layout_options)
    try:
        start(layout)
        yield layout
    finally:
        stop(directory)
