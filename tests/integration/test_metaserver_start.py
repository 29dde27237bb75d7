"""A metaserver that cannot start says why in one line and exits, without a traceback:
a bad ``[peers]`` address exits 2 (a bad config), a port in use, a data directory it
cannot make and one another metaserver holds exit 1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfs.ports import free_loopback_ports
from dfs.secret import generate_secret, write_secret

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0

pytestmark = pytest.mark.timeout(120)


def config(tmp_path: Path, name: str, port: int, data_dir: Path, peer: str | None = None) -> Path:
    secret = tmp_path / "secret"
    if not secret.exists():
        write_secret(secret, generate_secret())
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'id = 1\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data_dir}"\n'
        f'secret_file = "{secret}"\n[peers]\n1 = "{peer or f"127.0.0.1:{port}"}"\n'
    )
    return path


def run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaserver", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_start_failures_are_one_line_each(tmp_path: Path) -> None:
    port, busy_port = free_loopback_ports(2)
    bad = run(config(tmp_path, "peers", port, tmp_path / "a", peer="nonsense"))
    assert bad.returncode == 2 and "peer 1: 'nonsense' is not HOST:PORT" in bad.stderr

    (tmp_path / "file").write_text("")
    no_dir = run(config(tmp_path, "nodir", port, tmp_path / "file" / "raft"))
    assert no_dir.returncode == 1 and "event=start_failed" in no_dir.stderr, no_dir.stderr
    assert "Not a directory" in no_dir.stderr and "Traceback" not in no_dir.stderr

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy_port))
        holder.listen()
        in_use = run(config(tmp_path, "busy", busy_port, tmp_path / "b"))
    assert in_use.returncode == 1 and "address already in use" in in_use.stderr
    assert "Traceback" not in in_use.stderr

    good = config(tmp_path, "good", port, tmp_path / "c")
    first = subprocess.Popen(
        [sys.executable, "-m", "metaserver", "--config", str(good)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not (tmp_path / "c" / "LOCK").exists():  # polling: the first one holds the lock
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = run(config(tmp_path, "second", free_loopback_ports(1)[0], tmp_path / "c"))
        assert second.returncode == 1 and "event=start_failed" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
