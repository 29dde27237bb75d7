"""SHORT-CIRCUIT READS (``dfs/client/localread.py``) against replica files a real
``ChunkStore`` wrote: ranges read back verified; any file that is not the replica asked for
as it should be (another version, a flipped byte, a cut, gone) reads as None so the caller
goes through the chunkserver; a data directory counts as live only with its uuid and a
server's lock."""

from __future__ import annotations

import fcntl
import os
import random
import threading
from pathlib import Path

import pytest

from chunkserver.config import DataDirError, lock_data_dir
from chunkserver.store import ChunkStore
from dfs.client.localread import data_dir_is_live, is_local_address, read_file
from dfs.wire.replicafile import BLOCK_BYTES, DATA_OFFSET, chunk_relpath

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CHUNK = 0x2A7
LENGTH = 3 * BLOCK_BYTES + 1234


@pytest.fixture
def replica(tmp_path: Path) -> tuple[Path, bytes]:
    store = ChunkStore(tmp_path, chunk_bytes_max=1 << 20)
    content = random.Random(3).randbytes(LENGTH)
    store.write(CHUNK, 4, 0, 0, content)
    store.close()
    return tmp_path, content


@pytest.mark.parametrize("nowait", [False, True])
def test_ranges_read_back_verified(replica: tuple[Path, bytes], nowait: bool) -> None:
    root, content = replica
    rng = random.Random(8)
    cases = [(0, LENGTH), (0, 1), (BLOCK_BYTES - 3, 10), (LENGTH - 5, 100), (LENGTH, 10)]
    cases += [(rng.randrange(LENGTH), rng.randrange(1, 2 * BLOCK_BYTES)) for _ in range(30)]
    for offset, size in cases:
        got = read_file(str(root), CHUNK, 4, offset, size, nowait=nowait)
        assert got is not None and bytes(got) == content[offset : offset + size], (offset, size)


def test_a_kept_read_is_never_overwritten_by_later_reads(tmp_path: Path) -> None:
    """Reads fill buffers from a pool: one the caller still holds (or a view of) is not
    handed out again, from this thread or from others at once."""
    store = ChunkStore(tmp_path, chunk_bytes_max=1 << 20)
    contents = {cid: random.Random(cid).randbytes(2 * BLOCK_BYTES) for cid in range(1, 9)}
    for cid, content in contents.items():
        store.write(cid, 1, 0, 0, content)
    store.close()
    kept = [read_file(str(tmp_path), cid, 1, 0, 2 * BLOCK_BYTES, nowait=False) for cid in contents]
    views = [memoryview(k) for k in kept if k is not None]
    del kept

    def churn() -> None:
        for _ in range(50):
            for cid in contents:
                read_file(str(tmp_path), cid, 1, 0, 2 * BLOCK_BYTES, nowait=False)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [bytes(v) for v in views] == list(contents.values())


def test_a_file_that_is_not_the_replica_asked_for_reads_as_none(
    replica: tuple[Path, bytes],
) -> None:
    root, _ = replica
    path = root / chunk_relpath(CHUNK)
    assert read_file(str(root), CHUNK, 3, 0, 10, nowait=False) is None  # another version
    assert read_file(str(root), CHUNK + 256, 4, 0, 10, nowait=False) is None  # no such file
    with open(path, "r+b") as f:  # a flipped byte: its block does not verify
        f.seek(DATA_OFFSET + 2 * BLOCK_BYTES + 7)
        byte = f.read(1)
        f.seek(DATA_OFFSET + 2 * BLOCK_BYTES + 7)
        f.write(bytes([byte[0] ^ 1]))
    assert read_file(str(root), CHUNK, 4, 2 * BLOCK_BYTES, 10, nowait=False) is None
    assert read_file(str(root), CHUNK, 4, 0, 10, nowait=False) is not None  # other blocks do
    os.truncate(path, DATA_OFFSET + BLOCK_BYTES)  # cut short (a crash)
    assert read_file(str(root), CHUNK, 4, BLOCK_BYTES, 10, nowait=False) is None
    with open(path, "r+b") as f:  # a torn header
        f.write(b"junk")
    assert read_file(str(root), CHUNK, 4, 0, 10, nowait=False) is None


def test_a_data_directory_is_live_with_its_uuid_and_a_servers_lock(tmp_path: Path) -> None:
    (tmp_path / "uuid").write_text("u-1\n")
    assert not data_dir_is_live(str(tmp_path), "u-1")  # no lock file: no server
    fd = lock_data_dir(tmp_path)
    try:
        assert data_dir_is_live(str(tmp_path), "u-1")
        assert not data_dir_is_live(str(tmp_path), "u-2")  # another server's directory
        assert not data_dir_is_live(str(tmp_path / "nowhere"), "u-1")
    finally:
        os.close(fd)
    assert not data_dir_is_live(str(tmp_path), "u-1")  # the lock file stays; nobody holds it


@pytest.mark.anyio
async def test_only_this_machines_addresses_are_local() -> None:
    assert await is_local_address("127.0.0.1:7101")
    assert await is_local_address("localhost:1")
    assert not await is_local_address("192.0.2.1:7101")  # TEST-NET-1: never on this machine


def test_a_clients_check_does_not_stop_a_server_from_taking_its_lock(tmp_path: Path) -> None:
    """The check holds a shared lock for a moment; a server starting then waits it out (and
    still refuses a directory another server holds)."""
    (tmp_path / "uuid").write_text("u-1\n")
    (tmp_path / "lock").touch()
    probe = os.open(tmp_path / "lock", os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # a check caught in the middle
    timer = threading.Timer(0.2, os.close, [probe])
    timer.start()
    try:
        fd = lock_data_dir(tmp_path)
    finally:
        timer.join()
    try:
        with pytest.raises(DataDirError):
            lock_data_dir(tmp_path)  # held by a server: refused after the wait
    finally:
        os.close(fd)
