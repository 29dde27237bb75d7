"""Tests of metaserver/raft/storage.py: format round-trips, compaction, damage, and the crash
model of style.md §4 (every write since the last fsync is written, lost, torn or garbage).

Tests that log WARNINGs on purpose (torn tails, unusable snapshots) declare them with the
conftest's ``expect_log``, which also asserts that they are logged.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import xxhash

from dfs.types import LogIndex, NodeId, Term
from metaserver.raft.storage import (
    SEGMENT_HEADER_BYTES,
    CorruptLogError,
    RaftStorage,
    StorageFailedError,
    StorageLockedError,
)
from metaserver.raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from tools.testing.faultydisk import CrashDisk

pytestmark = pytest.mark.unit

LOGGER = "metaserver.raft.storage"


def entry(index: int, term: int = 1, data: bytes = b"") -> Entry:
    return Entry(Term(term), LogIndex(index), EntryType.NORMAL, data or b"cmd%d" % index)


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [entry(i, term) for i in range(first, last + 1)]


def hard_state(term: int, vote: int = 1, commit: int = 0) -> HardState:
    return HardState(Term(term), NodeId(vote), LogIndex(commit))


def snapshot(index: int, term: int = 1, data: bytes | None = None) -> Snapshot:
    meta = SnapshotMeta(LogIndex(index), Term(term), ConfState((NodeId(1), NodeId(2))))
    return Snapshot(meta, b"state@%d" % index if data is None else data)


def reopen(path: Path, **kw: Any) -> tuple[HardState, Snapshot | None, list[Entry], int, int]:
    st = RaftStorage.open(path, sync=False, **kw)
    try:
        hs, snap, ents = st.initial_state()
        return hs, snap, ents, st.first_index(), st.last_index()
    finally:
        st.close()


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("log-*.seg"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def take_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING+ messages captured so far (all must be ours), then forgets them."""
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.name == LOGGER for r in records), [r.name for r in records]
    caplog.clear()
    return [r.getMessage() for r in records]


Expect = Any  # the conftest's expect_log fixture: (regex, level=WARNING) -> None


# ------------------------------------------------------------------------------------------
# Round trips and the cost of a write


def test_fresh_directory_is_empty(tmp_path: Path) -> None:
    hs, snap, ents, first, last = reopen(tmp_path / "raft")
    assert (hs, snap, ents, first, last) == (HardState(), None, [], 1, 0)


