"""Replacing metaservers online (``dfs admin metaserver``), as an operator does it, under a
client writing files the whole time.

Checks: a fourth metaserver added to a running three (``add --local``: config, process,
layout) catches up by snapshot (the log it needs was compacted) and becomes a voter; a
follower whose host was lost is removed, then the leader (which hands over first); a
change asked again once made (the client's retry when its answer was lost) succeeds, and
the removal then still cleans the directory's layout; no
client call fails, and the writing client, configured with the first three addresses
only, keeps working; every file is there with its bytes; ``dfs status`` and ``list`` show
the new membership; each removed metaserver exits by itself, leaves a marker that keeps it
from starting again, and the term does not move once it is gone (no disruptive
elections), not even when the lost one comes back with its old configuration (it finds
out, and exits too).

And the ``dfs up`` directory's layout (cluster.toml, the chunkservers' configs) lists a
metaserver while it is a member or its process runs: an ``add --local`` that fails stops
the new one and leaves no trace of it unless it joined; a removed one whose process
outlives SIGTERM stays listed until it is gone.

Every daemon is started and stopped by PID (``dfs.cli.cluster``); waits poll with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import click
import pytest
from click.testing import CliRunner, Result

from dfs.cli import admin_meta
from dfs.cli import cluster as local
from dfs.cli.admin_meta import metaserver
from dfs.client import FsClient
from dfs.client.fsclient import ROOT_INO
from dfs.secret import load_secret
from metaserver.membership import was_removed
from tools.testing.fsread import read_to_eof
from tools.testing.localcluster import dfs_cli, running

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]

CHUNK = 64 << 10
MODE = 0o100644


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[local.Layout]:
    with running(
        tmp_path / "cluster",
        chunkservers=2,
        chunk_size=CHUNK,
        # Snapshots every 50 entries: the added metaserver needs entries compacted away,
        # so it catches up by InstallSnapshot.
        meta_options={"tick_ms": 50, "snapshot_entries": 50, "fsync": False},
        cs_options={"heartbeat_ms": 200},
    ) as lay:
        try:
            yield lay
        finally:
            # Removed ones are no longer in the layout: the stop after this misses them.
            kept = local.load_layout(lay.dir).metaservers
            for i in (1, 2, 3, 4):
                if i not in kept:
                    with contextlib.suppress(AssertionError):
                        os.kill(pid_of(lay, i), signal.SIGKILL)


def pid_of(layout: local.Layout, i: int) -> int:
    pid = local._running_pid(layout, f"meta{i}", layout.dir / f"meta{i}" / "meta.toml")
    assert pid is not None, f"meta{i} is not running"
    return pid


async def cli(*args: str) -> str:
    """``dfs ARGS``' output, the command run on a thread of its own."""
    return (await anyio.to_thread.run_sync(lambda: dfs_cli(*args, timeout_s=150))).stdout


async def members(d: Path) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(
        await cli("admin", "metaserver", "list", "--dir", str(d), "--json")
    )
    return view


