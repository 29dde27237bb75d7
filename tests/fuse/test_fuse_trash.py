"""The trash and usage through a real mount (docs/OPERATIONS.md, "Trash" and "Usage").

This module's cluster keeps the trash on (one day, the default) and collects garbage
after 1 s, so that a purge is seen freeing the chunkservers' space within the test.
- ``rm -rf`` of a tree, ``dfs admin trash restore`` of it: every file byte-identical;
  removed again and purged: its chunks leave the chunkservers (polled, with a deadline).
- ``getfattr -n dfs.usage`` and ``dfs admin usage`` agree with ``du --apparent-size``
  and ``find`` after creates, appends, truncates, renames across directories and removals.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_cluster import CHUNK, chunk_counts, start_cluster, stop_cluster

from dfs.cli import cluster as local
from dfs.wire.limits import DIR_SIZE_BYTES
from tools.testing.poll import wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    layout = start_cluster(
        tmp_path_factory.mktemp("cluster"), trash_time_s=86_400, gc_grace_ms=1000
    )
    try:
        yield layout
    finally:
        stop_cluster(layout)


def admin(layout: local.Layout, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dfs.cli.main", "admin", *args, "--dir", str(layout.dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, f"dfs admin {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def make_tree(root: Path, rng: random.Random) -> dict[str, bytes]:
    files = {}
    for rel in ("a/x", "a/y", "a/b/c/deep", "z", "b/empty", "b/big"):
        size = {"empty": 0, "big": 2 * CHUNK + 12345}.get(rel.rsplit("/", 1)[-1])
        data = os.urandom(size if size is not None else rng.randrange(1, 200_000))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def remote(mnt: Path, path: Path) -> str:
    return "/" + str(path.relative_to(mnt))


def test_rm_rf_then_restore_gives_every_file_back_and_purge_frees_the_space(
    cluster: local.Layout, mnt: Path, workdir: Path
) -> None:
    wait_for(lambda: chunk_counts(cluster)[1] == 3 * chunk_counts(cluster)[0], 30, "at goal")
    chunks_before, _ = chunk_counts(cluster)
    tree = workdir / "tree"
    tree.mkdir()
    assert admin(cluster, "gettrashtime", remote(mnt, tree)).split() == [
        remote(mnt, tree) + ":",
        "86400",
    ]
    admin(cluster, "settrashtime", "2h", remote(mnt, tree), "-r")
    files = make_tree(tree, random.Random(1))
    times = json.loads(admin(cluster, "gettrashtime", remote(mnt, tree), "-r", "--json"))
    assert times[0]["files"] == {"7200": len(files)}  # inherited from the tree's root
    subprocess.run(["rm", "-rf", str(tree)], check=True, timeout=60)
    assert not tree.exists()
    listed = json.loads(admin(cluster, "trash", "ls", remote(mnt, tree), "--json"))
    assert sorted(e["path"] for e in listed["entries"]) == sorted(
        remote(mnt, tree / rel) for rel in files
    )
    assert listed["bytes"] >= sum(len(d) for d in files.values())
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "dfs.cli.main", "status", "--json", "--dir", str(cluster.dir)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout)  # fmt: skip
    assert status["trash_files"] >= len(files) and status["trash_bytes"] >= listed["bytes"] > 0

    assert "restored 6 files" in admin(cluster, "trash", "restore", remote(mnt, tree))

    def back() -> bool:
        return all((tree / rel).is_file() for rel in files)

    wait_for(back, 10, "the restored files to show")
    for rel, data in files.items():
        assert (tree / rel).read_bytes() == data, rel
    assert json.loads(admin(cluster, "trash", "ls", remote(mnt, tree), "--json"))["entries"] == []

    # Removed again and purged: the chunks leave the table and the chunkservers.
    subprocess.run(["rm", "-rf", str(tree)], check=True, timeout=60)
    assert "purged 6 files" in admin(cluster, "trash", "purge", remote(mnt, tree))
    wait_for(lambda: chunk_counts(cluster) == (chunks_before, 3 * chunks_before), 60,
             "the purged files' chunks to be deleted")  # fmt: skip


def usage_xattr(path: Path) -> dict[str, int]:
    raw = os.getxattr(path, "dfs.usage")
    return {k: int(v) for k, v in (kv.split("=") for kv in raw.decode().split())}


def test_usage_agrees_with_du_and_find_after_random_changes(
    cluster: local.Layout, mnt: Path, workdir: Path
) -> None:
    rng = random.Random(7)
    root = workdir / "u"
    dirs = [root]
    root.mkdir()
    for i in range(6):
        d = rng.choice(dirs) / f"d{i}"
        d.mkdir()
        dirs.append(d)
    paths: list[Path] = []
    for i in range(40):
        p = rng.choice(dirs) / f"f{i}"
        p.write_bytes(os.urandom(rng.randrange(0, 150_000)))
        paths.append(p)
    for _ in range(60):
        p = rng.choice(paths)
        k = rng.randrange(4)
        if k == 0:
            with open(p, "ab") as f:
                f.write(os.urandom(rng.randrange(1, 100_000)))
        elif k == 1:
            os.truncate(p, rng.randrange(0, 200_000))
        elif k == 2:
            new = rng.choice(dirs) / f"{p.name}r"
            if not new.exists():
                p.rename(new)
                paths[paths.index(p)] = new
        else:
            p.unlink()
            paths.remove(p)
            paths.append(rng.choice(dirs) / f"n{rng.randrange(10**6)}")
            paths[-1].write_bytes(b"x" * rng.randrange(0, 5000))
    (root / "d1").rename(root / "d0" / "moved") if (root / "d1").exists() else None

    u = usage_xattr(root)
    du = int(subprocess.run(["du", "--apparent-size", "-s", "-B1", str(root)], check=True,
                            capture_output=True, text=True).stdout.split()[0])  # fmt: skip
    found = subprocess.run(["find", str(root), "-printf", "%y\n"], check=True,
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    assert u["files"] == found.count("f") and u["dirs"] == found.count("d")
    assert u["bytes"] + u["dirs"] * DIR_SIZE_BYTES == du
    assert u["physical_bytes"] == 3 * u["bytes"]  # goal 3
    assert json.loads(admin(cluster, "usage", remote(mnt, root), "--json")) == {
        "path": remote(mnt, root),
        **u,
    }
    shutil.rmtree(root)
