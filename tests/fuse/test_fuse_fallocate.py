"""``fallocate(2)`` through the mount (dfs/client/allocate.py, the mount's ``fallocate``):
mode 0 and ``KEEP_SIZE`` set the size and leave a hole, ``PUNCH_HOLE`` and ``ZERO_RANGE``
read as zeros, other modes are refused; a punch over whole chunks frees them (out of the
file, then off the chunkservers: this module's cluster collects garbage after 1 s) and
``st_blocks`` drops by them until they are written again (what ``du`` shows); and
an fsx-style run (random writes, reads, truncates and the three modes against a model of
the file, checked on every read).

The mount gets fallocate only from the patched pyfuse3 (patches/, scripts/bootstrap); the
first test says so plainly when the binding lacks it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pyfuse3
import pytest
from fuse_cluster import CHUNK, Mounts, chunk_counts, leader_view, start_cluster, stop_cluster

from dfs.cli import cluster as local
from dfs.client import FsClient
from tools.testing.poll import wait_for

pytestmark = [pytest.mark.timeout(300)]

KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE = 0x01, 0x02, 0x10, 0x08
# fsx-style run: operations in CI (DFS_FSX_OPS for a longer one) over a file of at most
# FSX_SIZE_MAX bytes: three 1 MiB chunks, so that ranges cross chunk boundaries.
FSX_OPS = int(os.environ.get("DFS_FSX_OPS", "400"))
FSX_SEED = int(os.environ.get("DFS_FSX_SEED", "1"))
FSX_SIZE_MAX = 3 * CHUNK + 12345

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    """The FUSE tests' cluster, collecting garbage 1 s after it is made (not 30 s)."""
    layout = start_cluster(tmp_path_factory.mktemp("cluster"), gc_grace_ms=1000)
    try:
        yield layout
    finally:
        stop_cluster(layout)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextmanager
def opened(path: Path, flags: int = os.O_RDWR) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def test_the_binding_has_a_fallocate_handler() -> None:
    assert hasattr(pyfuse3.Operations, "fallocate"), (
        f"pyfuse3 {pyfuse3.__version__} has no fallocate handler: "
        "scripts/bootstrap installs the patched one (patches/pyfuse3-*-fallocate.patch)"
    )


def test_fallocate_l_sets_the_size_and_reads_zeros(workdir: Path, mnt: Path) -> None:
    path = workdir / "big"
    size = 2 * CHUNK + 4096
    subprocess.run(["fallocate", "-l", str(size), str(path)], check=True, timeout=60)
    st = os.stat(path)
    assert st.st_size == size
    assert st.st_blocks == -(-size // 512)  # du shows the space, as on ext4
    assert path.read_bytes() == bytes(size)
    # posix_fallocate (mode 0) past the end grows it too; inside, it changes nothing.
    with opened(path) as fd:
        os.pwrite(fd, b"data", 10)
        os.posix_fallocate(fd, 0, 100)
        os.posix_fallocate(fd, size, 1000)
    assert os.stat(path).st_size == size + 1000
    with opened(path, os.O_RDONLY) as fd:
        assert os.pread(fd, 20, 0) == bytes(10) + b"data" + bytes(6)


def test_keep_size_leaves_the_size(workdir: Path) -> None:
    path = workdir / "kept"
    path.write_bytes(b"x" * 1000)
    with opened(path) as fd:
        fallocate(fd, KEEP_SIZE, 0, 5 * CHUNK)
        assert os.fstat(fd).st_size == 1000
    assert path.read_bytes() == b"x" * 1000


def test_more_than_the_free_space_is_enospc(workdir: Path, mnt: Path) -> None:
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with opened(workdir / "huge") as fd:
        with pytest.raises(OSError) as e:
            fallocate(fd, 0, 0, free + (1 << 40))
        assert e.value.errno == errno.ENOSPC
        assert os.fstat(fd).st_size == 0


def test_punch_hole_reads_zeros_and_keeps_the_size(workdir: Path, mounts: Mounts) -> None:
    path = workdir / "punched"
    data = bytearray(random.Random(3).randbytes(3 * CHUNK))
    path.write_bytes(data)
    with opened(path) as fd:
        os.pread(fd, len(data), 0)  # the pages are cached: the punch must drop them
        start, length = CHUNK - 1000, CHUNK + 5000  # across two chunk boundaries
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, start, length)
        data[start : start + length] = bytes(length)
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data), 0) == data
        # Past the end: nothing changes, the size stays.
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, len(data) - 10, 100)
        data[-10:] = bytes(10)
        assert os.fstat(fd).st_size == len(data)
        with pytest.raises(OSError) as e:  # without KEEP_SIZE: refused, as on ext4
            fallocate(fd, PUNCH_HOLE, 0, 10)
        assert e.value.errno == errno.EOPNOTSUPP
    other = mounts.mount("fallocate-other") / workdir.name / "punched"
    assert other.read_bytes() == data