def test_entries_and_hard_state_round_trip(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    ents = [entry(i, 1 + i // 4, bytes(range(i % 256)) * 3) for i in range(1, 40)]
    st.append(ents[:10])
    st.set_hard_state(hard_state(2, 3, 5))
    st.append(ents[10:20])
    st.set_hard_state(hard_state(3, 0, 15))
    st.append(ents[20:], hard_state(3, 0, 30))  # both in one write
    st.sync()
    st.close()
    assert reopen(tmp_path) == (hard_state(3, 0, 30), None, ents, 1, 39)


@pytest.mark.timeout(120)
def test_a_long_segment_is_read_back_in_one_pass(tmp_path: Path) -> None:
    """Recovery finds the zeros allocated ahead at the end of a segment once, not after
    every record: a test per record made it quadratic, and a busy node's restart scanned
    its log for over a minute (found by the chaos run). 200,000 records in one segment:
    seconds now; the quadratic scan would go through some 10^12 bytes."""
    st = RaftStorage.open(tmp_path, sync=False)
    count = 200_000
    for first in range(1, count + 1, 10_000):
        st.append(entries(first, first + 9_999))
    st.close()
    _, _, ents, first, last = reopen(tmp_path)
    assert (first, last, len(ents)) == (1, count, count)


def test_one_write_per_call_and_one_fsync_per_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = RaftStorage.open(tmp_path)  # sync=True: the real thing
    calls: Counter[str] = Counter()
    real_write, real_fsync, real_fdatasync = os.write, os.fsync, os.fdatasync

    def count(name: str, fn: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return fn(*args)

        return wrapper

    monkeypatch.setattr(os, "write", count("write", real_write))
    monkeypatch.setattr(os, "fsync", count("fsync", real_fsync))
    monkeypatch.setattr(os, "fdatasync", count("fsync", real_fdatasync))
    st.append(entries(1, 64))
    assert calls == {"write": 1}
    st.set_hard_state(hard_state(1, 1, 64))
    assert calls == {"write": 2}
    st.sync()
    assert calls == {"write": 2, "fsync": 1}
    st.sync()  # nothing written since: nothing to flush
    st.set_hard_state(hard_state(1, 1, 64))  # unchanged: not written again
    assert calls == {"write": 2, "fsync": 1}
    st.append(entries(65, 70), hard_state(1, 1, 70))  # a Ready's entries and hard state
    assert calls == {"write": 3, "fsync": 1}
    st.set_hard_state(hard_state(1, 1, 70))  # written with the entries
    assert calls == {"write": 3, "fsync": 1}
    monkeypatch.undo()
    st.close()


def test_sync_false_never_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(fd: int) -> None:
        raise AssertionError("fsync with sync=False")

    monkeypatch.setattr(os, "fsync", forbidden)
    monkeypatch.setattr(os, "fdatasync", forbidden)
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=100)
    for i in range(1, 30):
        st.append([entry(i)])
        st.sync()
    st.save_snapshot(snapshot(20))
    st.install_snapshot(snapshot(50, 2))
    st.close()


def test_second_open_of_same_directory_is_refused(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    with pytest.raises(StorageLockedError):
        RaftStorage.open(tmp_path, sync=False)
    st.close()
    RaftStorage.open(tmp_path, sync=False).close()


def test_programmer_errors_assert(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 3))
    with pytest.raises(AssertionError, match="append at 5"):
        st.append([entry(5)])
    with pytest.raises(AssertionError, match="contiguous"):
        st.append([entry(4), entry(6)])
    with pytest.raises(AssertionError, match="before any write"):
        st.initial_state()
    st.save_snapshot(snapshot(2))
    with pytest.raises(AssertionError, match="append at 2"):
        st.append([entry(2)])  # covered by the snapshot
    st.close()


def test_failed_write_poisons_the_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 3))

    def disk_full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        st.append([entry(4)])
    monkeypatch.undo()
    with pytest.raises(StorageFailedError):
        st.sync()
    st.close()
    assert reopen(tmp_path)[2] == entries(1, 3)


# ------------------------------------------------------------------------------------------
# Suffix replacement, segments, compaction, snapshots


def test_suffix_replacement_survives_reopen(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 10, term=1))
    st.append(entries(6, 8, term=2))  # discards 6..10 of term 1
    assert st.last_index() == 8
    st.append([entry(9, 3)])
    st.sync()
    st.close()
    assert reopen(tmp_path)[2] == entries(1, 5, 1) + entries(6, 8, 2) + [entry(9, 3)]


def test_suffix_replacement_across_segments_then_compaction(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=150)
    for i in range(1, 31):
        st.append([entry(i, 1)])
    assert len(segments(tmp_path)) >= 5
    st.append(entries(5, 6, term=2))  # replaces entries stored in older segments
    st.sync()
    st.close()
    _, _, ents, _, last = reopen(tmp_path, segment_bytes_max=150)
    assert ents == entries(1, 4, 1) + entries(5, 6, 2) and last == 6

    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=150)
    st.initial_state()
    st.save_snapshot(snapshot(6, 2))
    # Every older segment holds only entries <= 6 or stale ones: all of them go.
    assert len(segments(tmp_path)) == 1
    st.append([entry(7, 2)])
    st.sync()
    st.close()
    _, snap, ents, first, last = reopen(tmp_path, segment_bytes_max=150)
    assert snap == snapshot(6, 2) and ents == [entry(7, 2)] and (first, last) == (7, 7)


