"""The chunk store (``chunkserver/store.py``) and its event-loop face (``chunkserver/disk.py``).

What is checked here, on real files in a tmp dir:
- reads and writes at any offset against a bytearray model (unaligned, across blocks, gaps);
- the version rules of docs/PROTOCOL.md (new version truncates to the handle's length, older
  is Stale, a read of any other version is Stale) and the rule for creating a replica;
- bad replicas: a flipped byte, a damaged checksum entry, a file cut short, an EIO, a
  failed fsync or cut make the read (or write) fail and the whole replica bad: never served
  again, not listed or counted, quarantined, reported (``on_bad``, ``bad_pending``) until
  acknowledged, removed by ``delete`` or by a good copy; a write never re-checksums a
  corrupt block into a good one; concurrent readers mark it once;
- capacity and full disks: NoSpace from the configured capacity, from the file system's free
  space on a create, and from the preallocation on a real 2 MiB tmpfs, always before a byte
  of the replica changed; resource errors (EMFILE) fail the request only;
- ``delete`` by version (never a newer replica); copies in (``begin/write/install_incoming``):
  installed whole, replacing an older or bad replica, never a newer one; an aborted or
  crashed copy leaves nothing after a restart;
- the start-up scan: replicas found from headers, bad files quarantined, strays ignored;
- the crash model (``tools.testing.faultydisk.CrashDisk``): a synced replica survives exactly;
  after unsynced writes a read returns the written bytes or Corrupt, never other bytes;
- a failure after a bump's cut leaves a replica that describes its file (writable), or one
  marked failed when the cut itself failed; ``expect_length`` refuses a replica that lost
  acknowledged bytes;
- ``AsyncChunkStore``: concurrent writes to one chunk are serialised; a delete waits for the
  reads in flight; an abort waits for the copy's write job; the lock survives cancelled
  waiters, also when a release already dropped their entry; small unsynced writes run on
  the loop unless the chunk is busy or the write bumps its version; deletes in bulk take
  one disk job per group of free chunks and answer each entry in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import chunkserver.pagecache
import chunkserver.store
from chunkserver import blocks, disk
from chunkserver.disk import INLINE_WRITE_BYTES_MAX, AsyncChunkStore, ChunkLock
from chunkserver.pagecache import DROP_BEHIND_LAG_BYTES, WRITEBACK_BYTES_MIN
from chunkserver.store import ChunkStore, WouldBlock
from dfs.wire.errors import Corrupt, Invalid, NoSpace, NotFound, Stale, TooBig, Unavailable
from dfs.wire.replicafile import (
    BLOCK_BYTES,
    CHUNK_BYTES_MAX,
    DATA_OFFSET,
    TABLE_OFFSET,
    BadHeader,
    ReplicaInfo,
    chunk_relpath,
    decode_header,
    encode_header,
    footprint_bytes,
)
from tools.testing.faultydisk import CrashDisk

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

B = BLOCK_BYTES
MiB = 1024 * 1024
CHUNK = 0x105  # lives in chunks/05/


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cs"


@pytest.fixture
def store(root: Path) -> ChunkStore:
    return ChunkStore(root, chunk_bytes_max=MiB)


class Model:
    """What a replica should hold: a bytearray with the same write semantics."""

    def __init__(self) -> None:
        self.bytes = bytearray()

    def write(self, offset: int, chunk: bytes) -> None:
        if not chunk:
            return
        if offset > len(self.bytes):
            self.bytes.extend(bytes(offset - len(self.bytes)))
        self.bytes[offset : offset + len(chunk)] = chunk

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.bytes[offset : offset + size])


def flip_byte(path: Path, file_offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(file_offset)
        byte = f.read(1)
        f.seek(file_offset)
        f.write(bytes([byte[0] ^ 0x40]))


# ---------------------------------------------------------------------- format


def test_header_round_trip_and_rejections() -> None:
    raw = encode_header(7, 3, 12345)
    assert len(raw) == TABLE_OFFSET == 64
    assert decode_header(raw) == ReplicaInfo(7, 3, 12345)
    for cut in (0, 10, 63):
        with pytest.raises(BadHeader, match="short"):
            decode_header(raw[:cut])
    for i in range(64):
        damaged = bytearray(raw)
        damaged[i] ^= 1
        with pytest.raises(BadHeader):
            decode_header(bytes(damaged))
    assert DATA_OFFSET % 4096 == 0 and DATA_OFFSET >= TABLE_OFFSET + 8 * (CHUNK_BYTES_MAX // B)


def test_paths_come_from_the_integer_id_only() -> None:
    assert chunk_relpath(0x105) == "chunks/05/0000000000000105.chunk"
    assert chunk_relpath((1 << 64) - 1) == "chunks/ff/ffffffffffffffff.chunk"


def test_footprint_counts_pages_in_use_not_the_sparse_table() -> None:
    assert footprint_bytes(0) == 4096
    assert footprint_bytes(1) == 4096 + 4096
    assert footprint_bytes(64 * MiB) == 3 * 4096 + 64 * MiB  # 64 + 1024 * 8 bytes of table


# ---------------------------------------------------------------------- reads and writes


def test_random_writes_and_reads_match_a_model(store: ChunkStore) -> None:
    rng = random.Random(42)
    model = Model()
    for step in range(300):
        # Mostly near block boundaries, where the read-modify-write logic lives.
        if rng.random() < 0.5:
            offset = rng.randrange(0, 12) * B + rng.randrange(-100, 100)
        else:
            offset = rng.randrange(0, MiB - 3 * B)
        offset = max(offset, 0)
        size = rng.choice([0, 1, 17, B - 1, B, B + 1, rng.randrange(0, 3 * B)])
        chunk = rng.randbytes(size)
        info = store.write(CHUNK, 1, 0, offset, chunk)
        model.write(offset, chunk)
        assert info == ReplicaInfo(CHUNK, 1, len(model.bytes)), step
        read_offset = rng.randrange(0, len(model.bytes) + B)
        read_size = rng.randrange(0, 4 * B)
        got = store.read(CHUNK, 1, read_offset, read_size)
        assert bytes(got) == model.read(read_offset, read_size), step
    assert bytes(store.read(CHUNK, 1, 0, MiB)) == bytes(model.bytes)
    assert os.path.getsize(store.path(CHUNK)) == DATA_OFFSET + len(model.bytes)


def test_unaligned_write_across_blocks_and_short_reads(store: ChunkStore) -> None:
    first = data(3 * B, seed=1)
    store.write(CHUNK, 1, 0, 0, first)
    patch = data(B + 10, seed=2)
    store.write(CHUNK, 1, 0, B - 5, patch)  # ends 5 bytes into block 2
    expected = first[: B - 5] + patch + first[2 * B + 5 :]
    assert bytes(store.read(CHUNK, 1, 0, 4 * B)) == expected
    assert bytes(store.read(CHUNK, 1, B - 7, 20)) == expected[B - 7 : B + 13]
    assert bytes(store.read(CHUNK, 1, 3 * B - 3, 100)) == expected[-3:]  # short at the end
    assert bytes(store.read(CHUNK, 1, 3 * B, 100)) == b""
    assert bytes(store.read(CHUNK, 1, 10 * B, 100)) == b""


def test_a_gap_reads_as_zeros_even_over_junk_left_by_a_truncate(store: ChunkStore) -> None:
    store.write(CHUNK, 1, 0, 0, b"\xff" * (2 * B))
    # Version 2 with a handle length of 100: bytes past 100 are junk and must never show.
    store.write(CHUNK, 2, 100, 0, b"")
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 2, 100)
    store.write(CHUNK, 2, 100, B + 50, b"tail")
    expected = b"\xff" * 100 + bytes(B + 50 - 100) + b"tail"
    assert bytes(store.read(CHUNK, 2, 0, MiB)) == expected


def test_gap_over_junk_past_the_length_after_a_crash(store: ChunkStore) -> None:
    store.write(CHUNK, 1, 0, 0, b"a" * 1000)
    # What a crash can leave: bytes past the valid length that the header does not count.
    with open(store.path(CHUNK), "r+b") as f:
        f.seek(DATA_OFFSET + 1000)
        f.write(b"junk" * 10000)
    store.write(CHUNK, 1, 0, 3 * B, b"z")
    assert bytes(store.read(CHUNK, 1, 0, MiB)) == b"a" * 1000 + bytes(3 * B - 1000) + b"z"


def test_large_write_at_a_far_offset_hashes_the_gap_cheaply(store: ChunkStore) -> None:
    store.write(CHUNK, 1, 0, MiB - 10, b"0123456789")
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 1, MiB)
    assert bytes(store.read(CHUNK, 1, 0, MiB)) == bytes(MiB - 10) + b"0123456789"


def _resident_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def _bytes_read_from_storage() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no read_bytes in /proc/self/io")


def test_a_read_from_disk_reads_the_disk_and_leaves_the_cache_as_it_was(
    store: ChunkStore,
) -> None:
    """The scrubber's reads (``from_disk``) check the bytes on the disk, not a copy in the
    page cache; they neither fill the cache with what they read nor evict what clients
    read (O_DIRECT)."""
    content = data(MiB, seed=9)
    store.write(CHUNK, 1, 0, 0, content)
    store.sync(CHUNK, 1)  # written back: the pages are clean, so they can be dropped
    path = store.path(CHUNK)
    _drop_from_page_cache(path)
    before = _bytes_read_from_storage()
    assert bytes(store.read(CHUNK, 1, 0, MiB, from_disk=True)) == content
    assert _bytes_read_from_storage() - before >= MiB
    assert _resident_bytes(path) <= DATA_OFFSET  # at most the header's pages
    assert bytes(store.read(CHUNK, 1, 0, MiB)) == content
    assert _resident_bytes(path) >= MiB  # a plain read leaves it cached
    before = _bytes_read_from_storage()
    assert bytes(store.read(CHUNK, 1, 0, MiB, from_disk=True)) == content
    assert _bytes_read_from_storage() - before >= MiB
    if store._direct_reads:
        assert _resident_bytes(path) >= MiB  # and a scrub keeps it there


def _takes_o_direct(directory: Path) -> bool:
    """Does the file system of ``directory`` take O_DIRECT writes (a tmpfs before Linux 6.6
    does not)?"""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / "o_direct_probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, 4096) as page:
            os.pwrite(fd, page, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


def test_a_big_aligned_write_goes_to_the_disk_past_the_page_cache(root: Path) -> None:
    """DIRECT WRITES: a write of at least ``DIRECT_WRITE_BYTES_MIN`` at an aligned offset
    leaves none of its whole pages in the page cache (its partial last page goes through
    it); it reads back the same, and a rewrite over pages a read had cached is what the
    next read sees. (Where the file system refuses O_DIRECT, the same bytes through the
    page cache.)"""
    direct = _takes_o_direct(root)
    store = ChunkStore(root, chunk_bytes_max=4 * MiB)
    content = bytearray(data(2 * MiB + 100, seed=21))
    store.write(CHUNK, 1, 0, 0, content)
    assert store.direct_writes == direct
    path = store.path(CHUNK)
    if direct:
        assert _resident_bytes(path) <= DATA_OFFSET + 4096  # header, table, the last page
    assert bytes(store.read(CHUNK, 1, 0, len(content))) == content
    assert _resident_bytes(path) >= 2 * MiB  # the plain read cached it
    patch = data(MiB, seed=22)
    store.write(CHUNK, 1, len(content), 4096, patch)
    content[4096 : 4096 + MiB] = patch
    assert bytes(store.read(CHUNK, 1, 0, len(content))) == content
    assert bytes(store.read(CHUNK, 1, 0, len(content), from_disk=True)) == content
    store.sync(CHUNK, 1)
    unaligned = data(MiB, seed=23)  # not at a page boundary: the page cache's path
    store.write(CHUNK, 1, len(content), 100, unaligned)
    content[100 : 100 + MiB] = unaligned
    assert bytes(store.read(CHUNK, 1, 0, len(content), from_disk=True)) == content


def test_a_file_system_without_o_direct_keeps_big_writes_in_the_page_cache(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where O_DIRECT is refused (EINVAL, as a tmpfs may), the write goes through the page
    cache, and direct writes stay off."""
    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    store = ChunkStore(root, chunk_bytes_max=4 * MiB)
    monkeypatch.setattr(os, "open", no_direct)
    content = data(2 * MiB, seed=24)
    store.write(CHUNK, 1, 0, 0, content)
    assert not store.direct_writes
    assert _resident_bytes(store.path(CHUNK)) >= 2 * MiB
    assert bytes(store.read(CHUNK, 1, 0, len(content))) == content


