"""``scripts/bench fs`` at a tiny scale, and its pass-through baseline on its own.

The benchmark runs as a user runs it (``python -m tools.bench fs``, its own cluster, mount
and pass-through, all stopped by PID before it returns) without the MooseFS peer, with a
small big file, few small files and a small tree to untar; the test reads its output as
docs/PERFORMANCE.md describes it. Both tests need root and /dev/fuse (``conftest.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.fuse.mountinfo import mount_info
from tools.bench.fs.workloads import ORDER, UNITS
from tools.testing.poll import wait_for

pytestmark = [pytest.mark.fuse]

ROOT = Path(__file__).resolve().parents[2]


# About 15 s on a quiet 2-core machine; a minute or more on a loaded one.
RUN_TIMEOUT_S = 240


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_bench_fs_prints_every_figure_and_ratio(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "tools.bench", "fs", "--big-mib", "4", "--small-files", "20",
        "--runs", "1", "--rand-seconds", "0.1", "--untar-source", str(ROOT / "dfs" / "wire"),
        "--dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the benchmark then stops its cluster and mounts itself.
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=55)
        pytest.fail(f"bench fs took over {RUN_TIMEOUT_S} s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    figures: dict[tuple[str, str], float] = {}
    ratios: dict[str, float] = {}
    rss: dict[str, float] = {}
    for line in stdout.splitlines():
        words = line.split()
        if words[0] == "ratio":
            assert words[2] == "dfs/passthrough", line
            ratios[words[1]] = float(words[3])
        elif words[0] == "rss-peak":
            assert words[3] == "MiB", line
            rss[words[1]] = float(words[2])
        else:
            workload, target, value, unit = words
            assert unit == UNITS[workload], line
            figures[(workload, target)] = float(value)
    for workload in ORDER:
        for target in ("dfs", "local", "passthrough"):
            assert figures[(workload, target)] > 0, (workload, target)
        assert ratios[workload] > 0, workload
    assert set(rss) == {"dfs", "passthrough"} and all(v > 0 for v in rss.values())
    # Everything it made is gone: no temp dir, no mount.
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def passthrough(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    backing, mnt, pid_file = tmp_path / "backing", tmp_path / "mnt", tmp_path / "pid"
    backing.mkdir()
    mnt.mkdir()
    argv = [sys.executable, str(ROOT / "scripts" / "passthrough.py"), str(backing), str(mnt),
            "--pid-file", str(pid_file)]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: pid_file.exists() or proc.poll() is not None, 30, "the mount")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield backing, mnt
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert mount_info(mnt) is None  # it unmounted itself on SIGTERM


@pytest.mark.timeout(60)
def test_passthrough_round_trips_a_file(passthrough: tuple[Path, Path]) -> None:
    backing, mnt = passthrough
    info = mount_info(mnt)
    assert info is not None and info.fstype == "fuse.passthrough"
    data = os.urandom(300_000)
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(data)
    assert (backing / "d" / "f").read_bytes() == data  # it is the backing file
    os.link(mnt / "d" / "f", mnt / "g")
    os.rename(mnt / "d", mnt / "e")
    assert (mnt / "e" / "f").read_bytes() == data
    assert (mnt / "g").stat().st_nlink == 2
    assert sorted(os.listdir(mnt)) == ["e", "g"]
    os.unlink(mnt / "e" / "f")
    os.rmdir(mnt / "e")
    assert (mnt / "g").read_bytes() == data and sorted(os.listdir(backing)) == ["g"]
    readahead = Path(f"/sys/class/bdi/{info.device}/read_ahead_kb").read_text().strip()
    assert readahead == "1024"