def test_rolling_compaction_and_hard_state_survival(tmp_path: Path) -> None:
    max_bytes = 400
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=max_bytes)
    hs = hard_state(7, 2, 0)
    st.set_hard_state(hs)  # written once, into the first segment only
    for i in range(1, 101, 5):
        st.append(entries(i, i + 4))
    st.sync()
    n_segments = len(segments(tmp_path))
    assert n_segments >= 5
    for seg in segments(tmp_path)[:-1]:
        assert seg.stat().st_size >= max_bytes  # rolled only once full
    st.save_snapshot(snapshot(50))
    assert 1 < len(segments(tmp_path)) < n_segments
    assert st.first_index() == 51 and st.last_index() == 100
    st.save_snapshot(snapshot(90))
    # The log no longer holds 51..90, so snapshot 50 is no use as a fallback any more.
    assert sorted(p.name for p in tmp_path.glob("snap-*")) == ["snap-000000000000005a.snap"]
    st.close()
    got_hs, snap, ents, first, last = reopen(tmp_path, segment_bytes_max=max_bytes)
    assert got_hs == hs
    assert snap == snapshot(90)
    assert ents == entries(91, 100) and (first, last) == (91, 100)


def test_save_snapshot_of_everything_then_append(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=64)
    st.append(entries(1, 20))
    st.append(entries(21, 40))
    st.save_snapshot(snapshot(40))
    st.append([entry(41)])
    st.sync()
    st.close()
    _, snap, ents, first, last = reopen(tmp_path)
    assert snap == snapshot(40) and ents == [entry(41)] and (first, last) == (41, 41)


@pytest.mark.parametrize("index", [20, 100])  # inside the log, and past its end
def test_install_snapshot_discards_the_log(tmp_path: Path, index: int) -> None:
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=200)
    st.append(entries(1, 30, term=1))
    st.set_hard_state(hard_state(1, 1, 10))
    st.save_snapshot(snapshot(5))
    st.install_snapshot(snapshot(index, 5))
    assert (st.first_index(), st.last_index()) == (index + 1, index)
    assert len(segments(tmp_path)) == 1
    assert [p.name for p in tmp_path.glob("snap-*")] == [f"snap-{index:016x}.snap"]
    st.close()
    hs, snap, ents, first, last = reopen(tmp_path)
    assert (hs, snap, ents, first, last) == (
        hard_state(1, 1, 10), snapshot(index, 5), [], index + 1, index
    )  # fmt: skip

    st = RaftStorage.open(tmp_path, sync=False)
    st.append([entry(index + 1, 5)])
    st.sync()
    st.close()
    assert reopen(tmp_path)[2] == [entry(index + 1, 5)]


@pytest.mark.parametrize("term", [1, 9])
def test_install_interrupted_after_the_snapshot_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, term: int
) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 30, term=1))
    st.sync()

    def crash(self: RaftStorage, reset_index: int | None) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(RaftStorage, "_start_segment", crash)
    with pytest.raises(RuntimeError):
        st.install_snapshot(snapshot(20, term))
    monkeypatch.undo()
    st.close()
    _, snap, ents, _, last = reopen(tmp_path)
    assert snap == snapshot(20, term)
    if term == 1:
        # Our entry 20 has the snapshot's term: by Log Matching the rest extends it.
        assert ents == entries(21, 30) and last == 30
    else:
        # It disagrees: recovery finishes the install and discards the log.
        assert ents == [] and last == 20
        st = RaftStorage.open(tmp_path, sync=False)
        st.append([entry(21, 9)])
        st.sync()
        st.close()
        assert reopen(tmp_path)[2] == [entry(21, 9)]


def test_crash_during_save_snapshot_is_harmless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 10))
    st.sync()

    def crash(src: Any, dst: Any) -> None:
        raise OSError(5, "power cut before the rename")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError):
        st.save_snapshot(snapshot(8))
    monkeypatch.undo()
    st.close()
    # A half-written temp file from another crash, at a higher index.
    (tmp_path / f"snap-{9:016x}.snap.tmp").write_bytes(b"DFSRSNP\0garbage")
    assert list(tmp_path.glob("*.tmp"))
    assert reopen(tmp_path)[1:3] == (None, entries(1, 10))
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------
# Damage


def make_segments(path: Path, n: int = 3) -> RaftStorage:
    st = RaftStorage.open(path, sync=False, segment_bytes_max=200)
    i = 1
    while len(segments(path)) < n:
        st.append([entry(i)])
        i += 1
    st.append([entry(i)])
    st.sync()
    return st


def test_corrupt_byte_in_a_non_last_segment_refuses_to_start(tmp_path: Path) -> None:
    make_segments(tmp_path).close()
    first = segments(tmp_path)[0]
    offset = SEGMENT_HEADER_BYTES + 40  # inside the HARD_STATE or first ENTRY record
    flip_byte(first, offset)
    with pytest.raises(CorruptLogError) as err:
        RaftStorage.open(tmp_path, sync=False)
    assert first.name in str(err.value) and "offset" in str(err.value)