def test_a_refused_direct_write_goes_through_the_page_cache_and_harms_no_replica(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that opens with O_DIRECT but refuses the write (EINVAL): the write
    lands through the page cache, the replica stays good, and direct writes stay off."""

    def refuse(fd: int, data: memoryview, pos: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    store = ChunkStore(root, chunk_bytes_max=4 * MiB)
    monkeypatch.setattr(chunkserver.pagecache, "pwrite_direct", refuse)
    content = data(2 * MiB + 7, seed=25)
    store.write(CHUNK, 1, 0, 0, content)
    assert not store.direct_writes
    assert not store.is_bad(CHUNK) and store.info(CHUNK) is not None
    assert bytes(store.read(CHUNK, 1, 0, len(content), from_disk=True)) == content


@pytest.mark.parametrize("drop_behind", [True, False])
def test_a_streamed_write_leaves_no_pages_behind_it(root: Path, drop_behind: bool) -> None:
    """DROP-BEHIND: a big unsynced write's early writeback also writes back and drops the
    range ``DROP_BEHIND_LAG_BYTES`` behind it, so a stream keeps about that much of each
    replica in the page cache; the bytes read back the same from the disk."""
    store = ChunkStore(root, chunk_bytes_max=32 * MiB)
    store.drop_behind = drop_behind
    store.direct_writes = False  # the page cache's path (a tmpfs's, or configured)
    content = data(16 * MiB, seed=12)
    for offset in range(0, len(content), MiB):
        store.write(CHUNK, 1, 0, offset, content[offset : offset + MiB])
        store.start_writeback(CHUNK, offset, MiB)
    path = store.path(CHUNK)
    lag = DROP_BEHIND_LAG_BYTES
    if drop_behind:  # [0, 16 MiB - lag - 1 MiB) dropped: each write drops a MiB
        assert _resident_bytes(path) <= len(content) - (len(content) - lag - MiB) + DATA_OFFSET
    else:
        assert _resident_bytes(path) >= len(content)
    store.sync(CHUNK, 1)
    assert bytes(store.read(CHUNK, 1, 0, len(content))) == content


@pytest.mark.parametrize("how", ["sync", "write"])
def test_a_failed_drop_behind_writeback_fails_the_replicas_next_sync(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None], how: str
) -> None:
    """A writeback the drop-behind saw fail fails the replica's next sync, whichever way it
    comes (``sync``, or a write asked to sync), even on a descriptor opened after it; the
    replica is then bad."""
    expect_log(r"event=replica_bad chunk=261 version=1 reason=sync_failed")
    expect_log(rf"event=disk_error op={how} chunk=261 errno=5")
    expect_log(r"event=quarantined chunk=261")
    monkeypatch.setattr(chunkserver.pagecache, "write_back_and_drop", failing(errno.EIO))
    store = ChunkStore(store.root, chunk_bytes_max=32 * MiB, fds_max=1)
    store.direct_writes = False  # the page cache's path (a tmpfs's, or configured)
    offset = DROP_BEHIND_LAG_BYTES + MiB
    store.write(CHUNK, 1, 0, offset, b"x" * MiB)
    store.start_writeback(CHUNK, offset, MiB)
    store.write(CHUNK + 256, 1, 0, 0, b"y")  # the only cached descriptor is now another's
    with pytest.raises(Unavailable):
        if how == "sync":
            store.sync(CHUNK, 1)
        else:
            store.write(CHUNK, 1, offset + MiB, offset + MiB, b"z", sync=True)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, offset, 10)
    assert store.bad_pending(10) == [(CHUNK, 1)]


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_cached_only_read_takes_the_page_cache_or_nothing(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    """``cached_only`` (the chunkserver's fast path for small reads, on its event loop):
    the bytes come from the page cache, still verified, or the read gives up at once
    (``WouldBlock``) and changes nothing; it never waits for the disk (the kernel may start
    reading ahead for it meanwhile)."""
    expect_log(r"event=corrupt chunk=261 block=2 reason='checksum mismatch'")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=checksum")
    expect_log(r"event=quarantined chunk=261 .* reason=checksum")
    content = data(4 * B, seed=12)
    store.write(CHUNK, 1, 0, 0, content)
    store.sync(CHUNK, 1)  # clean pages: they can be dropped
    assert bytes(store.read(CHUNK, 1, B + 5, 4096, cached_only=True)) == content[B + 5 : B + 4101]
    path = store.path(CHUNK)
    _drop_from_page_cache(path)
    if _resident_bytes(path) > DATA_OFFSET:
        pytest.skip("the page cache kept the chunk's pages")
    with pytest.raises(WouldBlock) as e:
        store.read(CHUNK, 1, B + 5, 4096, cached_only=True)
    assert not e.value.unsupported
    assert not store.is_bad(CHUNK)
    assert bytes(store.read(CHUNK, 1, B + 5, 4096)) == content[B + 5 : B + 4101]
    assert bytes(store.read(CHUNK, 1, B + 5, 4096, cached_only=True)) == content[B + 5 : B + 4101]
    # Verified as any read: a flipped byte (in the page cache too) is Corrupt.
    flip_byte(path, DATA_OFFSET + 2 * B + 7)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 2 * B, 100, cached_only=True)
    assert store.is_bad(CHUNK)


def test_a_bump_is_made_durable_at_once(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that moves the replica to a newer version is synced even when the writer did
    not ask: the metaserver's table already counts the bytes below the handle's length,
    and a power loss would otherwise leave a cut's writes half done."""
    store.write(CHUNK, 1, 0, 0, data(3 * B, seed=4))
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    store.write(CHUNK, 1, 3 * B, 3 * B, b"x")  # the same version: as the writer asked
    assert synced == []
    store.write(CHUNK, 2, 3 * B + 1, 3 * B + 1, b"y")  # a bump that cuts nothing
    assert len(synced) == 1
    store.write(CHUNK, 3, B + 10, 0, b"")  # a bump that cuts into block 1
    assert len(synced) == 2
    assert bytes(store.read(CHUNK, 3, 0, 4 * B)) == data(3 * B, seed=4)[: B + 10]


def test_limits(store: ChunkStore) -> None:
    with pytest.raises(TooBig):
        store.write(CHUNK, 1, 0, MiB - 1, b"xx")
    with pytest.raises(TooBig):
        store.write(CHUNK, 1, MiB + 1, 0, b"")
    with pytest.raises(Invalid):
        store.write(0, 1, 0, 0, b"x")
    with pytest.raises(Invalid):
        store.read(CHUNK, 1, 0, 16 * MiB + 1)
    with pytest.raises(NotFound):
        store.read(CHUNK, 1, 0, 1)
    assert store.chunk_count == 0 and store.used_bytes == 0


# ---------------------------------------------------------------------- versions


def test_new_version_truncates_to_the_handle_length_then_takes_it(store: ChunkStore) -> None:
    original = data(3 * B + 500, seed=3)
    store.write(CHUNK, 4, 0, 0, original)
    store.write(CHUNK, 5, B + 10, 2 * B, b"new")  # truncate to B+10, then write at 2B
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 5, 2 * B + 3)
    expected = original[: B + 10] + bytes(B - 10) + b"new"
    assert bytes(store.read(CHUNK, 5, 0, MiB)) == expected


def test_older_versions_are_stale_and_reads_need_the_exact_version(store: ChunkStore) -> None:
    store.write(CHUNK, 5, 0, 0, b"hello")
    with pytest.raises(Stale):
        store.write(CHUNK, 4, 0, 0, b"old")
    with pytest.raises(Stale):
        store.read(CHUNK, 4, 0, 5)
    with pytest.raises(Stale):
        store.read(CHUNK, 6, 0, 5)
    with pytest.raises(Stale):
        store.sync(CHUNK, 6)
    assert bytes(store.read(CHUNK, 5, 0, 5)) == b"hello"


def test_a_replica_shorter_than_the_handle_length_refuses_the_bump(store: ChunkStore) -> None:
    store.write(CHUNK, 1, 0, 0, b"x" * 100)
    with pytest.raises(Stale, match="shorter"):
        store.write(CHUNK, 2, 200, 0, b"y")
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 1, 100)


