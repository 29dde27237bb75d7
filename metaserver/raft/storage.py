"""Durable storage of one Raft node: log segments, hard state and snapshots in one directory.

What this module owns:
- every file in the node's Raft directory (``log-*.seg``, ``snap-*.snap``, ``LOCK``) and the
  single on-disk format defined below;
- crash recovery: on ``open`` it finds the newest valid snapshot, replays the segments, cuts a
  torn tail off the last segment and finishes an interrupted snapshot install.

What it must not do:
- know the Raft algorithm beyond "entries are indexed, contiguous, and a suffix may be
  replaced" (terms, votes and commit indexes are opaque values here);
- be called from two threads at once. It is synchronous, blocking code that ``node.py`` runs in
  a worker thread, one call at a time (thread-confined, not thread-safe);
- fsync anything except in ``sync``, ``save_snapshot``, ``install_snapshot``, segment creation
  and recovery (group commit: ``append`` and ``set_hard_state`` only write).

Where invariants are checked:
- ``append`` asserts contiguity and record sizes right before writing (programmer errors);
- ``_scan_records`` and ``_read_snapshot`` verify every checksum and bound every length right
  after reading; ``_Replay`` checks that the records form a gap-free log;
- ``_recover`` checks that the log and the snapshot fit together, and raises
  ``CorruptLogError`` for any damage that a crash cannot explain.

After an ``OSError`` from a write or an fsync the instance refuses further calls
(``StorageFailedError``): the kernel may have dropped the dirty pages ("fsyncgate"), so the only
safe way on is to restart and let recovery decide what is on disk.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from dfs.types import FRAME_HEADER_BYTES_MAX, LogIndex, Term
from metaserver.raft.types import (
    Entry,
    HardState,
    Snapshot,
    entry_from_wire,
    entry_to_wire,
    hard_state_from_wire,
    hard_state_to_wire,
    snapshot_meta_from_wire,
    snapshot_meta_to_wire,
)

log = logging.getLogger(__name__)

# ========================================================================================
# On-disk format, version 1. This block is the one definition; change it only together
# with STORAGE_FORMAT_VERSION. All integers are little-endian. Payloads are msgpack
# (use_bin_type) of the canonical encodings in metaserver/raft/types.py.
#
# Directory
#   LOCK                                   flock()ed while a RaftStorage has the directory open
#   log-<seq:016x>-<first:016x>.seg        log segment; seq orders segments (1, 2, 3, ...),
#                                          first = index the next entry had when the segment
#                                          was created (informational: a segment may also hold
#                                          entries below it, see "suffix replacement")
#   snap-<index:016x>.snap                 snapshot covering entries <= index
#   snap-<index:016x>.snap.tmp             snapshot being written; deleted on open
#
# Segment file
#   header   magic "DFSRLOG\0" | u16 version | u16 flags (0) | u64 seq | u64 first
#            | u64 xxh3_64(the 28 bytes before)                                 36 bytes
#   records  u32 length | u8 type | payload (length bytes) | u64 xxh3_64(length|type|payload)
#     type 1 ENTRY       payload = entry_to_wire(entry)
#     type 2 HARD_STATE  payload = hard_state_to_wire(hs); the last one in the log wins
#     type 3 LOG_RESET   payload = [index]: discard every entry; the next entry is index + 1
#   A new segment starts with [LOG_RESET if it is made by install_snapshot] and the current
#   HARD_STATE, so deleting old segments never loses the hard state.
#
# Suffix replacement is logical, not physical: an ENTRY record whose index is <= the last
# index so far discards every entry from that index on (etcd's WAL does the same). The
# replacement and the discard are then one append, covered by one fsync, and a crash can
# only lose both or neither. Recovery (``_Replay``) applies the records in order.
#
# Snapshot file
#   magic "DFSRSNP\0" | u16 version | u16 flags (0) | u32 meta length | meta
#   | u64 data length | data | u64 xxh3_64(everything before)
#   meta = snapshot_meta_to_wire(meta); the file name's index must equal meta.index.
#
# Space allocated ahead (``preallocate_bytes``): the active segment may end in zero bytes,
# allocated before the records that will fill them, so that the fsync after an append
# flushes data only and need not also commit a new file size through the file system's
# journal (on the project's VMs: 0.13 ms instead of 0.19 ms alone, 0.21 instead of 0.28
# with three nodes on one disk). A run of zero bytes from a record boundary to the end of
# a file is the clean end of its records (no record is all zeros: the type is never 0);
# zeros followed by anything else are damage as below. A segment is cut to its records
# before the next one is created. Readers that predate this read such a tail as a torn one
# and cut it (one WARNING); nothing else changes, so the version stays 1.
#
# Damage: in the last segment, everything from the first bad record on is a torn tail and
# is cut off (one WARNING). Anywhere else it is CorruptLogError. A record whose checksum
# is good but whose contents are impossible (unknown type, bad msgpack, a gap) is always
# CorruptLogError: a crash does not produce a matching 64-bit checksum.
# ========================================================================================

STORAGE_FORMAT_VERSION = 1
SEGMENT_MAGIC = b"DFSRLOG\x00"
SNAPSHOT_MAGIC = b"DFSRSNP\x00"

_SEGMENT_HEADER = struct.Struct("<8sHHQQ")  # magic, version, flags, seq, first
_CHECKSUM = struct.Struct("<Q")
SEGMENT_HEADER_BYTES = _SEGMENT_HEADER.size + _CHECKSUM.size
_RECORD_HEAD = struct.Struct("<IB")  # payload length, type
RECORD_OVERHEAD_BYTES = _RECORD_HEAD.size + _CHECKSUM.size
_SNAPSHOT_HEAD = struct.Struct("<8sHHI")  # magic, version, flags, meta length
_SNAPSHOT_DATA_LEN = struct.Struct("<Q")

# An entry reaches us inside one frame header (dfs.wire), so no record can be larger; a
# length field above this is damage, never a reason to allocate.
RECORD_PAYLOAD_BYTES_MAX = FRAME_HEADER_BYTES_MAX
# Snapshot meta is an index, a term and the member list: a few hundred bytes in practice.
SNAPSHOT_META_BYTES_MAX = 1024 * 1024
# How far ahead of its records a node allocates the active segment (see "Space allocated
# ahead"): one fsync in about every 3,000 small entries then also commits a new file size.
PREALLOCATE_BYTES = 1024 * 1024

_SEGMENT_RE = re.compile(r"^log-([0-9a-f]{16})-([0-9a-f]{16})\.seg$")
_SNAPSHOT_RE = re.compile(r"^snap-([0-9a-f]{16})\.snap$")
_SNAPSHOT_TMP_RE = re.compile(r"^snap-([0-9a-f]{16})\.snap\.tmp$")
LOCK_NAME = "LOCK"
# The log and snapshots hold the whole namespace: only the metaserver's own user may read
# them. The directory is made (or made again, at start) 0700, each file in it 0600.
DIR_MODE = 0o700
FILE_MODE = 0o600


class RecordType(enum.IntEnum):
    ENTRY = 1
    HARD_STATE = 2
    LOG_RESET = 3


class CorruptLogError(Exception):
    """Damage a crash cannot explain (not a torn tail): the node must refuse to start."""


class StorageLockedError(Exception):
    """Another RaftStorage (in this or another process) has the directory open."""


class StorageFailedError(Exception):
    """An earlier write or fsync failed; restart the node and let recovery sort out the disk."""


def segment_name(seq: int, first_index: int) -> str:
    return f"log-{seq:016x}-{first_index:016x}.seg"


def snapshot_name(index: int) -> str:
    return f"snap-{index:016x}.snap"


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _record(rtype: RecordType, payload: bytes) -> bytes:
    # Paired assertion (style.md §4): nothing larger than the reader accepts goes to disk.
    assert len(payload) <= RECORD_PAYLOAD_BYTES_MAX, f"record of {len(payload)} bytes"
    body = _RECORD_HEAD.pack(len(payload), rtype) + payload
    return body + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))


def _segment_header(seq: int, first_index: int) -> bytes:
    head = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, STORAGE_FORMAT_VERSION, 0, seq, first_index)
    return head + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(head))


@dataclass(slots=True)
class _Segment:
    seq: int
    first_index: int
    path: Path


class _Layout:
    """Which segment holds each live entry, for deciding which segments compaction may delete.

    HOW IT WORKS: entries are only ever appended at the end or replace a suffix, and they are
    always written to the newest segment. So the live log (indices up to ``last``) splits into
    runs ``(seq, lo)``: segment ``seq`` holds entries ``lo`` up to the next run's ``lo`` - 1.
    Writing an entry at index i drops the runs that start at or after i and starts a new run
    unless the newest run is already in the current segment.

    Deleting the oldest segments is safe once none of them holds a live entry above the
    snapshot index: replaying the remaining segments yields the same entries above that index
    (each remaining record acts as it did, the records below are covered by the snapshot).
    """

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []

    def put(self, seq: int, index: int) -> None:
        while self.runs and self.runs[-1][1] >= index:
            self.runs.pop()
        if not self.runs or self.runs[-1][0] != seq:
            self.runs.append((seq, index))

    def reset(self) -> None:
        self.runs.clear()

    def highest_live_index(self, last_index: int) -> dict[int, int]:
        """seq -> highest live entry index it holds (segments without live entries absent)."""
        out: dict[int, int] = {}
        for k, (seq, _lo) in enumerate(self.runs):
            out[seq] = self.runs[k + 1][1] - 1 if k + 1 < len(self.runs) else last_index
        return out

    def forget(self, seqs: set[int]) -> None:
        self.runs = [run for run in self.runs if run[0] not in seqs]


class _Replay:
    """Applies segment records in order, as described in the format block."""

    def __init__(self) -> None:
        self.base: int | None = None  # index before entries[0]; None until an entry or reset
        self.entries: list[Entry] = []
        self.hard_state = HardState()
        self.layout = _Layout()

    def entry(self, seq: int, e: Entry, path: Path, offset: int) -> None:
        if e.index < 1:
            raise CorruptLogError(f"{path}: offset {offset}: entry with index {e.index}")
        if self.base is None:
            self.base = e.index - 1
        next_index = self.base + len(self.entries) + 1
        if e.index > next_index:
            raise CorruptLogError(
                f"{path}: offset {offset}: entry {e.index} follows {next_index - 1}: a gap"
            )
        if e.index <= self.base:
            # Possible only after old segments were deleted: the record replaces entries
            # that are no longer stored (and that the snapshot covers).
            self.base = e.index - 1
            self.entries.clear()
        else:
            del self.entries[e.index - self.base - 1 :]
        self.entries.append(e)
        self.layout.put(seq, e.index)

    def reset(self, index: int) -> None:
        self.base = index
        self.entries.clear()
        self.layout.reset()


def _decode(rtype: int, payload: bytes, path: Path, offset: int) -> Entry | HardState | int:
    """Decodes a record whose checksum matched; any failure here is real corruption."""
    try:
        value = msgpack.unpackb(payload, raw=False)
        if rtype == RecordType.ENTRY:
            return entry_from_wire(value)
        if rtype == RecordType.HARD_STATE:
            return hard_state_from_wire(value)
        if rtype == RecordType.LOG_RESET:
            if not (isinstance(value, list) and len(value) == 1 and type(value[0]) is int):
                raise ValueError("malformed LOG_RESET")
            index: int = value[0]
            return index
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptLogError(
            f"{path}: offset {offset}: undecodable record of type {rtype}: {exc}"
        ) from exc
    raise CorruptLogError(f"{path}: offset {offset}: unknown record type {rtype}")


def _scan_records(
    path: Path, data: bytes, start: int
) -> tuple[list[tuple[int, int, Entry | HardState | int]], int, str | None]:
    """Parses records from ``start``; returns (records, end of the last good one, damage).

    ``damage`` says why parsing stopped before the end of the file (None if it did not).
    """
    records: list[tuple[int, int, Entry | HardState | int]] = []
    view = memoryview(data)
    size = len(data)
    # Where the zeros at the end begin (found once: a test per record was quadratic, and
    # a restart of a busy node scanned its log for a minute).
    zeros_from = len(data.rstrip(b"\0"))
    pos = start
    while pos < size:
        if pos >= zeros_from:
            return records, pos, None  # space allocated ahead: the clean end
        if size - pos < RECORD_OVERHEAD_BYTES:
            return records, pos, "a record cut short"
        length, rtype = _RECORD_HEAD.unpack_from(data, pos)
        # Bound the length before using it: it comes from the disk.
        if length > RECORD_PAYLOAD_BYTES_MAX:
            return records, pos, f"record length {length} exceeds the maximum"
        end = pos + RECORD_OVERHEAD_BYTES + length
        if end > size:
            return records, pos, f"record length {length} runs past the end of the file"
        body_end = end - _CHECKSUM.size
        (stored,) = _CHECKSUM.unpack_from(data, body_end)
        if xxhash.xxh3_64_intdigest(view[pos:body_end]) != stored:
            return records, pos, "record checksum mismatch"
        payload = bytes(view[pos + _RECORD_HEAD.size : body_end])
        records.append((pos, rtype, _decode(rtype, payload, path, pos)))
        pos = end
    return records, pos, None


def _check_segment_header(seg: _Segment, data: bytes) -> str | None:
    """Returns why the header is torn (None if good); raises for impossible headers."""
    if len(data) < SEGMENT_HEADER_BYTES:
        return "file shorter than its header"
    (stored,) = _CHECKSUM.unpack_from(data, _SEGMENT_HEADER.size)
    if xxhash.xxh3_64_intdigest(data[: _SEGMENT_HEADER.size]) != stored:
        return "header checksum mismatch"
    magic, version, _flags, seq, first = _SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC or version != STORAGE_FORMAT_VERSION:
        raise CorruptLogError(
            f"{seg.path}: offset 0: not a version-1 segment ({magic!r} v{version})"
        )
    if (seq, first) != (seg.seq, seg.first_index):
        raise CorruptLogError(f"{seg.path}: offset 0: header says seq {seq} first {first}")
    return None


class _BadSnapshot(Exception):
    pass


def _read_snapshot(path: Path, index: int) -> Snapshot:
    # The file's own size bounds every read; the lengths inside are checked against it.
    data = path.read_bytes()
    if len(data) < _SNAPSHOT_HEAD.size + _SNAPSHOT_DATA_LEN.size + _CHECKSUM.size:
        raise _BadSnapshot("file too short")
    (stored,) = _CHECKSUM.unpack_from(data, len(data) - _CHECKSUM.size)
    if xxhash.xxh3_64_intdigest(memoryview(data)[: -_CHECKSUM.size]) != stored:
        raise _BadSnapshot("checksum mismatch")
    magic, version, _flags, meta_len = _SNAPSHOT_HEAD.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC or version != STORAGE_FORMAT_VERSION:
        raise _BadSnapshot(f"not a version-1 snapshot ({magic!r} v{version})")
    pos = _SNAPSHOT_HEAD.size
    if meta_len > SNAPSHOT_META_BYTES_MAX or pos + meta_len + _SNAPSHOT_DATA_LEN.size > len(data):
        raise _BadSnapshot(f"meta length {meta_len} out of bounds")
    try:
        meta = snapshot_meta_from_wire(msgpack.unpackb(data[pos : pos + meta_len], raw=False))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _BadSnapshot(f"undecodable meta: {exc}") from exc
    pos += meta_len
    (data_len,) = _SNAPSHOT_DATA_LEN.unpack_from(data, pos)
    pos += _SNAPSHOT_DATA_LEN.size
    if pos + data_len + _CHECKSUM.size != len(data):
        raise _BadSnapshot(f"data length {data_len} does not match the file size")
    if meta.index != index:
        raise _BadSnapshot(f"meta index {meta.index} does not match the file name")
    return Snapshot(meta, data[pos : pos + data_len])


class RaftStorage:
    """The durable state of one Raft node. Create it with ``RaftStorage.open``."""

    def __init__(
        self, directory: Path, segment_bytes_max: int, sync: bool, preallocate_bytes: int
    ) -> None:
        assert segment_bytes_max > 0 and preallocate_bytes >= 0
        self._dir = directory
        self._segment_bytes_max = segment_bytes_max
        self._sync_enabled = sync
        self._preallocate_bytes = preallocate_bytes
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []  # by seq; the last one is open for appending
        self._fd: int | None = None
        self._size = 0  # bytes of records in the active segment
        self._allocated = 0  # the active segment's file size (>= _size; the rest is zeros)
        self._dirty = False  # written since the last fsync of the active segment
        self._layout = _Layout()
        self._hard_state = HardState()  # the last one written
        self._snapshot_index = 0
        self._last_index = 0
        self._initial: tuple[HardState, Snapshot | None, list[Entry]] | None = None
        self._failed: BaseException | None = None

    # ------------------------------------------------------------------------------------
    # Public API

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes_max: int = 64 * 2**20,
        sync: bool = True,
        preallocate_bytes: int = 0,
    ) -> RaftStorage:
        """Opens (creating if missing) and recovers the directory. ``sync=False`` disables
        every fsync: for tests and benchmarks only. ``preallocate_bytes``: allocate the
        active segment's file this far ahead of its records (see the format above; the
        node uses ``PREALLOCATE_BYTES``); 0 keeps each file exactly its records."""
        storage = cls(Path(directory), segment_bytes_max, sync, preallocate_bytes)
        try:
            storage._recover()
        except BaseException:
            storage.close()
            raise
        return storage

    def initial_state(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        """What ``open`` recovered: hard state, newest snapshot, the entries after it."""
        # Keeping the recovered entries and snapshot alive after the node has loaded them
        # would double its memory; the first write drops them.
        assert self._initial is not None, "initial_state() is only valid before any write"
        return self._initial

    def first_index(self) -> LogIndex:
        return LogIndex(self._snapshot_index + 1)

    def last_index(self) -> LogIndex:
        return LogIndex(self._last_index)

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> None:
        """Writes ``entries`` (not fsynced), replacing any stored entries from
        ``entries[0].index`` on, then ``hard_state`` if given (as ``set_hard_state``): one
        write for both. When the active segment is full this first rolls to a new
        one, which fsyncs the old segment and the new one (rare: once per segment)."""
        if not entries:
            if hard_state is not None:
                self.set_hard_state(hard_state)
            return
        self._check_usable()
        first = entries[0].index
        assert self._snapshot_index < first <= self._last_index + 1, (
            f"append at {first}: stored entries are {self._snapshot_index + 1}..{self._last_index}"
        )
        self._initial = None
        if self._size >= self._segment_bytes_max:
            self._start_segment(reset_index=None)
        parts = []
        for k, e in enumerate(entries):
            assert e.index == first + k, f"entries not contiguous at {e.index}"
            parts.append(_record(RecordType.ENTRY, _pack(entry_to_wire(e))))
        if hard_state is not None and hard_state != self._hard_state:
            parts.append(_record(RecordType.HARD_STATE, _pack(hard_state_to_wire(hard_state))))
        self._write(b"".join(parts))
        assert self._segments
        self._layout.put(self._segments[-1].seq, first)
        self._last_index = entries[-1].index
        if hard_state is not None:
            self._hard_state = hard_state

    def set_hard_state(self, hs: HardState) -> None:
        """Writes ``hs`` (not fsynced); it shares the next fsync with the entries."""
        self._check_usable()
        self._initial = None
        if hs == self._hard_state:
            return
        self._write(_record(RecordType.HARD_STATE, _pack(hard_state_to_wire(hs))))
        self._hard_state = hs

    def sync(self) -> None:
        """One fsync covering everything written since the last one (group commit)."""
        self._check_usable()
        self._sync_active()

    def save_snapshot(self, snap: Snapshot) -> None:
        """Persists a snapshot of our own applied state (durable on return), then deletes the
        segments and older snapshots it makes unnecessary."""
        self._check_usable()
        index = snap.meta.index
        assert self._snapshot_index <= index <= self._last_index, (
            f"snapshot at {index}: stored {self._snapshot_index + 1}..{self._last_index}"
        )
        self._initial = None
        # The log must be durable up to the snapshot before the snapshot is: recovery relies
        # on a saved snapshot never being ahead of the log (see _recover).
        self._sync_active()
        self._write_snapshot_file(snap)
        self._snapshot_index = index
        self._compact()

    def install_snapshot(self, snap: Snapshot) -> None:
        """Persists a snapshot received from the leader (durable on return) and discards the
        whole log; the next append starts at ``snap.meta.index + 1``."""
        self._check_usable()
        index = snap.meta.index
        assert index >= self._snapshot_index, f"installing {index} over {self._snapshot_index}"
        self._initial = None
        # Order matters. 1: the snapshot is durable. 2: a new segment starting with
        # LOG_RESET(index) is durable. 3: old segments are deleted. A crash after 1 leaves the
        # old log next to the new snapshot; _recover detects that and finishes the install.
        # A crash after 2 leaves old segments whose records LOG_RESET overrides.
        self._write_snapshot_file(snap)
        self._snapshot_index = index
        self._last_index = index
        old = self._segments[:]
        self._start_segment(reset_index=index)
        self._delete_segments(old)
        self._layout.reset()
        self._prune_snapshots(keep_fallback=False)

    def close(self) -> None:
        """Closes the files. Does not fsync: call ``sync`` first for durability."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self._initial = None

    # ------------------------------------------------------------------------------------
    # Recovery

    def _recover(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(self._dir, DIR_MODE)  # a directory made by an older version was 0755
        self._lock()
        dir_changed = False
        snapshot_indexes: list[int] = []
        for name in sorted(os.listdir(self._dir)):
            if _SNAPSHOT_TMP_RE.match(name):
                # A save or install that crashed before its rename: never part of the state.
                (self._dir / name).unlink()
                dir_changed = True
            elif m := _SNAPSHOT_RE.match(name):
                snapshot_indexes.append(int(m[1], 16))
            elif m := _SEGMENT_RE.match(name):
                seg = _Segment(int(m[1], 16), int(m[2], 16), self._dir / name)
                self._segments.append(seg)

        snapshot = self._newest_valid_snapshot(snapshot_indexes)
        self._segments.sort(key=lambda s: s.seq)
        # Segments are deleted oldest first, but without a directory fsync per unlink, so a
        # crash may bring back some of them: a hole in the seqs. Everything before the last
        # hole is such a leftover (its live entries are covered by the snapshot, or a
        # LOG_RESET discarded it) and is not read. Should a hole come from real damage
        # instead, the missing entries show up as a gap below, and we refuse to start.
        leftovers: list[_Segment] = []
        for k in range(len(self._segments) - 1, 0, -1):
            if self._segments[k].seq != self._segments[k - 1].seq + 1:
                leftovers, self._segments = self._segments[:k], self._segments[k:]
                break

        replay = _Replay()
        tail_end: int | None = None
        tail_tolerant = True  # may damage at the end of the last segment be a torn write?
        if self._segments:
            last = self._segments[-1]
            data = last.path.read_bytes()
            torn = _check_segment_header(last, data)
            if torn is not None:
                # Roll and install fsync the previous segment before creating a new one, so a
                # torn header means the crash hit while creating this file: nothing in it was
                # ever promised.
                if data:
                    log.warning(
                        "raft log %s: %s; dropped the whole segment (%d bytes)",
                        last.path, torn, len(data),
                    )  # fmt: skip
                last.path.unlink()
                self._segments.pop()
                dir_changed = True
                # The segment before it was fsynced before this one was created: any damage
                # in it is corruption, not a torn write.
                tail_tolerant = False
        for k, seg in enumerate(self._segments):
            data = seg.path.read_bytes()
            damage = _check_segment_header(seg, data)
            if damage is not None:
                raise CorruptLogError(f"{seg.path}: offset 0: {damage}")
            records, end, damage = _scan_records(seg.path, data, SEGMENT_HEADER_BYTES)
            if damage is not None:
                if k != len(self._segments) - 1 or not tail_tolerant:
                    raise CorruptLogError(f"{seg.path}: offset {end}: {damage}")
                log.warning(
                    "raft log %s: %s at offset %d; dropped the torn tail (%d bytes)",
                    seg.path, damage, end, len(data) - end,
                )  # fmt: skip
                tail_end = end
            for offset, rtype, value in records:
                if rtype == RecordType.ENTRY:
                    assert isinstance(value, Entry)
                    replay.entry(seg.seq, value, seg.path, offset)
                elif rtype == RecordType.HARD_STATE:
                    assert isinstance(value, HardState)
                    replay.hard_state = value
                else:
                    assert isinstance(value, int)
                    replay.reset(value)
            self._size = end
            self._allocated = len(data) if tail_end is None else tail_end

        if not self._segments and snapshot is not None:
            # Segments are deleted only after a newer one is durable, so some segment (and
            # with it the hard state, including our vote) must exist next to a snapshot.
            raise CorruptLogError(f"{self._dir}: a snapshot but no log segment (hard state lost)")

        live, interrupted_install = self._fit_log_to_snapshot(replay, snapshot)
        self._hard_state = replay.hard_state
        self._layout = replay.layout
        if snapshot is not None:
            self._snapshot_index = snapshot.meta.index
        self._last_index = self._snapshot_index + len(live)

        if self._segments:
            active = self._segments[-1]
            self._fd = os.open(active.path, os.O_WRONLY | os.O_CLOEXEC)
            os.lseek(self._fd, self._size, os.SEEK_SET)
            if tail_end is not None:
                os.ftruncate(self._fd, tail_end)
                self._dirty = True
                self._sync_active()
        if leftovers:
            log.info("raft log %s: deleting %d leftover old segments", self._dir, len(leftovers))
            for seg in leftovers:
                seg.path.unlink()
            dir_changed = True
        if dir_changed:
            # A deleted torn segment must stay deleted: if it came back after another crash,
            # the segment before it would be read as non-last, and its own unsynced tail
            # would then look like corruption.
            self._sync_dir()
        if not self._segments:
            self._start_segment(reset_index=None)
        elif interrupted_install:
            log.info("raft log %s: finishing an interrupted snapshot install", self._dir)
            old = self._segments[:]
            self._start_segment(reset_index=self._snapshot_index)
            self._delete_segments(old)
            self._layout.reset()
        self._initial = (self._hard_state, snapshot, live)

    def _newest_valid_snapshot(self, indexes: list[int]) -> Snapshot | None:
        for index in sorted(indexes, reverse=True):
            path = self._dir / snapshot_name(index)
            try:
                return _read_snapshot(path, index)
            except _BadSnapshot as exc:
                log.warning("raft snapshot %s is unusable (%s); trying an older one", path, exc)
        return None

    def _fit_log_to_snapshot(
        self, replay: _Replay, snapshot: Snapshot | None
    ) -> tuple[list[Entry], bool]:
        """Returns the entries after the snapshot, and whether an install was interrupted.

        save_snapshot syncs the log first and covers only entries we hold, so after it the
        log always reaches the snapshot index with the same term there (or starts right after
        it). The two other cases come from an install_snapshot that crashed after the
        snapshot became durable but before its LOG_RESET segment did: the log then ends
        before the snapshot or disagrees with it, and the install is finished by discarding
        the log. (If the old log agrees at the snapshot index, keeping its suffix is what
        etcd's raft does too: by Log Matching it extends the snapshot's history.)
        """
        index = snapshot.meta.index if snapshot is not None else 0
        term = snapshot.meta.term if snapshot is not None else Term(0)
        if replay.base is None:
            return [], False
        if replay.base > index:
            raise CorruptLogError(
                f"{self._dir}: the log starts at {replay.base + 1} but the newest valid "
                f"snapshot covers only up to {index}: entries are missing"
            )
        last = replay.base + len(replay.entries)
        if last < index or (
            index > replay.base and replay.entries[index - replay.base - 1].term != term
        ):
            return [], True
        return replay.entries[index - replay.base :], False

    # ------------------------------------------------------------------------------------
    # Writing

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageFailedError(f"{self._dir}: an earlier I/O error") from self._failed
        assert self._lock_fd is not None, "storage is closed"

    def _write(self, buf: bytes) -> None:
        assert self._fd is not None
        if self._preallocate_bytes and self._size + len(buf) > self._allocated:
            self._allocate(self._size + len(buf) + self._preallocate_bytes)
        view = memoryview(buf)
        done = 0
        try:
            # One os.write in practice; the loop only covers short writes.
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self._failed = exc
            raise
        self._size += len(buf)
        self._dirty = True

    def _allocate(self, size: int) -> None:
        """Extends the active segment with zeros to ``size`` bytes; made durable by the next
        fsync. Where the file system cannot allocate (or the disk is full), we stop
        allocating ahead: the writes themselves then tell whether there is room."""
        assert self._fd is not None
        try:
            os.posix_fallocate(self._fd, self._allocated, size - self._allocated)
        except OSError as exc:
            log.info("raft log %s: no space allocated ahead (%s); appending", self._dir, exc)
            self._preallocate_bytes = 0
            try:
                size = os.fstat(self._fd).st_size  # a partial allocation is zeros too
            except OSError as exc2:
                self._failed = exc2
                raise
        self._allocated = size
        self._dirty = True

    def _cut_allocated(self) -> None:
        """Cuts the zeros allocated ahead off the active segment, durably."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            self._failed = exc
            raise
        self._allocated = self._size
        self._dirty = True
        self._sync_active()

    def _sync_active(self) -> None:
        if not self._dirty:
            return
        assert self._fd is not None
        if self._sync_enabled:
            try:
                # fdatasync still flushes the file size, which is all the metadata we need.
                if hasattr(os, "fdatasync"):
                    os.fdatasync(self._fd)
                else:
                    os.fsync(self._fd)
            except OSError as exc:
                self._failed = exc
                raise
        self._dirty = False

    def _sync_dir(self) -> None:
        if not self._sync_enabled:
            return
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failed = exc
            raise
        finally:
            os.close(fd)

    def _start_segment(self, reset_index: int | None) -> None:
        """Creates the next segment: durable (file and directory entry) on return."""
        if self._fd is not None:
            # The old segment must be complete before a newer one exists: recovery treats
            # damage in any segment but the last as corruption, not as a torn tail.
            if self._allocated > self._size:
                self._cut_allocated()
            self._sync_active()
            os.close(self._fd)
            self._fd = None
        seq = self._segments[-1].seq + 1 if self._segments else 1
        first = (reset_index if reset_index is not None else self._last_index) + 1
        seg = _Segment(seq, first, self._dir / segment_name(seq, first))
        try:
            self._fd = os.open(
                seg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            self._failed = exc  # we hold no open segment any more
            raise
        self._segments.append(seg)
        self._size = 0
        self._allocated = 0
        parts = [_segment_header(seq, first)]
        if reset_index is not None:
            parts.append(_record(RecordType.LOG_RESET, _pack([reset_index])))
        parts.append(_record(RecordType.HARD_STATE, _pack(hard_state_to_wire(self._hard_state))))
        self._write(b"".join(parts))
        self._sync_active()
        self._sync_dir()

    def _delete_segments(self, doomed: list[_Segment]) -> None:
        # Oldest first, so that a crash part-way leaves a suffix of the segments. No directory
        # fsync: a deleted segment that comes back is harmless (its live entries are covered
        # by the snapshot, or overridden by a newer LOG_RESET).
        for seg in doomed:
            seg.path.unlink(missing_ok=True)
        gone = {seg.seq for seg in doomed}
        self._segments = [seg for seg in self._segments if seg.seq not in gone]

    def _compact(self) -> None:
        """Deletes the oldest segments holding no live entry above the snapshot, then the
        snapshot files no longer needed."""
        highest = self._layout.highest_live_index(self._last_index)
        doomed: list[_Segment] = []
        for seg in self._segments[:-1]:  # never the active segment
            if highest.get(seg.seq, 0) > self._snapshot_index:
                break
            doomed.append(seg)
        if doomed:
            self._delete_segments(doomed)
            self._layout.forget({seg.seq for seg in doomed})
        self._prune_snapshots(keep_fallback=True)

    def _prune_snapshots(self, *, keep_fallback: bool) -> None:
        """Deletes snapshot files other than the current one. With ``keep_fallback``, keeps
        the newest older one while the log still holds every entry after it, so that a
        damaged newest snapshot can fall back to it without losing entries."""
        runs = self._layout.runs
        floor = runs[0][1] if runs else self._last_index + 1  # lowest index we can replay
        older: list[int] = []
        for name in os.listdir(self._dir):
            if m := _SNAPSHOT_RE.match(name):
                index = int(m[1], 16)
                if index != self._snapshot_index:
                    older.append(index)
        fallback = None
        if keep_fallback:
            usable = [i for i in older if i < self._snapshot_index and i + 1 >= floor]
            fallback = max(usable, default=None)
        for index in older:
            # Newer files than ours can only be ones open() found damaged.
            if index != fallback:
                (self._dir / snapshot_name(index)).unlink(missing_ok=True)

    def _write_snapshot_file(self, snap: Snapshot) -> None:
        """Temp file, fsync, rename, fsync directory: durable and all-or-nothing."""
        meta = _pack(snapshot_meta_to_wire(snap.meta))
        assert len(meta) <= SNAPSHOT_META_BYTES_MAX
        head = (
            _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC, STORAGE_FORMAT_VERSION, 0, len(meta))
            + meta
            + _SNAPSHOT_DATA_LEN.pack(len(snap.data))
        )
        hasher = xxhash.xxh3_64(head)
        hasher.update(snap.data)
        final = self._dir / snapshot_name(snap.meta.index)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            # Three writes, so that the (possibly large) data is never copied.
            for part in (head, snap.data, _CHECKSUM.pack(hasher.intdigest())):
                view = memoryview(part)
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
            if self._sync_enabled:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        self._sync_dir()

    def _lock(self) -> None:
        fd = os.open(self._dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StorageLockedError(f"{self._dir} is open in another RaftStorage") from exc
        self._lock_fd = fd