def test_corrupt_header_of_a_non_last_segment_refuses_to_start(tmp_path: Path) -> None:
    make_segments(tmp_path).close()
    flip_byte(segments(tmp_path)[1], 3)
    with pytest.raises(CorruptLogError, match="offset 0"):
        RaftStorage.open(tmp_path, sync=False)


def test_missing_middle_segment_refuses_to_start(tmp_path: Path) -> None:
    make_segments(tmp_path).close()
    segments(tmp_path)[1].unlink()
    with pytest.raises(CorruptLogError, match="entries are missing"):
        RaftStorage.open(tmp_path, sync=False)
    assert len(segments(tmp_path)) == 2  # nothing deleted when refusing


def test_leftover_segments_before_a_hole_are_dropped(tmp_path: Path) -> None:
    # A crash during compaction's unlinks may bring an old segment back behind a hole.
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=150)
    for i in range(1, 31):
        st.append([entry(i)])
    st.sync()
    old = segments(tmp_path)[:2]
    saved = [(p, p.read_bytes()) for p in old]
    st.save_snapshot(snapshot(25))
    st.close()
    assert not any(p.exists() for p in old)
    path, data = saved[0]  # the first comes back, the second does not
    path.write_bytes(data)
    _, snap, ents, _, _ = reopen(tmp_path)
    assert snap == snapshot(25) and ents == entries(26, 30)
    assert not path.exists()


def test_torn_tail_of_last_segment_is_cut_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"a record cut short at offset \d+; dropped the torn tail \(9 bytes\)")
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 5))
    st.sync()
    st.close()
    seg = segments(tmp_path)[-1]
    good = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(b"\x07\x00\x00\x00\x01torn")  # a record cut short
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st = RaftStorage.open(tmp_path, sync=False)
    [msg] = take_warnings(caplog)
    assert seg.name in msg and "(9 bytes)" in msg
    assert st.initial_state()[2] == entries(1, 5)
    assert seg.stat().st_size == good
    st.append([entry(6)])  # lands right after entry 5, not after the garbage
    st.sync()
    st.close()
    assert reopen(tmp_path)[2] == entries(1, 6)
    assert not take_warnings(caplog)


def test_corrupt_record_in_last_segment_is_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"record checksum mismatch at offset \d+; dropped the torn tail")
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 3))
    st.sync()
    size_after_3 = segments(tmp_path)[-1].stat().st_size
    st.append(entries(4, 6))
    st.close()
    flip_byte(segments(tmp_path)[-1], size_after_3 + 8)  # inside entry 4
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert reopen(tmp_path)[2] == entries(1, 3)
    [msg] = take_warnings(caplog)
    assert "checksum" in msg


def test_space_allocated_ahead_is_the_clean_end_of_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = RaftStorage.open(tmp_path, sync=False, preallocate_bytes=4096)
    st.append(entries(1, 5))
    st.sync()
    st.close()
    [seg] = segments(tmp_path)
    data = seg.read_bytes()
    records_end = len(data.rstrip(b"\0"))
    assert records_end < 4096 <= len(data)  # allocated ahead: zeros
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st = RaftStorage.open(tmp_path, sync=False, preallocate_bytes=4096)
        assert st.initial_state()[2] == entries(1, 5)
        st.append([entry(6)])  # over the zeros, right after entry 5
        st.sync()
        st.close()
        assert reopen(tmp_path)[2] == entries(1, 6)  # also read without allocating ahead
    assert not take_warnings(caplog)
    assert seg.stat().st_size == len(data)  # written in place, no new size


def test_a_rolled_segment_is_cut_to_its_records(tmp_path: Path) -> None:
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=150, preallocate_bytes=4096)
    for i in range(1, 21):
        st.append([entry(i, data=b"x" * 20)])
    st.sync()
    st.close()
    *rolled, active = segments(tmp_path)
    assert rolled
    for seg in rolled:
        data = seg.read_bytes()
        assert len(data) < 4096 and data[-8:].count(0) < 8, seg.name  # ends in a checksum
    assert active.stat().st_size >= 4096
    assert reopen(tmp_path, segment_bytes_max=150)[2] == [
        entry(i, data=b"x" * 20) for i in range(1, 21)
    ]