def located(layout: local.Layout, ino: int) -> dict[int, int]:
    """Chunk index -> chunk id of file ``ino``, as the metaserver answers ``fs.locate``."""

    async def ask() -> list[dict[str, Any]]:
        async with FsClient.open_cluster(
            layout.meta_addresses, local.client_credentials(layout)
        ) as fs:
            header = await fs.meta.read("fs.locate", ino=ino, index=0, count=64)
            return list(header["chunks"])

    return {c["index"]: c["chunk_id"] for c in anyio.run(ask)}


def replica_files(layout: local.Layout, chunk_id: int) -> list[Path]:
    """The chunkservers' replica files of ``chunk_id`` (dfs/wire/replicafile.py names them)."""
    return list(layout.dir.rglob(f"{chunk_id:016x}.chunk"))


def test_punch_over_whole_chunks_frees_them_in_the_file_and_on_the_chunkservers(
    cluster: local.Layout, workdir: Path, mounts: Mounts
) -> None:
    path = workdir / "freed"
    data = bytearray(random.Random(4).randbytes(7 * CHUNK + 5000))  # chunks 0..7
    path.write_bytes(data)
    ino = os.stat(path).st_ino  # the mount's inode numbers are dfs's
    before = located(cluster, ino)
    assert sorted(before) == list(range(8))
    table_before, _ = chunk_counts(cluster)
    assert all(len(replica_files(cluster, before[i])) == 3 for i in (2, 3, 4, 5))
    # [CHUNK + 100, 6 CHUNK + 50): chunks 2 to 5 lie wholly inside; 1 and 6 only partly.
    start, end = CHUNK + 100, 6 * CHUNK + 50
    with opened(path) as fd:
        os.pread(fd, len(data), 0)  # cached pages: the punch must drop them
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, start, end - start)
        data[start:end] = bytes(end - start)
        # (a) zeros in the range, the rest intact, the size kept.
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data), 0) == data
    # (b) the chunks left the file and the chunk table.
    after = located(cluster, ino)
    assert after == {i: before[i] for i in (0, 1, 6, 7)}
    assert chunk_counts(cluster)[0] == table_before - 4
    # Another mount (nothing cached) reads the holes as zeros.
    assert (mounts.mount("punch-other") / workdir.name / "freed").read_bytes() == data
    # (c) their replicas are deleted on the chunkservers once collected.
    wait_for(lambda: all(not replica_files(cluster, before[i]) for i in (2, 3, 4, 5)), 60,
             "the punched chunks' replicas to be deleted")  # fmt: skip
    wait_for(lambda: leader_view(cluster).get("health", {}).get("garbage") == 0, 30,
             "the leader to forget the collected chunks")  # fmt: skip
    assert all(len(replica_files(cluster, before[i])) == 3 for i in (0, 1, 6, 7))
    assert path.read_bytes() == data


def usage_xattr(path: Path) -> dict[str, int]:
    raw = os.getxattr(path, "dfs.usage")
    return {k: int(v) for k, v in (kv.split("=") for kv in raw.decode().split())}


def test_du_drops_by_the_punched_chunks_and_comes_back_when_they_are_written(
    workdir: Path, mounts: Mounts
) -> None:
    """st_blocks (what du shows) and the directory's physical bytes drop by a punch's
    whole chunks, as on ext4; a write, posix_fallocate or ZERO_RANGE counts them again."""
    path = workdir / "du"
    size = 5 * CHUNK + 1000  # chunks 0..5
    path.write_bytes(random.Random(8).randbytes(size))
    full, chunk_blocks = -(-size // 512), CHUNK // 512
    goal = usage_xattr(workdir)["physical_bytes"] // size
    assert os.stat(path).st_blocks == full and goal >= 1
    with opened(path) as fd:
        # [CHUNK - 10, 4 CHUNK + 10): chunks 1 to 3 punched; 0 and 4 only zeroed.
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, CHUNK - 10, 3 * CHUNK + 20)
        assert os.fstat(fd).st_blocks == full - 3 * chunk_blocks
    assert os.stat(path).st_size == size
    assert usage_xattr(workdir)["physical_bytes"] == (size - 3 * CHUNK) * goal
    assert usage_xattr(workdir)["bytes"] == size  # the size stays
    # Another mount (nothing cached) shows the same.
    other = mounts.mount("du-other") / workdir.name / "du"
    assert os.stat(other).st_blocks == full - 3 * chunk_blocks
    # Chunk 1 written again: its blocks come back (once the write is committed).
    with opened(path) as fd:
        os.pwrite(fd, b"w" * CHUNK, CHUNK)
        os.fsync(fd)
    wait_for(lambda: os.stat(path).st_blocks == full - 2 * chunk_blocks, 10,
             "the rewritten chunk's blocks to count again")  # fmt: skip
    # posix_fallocate over chunk 2 allocates it again, as on ext4.
    with opened(path) as fd:
        os.posix_fallocate(fd, 2 * CHUNK, CHUNK)
        assert os.fstat(fd).st_blocks == full - chunk_blocks
        # ZERO_RANGE over chunks 2 and 3 drops them but leaves the range allocated (ext4's
        # unwritten extents): du does not drop, and chunk 3 counts again.
        fallocate(fd, ZERO_RANGE | KEEP_SIZE, 2 * CHUNK, 2 * CHUNK)
        assert os.fstat(fd).st_blocks == full
    assert usage_xattr(workdir)["physical_bytes"] == size * goal
    data = path.read_bytes()
    assert data[CHUNK - 10 : CHUNK] == bytes(10) and data[CHUNK : 2 * CHUNK] == b"w" * CHUNK
    assert data[2 * CHUNK : 4 * CHUNK + 10] == bytes(2 * CHUNK + 10)
    # A punch to the end takes the partial last chunk too; a new fallocate -l file still
    # shows its whole size.
    with opened(path) as fd:
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 5 * CHUNK, 1000)
        assert os.fstat(fd).st_blocks == 5 * chunk_blocks
    fresh = workdir / "fresh"
    subprocess.run(["fallocate", "-l", str(3 * CHUNK), str(fresh)], check=True, timeout=60)
    assert os.stat(fresh).st_blocks == 3 * chunk_blocks


