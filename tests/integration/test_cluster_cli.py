"""``dfs up`` / ``dfs status`` / ``dfs down`` as a user runs them: real processes on loopback.

Checks: ``up --detach`` returns once a leader is elected and every chunkserver registered,
having written a mode-0600 secret and a config per daemon; ``status --json`` lists every
server with id, role, address and PID (scripts rely on it); the text view draws a usage bar
per chunkserver; ``down`` stops every daemon by PID (all gone afterwards); ``up`` on the
same directory brings the same cluster back.

``up`` also mounts the cluster (``--mount M``) and ``down`` unmounts it first; ``dfs mount``
and ``dfs umount`` give clear errors for a mounted, missing, non-empty or busy mountpoint.

Every daemon and mount started here is stopped by PID in a finalizer, even when a test
fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.cli import cluster as local
from dfs.fuse.mountinfo import mount_info
from tools.testing.localcluster import dfs_cli, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "cluster"
    yield d
    if (d / "cluster.toml").exists():
        stop(d)  # unmounts first


def test_up_status_down_restart(cluster_dir: Path) -> None:
    out = dfs_cli(
        "up", "--dir", str(cluster_dir), "--detach", "--chunk-size", "1M", "--no-mount"
    ).stdout
    assert "mounted at" not in out
    assert "leader" in out and "chunkserver 3" in out
    secret = cluster_dir / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for name in ("meta1/meta.toml", "meta3/meta.toml", "cs1/cs.toml", "cs3/cs.toml"):
        assert (cluster_dir / name).is_file(), name

    st = json.loads(dfs_cli("status", "--dir", str(cluster_dir), "--json").stdout)
    assert st["leader"] in (1, 2, 3)
    assert sorted(m["id"] for m in st["metaservers"]) == [1, 2, 3]
    assert [m["role"] for m in st["metaservers"]].count("leader") == 1
    assert len(st["chunkservers"]) == 3 and all(c["alive"] for c in st["chunkservers"])
    for server in st["metaservers"] + st["chunkservers"]:
        assert {"id", "role", "address", "pid"} <= set(server), server
    assert st["chunk_size"] == 1 << 20
    pids = [m["pid"] for m in st["metaservers"]] + [c["pid"] for c in st["chunkservers"]]
    assert len(set(pids)) == 6 and all(local.pid_alive(p) for p in pids)

    text = dfs_cli("status", "--dir", str(cluster_dir)).stdout
    assert text.count("[") >= 3 and "alive" in text  # a usage bar per chunkserver

    out = dfs_cli("down", "--dir", str(cluster_dir)).stdout
    assert out.count("stopped") == 6, out
    assert not any(local.pid_alive(p) for p in pids)
    down = dfs_cli("status", "--dir", str(cluster_dir), "--json", code=None)
    assert down.returncode == 1 and json.loads(down.stdout)["leader"] is None

    # The same directory brings the same cluster back (same addresses, same ids).
    dfs_cli("up", "--dir", str(cluster_dir), "--detach", "--no-mount")
    st2 = json.loads(dfs_cli("status", "--dir", str(cluster_dir), "--json").stdout)
    assert sorted(m["address"] for m in st2["metaservers"]) == sorted(
        m["address"] for m in st["metaservers"]
    )
    assert sorted(c["id"] for c in st2["chunkservers"]) == sorted(
        c["id"] for c in st["chunkservers"]
    )
    assert st2["chunk_size"] == 1 << 20


def test_client_commands_need_a_cluster(tmp_path: Path) -> None:
    proc = dfs_cli("status", "--dir", str(tmp_path / "none"), code=None)
    assert proc.returncode != 0 and "no cluster" in proc.stderr


def test_file_commands_give_up_after_their_timeout(tmp_path: Path) -> None:
    """A cluster nobody answers for: ``--timeout`` bounds the wait, with a clear error."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    for args in (["ls", "/"], ["mkdir", "/d"]):
        started = time.monotonic()
        proc = dfs_cli(*args, "--meta", address, "--secret", str(secret), "--timeout", "1",
                       code=None)  # fmt: skip
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, proc
        assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr
        # Well short of the default 30 s (the process start is most of it).
        assert elapsed < 20, elapsed
    proc = dfs_cli("ls", "--timeout", "0", "--meta", address, "--secret", str(secret), code=None)
    assert proc.returncode == 2 and "--timeout" in proc.stderr


FUSE_OK = os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3")


@pytest.mark.skipif(not FUSE_OK, reason="mounting needs root, /dev/fuse and fusermount3")
def test_up_mounts_and_down_unmounts(cluster_dir: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"  # dfs up creates it
    out = dfs_cli("up", "--dir", str(cluster_dir), "--detach", "--mount", str(mnt)).stdout
    assert f"mounted at  {mnt}" in out
    info = mount_info(mnt)
    assert info is not None and info.fstype == "fuse.dfs"
    (mnt / "hello").write_bytes(b"hello")
    assert dfs_cli("cat", "--dir", str(cluster_dir), "/hello").stdout == "hello"
    pid_files = list((cluster_dir / "run").glob("mount-*.pid"))
    assert len(pid_files) == 1
    mount_pid = int(pid_files[0].read_text().split()[0])

    # Again on a live cluster: the same mount is reported, not mounted twice.
    assert (
        f"mounted at  {mnt}"
        in dfs_cli("up", "--dir", str(cluster_dir), "--detach", "--mount", str(mnt)).stdout
    )

    # Mount errors are clear: an existing mount, a missing or non-empty mountpoint.
    proc = dfs_cli("mount", "--dir", str(cluster_dir), str(mnt), code=None)
    assert proc.returncode != 0 and "already a dfs mount" in proc.stderr
    proc = dfs_cli("mount", "--dir", str(cluster_dir), str(tmp_path / "nope"), code=None)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_bytes(b"")
    proc = dfs_cli("mount", "--dir", str(cluster_dir), str(full), code=None)
    assert proc.returncode != 0 and "not empty" in proc.stderr

    # dfs mount / dfs umount of a second mountpoint; busy while a file is open on it.
    second = tmp_path / "second"
    second.mkdir()
    out = dfs_cli("mount", "--dir", str(cluster_dir), "--timeout", "5", str(second)).stdout
    assert "mounted at" in out and (second / "hello").read_bytes() == b"hello"
    with open(second / "hello", "rb"):
        proc = dfs_cli("umount", "--dir", str(cluster_dir), str(second), code=None)
        assert proc.returncode != 0 and "busy" in proc.stderr
    dfs_cli("umount", "--dir", str(cluster_dir), str(second))
    assert mount_info(second) is None
    proc = dfs_cli("umount", "--dir", str(cluster_dir), str(second), code=None)
    assert proc.returncode != 0 and "not mounted" in proc.stderr

    out = dfs_cli("down", "--dir", str(cluster_dir)).stdout
    assert f"mount  {mnt} unmounted" in out and out.count("stopped") == 6, out
    assert mount_info(mnt) is None and not local.pid_alive(mount_pid)
    assert not list((cluster_dir / "run").glob("mount-*.pid"))