def test_torn_record_in_space_allocated_ahead_is_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"record checksum mismatch at offset \d+; dropped the torn tail")
    st = RaftStorage.open(tmp_path, sync=False, preallocate_bytes=4096)
    st.append(entries(1, 3))
    st.sync()
    st.close()
    [seg] = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    end = len(data.rstrip(b"\0"))
    data[end : end + 5] = struct.pack("<IB", 40, 1)  # a record whose body never landed
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st = RaftStorage.open(tmp_path, sync=False, preallocate_bytes=4096)
    [msg] = take_warnings(caplog)
    assert "checksum" in msg
    assert st.initial_state()[2] == entries(1, 3)
    st.append([entry(4)])
    st.sync()
    st.close()
    assert reopen(tmp_path)[2] == entries(1, 4)
    assert not take_warnings(caplog)


def good_record(rtype: int, value: Any) -> bytes:
    """A record with a valid checksum, built independently of storage.py."""
    payload: bytes = msgpack.packb(value, use_bin_type=True)
    body = struct.pack("<IB", len(payload), rtype) + payload
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (good_record(9, [1]), "unknown record type 9"),
        (good_record(1, [1, 2, 3]), "undecodable record of type 1"),
        (good_record(1, [1, 99, 0, b"x"]), "a gap"),
    ],
)
def test_impossible_record_with_good_checksum_is_corruption_even_at_the_tail(
    tmp_path: Path, record: bytes, message: str
) -> None:
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 3))
    st.sync()
    st.close()
    with segments(tmp_path)[-1].open("ab") as f:
        f.write(record)  # a crash cannot forge a 64-bit checksum: this is not a torn write
    with pytest.raises(CorruptLogError, match=message):
        RaftStorage.open(tmp_path, sync=False)


@pytest.mark.parametrize("length", [0xFFFF_FFFF, 1 << 20])  # above the maximum; past EOF
def test_huge_length_field_never_allocates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect, length: int
) -> None:
    expect_log(rf"record length {length} .*; dropped the torn tail \(25 bytes\)")
    st = make_segments(tmp_path, n=2)
    st.close()
    last = segments(tmp_path)[-1]
    with last.open("ab") as f:
        f.write(struct.pack("<IB", length, 1) + b"x" * 20)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            reopen(tmp_path, segment_bytes_max=200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024
    [msg] = take_warnings(caplog)
    assert f"length {length}" in msg

    # The same length in the first record of an earlier segment is corruption.
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    struct.pack_into("<I", data, SEGMENT_HEADER_BYTES, length)
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=f"length {length}"):
        RaftStorage.open(tmp_path, sync=False)


def test_torn_header_of_new_last_segment_drops_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"file shorter than its header; dropped the whole segment \(9 bytes\)")
    make_segments(tmp_path, n=2).close()
    expected = reopen(tmp_path)[2]
    n = len(segments(tmp_path))
    # A crash while creating segment n + 1: its header never fully reached the disk.
    (tmp_path / f"log-{n + 1:016x}-{999:016x}.seg").write_bytes(b"DFSRLOG\0\x01")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert reopen(tmp_path)[2] == expected
    [msg] = take_warnings(caplog)
    assert "dropped the whole segment (9 bytes)" in msg
    assert len(segments(tmp_path)) == n


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"snap-000000000000000a\.snap is unusable \(checksum mismatch\)")
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 20))
    st.save_snapshot(snapshot(5))
    st.save_snapshot(snapshot(10))
    st.close()
    # One segment: the log still holds everything after 5, so snapshot 5 was kept.
    newest = tmp_path / f"snap-{10:016x}.snap"
    flip_byte(newest, newest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, snap, ents, first, last = reopen(tmp_path)
    assert snap == snapshot(5) and ents == entries(6, 20) and (first, last) == (6, 20)
    [msg] = take_warnings(caplog)
    assert newest.name in msg and "checksum" in msg


def test_corrupt_only_snapshot_falls_back_to_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"snap-000000000000000a\.snap is unusable")
    st = RaftStorage.open(tmp_path, sync=False)
    st.append(entries(1, 20))
    st.save_snapshot(snapshot(10))
    st.close()
    snap_file = tmp_path / f"snap-{10:016x}.snap"
    snap_file.write_bytes(snap_file.read_bytes()[:-3])  # truncated
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, snap, ents, first, last = reopen(tmp_path)
    assert snap is None and ents == entries(1, 20) and (first, last) == (1, 20)
    assert len(take_warnings(caplog)) == 1


