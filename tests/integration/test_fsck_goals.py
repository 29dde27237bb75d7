"""``dfs admin fsck``, ``setgoal`` and ``getgoal`` against a real local cluster (one
metaserver, four chunkservers, small chunks), as an operator runs them.

Checks: a healthy tree is reported healthy (exit 0), with every chunk at its goal;
``setgoal -r 2`` then ``-r 4`` on a tree changes the goal of every file and directory in it
(``getgoal -r``), and the leader then trims and copies until every chunk has exactly that
many replicas (``fsck --json``'s count of chunks by replicas, ``status --json``'s health);
a file created afterwards inherits the new goal; a file whose chunk files are removed by
hand on every chunkserver (stopped, then started again) is named by ``fsck`` with exit 1.

Every daemon started here is stopped by PID in a finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from admin_cluster import REPORT_OPTIONS, running

from dfs.cli import cluster as local
from tools.testing.localcluster import client, dfs_cli
from tools.testing.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEADLINE_S = 60.0
MODE = 0o100644


def eventually(check: Callable[[], Any], what: str) -> Any:
    """``tools.testing.poll.wait_for`` with this module's deadline."""
    return wait_for(check, DEADLINE_S, what, interval_s=0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("fsck") / "cluster"
    with running(d, chunkservers=4, cs_options=REPORT_OPTIONS):
        yield d


def write_tree(d: Path, top: bytes, files: dict[bytes, int]) -> None:
    """Directory ``top`` (a path from the root; its parent exists) and its files (relative
    path -> size), directories made on the way."""

    async def go() -> None:
        async with client(d) as fs:
            parent_attr, name = await fs.resolve_parent(b"/" + top)
            dirs = {b"": (await fs.mkdir(parent_attr.ino, name, 0o755)).ino}
            for rel, size in files.items():
                parent = b""
                for part in rel.split(b"/")[:-1]:
                    path = parent + b"/" + part if parent else part
                    if path not in dirs:
                        dirs[path] = (await fs.mkdir(dirs[parent], part, 0o755)).ino
                    parent = path
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                _, f = await fs.create_and_open(dirs[parent], rel.split(b"/")[-1], MODE, flags)
                try:
                    if size:
                        await f.write(0, os.urandom(size))
                finally:
                    await f.close()

    anyio.run(go)


def fsck(d: Path, path: str, code: int | None = None) -> tuple[int, dict[str, Any]]:
    proc = dfs_cli("admin", "fsck", "--dir", str(d), path, "--json", code=code)
    return proc.returncode, json.loads(proc.stdout)


TREE = {b"a": 300_000, b"b": 10, b"sub/c": 600_000, b"sub/deeper/e": 1, b"sub/empty": 0}
TREE_CHUNKS = 2 + 1 + 3 + 1  # with data (the empty file has none)


def test_a_healthy_tree_is_reported_healthy(cluster: Path) -> None:
    write_tree(cluster, b"healthy", TREE)
    _, report = eventually(lambda: (r := fsck(cluster, "/healthy"))[0] == 0 and r, "exit 0")
    s = report["summary"]
    assert report["healthy"] is True and report["files"] == []
    assert (s["files"], s["dirs"], s["files_at_risk"]) == (5, 3, 0)
    assert s["replicas"] == {"3": TREE_CHUNKS}  # the root's goal, inherited
    text = dfs_cli("admin", "fsck", "--dir", str(cluster)).stdout
    assert text.endswith("HEALTHY\n"), text
    dfs_cli("admin", "fsck", "--dir", str(cluster), "/no/such", code=3)


def _replicas_are(d: Path, path: str, n: int) -> bool:
    code, report = fsck(d, path)
    s = report["summary"]
    return code == 0 and s["replicas"] == {str(n): TREE_CHUNKS} and s["over_goal"] == 0


def test_setgoal_recursive_changes_every_file_s_replica_count(cluster: Path) -> None:
    d = str(cluster)
    write_tree(cluster, b"goals", TREE)
    out = dfs_cli("admin", "setgoal", "--dir", d, "-r", "2", "/goals").stdout
    assert "inodes with goal changed:" in out and " 8\n" in out, out  # 5 files, 3 dirs
    goals = json.loads(dfs_cli("admin", "getgoal", "--dir", d, "-r", "/goals", "--json").stdout)
    assert goals == [{"path": "/goals", "files": {"2": 5}, "dirs": {"2": 3}, "others": {}}]
    eventually(lambda: _replicas_are(cluster, "/goals", 2), "two replicas of every chunk")
    assert json.loads(dfs_cli("status", "--dir", d, "--json").stdout)["health"]["over_goal"] == 0

    dfs_cli("admin", "setgoal", "--dir", d, "-r", "4", "/goals")
    eventually(lambda: _replicas_are(cluster, "/goals", 4), "four replicas of every chunk")
    health = json.loads(dfs_cli("status", "--dir", d, "--json").stdout)["health"]
    assert health["under_goal"] == 0 and health["missing"] == 0
    # The healthy tree beside it kept its goal, and a new file takes its directory's.
    assert fsck(cluster, "/healthy")[1]["summary"]["replicas"] == {"3": TREE_CHUNKS}
    write_tree(cluster, b"goals2", {b"x": 1})
    dfs_cli("admin", "setgoal", "--dir", d, "2", "/goals2")
    write_tree(cluster, b"goals2/in", {b"y": 5})
    plain = dfs_cli("admin", "getgoal", "--dir", d, "/goals2/in/y", "/goals/sub/c").stdout
    assert plain == "/goals2/in/y: 2\n/goals/sub/c: 4\n"


def test_a_file_whose_chunk_files_are_all_removed_is_named_with_exit_1(cluster: Path) -> None:
    write_tree(cluster, b"lost", {b"f": 300_000, b"ok": 10})
    layout = local.load_layout(cluster)

    async def chunk_ids() -> list[int]:
        async with client(layout) as fs:
            attr = await fs.resolve(b"/lost/f")
            header = await fs.meta.read("fs.locate", ino=attr.ino, index=0, count=16)
            return [int(c["chunk_id"]) for c in header["chunks"]]

    ids = anyio.run(chunk_ids)
    assert len(ids) == 2
    # Every chunkserver stopped, the chunk files removed by hand, the servers started again.
    names = [name for name, _, _ in layout.daemons() if name.startswith("cs")]
    pids = [int((cluster / "run" / f"{name}.pid").read_text()) for name in names]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    eventually(lambda: not any(local.pid_alive(p) for p in pids), "the chunkservers to stop")
    removed = 0
    for name in names:
        for chunk_id in ids:
            for path in (cluster / name / "data" / "chunks").rglob(f"{chunk_id:016x}*"):
                path.unlink()
                removed += 1
    assert removed == 2 * 3  # goal 3: three replicas of each chunk
    local.start_daemons(layout, only=names)

    def named() -> dict[str, Any] | None:
        # On the way, the file is under goal: block reports drop lost replicas from the
        # sets (a chunk's at a time: each drop makes it recently changed for the next
        # report), and the members left do not take the version of the leader's copy's
        # fence (they have no replica), until no member is left: missing. Until both
        # chunks got there, one may still look whole.
        code, report = fsck(cluster, "/")
        lost = [
            f
            for f in report["files"]
            if f["problems"][0] in ("missing", "no_good_replica") and f["chunks_at_risk"] == 2
        ]
        return report if code == 1 and lost else None

    report = eventually(named, "fsck to name the file")
    assert [f["path"] for f in report["files"]] == ["/lost/f"]
    assert report["files"][0]["chunks_at_risk"] == 2
    text = dfs_cli("admin", "fsck", "--dir", str(cluster), "/lost", code=1).stdout
    assert text.startswith("/lost/f: "), text
    assert "(2 chunks at risk" in text, text
    assert text.rstrip().endswith("AT RISK: 1 file"), text


def test_setgoal_reaches_a_client_creating_under_a_directory_lease(cluster: Path) -> None:
    """A lease holder creates files without asking the leader, with the goal of the
    directory as it was granted: setgoal recalls the lease, so a create after it takes
    the new goal."""
    layout = local.load_layout(cluster)

    async def go() -> None:
        async with client(layout) as a:
            root = await a.resolve(b"/")
            d = await a.mkdir(root.ino, b"leased", 0o755)
            _, f = await a.create_and_open(d.ino, b"first", MODE, os.O_WRONLY | os.O_CREAT)
            await f.close()
            assert a.dirleases.valid(d.ino) is not None  # its first create took the lease
            await anyio.to_thread.run_sync(
                lambda: dfs_cli("admin", "setgoal", "--dir", str(cluster), "-r", "2", "/leased")
            )
            attr, f = await a.create_and_open(d.ino, b"after", MODE, os.O_WRONLY | os.O_CREAT)
            await f.close()
            assert attr.goal == 2

    anyio.run(go)
    out = dfs_cli("admin", "getgoal", "--dir", str(cluster), "-r", "/leased", "--json").stdout
    assert json.loads(out)[0]["files"] == {"2": 2}