def test_creating_a_replica_needs_nothing_to_be_missing(store: ChunkStore) -> None:
    with pytest.raises(NotFound):
        store.write(CHUNK, 3, 100, 50, b"x")  # [0, 50) of the chunk's 100 bytes would be zeros
    assert store.info(CHUNK) is None and not store.path(CHUNK).exists()
    store.write(CHUNK, 3, 100, 0, b"y" * 100)  # covers the whole valid length
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 3, 100)
    store.write(CHUNK + 256, 1, 0, 10, b"z")  # a new chunk: the gap is zeros
    assert bytes(store.read(CHUNK + 256, 1, 0, 100)) == bytes(10) + b"z"


# ---------------------------------------------------------------------- corruption


def test_a_flipped_byte_is_corrupt_and_the_replica_turns_bad(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    """Rule 6: the first mismatch takes the whole replica out of service for good."""
    expect_log(r"event=corrupt chunk=261 block=1 reason='checksum mismatch'")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=checksum")
    expect_log(r"event=quarantined chunk=261 .* reason=checksum")
    found: list[tuple[int, int]] = []
    store.on_bad = lambda chunk_id, version: found.append((chunk_id, version))
    original = data(3 * B, seed=4)
    store.write(CHUNK, 1, 0, 0, original)
    store.write(CHUNK + 256, 1, 0, 0, b"neighbour")
    assert bytes(store.read(CHUNK, 1, 2 * B, B)) == original[2 * B :]  # before the flip
    flip_byte(store.path(CHUNK), DATA_OFFSET + B + 1234)
    with pytest.raises(Corrupt) as e:
        store.read(CHUNK, 1, B + 1000, 10)
    assert e.value.details["block"] == 1
    assert found == [(CHUNK, 1)] and store.bad_found == 1
    # Out of service: not listed, not counted, its file in quarantine/; every read Corrupt
    # (good blocks too: the metaserver repairs replicas, not blocks), writes Unavailable.
    assert store.list_chunks() == [ReplicaInfo(CHUNK + 256, 1, 9)]
    assert store.used_bytes == footprint_bytes(9) and store.is_bad(CHUNK)
    assert not store.path(CHUNK).exists()
    assert [q.name.split(".")[:2] for q in store.quarantine_dir.iterdir()] == [
        [f"{CHUNK:016x}", "checksum"]
    ]
    with pytest.raises(Corrupt, match="bad"):
        store.read(CHUNK, 1, 0, B)
    with pytest.raises(Unavailable, match="bad"):
        store.write(CHUNK, 1, 0, 0, b"x")
    with pytest.raises(Unavailable, match="bad"):
        store.write(CHUNK, 2, 0, 0, b"x")
    with pytest.raises(Unavailable, match="bad"):
        store.sync(CHUNK)
    assert bytes(store.read(CHUNK + 256, 1, 0, 100)) == b"neighbour"
    # What the metaserver is told, until it acknowledges.
    assert store.bad_pending(10) == [(CHUNK, 1)]
    store.bad_acknowledged([(CHUNK, 1)])
    assert store.bad_pending(10) == []
    # chunk.delete removes it whatever the version; then the id is free again.
    assert store.delete(CHUNK, 0) is True
    assert not list(store.quarantine_dir.iterdir()) and not store.is_bad(CHUNK)
    with pytest.raises(NotFound):
        store.read(CHUNK, 1, 0, 1)
    store.write(CHUNK, 2, 0, 0, b"fresh")
    assert bytes(store.read(CHUNK, 2, 0, 10)) == b"fresh"


def test_a_write_never_blesses_a_corrupt_block(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    """A partial write into a bad block must not re-checksum it into a good one: the write
    fails and the replica turns bad."""
    expect_log(r"event=corrupt chunk=261 block=1")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=checksum")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 1, 0, 0, data(3 * B, seed=4))
    flip_byte(store.path(CHUNK), DATA_OFFSET + B + 1234)
    with pytest.raises(Corrupt):
        store.write(CHUNK, 1, 0, B + 10, b"patch")
    assert store.is_bad(CHUNK) and store.info(CHUNK) is None
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 0, 10)


def test_damaged_checksum_entry_is_corrupt(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=261 block=2")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=checksum")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 1, 0, 0, data(3 * B))
    assert len(store.read(CHUNK, 1, 0, 2 * B)) == 2 * B
    flip_byte(store.path(CHUNK), TABLE_OFFSET + 8 * 2 + 3)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 2 * B, 1)
    assert store.is_bad(CHUNK)


def test_a_file_cut_short_is_corrupt_not_short(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=261 block=1 reason='block cut short'")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=checksum")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 1, 0, 0, data(2 * B))
    os.truncate(store.path(CHUNK), DATA_OFFSET + B + 10)
    assert len(store.read(CHUNK, 1, 0, B)) == B  # the blocks before the cut are whole
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, B, 100)
    assert store.is_bad(CHUNK)


def test_readers_racing_to_find_one_replica_bad_mark_it_once(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    """Readers share a chunk: while one moves the file to quarantine/, another may open the
    path (gone: FileNotFoundError) or read it. Both answer Corrupt; it is marked once."""
    expect_log(r"event=corrupt chunk=261")
    expect_log(r"event=replica_bad chunk=261")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 1, 0, 0, data(2 * B))
    replica = store._replicas[CHUNK]
    flip_byte(store.path(CHUNK), DATA_OFFSET + 5)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 0, 10)
    # The second reader looked the replica up before the first marked it, and now finds
    # the file gone: the store knows why.
    err = store._vanished(replica, FileNotFoundError(2, "gone"))
    assert isinstance(err, Corrupt)
    store._mark_bad(replica, "checksum", "again")  # a no-op: already marked
    assert store.bad_found == 1 and store.bad_pending(10) == [(CHUNK, 1)]


# ---------------------------------------------------------------------- capacity, disk errors


def test_capacity_is_enforced_and_tracked(root: Path) -> None:
    store = ChunkStore(root, capacity_bytes=footprint_bytes(4 * B) + footprint_bytes(B))
    store.write(1, 1, 0, 0, data(4 * B))
    assert store.used_bytes == footprint_bytes(4 * B)
    with pytest.raises(NoSpace):
        store.write(2, 1, 0, 0, data(2 * B))
    assert store.used_bytes == footprint_bytes(4 * B) and store.info(2) is None
    assert not store.path(2).exists()
    store.write(2, 1, 0, 0, data(B))
    with pytest.raises(NoSpace):
        store.write(2, 1, 0, B, b"x")  # growing an existing replica counts too
    store.write(1, 2, B, 0, b"")  # truncating frees space ...
    store.write(2, 1, 0, B, b"x")  # ... which the other replica can use
    store.delete(1)
    assert store.used_bytes == footprint_bytes(B + 1) and store.chunk_count == 1
    assert ChunkStore(root, capacity_bytes=1 << 30).used_bytes == store.used_bytes