def test_corrupt_snapshot_whose_entries_are_gone_refuses_to_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    expect_log(r"snap-000000000000001e\.snap is unusable")
    st = RaftStorage.open(tmp_path, sync=False, segment_bytes_max=100)
    for i in range(1, 41):
        st.append([entry(i)])
    st.save_snapshot(snapshot(30))  # deletes the segments holding 1..~29
    st.close()
    flip_byte(tmp_path / f"snap-{30:016x}.snap", 20)
    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        pytest.raises(CorruptLogError, match="entries are missing"),
    ):
        RaftStorage.open(tmp_path, sync=False)
    assert len(take_warnings(caplog)) == 1


# ------------------------------------------------------------------------------------------
# The crash model: random operations, crash images taken between and inside operations.

State = tuple[Any, tuple[Entry, ...], HardState]


def snap_key(snap: Snapshot | None) -> Any:
    return None if snap is None else (snap.meta.index, snap.meta.term, snap.data)


@dataclass
class Model:
    """What the log holds after each write, if every write so far reached the disk."""

    snap: Snapshot | None = None
    log: list[Entry] = field(default_factory=list)  # entries after the snapshot
    hs: HardState = field(default_factory=HardState)

    @property
    def snap_index(self) -> int:
        return 0 if self.snap is None else self.snap.meta.index

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.log)

    def term_at(self, index: int) -> int:
        if index == self.snap_index:
            return 0 if self.snap is None else self.snap.meta.term
        return self.log[index - self.snap_index - 1].term

    def put(self, e: Entry) -> None:
        del self.log[e.index - self.snap_index - 1 :]
        self.log.append(e)

    def state(self) -> State:
        return (snap_key(self.snap), tuple(self.log), self.hs)