async def test_replace_metaservers_under_a_write_load(layout: local.Layout) -> None:
    d = layout.dir
    secret = load_secret(layout.secret_file)
    first_addresses = list(layout.meta_addresses)
    written: dict[bytes, bytes] = {}
    stop = anyio.Event()

    async with FsClient.open_cluster(first_addresses, secret, timeout_s=30.0) as fs:
        load = await fs.mkdir(ROOT_INO, b"load", 0o755)

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                name, data = b"f%05d" % i, os.urandom(100 + i % 3000)
                _, f = await fs.create_and_open(
                    load.ino, name, MODE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                )
                try:
                    await f.write(0, data)
                finally:
                    await f.close()
                written[name] = data
                i += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            deadline = time.monotonic() + 30
            while len(written) < 40:  # enough entries for a snapshot or two
                assert time.monotonic() < deadline
                await anyio.sleep(0.05)

            out = await cli("admin", "metaserver", "add", "--local", "--dir", str(d))
            assert "metaserver 4 at" in out and "is a voter" in out, out
            assert "from a snapshot" in out, out
            view = await members(d)
            assert view["voters"] == [1, 2, 3, 4] and view["learners"] == []
            assert all(m["lag"] < 50 for m in view["metaservers"]), view
            assert all(m["active"] for m in view["metaservers"]), view
            at = len(written)
            # The add asked again (a retry whose first attempt's answer was lost) is done.
            address4 = local.load_layout(d).metaservers[4]
            out = await cli("admin", "metaserver", "add", address4, "--dir", str(d))
            assert f"metaserver 4 at {address4} is already a voter" in out, out

            # A follower's host is lost (killed) and it is removed; then the leader leaves
            # (it hands over first) and exits by itself.
            leader = view["leader"]
            lost = min(m for m in (1, 2, 3) if m != leader)
            pids = {i: pid_of(layout, i) for i in (lost, leader)}
            os.kill(pids[lost], signal.SIGKILL)
            # Its removal commits but the answer is lost: like a removal made without the
            # directory (--meta), it leaves the node in the layout; asked again, it is done
            # and the layout is cleaned (cluster.toml, the chunkservers' configs).
            meta = ",".join(first_addresses)
            out = await cli("admin", "metaserver", "remove", str(lost), "--meta", meta,
                            "--secret", str(layout.secret_file))  # fmt: skip
            assert f"metaserver {lost} removed" in out, out
            assert lost in local.load_layout(d).metaservers
            out = await cli("admin", "metaserver", "remove", str(lost), "--dir", str(d))
            assert f"metaserver {lost} is not a member" in out and "not running" in out, out
            lost_address = layout.metaservers[lost]
            assert lost not in local.load_layout(d).metaservers
            for i in layout.chunkservers:
                assert lost_address not in (d / f"cs{i}" / "cs.toml").read_text()
            out = await cli("admin", "metaserver", "remove", str(leader), "--dir", str(d))
            assert f"metaserver {leader} removed" in out and "exited" in out, out
            rest = sorted({1, 2, 3, 4} - {lost, leader})
            view = await members(d)
            assert view["voters"] == rest and view["leader"] in rest
            term = view["term"]
            assert not local.pid_alive(pids[leader])
            assert was_removed(d / f"meta{leader}" / "raft") is not None

            # The lost host comes back with its old data and configuration: it finds it
            # was removed and exits, without moving the term (checked at the end).
            back = local.Layout(dir=d, metaservers={lost: layout.metaservers[lost]},
                                chunkservers={})  # fmt: skip
            pid = local.start_daemons(back, only={f"meta{lost}"})[f"meta{lost}"]
            assert local.wait_exit(pid, 30), "a removed metaserver kept running"
            assert was_removed(d / f"meta{lost}" / "raft") is not None

            # The load goes on past the changes, and the writing client learns the new
            # members (fs.keepalive); the term stays put.
            now = local.load_layout(d)
            assert sorted(now.metaservers) == rest
            deadline = time.monotonic() + 30
            while len(written) < at + 40 or fs.meta.addresses != now.meta_addresses:
                assert time.monotonic() < deadline, (fs.meta.addresses, now.meta_addresses)
                await anyio.sleep(0.05)
            stop.set()
        assert (await members(d))["term"] == term

    st = json.loads(await cli("status", "--dir", str(d), "--json"))
    assert sorted(m["id"] for m in st["metaservers"]) == rest
    assert st["leader"] in rest
    # Asked with the first three addresses only, status finds the added one too.
    st = json.loads(await cli("status", "--meta", ",".join(first_addresses), "--secret",
                              str(layout.secret_file), "--json"))  # fmt: skip
    assert sorted(m["id"] for m in st["metaservers"] if m["state"] == "up") == rest
    assert 4 in rest and st["leader"] in rest
    async with FsClient.open_cluster(now.meta_addresses, secret, timeout_s=30.0) as fs:
        load = await fs.lookup(ROOT_INO, b"load")
        names = [e.name async for e in fs.readdir(load.ino)]
        assert sorted(n for n in names if n not in (b".", b"..")) == sorted(written)
        for name, data in written.items():
            assert await read_to_eof(fs, load.ino, name) == data

    # A removed metaserver refuses to start again.
    removed = d / f"meta{leader}" / "meta.toml"
    proc = subprocess.run([sys.executable, "-m", "metaserver", "--config", str(removed)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 1 and "removed from the cluster" in proc.stderr


# ---------------------------------------------------------------------- the directory's layout


def one_metaserver(tmp_path: Path, metaservers: int = 1) -> local.Layout:
    return local.init_layout(
        tmp_path / "cluster",
        metaservers=metaservers,
        chunkservers=1,
        chunk_size=CHUNK,
        meta_options={"tick_ms": 50, "fsync": False},
    )


def layout_files(layout: local.Layout) -> dict[str, str]:
    """What lists the metaservers: cluster.toml and the chunkservers' configs."""
    paths = [layout.dir / "cluster.toml"] + [
        layout.dir / f"cs{i}" / "cs.toml" for i in layout.chunkservers
    ]
    return {p.name: p.read_text() for p in paths}


def add_local(directory: Path) -> Result:
    """``dfs admin metaserver add --local`` in this process (so that a test can make a step
    fail)."""
    return CliRunner().invoke(metaserver, ["add", "--local", "--dir", str(directory)])


def test_add_local_that_does_not_start_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new metaserver never answers: it is stopped, and no config lists it."""
    layout = one_metaserver(tmp_path)
    before = layout_files(layout)
    pids: list[int] = []

    async def no_answer(address: str, secret: bytes, timeout_s: float = 30.0) -> None:
        pids.append(int((layout.dir / "run" / "meta2.pid").read_text()))
        raise local.ClusterError(f"no metaserver answers at {address}")

    monkeypatch.setattr(local, "wait_answers", no_answer)
    try:
        result = add_local(layout.dir)
        assert result.exit_code == 1 and "not added" in result.output, result.output
        assert layout_files(layout) == before
        assert pids and not local.pid_alive(pids[0])
        assert not (layout.dir / "run" / "meta2.pid").exists()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_add_local_that_fails_stops_the_new_metaserver_unless_it_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add refused: the new metaserver is stopped and no config lists it. An add that
    committed but whose answer was lost: it is a member, runs, and the layout lists it."""
    layout = one_metaserver(tmp_path)
    local.start_daemons(layout, only={"meta1"})
    real_call = admin_meta._call
    try:
        anyio.run(local.wait_ready, layout, 60.0, ())
        before = layout_files(layout)

        def refused(addresses: list[str], secret: bytes, op: str, timeout_s: float,
                    **fields: Any) -> Any:  # fmt: skip
            if op == "admin.meta_add":
                raise click.ClickException("unavailable: no leader")
            return real_call(addresses, secret, op, timeout_s, **fields)

        monkeypatch.setattr(admin_meta, "_call", refused)
        result = add_local(layout.dir)
        assert result.exit_code == 1, result.output
        assert "metaserver 2 is not a member: stopped" in result.output, result.output
        assert layout_files(layout) == before
        assert local._running_pid(layout, "meta2", layout.dir / "meta2" / "meta.toml") is None

        def answer_lost(addresses: list[str], secret: bytes, op: str, timeout_s: float,
                        **fields: Any) -> Any:  # fmt: skip
            answer = real_call(addresses, secret, op, timeout_s, **fields)
            if op == "admin.meta_add":
                raise click.ClickException("timeout: the answer was lost")
            return answer

        monkeypatch.setattr(admin_meta, "_call", answer_lost)
        result = add_local(layout.dir)  # meta2 is not reused: this is meta3
        assert result.exit_code == 1, result.output
        assert "metaserver 3 is a member: it runs" in result.output, result.output
        now = local.load_layout(layout.dir)
        assert sorted(now.metaservers) == [1, 3]
        assert all(now.metaservers[3] in text for text in layout_files(now).values())
        assert local.pid_alive(pid_of(now, 3))
    finally:
        for i in (1, 2, 3):
            local.stop_metaserver(layout, i, timeout_s=10)


def test_forget_keeps_a_metaserver_that_still_runs(tmp_path: Path) -> None:
    """A removed metaserver whose process outlives SIGTERM keeps its PID file and its place
    in the layout (``dfs down`` must still stop it); once gone, it is forgotten."""
    layout = one_metaserver(tmp_path, metaservers=2)
    config = layout.dir / "meta2" / "meta.toml"
    stubborn = (
        "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", stubborn, str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        pid_file = layout.dir / "run" / "meta2.pid"
        pid_file.write_text(f"{proc.pid}\n")
        address = layout.metaservers[2]
        assert local.forget_metaserver(layout, 2, timeout_s=0.2) == "still running"
        assert pid_file.exists()
        assert 2 in local.load_layout(layout.dir).metaservers
        assert all(address in text for text in layout_files(layout).values())
        proc.kill()
        proc.wait(timeout=10)
        assert local.forget_metaserver(layout, 2, timeout_s=0.2) == "not running"
        assert not pid_file.exists()
        assert sorted(local.load_layout(layout.dir).metaservers) == [1]
        assert not any(address in text for text in layout_files(layout).values())
    finally:
        proc.kill()
        proc.wait(timeout=10)