def test_capacity_defaults_to_the_file_system_size(root: Path) -> None:
    store = ChunkStore(root)
    st = os.statvfs(root)
    assert store.capacity_bytes == st.f_blocks * st.f_frsize


def failing(code: int) -> Callable[..., Any]:
    def fail(*args: object) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def test_enospc_answers_nospace_and_leaves_the_replica_as_it_was(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    """Rule 5: the preallocation finds a full disk before any byte of a replica changes;
    a create that meets it leaves nothing."""
    expect_log(r"event=disk_full op=write chunk=(261|517)")
    original = data(B + 100, seed=11)
    store.write(CHUNK, 1, 0, 0, original)
    used = store.used_bytes
    writes: list[object] = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "posix_fallocate", failing(errno.ENOSPC))
    monkeypatch.setattr(os, "pwrite", lambda *a: writes.append(a) or real_pwrite(*a))
    for offset in (50, B + 100, 5 * B):  # overwrite, append, append past a gap
        with pytest.raises(NoSpace):
            store.write(CHUNK, 1, 0, offset, b"b" * B)
    assert writes == []  # not a byte written
    # A new replica's file is not preallocated: the disk fills as it is written, and the
    # failed create leaves no file behind.
    monkeypatch.setattr(os, "pwrite", failing(errno.ENOSPC))
    with pytest.raises(NoSpace):
        store.write(CHUNK + 256, 1, 0, 0, b"new")
    monkeypatch.undo()
    assert not store.path(CHUNK + 256).exists() and store.info(CHUNK + 256) is None
    assert store.used_bytes == used and store.info(CHUNK) == ReplicaInfo(CHUNK, 1, B + 100)
    assert not store.is_bad(CHUNK) and store.bad_pending(10) == []
    assert bytes(store.read(CHUNK, 1, 0, MiB)) == original
    store.write(CHUNK, 1, 0, B + 100, b"more")  # room again: writable as before
    assert bytes(store.read(CHUNK, 1, 0, MiB)) == original + b"more"


def test_creating_a_replica_checks_the_file_systems_free_space(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "fs_free_bytes", lambda: footprint_bytes(B))
    store.write(CHUNK, 1, 0, 0, data(B))  # fits exactly
    with pytest.raises(NoSpace):
        store.write(CHUNK + 256, 1, 0, 0, data(B + 1))
    assert not store.path(CHUNK + 256).exists() and store.info(CHUNK + 256) is None
    # What heartbeats advertise: no more than what is used plus what the disk has left.
    assert store.capacity_now() == store.used_bytes + footprint_bytes(B)
    monkeypatch.setattr(store, "fs_free_bytes", lambda: 1 << 50)
    assert store.capacity_now() == store.capacity_bytes