def test_zero_range_zeros_and_may_grow(workdir: Path) -> None:
    path = workdir / "zeroed"
    data = bytearray(b"y" * 5000)
    path.write_bytes(data)
    with opened(path) as fd:
        fallocate(fd, ZERO_RANGE, 100, 200)
        data[100:300] = bytes(200)
        fallocate(fd, ZERO_RANGE | KEEP_SIZE, 4000, 5000)  # past the end: size kept
        data[4000:] = bytes(1000)
        assert os.fstat(fd).st_size == 5000
        fallocate(fd, ZERO_RANGE, 4990, 20)  # past the end: grows
        data[4990:] = bytes(20)
        assert os.fstat(fd).st_size == 5010
        assert os.pread(fd, 6000, 0) == data


def test_other_modes_are_refused(workdir: Path) -> None:
    path = workdir / "collapse"
    path.write_bytes(bytes(2 * 4096))
    with opened(path) as fd:
        with pytest.raises(OSError) as e:
            fallocate(fd, COLLAPSE_RANGE, 0, 4096)
        assert e.value.errno == errno.EOPNOTSUPP
    assert path.stat().st_size == 2 * 4096


@pytest.mark.timeout(120 + FSX_OPS // 50)  # 400 ops take seconds; 10,000 about 80 s
def test_fsx_style_random_operations_with_fallocate(workdir: Path) -> None:
    """As xfstests' fsx: random operations on one file, each read checked against a
    model (a bytearray), the size after every operation; at the end the file whole."""
    rng = random.Random(FSX_SEED)
    model = bytearray()
    path = workdir / "fsx"
    log: list[str] = []

    def where(limit: int, longest: int = CHUNK + 4096) -> tuple[int, int]:
        offset = rng.randrange(0, limit)
        return offset, rng.randrange(1, min(FSX_SIZE_MAX - offset, longest) + 1)

    with opened(path) as fd:
        for i in range(FSX_OPS):
            op = rng.choice(("write", "write", "read", "read", "truncate", "falloc",
                             "keep", "punch", "zero", "zero_keep"))  # fmt: skip
            if op == "write":
                offset, length = where(min(len(model) + CHUNK, FSX_SIZE_MAX - 1))
                data = rng.randbytes(length)
                os.pwrite(fd, data, offset)
                if offset > len(model):
                    model.extend(bytes(offset - len(model)))
                model[offset : offset + length] = data
            elif op == "read":
                if not model:
                    continue
                offset, length = where(len(model))
                got = os.pread(fd, length, offset)
                expected = bytes(model[offset : offset + length])
                assert got == expected, f"op {i} read {offset}+{length}; last: {log[-8:]}"
            elif op == "truncate":
                size = rng.randrange(0, FSX_SIZE_MAX)
                os.ftruncate(fd, size)
                model[size:] = b""
                model.extend(bytes(size - len(model)))
            else:
                # Up to two chunks long, so that many ranges hold a whole chunk (dropped).
                offset, length = where(FSX_SIZE_MAX - 1, 2 * CHUNK + 4096)
                end = offset + length
                mode = {"falloc": 0, "keep": KEEP_SIZE, "punch": PUNCH_HOLE | KEEP_SIZE,
                        "zero": ZERO_RANGE, "zero_keep": ZERO_RANGE | KEEP_SIZE}[op]  # fmt: skip
                fallocate(fd, mode, offset, length)
                if op in ("punch", "zero", "zero_keep"):
                    inside = min(end, len(model))
                    if offset < inside:
                        model[offset:inside] = bytes(inside - offset)
                if op in ("falloc", "zero") and end > len(model):
                    model.extend(bytes(end - len(model)))
            log.append(f"{i} {op} size {len(model)}")
            assert os.fstat(fd).st_size == len(model), f"op {i} {op}; last: {log[-8:]}"
    assert path.read_bytes() == model
