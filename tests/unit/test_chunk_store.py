"""The chunk store (``chunkserver/store.py``) and its event-loop face (``chunkserver/disk.py``).

What is checked here, on real files in a tmp dir:
- reads and writes at any offset against a bytearray model (unaligned, across blocks, gaps);
- the version rules of docs/PROTOCOL.md (new version truncates to the handle's length, older
  is Stale, a read of any other version is Stale) and the rule for creating a replica;
- corruption: a flipped byte makes reads of that block Corrupt and leaves the others
  readable; a write never re-checksums a corrupt block into a good one;
- capacity (NoSpace), disk errors (ENOSPC, EIO) mapped to errors and logged, never raised raw;
- the start-up scan: replicas found from headers, bad files quarantined, strays ignored;
- the crash model (``dfs.testing.faultydisk.CrashDisk``): a synced replica survives exactly;
  after unsynced writes a read returns the written bytes or Corrupt, never other bytes;
- a failure after a bump's cut leaves a replica that describes its file (writable), or one
  marked failed when the cut itself failed; ``expect_length`` refuses a replica that lost
  acknowledged bytes;
- ``AsyncChunkStore``: concurrent writes to one chunk are serialised; the lock survives
  cancelled waiters, also when a release already dropped their entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkserver.disk import AsyncChunkStore, ChunkLock
from chunkserver.store import (
    BLOCK_BYTES,
    CHUNK_BYTES_MAX,
    DATA_OFFSET,
    TABLE_OFFSET,
    BadHeader,
    ChunkStore,
    ReplicaInfo,
    chunk_relpath,
    decode_header,
    encode_header,
    footprint_bytes,
)
from dfs.testing.faultydisk import CrashDisk
from dfs.wire.errors import Corrupt, Invalid, NoSpace, NotFound, Stale, TooBig, Unavailable

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


def test_flipped_byte_is_corrupt_in_its_block_only(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=261 block=1 reason='checksum mismatch'")
    original = data(3 * B, seed=4)
    store.write(CHUNK, 1, 0, 0, original)
    flip_byte(store.path(CHUNK), DATA_OFFSET + B + 1234)
    with pytest.raises(Corrupt) as e:
        store.read(CHUNK, 1, B + 1000, 10)
    assert e.value.details["block"] == 1
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 0, 3 * B)  # any read touching block 1
    assert bytes(store.read(CHUNK, 1, 0, B)) == original[:B]
    assert bytes(store.read(CHUNK, 1, 2 * B, B)) == original[2 * B :]
    # A partial write into the bad block must not bless it with a fresh checksum.
    with pytest.raises(Corrupt):
        store.write(CHUNK, 1, 0, B + 10, b"patch")
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, B, 10)
    # A write of the whole block replaces it: nothing of the bad bytes is kept.
    store.write(CHUNK, 1, 0, B, original[B : 2 * B])
    assert bytes(store.read(CHUNK, 1, 0, 3 * B)) == original


def test_damaged_checksum_entry_is_corrupt(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=261 block=2")
    store.write(CHUNK, 1, 0, 0, data(3 * B))
    flip_byte(store.path(CHUNK), TABLE_OFFSET + 8 * 2 + 3)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 2 * B, 1)
    assert len(store.read(CHUNK, 1, 0, 2 * B)) == 2 * B


def test_a_file_cut_short_is_corrupt_not_short(
    store: ChunkStore, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=corrupt chunk=261 block=1 reason='block cut short'")
    store.write(CHUNK, 1, 0, 0, data(2 * B))
    os.truncate(store.path(CHUNK), DATA_OFFSET + B + 10)
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, B, 100)
    assert len(store.read(CHUNK, 1, 0, B)) == B


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


def test_disk_errors_become_errors_not_crashes(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=disk_full op=write chunk=261")
    expect_log(r"event=disk_error op=write chunk=(261|517) errno=5")
    expect_log(r"event=disk_error op=read chunk=261 errno=5")
    store.write(CHUNK, 1, 0, 0, b"a" * 100)
    used = store.used_bytes
    real_pwrite, real_preadv = os.pwrite, os.preadv

    def failing(code: int) -> Callable[..., int]:
        def fail(*args: object) -> int:
            raise OSError(code, os.strerror(code))

        return fail

    monkeypatch.setattr(os, "pwrite", failing(errno.ENOSPC))
    with pytest.raises(NoSpace):
        store.write(CHUNK, 1, 0, 100, b"b" * B)
    monkeypatch.setattr(os, "pwrite", failing(errno.EIO))
    with pytest.raises(Unavailable):
        store.write(CHUNK, 1, 0, 100, b"b" * B)
    with pytest.raises(Unavailable):
        store.write(CHUNK + 256, 1, 0, 0, b"new")  # a failed create leaves no file behind
    assert not store.path(CHUNK + 256).exists() and store.info(CHUNK + 256) is None
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert store.used_bytes == used and store.info(CHUNK) == ReplicaInfo(CHUNK, 1, 100)
    monkeypatch.setattr(os, "preadv", failing(errno.EIO))
    with pytest.raises(Corrupt):
        store.read(CHUNK, 1, 0, 10)
    monkeypatch.setattr(os, "preadv", real_preadv)
    assert bytes(store.read(CHUNK, 1, 0, 100)) == b"a" * 100


def test_a_replica_whose_fsync_failed_is_never_served_again(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    expect_log(r"event=disk_error op=sync chunk=261 errno=5")
    expect_log(r"event=disk_error op=write chunk=517 errno=5")
    store.write(CHUNK, 1, 0, 0, b"a" * 100)
    store.write(CHUNK + 256, 1, 0, 0, b"other")

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
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
    store.delete(CHUNK)  # what the metaserver will have it do
    store.write(CHUNK, 2, 0, 0, b"fresh", sync=True)
    assert bytes(store.read(CHUNK, 2, 0, 10)) == b"fresh"


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_data_write_failing_after_a_bump_cut_leaves_a_writable_replica(
    store: ChunkStore,
    monkeypatch: pytest.MonkeyPatch,
    expect_log: Callable[..., None],
    code: int,
) -> None:
    """A bump cuts the file first; if the data write then fails, the replica must describe
    its (cut) file: without that, memory kept the old length, the next bump tried to cut
    again from there and every later write was ``Corrupt`` ("block cut short")."""
    expect_log(r"event=(disk_full|disk_error) op=write chunk=261")
    original = data(3 * B + 500, seed=21)
    store.write(CHUNK, 1, 0, 0, original)
    real = ChunkStore._write_blocks

    def failing(self: ChunkStore, *args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ChunkStore, "_write_blocks", failing)
    with pytest.raises((Unavailable, NoSpace)):
        store.write(CHUNK, 2, B + 10, 2 * B, b"lost")
    monkeypatch.setattr(ChunkStore, "_write_blocks", real)
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


def test_a_cut_that_fails_midway_marks_the_replica_failed(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]
) -> None:
    """A failure inside the cut (its checksum entry rewritten, the file not yet cut, or cut
    with the old header) leaves a file no description fits: never served again."""
    expect_log(r"event=disk_error op=write chunk=261 errno=5")
    expect_log(r"event=replica_failed chunk=261")
    store.write(CHUNK, 1, 0, 0, data(3 * B + 500, seed=22))

    def fail(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", fail)
    with pytest.raises(Unavailable):
        store.write(CHUNK, 2, B + 10, 0, b"x")
    monkeypatch.undo()
    with pytest.raises(Corrupt, match="replica failed"):
        store.read(CHUNK, 1, 0, 10)
    with pytest.raises(Unavailable, match="replica failed"):
        store.write(CHUNK, 3, B + 10, 0, b"x")
    with pytest.raises(Unavailable, match="replica failed"):
        store.sync(CHUNK)
    store.delete(CHUNK)
    assert store.used_bytes == 0


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
