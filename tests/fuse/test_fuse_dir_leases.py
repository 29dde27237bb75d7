"""``rm -rf`` through a real mount under directory leases (dfs/client/dirleases.py):
the tree is gone, another mount sees it gone at once, and the removals took far fewer
Raft entries (``fs.batch`` RPCs, from the mount's own counters) than names."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from fuse_cluster import Mounts

from dfs.cli import cluster as local

pytestmark = [pytest.mark.timeout(300)]

DIRS = 5
FILES_PER_DIR = 40


def rpc_count(log_text: str, op: str) -> int:
    """The count of ``op`` in the RPC table a mount logs at unmount (DFS_MOUNT_STATS)."""
    found = re.findall(rf"^{re.escape(op)}\s+(\d+)\s", log_text, re.M)
    return int(found[-1]) if found else 0


def test_rm_rf_is_batched_and_another_mount_sees_it_gone_at_once(
    mounts: Mounts, mnt: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFS_MOUNT_STATS", "1")
    # The module's main mount writes the tree and watches; this one removes it (and its
    # counters count the removals' batches only, not the commits of new files).
    other = mounts.mount("rm-stats")
    for i in range(DIRS):
        d = workdir / "tree" / f"d{i}"
        d.mkdir(parents=True)
        for j in range(FILES_PER_DIR):
            (d / f"f{j:03d}").write_bytes(b"x" * 100)
    tree = other / workdir.name / "tree"
    assert len(os.listdir(tree / "d0")) == FILES_PER_DIR  # the remover sees the tree
    assert all((tree / f"d{i}" / "f000").read_bytes() == b"x" * 100 for i in range(DIRS))
    subprocess.run(["rm", "-rf", str(tree)], check=True, timeout=120)
    assert not tree.exists()
    # The watcher's listing asks the leader, which recalls the remover's leases first.
    assert os.listdir(workdir) == []
    pid_file = local.mount_pid_file(mounts.layout.dir / "run", other)
    assert local.stop_mount(pid_file, timeout_s=30) is not None
    text = (mounts.layout.dir / "logs" / f"{pid_file.stem}.log").read_text(errors="replace")
    names = DIRS * FILES_PER_DIR + DIRS + 1
    batches, unlinks = rpc_count(text, "fs.batch"), rpc_count(text, "fs.unlink")
    # Quiet, an rm -rf fills batches of hundreds; on a loaded machine its unlinks come
    # further apart than the 15 ms flush bound, so the bound here is loose on purpose.
    assert 1 <= batches <= names // 2, text[-3000:]
    assert unlinks == 0, text[-3000:]


def test_new_files_read_back_whole_at_once_here_and_from_another_mount(
    mounts: Mounts, mnt: Path, workdir: Path
) -> None:
    # Each file is created under the directory's lease (its create and commit queued)
    # and read back at once: by this mount (its open lands the queue first) and by
    # another (whose lookup recalls the lease, which lands the queue first).
    other = mounts.mount("read-back") / workdir.name
    d = workdir / "fresh"
    d.mkdir()
    for i in range(40):
        data = b"hello %d " % i * (i + 1)
        (d / f"f{i}").write_bytes(data)
        assert (d / f"f{i}").read_bytes() == data
        assert os.stat(d / f"f{i}").st_size == len(data)
        if i % 4 == 0:
            assert (other / "fresh" / f"f{i}").read_bytes() == data
    assert sorted(os.listdir(other / "fresh")) == sorted(f"f{i}" for i in range(40))


def test_files_closed_just_before_an_unmount_land_whole(
    mounts: Mounts, mnt: Path, workdir: Path
) -> None:
    # A close(2) of a small new file leaves its bytes to the release (files.py, CLOSE
    # BEHIND); an unmount right after may cut releases the kernel had not delivered. The
    # handles they leave are closed at unmount, their bytes committed before the queue.
    other = mounts.mount("unmount-at-once")
    d = other / workdir.name / "last"
    d.mkdir()
    payloads = {f"f{i:03d}": os.urandom(100 + 37 * i) for i in range(150)}
    for name, data in payloads.items():
        (d / name).write_bytes(data)
    pid_file = local.mount_pid_file(mounts.layout.dir / "run", other)
    assert local.stop_mount(pid_file, timeout_s=30) is not None
    seen = workdir / "last"
    assert sorted(os.listdir(seen)) == sorted(payloads)
    for name, data in payloads.items():
        assert (seen / name).read_bytes() == data, name


def test_a_tree_untarred_here_lists_as_it_stats_and_as_another_mount_sees_it(
    mounts: Mounts, mnt: Path, workdir: Path, tmp_path: Path
) -> None:
    """``tar x``, then ``ls -lR`` and ``rm -rf`` at once, on one mount: the listing comes
    from the leases (what the mount made there, however old its cache), and must say what
    a stat says there and what another mount sees (every directory's nlink included: a
    count that drifted made rm -rf fail with EIO); then the tree goes whole."""
    source = tmp_path / "src"
    for i in range(6):
        d = source / f"d{i}" / "inner"
        d.mkdir(parents=True)
        for j in range(12):
            (d.parent / f"f{j}").write_bytes(os.urandom(50 * j))
        (d / "deep").write_bytes(b"deep")
        (d.parent / "link").symlink_to("f3")
    tarball = tmp_path / "tree.tar"
    subprocess.run(["tar", "cf", str(tarball), "-C", str(source), "."], check=True, timeout=60)
    maker = mounts.mount("untar-here")
    tree = maker / workdir.name / "untarred"
    tree.mkdir()
    subprocess.run(["tar", "xf", str(tarball), "-C", str(tree)], check=True, timeout=120)

    def fields(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid, st.st_mtime_ns)

    listed: dict[str, tuple[int, ...]] = {}
    for top, _dirs, _files in os.walk(tree):
        with os.scandir(top) as entries:
            for entry in entries:
                path = os.path.join(top, entry.name)
                here = fields(entry.stat(follow_symlinks=False))
                assert here == fields(os.lstat(path)), path
                listed[os.path.relpath(path, tree)] = here
    assert len(listed) == 6 * (12 + 4)
    seen = mnt / workdir.name / "untarred"  # the other mount's look recalls the leases
    for rel, here in listed.items():
        assert fields(os.lstat(seen / rel)) == here, rel
    subprocess.run(["rm", "-rf", str(tree)], check=True, timeout=120)
    assert "untarred" not in os.listdir(workdir)
