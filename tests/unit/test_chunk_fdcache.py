"""The chunk store's descriptor cache (``chunkserver/fdcache.py``): bounded, closed only
when unused, and never reading a file its path no longer names; and the scrubber's read,
which goes past the page cache."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkserver.fdcache import FdCache
from chunkserver.store import ChunkStore
from dfs.wire.errors import Corrupt, NotFound
from dfs.wire.replicafile import BLOCK_BYTES, DATA_OFFSET

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

MiB = 1024 * 1024
CHUNK = 0x105


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_reads_and_writes_of_a_replica_share_one_open_file(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, chunk_bytes_max=MiB)
    content = data(3 * BLOCK_BYTES)
    store.write(CHUNK, 1, 0, 0, content)
    for i in range(20):
        assert bytes(store.read(CHUNK, 1, i * 4096, 4096)) == content[i * 4096 : (i + 1) * 4096]
    store.write(CHUNK, 1, len(content), len(content), b"tail")
    store.sync(CHUNK)
    assert bytes(store.read(CHUNK, 1, len(content), 10)) == b"tail"
    assert store._fds.opened == 1 and len(store._fds) == 1
    store.close()
    assert len(store._fds) == 0


def test_the_cache_is_bounded_and_every_replica_still_reads_true(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, chunk_bytes_max=MiB, fds_max=2)
    ids = [CHUNK + i for i in range(5)]
    for i, chunk_id in enumerate(ids):
        store.write(chunk_id, 1, 0, 0, data(5000, seed=i))
    for _ in range(3):
        for i, chunk_id in enumerate(ids):
            assert bytes(store.read(chunk_id, 1, 0, 5000)) == data(5000, seed=i)
            assert len(store._fds) <= 2
    store.close()


def test_a_deleted_and_recreated_replica_reads_its_new_bytes(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, chunk_bytes_max=MiB)
    store.write(CHUNK, 1, 0, 0, b"old bytes")
    assert bytes(store.read(CHUNK, 1, 0, 9)) == b"old bytes"
    assert store.delete(CHUNK)
    with pytest.raises(NotFound):
        store.read(CHUNK, 1, 0, 9)
    store.write(CHUNK, 2, 0, 0, b"new bytes")
    assert bytes(store.read(CHUNK, 2, 0, 9)) == b"new bytes"
    store.close()


def test_a_copy_installed_over_a_replica_is_what_reads_return(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, chunk_bytes_max=MiB)
    store.write(CHUNK, 1, 0, 0, b"a" * 100)
    assert bytes(store.read(CHUNK, 1, 0, 100)) == b"a" * 100  # now cached
    incoming = store.begin_incoming(CHUNK, 2, 200)
    store.write_incoming(incoming, b"b" * 200)
    store.install_incoming(incoming)
    assert bytes(store.read(CHUNK, 2, 0, 200)) == b"b" * 200
    store.close()


def test_a_file_removed_behind_the_stores_back_is_not_read_through_its_old_descriptor(
    tmp_path: Path, expect_log: Callable[..., None]
) -> None:
    """Rule 2 of fdcache.py: as when every request opened the path."""
    expect_log(r"event=replica_vanished chunk=261")
    store = ChunkStore(tmp_path, chunk_bytes_max=MiB)
    store.write(CHUNK, 1, 0, 0, b"x" * 10)
    assert bytes(store.read(CHUNK, 1, 0, 10)) == b"x" * 10
    os.unlink(store.path(CHUNK))
    with pytest.raises(NotFound):
        store.read(CHUNK, 1, 0, 10)
    store.close()


def test_a_descriptor_in_use_is_closed_only_by_its_last_user(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    cache = FdCache(capacity=1)
    first = cache.acquire(1, lambda _: path)
    cache.forget(1)  # the file left its path while a read still uses it
    assert fd_is_open(first.fd) and os.pread(first.fd, 3, 0) == b"abc"
    cache.release(first)
    assert not fd_is_open(first.fd)
    # Eviction: the same rule.
    a = cache.acquire(1, lambda _: path)
    b = cache.acquire(2, lambda _: path)  # evicts 1, which is in use
    assert len(cache) == 1 and fd_is_open(a.fd)
    cache.release(a)
    assert not fd_is_open(a.fd) and fd_is_open(b.fd)
    cache.release(b)
    assert fd_is_open(b.fd)  # cached, unused: kept
    cache.clear()
    assert not fd_is_open(b.fd)


def test_the_scrubbers_read_checks_the_disk_and_leaves_cached_pages_cached(
    tmp_path: Path, expect_log: Callable[..., None]
) -> None:
    """``from_disk`` reads with O_DIRECT: a page a client reads stays in the page cache
    (before, each scrub step evicted it), and a byte bad on the disk is still found."""
    store = ChunkStore(tmp_path, chunk_bytes_max=MiB)
    content = data(3 * BLOCK_BYTES + 100, seed=3)
    store.write(CHUNK, 1, 0, 0, content, sync=True)
    assert bytes(store.read(CHUNK, 1, 0, len(content))) == content  # now in the page cache
    assert bytes(store.read(CHUNK, 1, 0, len(content), from_disk=True)) == content
    if not store._direct_reads:
        pytest.skip("this file system refuses O_DIRECT")
    # Still cached: a read that must not wait for the disk succeeds.
    assert bytes(store.read(CHUNK, 1, 0, len(content), cached_only=True)) == content
    # A tail not a whole page, and a range starting mid-block.
    assert bytes(store.read(CHUNK, 1, 5000, 3 * BLOCK_BYTES, from_disk=True)) == content[5000:]
    expect_log(r"event=corrupt chunk=261")
    expect_log(r"event=replica_bad chunk=261")
    expect_log(r"event=quarantined chunk=261")
    path = store.path(CHUNK)
    with open(path, "r+b") as f:  # a bad byte, written back to the disk
        f.seek(DATA_OFFSET + BLOCK_BYTES + 7)
        f.write(b"\x00" if content[BLOCK_BYTES + 7] else b"\x01")
        f.flush()
        os.fsync(f.fileno())
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 0, len(content), from_disk=True)
    store.close()