def test_new_replicas_reuse_a_recent_statfs_only_while_the_disk_has_room(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file's replica does not pay a statfs each while a recent reading leaves a
    wide margin; near a full disk every new replica reads it again."""
    calls: list[int] = []
    free = [1 << 40]

    def statfs() -> int:
        calls.append(free[0])
        return free[0]

    monkeypatch.setattr(store, "fs_free_bytes", statfs)
    for i in range(20):
        store.write(CHUNK + 256 * i, 1, 0, 0, b"x")
    assert len(calls) == 1
    free[0] = chunkserver.store.STATFS_MARGIN_BYTES  # no margin left
    monkeypatch.setattr(chunkserver.store, "STATFS_TTL_S", 0.0)
    store.write(CHUNK + 256 * 20, 1, 0, 0, b"x")  # the reading expired: read again
    monkeypatch.setattr(chunkserver.store, "STATFS_TTL_S", 3600.0)
    for i in range(21, 23):
        store.write(CHUNK + 256 * i, 1, 0, 0, b"x")
    assert len(calls) == 4
    free[0] = 0
    with pytest.raises(NoSpace):
        store.write(CHUNK + 256 * 23, 1, 0, 0, b"x")


@pytest.mark.parametrize("where", ["pwrite", "preadv", "open"])
def test_eio_makes_that_replica_bad_and_the_others_serve_on(
    store: ChunkStore,
    monkeypatch: pytest.MonkeyPatch,
    expect_log: Callable[..., None],
    where: str,
) -> None:
    expect_log(r"event=disk_error op=(read|write) chunk=261 errno=5")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=disk_error")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 1, 0, 0, b"a" * 100)
    store.write(CHUNK + 256, 1, 0, 0, b"other")
    monkeypatch.setattr(os, where, failing(errno.EIO))
    if where == "pwrite":
        with pytest.raises(Unavailable):
            store.write(CHUNK, 1, 0, 100, b"b" * B)
    else:
        with pytest.raises(Corrupt):
            store.read(CHUNK, 1, 0, 10)
    monkeypatch.undo()
    assert store.is_bad(CHUNK) and store.bad_pending(10) == [(CHUNK, 1)]
    assert store.used_bytes == footprint_bytes(5)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 0, 10)
    assert bytes(store.read(CHUNK + 256, 1, 0, 10)) == b"other"


def test_a_failed_create_leaves_nothing_and_marks_nothing(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=disk_error op=write chunk=261 errno=5")
    monkeypatch.setattr(os, "pwrite", failing(errno.EIO))
    with pytest.raises(Unavailable):
        store.write(CHUNK, 1, 0, 0, b"new")
    monkeypatch.undo()
    assert not store.path(CHUNK).exists() and store.info(CHUNK) is None
    assert not store.is_bad(CHUNK) and store.used_bytes == 0


def test_the_injected_eio_hook_fails_reads_and_data_writes_of_its_ids(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    """``inject_eio_chunk_ids`` (the integration tests' way to a dying disk)."""
    expect_log(r"event=disk_error op=(read|write) chunk=(261|517) errno=5")
    expect_log(r"event=replica_bad chunk=(261|517) version=1 reason=disk_error")
    expect_log(r"event=quarantined chunk=(261|517)")
    store.write(CHUNK, 1, 0, 0, b"a")
    store.write(CHUNK + 256, 1, 0, 0, b"b")
    store.inject_eio_chunk_ids = frozenset({CHUNK, CHUNK + 256})
    with pytest.raises(Corrupt, match="injected"):
        store.read(CHUNK, 1, 0, 1)
    with pytest.raises(Unavailable, match="injected"):
        store.write(CHUNK + 256, 1, 0, 0, b"c")
    assert store.bad_pending(10) == [(CHUNK, 1), (CHUNK + 256, 1)]


def test_resource_errors_fail_the_request_but_not_the_replica(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=disk_error op=(read|write) chunk=261 errno=24")
    store.write(CHUNK, 1, 0, 0, b"a" * 100)
    monkeypatch.setattr(os, "open", failing(errno.EMFILE))
    with pytest.raises(Unavailable):
        store.read(CHUNK, 1, 0, 10)
    with pytest.raises(Unavailable):
        store.write(CHUNK, 1, 0, 0, b"b")
    monkeypatch.undo()
    assert not store.is_bad(CHUNK)
    assert bytes(store.read(CHUNK, 1, 0, 100)) == b"a" * 100


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_answers_nospace_and_keeps_its_replicas(
    tmp_path: Path, expect_log: Callable[..., None]
) -> None:
    """The real thing: a 2 MiB tmpfs. New replicas are refused by the free-space check, and a
    growth the disk cannot take by the preallocation; nothing is half written."""
    expect_log(r"event=disk_full op=write chunk=2")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, timeout=30,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    store: ChunkStore | None = None
    try:
        # A configured capacity far over the disk's: the disk is what says "full" here.
        store = ChunkStore(mount_point, capacity_bytes=1 << 30, fsync=False)
        assert store.capacity_now() <= 2 * MiB
        first = data(1200 * 1024, seed=12)
        store.write(1, 1, 0, 0, first)
        with pytest.raises(NoSpace):
            store.write(3, 1, 0, 0, data(1200 * 1024))  # a create over the free space
        assert store.info(3) is None and not store.path(3).exists()
        store.write(2, 1, 0, 0, data(64 * 1024, seed=13))
        with pytest.raises(NoSpace):
            store.write(2, 1, 0, 64 * 1024, data(1 * MiB))  # growth the disk cannot take
        assert store.info(2) == ReplicaInfo(2, 1, 64 * 1024) and not store.is_bad(2)
        assert bytes(store.read(2, 1, 0, MiB)) == data(64 * 1024, seed=13)
        assert bytes(store.read(1, 1, 0, 2 * MiB)) == first
        # Heartbeats advertise no more room than the file system has left.
        free = store.fs_free_bytes()
        assert free is not None and free < MiB
        assert store.capacity_now() == store.used_bytes + free
        store.delete(1)
        store.write(2, 1, 0, 64 * 1024, data(MiB, seed=14))  # room again
        assert store.info(2) == ReplicaInfo(2, 1, 64 * 1024 + MiB)
    finally:
        if store is not None:
            store.close()  # its open replica files would keep the file system busy
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)


def test_a_replica_whose_fsync_failed_is_never_served_again(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=disk_error op=sync chunk=261 errno=5")
    expect_log(r"event=disk_error op=write chunk=517 errno=5")
    expect_log(r"event=replica_bad chunk=(261|517) version=1 reason=sync_failed")
    expect_log(r"event=quarantined chunk=(261|517)")
    store.write(CHUNK, 1, 0, 0, b"a" * 100)
    store.write(CHUNK + 256, 1, 0, 0, b"other")
    monkeypatch.setattr(os, "fdatasync", failing(errno.EIO))
    with pytest.raises(Unavailable):
        store.sync(CHUNK)
    with pytest.raises(Unavailable):
        store.write(CHUNK + 256, 1, 0, 5, b"!", sync=True)
    monkeypatch.undo()
    # The page cache may hold bytes the disk never got: nothing of either is served.
    for chunk_id in (CHUNK, CHUNK + 256):
        with pytest.raises(Corrupt):
            store.read(chunk_id, 1, 0, 10)
        with pytest.raises(Unavailable):
            store.write(chunk_id, 1, 0, 0, b"b")
        with pytest.raises(Unavailable):
            store.sync(chunk_id)
    assert store.bad_pending(10) == [(CHUNK, 1), (CHUNK + 256, 1)]
    store.delete(CHUNK, 1)  # what the metaserver will have it do
    store.write(CHUNK, 2, 0, 0, b"fresh", sync=True)
    assert bytes(store.read(CHUNK, 2, 0, 10)) == b"fresh"


def test_a_full_disk_after_a_bump_cut_leaves_a_writable_replica(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    """A bump cuts the file first; if the disk is then full for the data, the replica must
    describe its (cut) file: without that, memory kept the old length, the next bump tried
    to cut again from there and every later write was ``Corrupt`` ("block cut short")."""
    expect_log(r"event=disk_full op=write chunk=261")
    original = data(3 * B + 500, seed=21)
    store.write(CHUNK, 1, 0, 0, original)
    monkeypatch.setattr(os, "posix_fallocate", failing(errno.ENOSPC))
    with pytest.raises(NoSpace):
        store.write(CHUNK, 2, B + 10, 2 * B, b"lost")
    monkeypatch.undo()
    # The cut happened and is recorded: the new version with exactly the handle's bytes.
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 2, B + 10)
    assert store.used_bytes == footprint_bytes(B + 10)
    assert bytes(store.read(CHUNK, 2, 0, MiB)) == original[: B + 10]
    # The client retries with a newer handle: the bump and the write go through.
    store.write(CHUNK, 3, B + 10, 2 * B, b"kept", sync=True)
    assert bytes(store.read(CHUNK, 3, 0, MiB)) == original[: B + 10] + bytes(B - 10) + b"kept"
    # What the disk says after a restart is what memory said.
    assert ChunkStore(store.root, chunk_bytes_max=MiB).info(CHUNK) == ReplicaInfo(
        CHUNK, 3, 2 * B + 4
    )


def test_eio_in_the_data_after_a_bump_cut_makes_the_replica_bad(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=disk_error op=write chunk=261 errno=5")
    expect_log(r"event=replica_bad chunk=261 version=2 reason=disk_error")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 1, 0, 0, data(3 * B + 500, seed=21))
    monkeypatch.setattr(blocks, "write_blocks", failing(errno.EIO))
    with pytest.raises(Unavailable):
        store.write(CHUNK, 2, B + 10, 2 * B, b"lost")
    monkeypatch.undo()
    assert store.bad_pending(10) == [(CHUNK, 2)] and store.used_bytes == 0


def test_a_cut_that_fails_midway_makes_the_replica_bad(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    """A failure inside the cut (its checksum entry rewritten, the file not yet cut, or cut
    with the old header) leaves a file no description fits: never served again."""
    expect_log(r"event=disk_error op=write chunk=261 errno=5")
    expect_log(r"event=replica_bad chunk=261 version=1 reason=cut_failed")
    expect_log(r"event=quarantined chunk=261 .* reason=cut_failed")
    store.write(CHUNK, 1, 0, 0, data(3 * B + 500, seed=22))
    monkeypatch.setattr(os, "ftruncate", failing(errno.EIO))
    with pytest.raises(Unavailable):
        store.write(CHUNK, 2, B + 10, 0, b"x")
    monkeypatch.undo()
    with pytest.raises(Corrupt, match="bad"):
        store.read(CHUNK, 1, 0, 10)
    with pytest.raises(Unavailable, match="bad"):
        store.write(CHUNK, 3, B + 10, 0, b"x")
    with pytest.raises(Unavailable, match="bad"):
        store.sync(CHUNK)
    store.delete(CHUNK, 1)
    assert store.used_bytes == 0 and not store.is_bad(CHUNK)


def test_expect_length_refuses_a_replica_that_lost_acknowledged_bytes(store: ChunkStore) -> None:
    """``expect_length`` is the writer's highest acknowledged end under this version: a
    replica shorter than that (it lost bytes in a crash) must not turn them into zeros."""
    store.write(CHUNK, 1, 0, 0, b"a" * 100)  # the replica kept 100 bytes; the writer saw 200
    with pytest.raises(Stale, match="acknowledged"):
        store.write(CHUNK, 1, 0, 150, b"gap", expect_length=200)  # [100, 150) would be zeros
    with pytest.raises(Stale, match="acknowledged"):
        store.sync(CHUNK, 1, expect_length=200)
    with pytest.raises(Stale, match="acknowledged"):
        store.write(CHUNK, 1, 0, 10, b"still short", sync=True, expect_length=200)
    with pytest.raises(Stale, match="acknowledged"):  # absent: length 0
        store.write(CHUNK + 256, 1, 0, 10, b"x", expect_length=5)
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 1, 100)
    assert bytes(store.read(CHUNK, 1, 0, 1000)) == b"a" * 100
    # Writes that leave no gap are fine; so is a gap when nothing acknowledged is missing.
    store.write(CHUNK, 1, 0, 50, b"b" * 10, expect_length=200)
    store.write(CHUNK, 1, 0, 100, b"c" * 100, expect_length=200)  # refills what was lost
    store.sync(CHUNK, 1, expect_length=200)
    store.write(CHUNK, 1, 0, 300, b"d", sync=True, expect_length=200)
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 1, 301)
    # After a bump, the replica's length is the handle's: that is what is expected of it.
    store.write(CHUNK, 2, 250, 260, b"e", sync=True, expect_length=250)
    assert bytes(store.read(CHUNK, 2, 0, 1000)) == (
        b"a" * 50 + b"b" * 10 + b"a" * 40 + b"c" * 100 + bytes(50) + bytes(10) + b"e"
    )


def test_a_vanished_file_is_forgotten(store: ChunkStore, expect_log: Callable[..., None]) -> None:
    expect_log(r"event=replica_vanished chunk=261")
    store.write(CHUNK, 1, 0, 0, b"a")
    os.unlink(store.path(CHUNK))
    with pytest.raises(NotFound):
        store.read(CHUNK, 1, 0, 1)
    assert store.info(CHUNK) is None and store.used_bytes == 0


# ---------------------------------------------------------------------- delete, copies in


def test_delete_removes_only_the_judged_version_or_older(store: ChunkStore) -> None:
    store.write(CHUNK, 5, 0, 0, b"v5")
    assert store.delete(CHUNK, 4) is False  # the metaserver judged v4: v5 was written since
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 5, 2)
    assert store.delete(CHUNK, 5) is True
    assert store.info(CHUNK) is None and store.used_bytes == 0 and not store.path(CHUNK).exists()
    assert store.delete(CHUNK, 5) is False  # absent: not an error
    store.write(CHUNK, 6, 0, 0, b"v6")
    assert store.delete(CHUNK, 9) is True


def test_delete_removes_files_quarantined_at_start(
    root: Path, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=quarantined chunk=261 .* reason=bad_header")
    store = ChunkStore(root)
    store.write(CHUNK, 1, 0, 0, b"x")
    flip_byte(store.path(CHUNK), 20)
    again = ChunkStore(root)
    assert again.info(CHUNK) is None and len(list(again.quarantine_dir.iterdir())) == 1
    with pytest.raises(NotFound):
        again.read(CHUNK, 1, 0, 1)  # after a restart a quarantined id reads as absent
    assert ChunkStore(root).delete(CHUNK, 0) is True  # found by a later start's index too
    assert not list(again.quarantine_dir.iterdir())


def copy_in(store: ChunkStore, chunk_id: int, version: int, content: bytes) -> ReplicaInfo:
    incoming = store.begin_incoming(chunk_id, version, len(content))
    for offset in range(0, len(content), 2 * B):
        store.write_incoming(incoming, content[offset : offset + 2 * B])
    return store.install_incoming(incoming)


def test_a_copy_in_is_installed_whole_and_replaces_an_older_replica(store: ChunkStore) -> None:
    store.write(CHUNK, 1, 0, 0, b"old" * 1000)
    content = data(5 * B + 123, seed=30)
    incoming = store.begin_incoming(CHUNK, 3, len(content))
    assert store.used_bytes == footprint_bytes(3000) + footprint_bytes(len(content))
    store.write_incoming(incoming, content[: 2 * B])
    # Until installed, the old replica is what is served and listed.
    assert store.list_chunks() == [ReplicaInfo(CHUNK, 1, 3000)]
    assert bytes(store.read(CHUNK, 1, 0, 6)) == b"oldold"
    store.write_incoming(incoming, content[2 * B :])
    assert store.install_incoming(incoming) == ReplicaInfo(CHUNK, 3, len(content))
    assert bytes(store.read(CHUNK, 3, 0, MiB)) == content
    assert store.used_bytes == footprint_bytes(len(content))
    assert not list(store.tmp_dir.iterdir())
    # Durable as it stands: a restart finds the same replica.
    assert ChunkStore(store.root, chunk_bytes_max=MiB).info(CHUNK) == ReplicaInfo(
        CHUNK, 3, len(content)
    )
    assert copy_in(store, CHUNK + 256, 1, b"") == ReplicaInfo(CHUNK + 256, 1, 0)


def test_a_copy_in_never_replaces_a_newer_or_complete_replica(store: ChunkStore) -> None:
    store.write(CHUNK, 4, 0, 0, b"newer")
    with pytest.raises(Stale):
        copy_in(store, CHUNK, 3, b"older")
    assert copy_in(store, CHUNK, 4, b"newe") == ReplicaInfo(CHUNK, 4, 5)  # already here
    assert bytes(store.read(CHUNK, 4, 0, 10)) == b"newer"
    assert not list(store.tmp_dir.iterdir()) and store.used_bytes == footprint_bytes(5)


def test_a_copy_in_replaces_a_bad_replica(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=261")
    expect_log(r"event=replica_bad chunk=261")
    expect_log(r"event=quarantined chunk=261")
    store.write(CHUNK, 2, 0, 0, data(2 * B, seed=31))
    flip_byte(store.path(CHUNK), DATA_OFFSET + 7)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 2, 0, 10)
    good = data(2 * B, seed=31)
    copy_in(store, CHUNK, 2, good)
    assert bytes(store.read(CHUNK, 2, 0, MiB)) == good
    assert not store.is_bad(CHUNK) and store.bad_pending(10) == []
    assert not list(store.quarantine_dir.iterdir())


def test_an_aborted_or_interrupted_copy_leaves_nothing(root: Path) -> None:
    store = ChunkStore(root, capacity_bytes=footprint_bytes(4 * B))
    with pytest.raises(NoSpace):
        store.begin_incoming(CHUNK, 1, 5 * B)  # space is reserved up front
    incoming = store.begin_incoming(CHUNK, 1, 4 * B)
    store.write_incoming(incoming, data(B))
    store.abort_incoming(incoming)
    store.abort_incoming(incoming)  # idempotent
    with pytest.raises(Unavailable):
        store.write_incoming(incoming, data(B))
    assert store.used_bytes == 0 and not list(store.tmp_dir.iterdir())
    assert store.info(CHUNK) is None
    # A crash mid-copy: the part-copy is in tmp/ only, and the next start removes it.
    crashed = store.begin_incoming(CHUNK, 1, 4 * B)
    store.write_incoming(crashed, data(2 * B))
    again = ChunkStore(root)
    assert again.info(CHUNK) is None and again.list_chunks() == []
    assert not list(again.tmp_dir.iterdir())
    os.close(crashed.fd)


# ---------------------------------------------------------------------- start-up scan


def test_scan_finds_replicas_and_quarantines_bad_files(
    root: Path, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=quarantined chunk=258 .* reason=bad_header")
    expect_log(r"event=quarantined chunk=259 .* reason=misplaced")
    expect_log(r"event=quarantined chunk=260 .* reason=bad_header .*names chunk 261")
    store = ChunkStore(root)
    for chunk_id in (1, 2, 0x101, 0x102):
        store.write(chunk_id, chunk_id, 0, 0, data(chunk_id * 10, seed=chunk_id))
    flip_byte(store.path(0x102), 20)  # the header: its checksum no longer matches
    os.rename(store.path(1), root / "chunks" / "02" / "0000000000000103.chunk")  # wrong dir
    (root / "chunks" / "04").mkdir()
    (root / "chunks" / "04" / "0000000000000104.chunk").write_bytes(
        encode_header(0x105, 1, 0)
    )  # another chunk's header under this name
    (root / "chunks" / "05").mkdir()
    (root / "chunks" / "05" / "notes.txt").write_text("stray")
    (root / "chunks" / "lost+found").mkdir()

    again = ChunkStore(root)
    assert again.list_chunks() == [ReplicaInfo(2, 2, 20), ReplicaInfo(0x101, 0x101, 2570)]
    assert again.used_bytes == footprint_bytes(20) + footprint_bytes(2570)
    assert bytes(again.read(0x101, 0x101, 0, 1 << 20)) == data(2570, seed=0x101)
    assert again.quarantined == 3
    assert len(list((root / "quarantine").iterdir())) == 3
    assert (root / "chunks" / "05" / "notes.txt").exists()  # not ours: left alone
    assert ChunkStore(root).quarantined == 0  # quarantined files are never scanned again


def test_scan_of_many_replicas_reads_headers_only(root: Path) -> None:
    store = ChunkStore(root, fsync=False)
    for chunk_id in range(1, 301):
        store.write(chunk_id, 1, 0, 0, b"x" * chunk_id)
    again = ChunkStore(root)
    assert again.chunk_count == 300
    assert again.info(300) == ReplicaInfo(300, 1, 300)


# ---------------------------------------------------------------------- crash model


def crash_and_reopen(
    disk: CrashDisk, root: Path, target: Path, seed: int
) -> tuple[ChunkStore, dict[str, str]]:
    """A new data dir holding one possible post-crash state of ``disk``'s directory."""
    report = disk.crash_image(target / "chunks" / f"{CHUNK % 256:02x}", random.Random(seed))
    return ChunkStore(target), report


@pytest.mark.allow_warnings  # crash images quarantine and fail checksums by design
def test_synced_replicas_survive_a_crash_exactly(root: Path, tmp_path: Path) -> None:
    store = ChunkStore(root)
    contents = {CHUNK: data(3 * B + 7, seed=5), CHUNK + 256: data(100, seed=6)}
    with CrashDisk(root / "chunks" / "05") as disk:
        for chunk_id, content in contents.items():
            store.write(chunk_id, 2, 0, 0, content[:50])
            store.write(chunk_id, 2, 0, 50, content[50:])
            store.sync(chunk_id)
        store.write(CHUNK + 512, 1, 0, 0, b"never synced")  # may or may not survive
        assert disk.dir_syncs >= 1, "a created replica's directory must be fsynced"
        for seed in range(40):
            after, report = crash_and_reopen(disk, root, tmp_path / f"crash{seed}", seed)
            for chunk_id, content in contents.items():
                assert after.info(chunk_id) == ReplicaInfo(chunk_id, 2, len(content)), report
                assert bytes(after.read(chunk_id, 2, 0, MiB)) == content, report
            if after.info(CHUNK + 512) is not None:
                with contextlib.suppress(Corrupt):
                    assert bytes(after.read(CHUNK + 512, 1, 0, 100)) == b"never synced"


def test_write_with_sync_flag_is_durable(root: Path, tmp_path: Path) -> None:
    store = ChunkStore(root)
    content = data(2 * B + 1, seed=7)
    with CrashDisk(root / "chunks" / "05") as disk:
        store.write(CHUNK, 1, 0, 0, content, sync=True)
        for seed in range(10):
            after, report = crash_and_reopen(disk, root, tmp_path / f"crash{seed}", seed)
            assert bytes(after.read(CHUNK, 1, 0, MiB)) == content, report


@pytest.mark.allow_warnings  # crash images quarantine and fail checksums by design
def test_unsynced_writes_never_read_back_as_other_bytes(root: Path, tmp_path: Path) -> None:
    """After unsynced writes, every block reads back as it was written, or fails Corrupt.

    CrashDisk models appends past the synced bytes; our header and checksum table are
    rewritten in place, which it treats as never synced: any fate (lost, torn, garbage) for
    the whole file. That is harsher than a real disk (the synced bytes would stay), so what
    can be checked is the safety half: no read ever returns bytes nobody wrote.
    """
    rng = random.Random(8)
    outcomes: dict[str, int] = {}
    for round_ in range(12):
        base = root / f"r{round_}"
        store = ChunkStore(base)
        model = Model()
        synced = data(2 * B + 100, seed=round_)
        store.write(CHUNK, 1, 0, 0, synced, sync=True)
        model.write(0, synced)
        with CrashDisk(base / "chunks" / "05") as disk:
            for _ in range(rng.randrange(1, 4)):
                offset = rng.randrange(0, 4 * B)
                chunk = rng.randbytes(rng.randrange(1, 2 * B))
                store.write(CHUNK, 1, 0, offset, chunk)
                model.write(offset, chunk)
            for seed in range(15):
                after, _ = crash_and_reopen(
                    disk, base, tmp_path / f"r{round_}c{seed}", round_ * 100 + seed
                )
                info = after.info(CHUNK)
                if info is None:
                    outcomes["quarantined or absent"] = outcomes.get("quarantined or absent", 0) + 1
                    continue
                for block in range(-(-info.length // B)):
                    try:
                        got = bytes(after.read(CHUNK, info.version, block * B, B))
                    except Corrupt:
                        outcomes["corrupt block"] = outcomes.get("corrupt block", 0) + 1
                        continue
                    # Written bytes, or (a header that did not land) the synced ones.
                    assert got in (model.read(block * B, B), synced[block * B : block * B + B]), (
                        f"round {round_} crash {seed} block {block}: bytes nobody wrote"
                    )
                    outcomes["good block"] = outcomes.get("good block", 0) + 1
    # The model must actually have exercised both sides.
    assert outcomes.get("good block", 0) > 0 and outcomes.get("corrupt block", 0) > 0, outcomes


@pytest.mark.allow_warnings  # crash images quarantine and fail checksums by design
def test_a_closed_unsynced_replica_after_a_power_loss_reads_true_and_takes_a_recovered_bump(
    root: Path, tmp_path: Path
) -> None:
    """A close without fsync: the replica got its bytes unsynced (a new small file's whole
    chunk, or an append to a synced one), the metaserver committed their length, and the
    power went. What the replica can come back as, and what the leader's length recovery
    (metaserver/repair.py) relies on: absent (its name was not durable), or some length
    whose blocks read back as written or fail ``Corrupt``, never other bytes; a bump to the
    committed length is ``Stale`` naming what the replica holds (``replica_length``) when
    it is shorter, and a bump to that recovered length is taken, the replica writable
    again. Never a replica that refuses every new version for good."""
    outcomes: dict[str, int] = {}
    for round_ in range(8):
        base = root / f"r{round_}"
        store = ChunkStore(base)
        synced = data(B + 300, seed=round_) if round_ % 2 else b""
        if synced:
            store.write(CHUNK, 1, 0, 0, synced, sync=True)
        model = Model()
        model.write(0, synced)
        with CrashDisk(base / "chunks" / "05") as disk:
            closed = data(4096 if not synced else B, seed=100 + round_)
            store.write(CHUNK, 1, 0, len(synced), closed)  # the close: no sync
            model.write(len(synced), closed)
            committed = len(model.bytes)
            for seed in range(10):
                after, report = crash_and_reopen(
                    disk, base, tmp_path / f"r{round_}c{seed}", round_ * 100 + seed
                )
                info = after.info(CHUNK)
                if info is None:
                    outcomes["absent"] = outcomes.get("absent", 0) + 1
                    continue
                assert info.length <= committed, report
                for block in range(-(-info.length // B)):
                    try:
                        got = bytes(after.read(CHUNK, info.version, block * B, B))
                    except Corrupt:
                        outcomes["corrupt"] = outcomes.get("corrupt", 0) + 1
                        break  # the replica is bad now: never served, deleted
                    assert got in (
                        model.read(block * B, min(B, info.length - block * B)),
                        synced[block * B : block * B + B],
                    ), report
                else:
                    if info.length < committed:
                        outcomes["short"] = outcomes.get("short", 0) + 1
                        with pytest.raises(Stale) as refused:
                            after.write(CHUNK, 2, committed, 0, b"")
                        assert refused.value.details["replica_length"] == info.length
                    else:
                        outcomes["whole"] = outcomes.get("whole", 0) + 1
                    after.write(CHUNK, 2, info.length, 0, b"")  # the recovered length
                    after.write(CHUNK, 2, info.length, info.length, b"more", sync=True)
                    assert after.info(CHUNK) == ReplicaInfo(CHUNK, 2, info.length + 4)
    # CrashDisk treats a header rewritten in place as never synced (any fate for the whole
    # file), so a torn file fails its checksums rather than coming back short; the short
    # case (the synced header and bytes, the unsynced ones lost) is checked below.
    assert outcomes.get("whole", 0) > 0 and outcomes.get("corrupt", 0) > 0, outcomes
    assert outcomes.get("absent", 0) > 0, outcomes
    store = ChunkStore(root / "short")
    store.write(CHUNK, 1, 0, 0, data(B + 300), sync=True)
    committed = B + 300 + 4096  # a close's append, committed, lost with the power
    with pytest.raises(Stale) as refused:
        store.write(CHUNK, 2, committed, 0, b"")
    assert refused.value.details["replica_length"] == B + 300
    store.write(CHUNK, 2, B + 300, 0, b"")
    assert store.info(CHUNK) == ReplicaInfo(CHUNK, 2, B + 300)


# ---------------------------------------------------------------------- async face


@pytest.fixture
def async_store(root: Path) -> Iterator[Callable[[], AsyncChunkStore]]:
    made: list[AsyncChunkStore] = []

    def make() -> AsyncChunkStore:
        s = AsyncChunkStore(ChunkStore(root, chunk_bytes_max=MiB, fsync=False), disk_jobs_max=3)
        made.append(s)
        return s

    yield make
    for s in made:
        s._pool.shutdown(wait=True)


@pytest.mark.anyio
async def test_large_unsynced_writes_start_their_writeback_and_small_ones_do_not(
    async_store: Callable[[], AsyncChunkStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EARLY WRITEBACK: a big unsynced write hands its pages to the disk at once (a hint on
    a thread of its own); a small file's write, and a synced one, do not. A hint for a
    replica gone meanwhile is nothing."""
    s = async_store()
    hinted: list[tuple[int, int, int]] = []
    real = s.store.start_writeback

    def record(chunk_id: int, offset: int, length: int) -> None:
        hinted.append((chunk_id, offset, length))
        real(chunk_id, offset, length)

    monkeypatch.setattr(s.store, "start_writeback", record)
    assert MiB >= WRITEBACK_BYTES_MIN  # the store's largest chunk here
    await s.write(CHUNK, 1, 0, 0, data(4096))
    await s.write(CHUNK, 1, 0, 0, data(WRITEBACK_BYTES_MIN), sync=True)
    await s.write(CHUNK, 1, 0, 0, data(WRITEBACK_BYTES_MIN, seed=2))  # DIRECT WRITES...
    if s.store.direct_writes:  # ...where the file system takes them: no hint then
        s.store.direct_writes = False
    else:
        hinted.clear()
    await s.write(CHUNK, 1, 0, 0, data(WRITEBACK_BYTES_MIN, seed=1))
    await s.close()  # waits for the hint's thread
    assert hinted == [(CHUNK, 0, WRITEBACK_BYTES_MIN)]
    s.store.start_writeback(CHUNK + 256, 0, 4096)  # no such replica: nothing, no error


@pytest.mark.anyio
async def test_concurrent_writes_to_one_chunk_are_serialised(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    store = async_store()
    # Overlapping unaligned writes that share partial blocks: interleaved read-modify-writes
    # would lose updates or break checksums. Each writer owns a byte range.
    pieces = [(i * 5000, bytes([i + 1]) * 5000) for i in range(40)]
    random.Random(9).shuffle(pieces)
    await asyncio.gather(*(store.write(CHUNK, 1, 0, off, piece) for off, piece in pieces))
    reads = await asyncio.gather(*(store.read(CHUNK, 1, off, 5000) for off, _ in pieces))
    for (_, piece), got in zip(pieces, reads, strict=True):
        assert bytes(got) == piece
    assert store.store.info(CHUNK) == ReplicaInfo(CHUNK, 1, 200_000)
    await store.close()
    assert not store._locks


def _count_jobs(store: AsyncChunkStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that gets one entry per job the store's disk pool is given."""
    jobs: list[str] = []
    submit = store._pool.submit

    def counting_submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        jobs.append("job")
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(store._pool, "submit", counting_submit)
    return jobs


@pytest.mark.anyio
async def test_small_cached_reads_skip_the_pool_unless_a_writer_has_the_chunk(
    async_store: Callable[[], AsyncChunkStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small read of cached bytes is served on the event loop (no thread job); while a
    write holds the chunk, a read waits for it in the pool and sees what it wrote."""
    store = async_store()
    await store.write(CHUNK, 1, 0, 0, data(4 * B, seed=41))
    jobs = _count_jobs(store, monkeypatch)
    assert bytes(await store.read(CHUNK, 1, 100, 4096)) == data(4 * B, seed=41)[100:4196]
    assert jobs == []
    assert len(await store.read(CHUNK, 1, 0, MiB)) == 4 * B  # large: in the pool
    assert jobs == ["job"]
    write = asyncio.create_task(store.write(CHUNK, 1, 0, 0, b"new bytes"))
    await asyncio.sleep(0)  # the write holds the chunk's lock, in the pool
    assert store._locks[CHUNK].writer
    assert bytes(await store.read(CHUNK, 1, 0, 9)) == b"new bytes"
    await write
    assert len(jobs) == 3
    await store.close()


def test_reads_old_blocks_says_exactly_when_a_write_reads_a_block_on_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``blocks.reads_old_blocks`` against what ``write_blocks`` really reads, over
    writes at, across and past block boundaries and the old length."""
    reads: list[int] = []
    monkeypatch.setattr(blocks, "read_verified_block", lambda fd, block, *a: reads.append(block))
    monkeypatch.setattr(blocks, "pwrite_all", lambda *a: None)
    rng = random.Random(5)
    edges = [0, 1, B - 1, B, B + 1, 2 * B, 3 * B - 7, 3 * B]
    cases = [(o, f, n) for o in edges for f in edges for n in (1, 7, B - 1, B, B + 1, 2 * B)]
    cases += [
        (rng.randrange(4 * B), rng.randrange(4 * B), rng.randrange(1, 3 * B)) for _ in range(500)
    ]
    for old_length, offset, size in cases:
        reads.clear()
        blocks.write_blocks(-1, old_length, offset, memoryview(bytes(size)), None)  # type: ignore[arg-type]
        assert blocks.reads_old_blocks(old_length, offset, size) == bool(reads), (
            old_length, offset, size, reads
        )  # fmt: skip


@pytest.mark.anyio
async def test_small_unsynced_writes_run_on_the_loop_unless_the_chunk_is_busy_or_bumped(
    async_store: Callable[[], AsyncChunkStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_now``: a small write that syncs nothing runs here, on the loop (no thread
    job); a large one, a version bump (fsynced), one that must read an old block (a cold
    one would be a disk read on the loop) or a chunk another job holds goes to the pool
    (None)."""
    store = async_store()
    jobs = _count_jobs(store, monkeypatch)
    assert store.write_now(CHUNK, 1, 0, 0, data(B, seed=3)) == ReplicaInfo(CHUNK, 1, B)
    assert store.write_now(CHUNK, 1, B, B, b"more") == ReplicaInfo(CHUNK, 1, B + 4)
    assert store.write_now(CHUNK, 1, B + 4, 0, data(B, seed=4)) == ReplicaInfo(CHUNK, 1, B + 4)
    assert jobs == []
    assert store.write_now(CHUNK, 1, 0, 0, data(INLINE_WRITE_BYTES_MAX + 1)) is None
    assert store.write_now(CHUNK, 2, B + 4, 0, b"bump") is None  # a bump syncs: the pool's
    assert store.write_now(CHUNK, 1, B + 4, 10, b"mid-block") is None  # reads block 0 first
    assert store.write_now(CHUNK, 1, B + 4, B + 4, b"tail") is None  # reads block 1 first
    write = asyncio.create_task(store.write(CHUNK, 1, 0, 0, data(INLINE_WRITE_BYTES_MAX + 1)))
    await asyncio.sleep(0)  # that write holds the chunk, in the pool
    assert store._locks[CHUNK].writer
    assert store.write_now(CHUNK, 1, 0, 0, b"x") is None
    await write
    assert jobs == ["job"]
    big = data(INLINE_WRITE_BYTES_MAX + 1)  # the pool's write came last, over all of it
    assert INLINE_WRITE_BYTES_MAX >= B + 4
    assert bytes(await store.read(CHUNK, 1, 0, B + 4)) == big[: B + 4]
    await store.close()


@pytest.mark.anyio
async def test_delete_waits_for_a_read_of_the_chunk_in_flight(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    store = async_store()
    content = data(MiB, seed=40)
    await store.write(CHUNK, 1, 0, 0, content)
    reads = [asyncio.create_task(store.read(CHUNK, 1, 0, MiB)) for _ in range(3)]
    await asyncio.sleep(0)  # the reads hold the chunk's lock
    deleted = asyncio.create_task(store.delete(CHUNK, 1))
    assert [bytes(r) for r in await asyncio.gather(*reads)] == [content] * 3
    assert await deleted is True
    assert store.info(CHUNK) is None and store.store.used_bytes == 0
    await store.close()


@pytest.mark.anyio
async def test_deletes_in_bulk_answer_each_in_order_and_wait_for_a_read_in_flight(
    async_store: Callable[[], AsyncChunkStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETES IN BULK (disk.py): free chunks in jobs of DELETE_JOB_CHUNKS, one disk job
    each; a chunk a read holds waits for it; each answer where its entry was asked."""
    monkeypatch.setattr(disk, "DELETE_JOB_CHUNKS", 4)
    store = async_store()
    for chunk_id in range(1, 11):
        await store.write(chunk_id, 2, 0, 0, data(1000, seed=chunk_id))
    held = data(MiB, seed=41)
    await store.write(20, 1, 0, 0, held)
    jobs = 0
    run_in_executor = asyncio.get_running_loop().run_in_executor

    def counted(*args: Any) -> Any:
        nonlocal jobs
        jobs += 1
        return run_in_executor(*args)

    monkeypatch.setattr(asyncio.get_running_loop(), "run_in_executor", counted)
    read = asyncio.create_task(store.read(20, 1, 0, MiB))
    await asyncio.sleep(0)  # the read holds chunk 20's lock
    entries: list[tuple[int, int | None]] = [
        (20, 1),
        *((c, 2) for c in range(1, 8)),
        (3, 2),
        (8, 1),
        (9, None),
        (10, 5),
        (99, 1),
    ]
    deleted = asyncio.create_task(store.delete_many(entries))
    assert bytes(await read) == held
    # 20 (held) after the read; 1-7 (two jobs); 3 again behind its first delete: gone
    # already; 8 is newer than asked; 9 any version; 10 older than asked; 99 unknown.
    assert await deleted == [True, *[True] * 7, False, False, True, True, False]
    assert jobs == 1 + 3 + 2  # the read; 1-4, 5-8, 9-99 in bulk; 20 and 3 again, one each
    assert [store.info(c) is None for c in (8, 20, 1, 9, 10)] == [False, True, True, True, True]
    assert not store._locks
    # Cancelled before its jobs took a step (a deadline already past): no lock is left
    # taken, and the chunks are there to delete later.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout_at(asyncio.get_running_loop().time() - 0.001):
            await store.delete_many([(8, None), (11, None)])
    assert not store._locks
    assert await asyncio.wait_for(store.delete_many([(8, None)]), 10) == [True]
    await store.close()


@pytest.mark.anyio
async def test_an_abort_waits_for_the_copys_write_job(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    store = async_store()
    incoming = await store.begin_incoming(CHUNK, 1, 8 * B)
    task = asyncio.create_task(store.write_incoming(incoming, data(8 * B)))
    await asyncio.sleep(0)  # its thread job has started
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.abort_incoming(incoming)  # waits for the job, then closes and unlinks
    assert incoming.closed and not list(store.store.tmp_dir.iterdir())
    assert store.store.used_bytes == 0
    await store.close()


@pytest.mark.anyio
async def test_a_cancelled_request_keeps_the_chunk_locked_until_its_job_ends(
    async_store: Callable[[], AsyncChunkStore],
) -> None:
    store = async_store()
    await store.write(CHUNK, 1, 0, 0, b"a" * B)
    task = asyncio.create_task(store.write(CHUNK, 1, 0, 0, b"b" * (4 * B)))
    await asyncio.sleep(0)  # let it take the lock and start its thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The next read waits for the orphaned write to end (it is not stopped, only no longer
    # awaited), so it sees all of it.
    assert bytes(await store.read(CHUNK, 1, 0, 4 * B)) == b"b" * (4 * B)
    await store.close()


@pytest.mark.anyio
async def test_chunk_lock_is_fifo_and_survives_cancelled_waiters() -> None:
    lock = ChunkLock()
    order: list[str] = []
    await lock.acquire(False)  # a reader holds it

    async def take(name: str, exclusive: bool) -> None:
        await lock.acquire(exclusive)
        order.append(name)
        await asyncio.sleep(0)
        lock.release(exclusive)

    writer = asyncio.create_task(take("writer", True))
    await asyncio.sleep(0)
    late_reader = asyncio.create_task(take("late reader", False))  # queued behind the writer
    doomed = asyncio.create_task(take("doomed", True))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.sleep(0)
    assert order == []
    lock.release(False)
    await asyncio.gather(writer, late_reader)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert order == ["writer", "late reader"]
    assert lock.idle


@pytest.mark.anyio
async def test_a_cancelled_waiter_released_past_keeps_its_cancellation() -> None:
    """A waiter is cancelled, and before it runs again a release wakes the queue (which drops
    the cancelled entry): the waiter must end with CancelledError, not ValueError."""
    lock = ChunkLock()
    await lock.acquire(True)
    waiter = asyncio.create_task(lock.acquire(True))
    await asyncio.sleep(0)  # queued
    waiter.cancel()  # cancels the future it awaits; the task handles that when it next runs
    lock.release(True)  # before it does: _wake pops the cancelled entry
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lock.idle
    await lock.acquire(True)  # and the lock still works
    lock.release(True)
    assert lock.idle


# ---------------------------------------------------------------------- privacy


def test_replicas_are_private_to_the_chunkservers_user(root: Path) -> None:
    """The data directory is 0700 and each replica 0600, also when an older version made
    the directory 0755: no other local user reads a file's bytes off the disk."""
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    store = ChunkStore(root, chunk_bytes_max=MiB)
    store.write(CHUNK, 1, 0, 0, data(100))
    assert root.stat().st_mode & 0o777 == 0o700
    assert store.path(CHUNK).stat().st_mode & 0o777 == 0o600
    for d in (store.chunks_dir, store.path(CHUNK).parent):
        assert d.stat().st_mode & 0o077 == 0, d