class CrashCase:
    def __init__(self, root: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.caplog = caplog
        self.segment_bytes_max = self.rng.choice([150, 600, 1 << 20])
        # Space allocated ahead: none, less than a record, more than a segment.
        self.preallocate_bytes = self.rng.choice([0, 0, 16, 100, 1000])
        self.model = Model()
        # Every state a crash may recover: the state at the last sync, then one more per
        # record written since (records reach the disk in order, so a crash keeps a prefix).
        # Recovering one of these is the requirement: all synced entries and hard state
        # intact, unsynced ones a contiguous prefix, no garbage entry.
        self.candidates: list[State] = [self.model.state()]
        self.during: list[State] = self.candidates  # valid if a crash hits inside an op
        self.images = 0

    def run(self) -> int:
        live = self.root / "live"
        with CrashDisk(live) as disk:
            disk.before_sync = self._maybe_crash_inside(disk)
            st = RaftStorage.open(
                live,
                segment_bytes_max=self.segment_bytes_max,
                preallocate_bytes=self.preallocate_bytes,
            )
            term = 1
            for _ in range(self.rng.randint(10, 60)):
                r = self.rng.random()
                m = self.model
                if r < 0.4:
                    if self.rng.random() < 0.2:
                        term += 1
                    start = self.rng.randint(
                        max(m.snap_index + 1, m.last_index - 3), m.last_index + 1
                    )
                    batch = [
                        entry(i, term, self.rng.randbytes(self.rng.randint(1, 40)))
                        for i in range(start, start + self.rng.randint(1, 6))
                    ]
                    after = []
                    for e in batch:
                        m.put(e)
                        after.append(m.state())
                    self._do(lambda b=batch: st.append(b), after, synced=False)
                elif r < 0.55:
                    m.hs = hard_state(
                        term, self.rng.randint(0, 3), self.rng.randint(0, m.last_index)
                    )
                    self._do(lambda hs=m.hs: st.set_hard_state(hs), [m.state()], synced=False)
                elif r < 0.7:
                    self._do(st.sync, [m.state()], synced=True)
                elif r < 0.8:
                    index = self.rng.randint(m.snap_index, m.last_index)
                    snap = snapshot(index, m.term_at(index))
                    m.log = m.log[index - m.snap_index :]
                    m.snap = snap
                    self._do(lambda s=snap: st.save_snapshot(s), [m.state()], synced=True)
                elif r < 0.85:
                    term += 1  # a new term: the snapshot disagrees with every stored entry
                    index = self.rng.randint(m.snap_index + 1, m.last_index + 5)
                    snap = snapshot(index, term)
                    m.snap, m.log = snap, []
                    # The snapshot becomes durable before the new log does: a crash in
                    # between pairs it with any hard state a crash could leave.
                    between: list[State] = [(snap_key(snap), (), hs) for *_, hs in self.candidates]
                    self._do(
                        lambda s=snap: st.install_snapshot(s),
                        [m.state()],
                        synced=True,
                        extra=between,
                    )
                else:
                    self.check_crash(disk, self.candidates)
            self.check_crash(disk, self.candidates)
            st.close()
        return self.images

    def _do(
        self, op: Any, after: list[State], *, synced: bool, extra: list[State] | None = None
    ) -> None:
        # A crash inside the op may leave the state before it (any candidate so far) or
        # any state the op writes on the way.
        self.during = self.candidates + (extra or []) + after
        op()
        self.candidates = [after[-1]] if synced else self.candidates + after
        self.during = self.candidates

    def _maybe_crash_inside(self, disk: CrashDisk) -> Any:
        def hook() -> None:
            if self.rng.random() < 0.15:
                self.check_crash(disk, self.during)

        return hook

    def check_crash(self, disk: CrashDisk, valid: list[State]) -> None:
        image = self.root / f"crash{self.images}"
        self.images += 1
        fates = disk.crash_image(image, self.rng)
        context = f"seed {self.seed}, image {self.images}: {fates}"
        with self.caplog.at_level(logging.WARNING, logger=LOGGER):
            st = RaftStorage.open(
                image,
                sync=False,
                segment_bytes_max=self.segment_bytes_max,
                preallocate_bytes=self.preallocate_bytes,
            )
        for msg in take_warnings(self.caplog):
            assert "torn tail" in msg or "whole segment" in msg, f"{context}: {msg}"
        hs, snap, ents = st.initial_state()
        got = (snap_key(snap), tuple(ents), hs)
        assert got in valid, f"{context}: recovered {got}"
        # Writing on after recovery must work, and land after the recovered entries (a torn
        # tail left in place would swallow it).
        more = entry(st.last_index() + 1, 1000, b"after crash")
        st.append([more])
        st.set_hard_state(hard_state(1000))
        st.sync()
        st.close()
        hs2, snap2, ents2, _, _ = reopen(image, segment_bytes_max=self.segment_bytes_max)
        assert (snap_key(snap2), ents2, hs2) == (got[0], [*ents, more], hard_state(1000)), context
        assert not take_warnings(self.caplog), context
        shutil.rmtree(image)


def test_crash_model_recovers_a_prefix_of_the_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, expect_log: Expect
) -> None:
    # Crashes leave torn tails, and torn new segments; check_crash checks every warning.
    expect_log(r"dropped the torn tail")
    expect_log(r"dropped the whole segment")
    images = 0
    for seed in range(150):
        images += CrashCase(tmp_path / f"seed{seed}", seed, caplog).run()
        shutil.rmtree(tmp_path / f"seed{seed}")
    assert images > 600  # the cases really crashed, many times


def test_the_log_and_snapshots_are_private_to_the_metaservers_user(tmp_path: Path) -> None:
    """The Raft directory is 0700 (also one an older version made 0755) and each segment,
    snapshot and lock 0600: the namespace is not readable by other local users."""
    d = tmp_path / "raft"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    st = RaftStorage.open(d, sync=False)
    st.append([entry(1)], hard_state(1, 0, 1))
    st.save_snapshot(snapshot(1))
    st.close()
    assert d.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in d.iterdir())
    assert any(n.endswith(".seg") for n in names) and any(n.endswith(".snap") for n in names)
    for p in d.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p.name
