"""A crash model for real files in one directory, after SQLite's ``test6.c`` (style.md §4).

What it owns: the decision of what a power cut "right now" would leave on disk, for code
that writes ordinary files with ``os.write`` and makes them durable with ``os.fsync`` /
``os.fdatasync`` (of files and of the directory).

How it works: while a ``CrashDisk`` is installed (``with CrashDisk(directory) as disk:``) it
replaces ``os.fsync`` and ``os.fdatasync`` with a recorder that does NOT call the real ones
(tests stay fast, and the model, not the kernel, decides what survives):
- fsync of a file records its current bytes as durable (by inode);
- fsync of the watched directory records its listing (name -> inode) as durable.

``crash_image(target, rng)`` then writes into ``target`` one state the disk might be in after
a crash at this moment:
- a name in both the durable and the current listing, for the same inode, is present;
- a name created or deleted since the last directory fsync is present or not, at random
  (each name independently); a name that a rename replaced holds the old or the new file;
- a present file holds its durable bytes followed by one fate of the bytes written since:
  lost, written, torn (a prefix), or garbage (random spans overwritten, maybe also torn).

Limits: only appends past the durable bytes are modelled, and writes over (or a truncation
of) durable zero bytes at the end of a file, which is how space allocated ahead gets filled:
the durable bytes before the first change survive, the zeros after what was written stay.
Any other file rewritten in place since its last fsync is treated as never synced; a deleted file's unsynced bytes are unknown, so when
it reappears it holds its durable bytes only. Linux/Unix only (inodes, ``os.fstat``).
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FATES = ("lost", "written", "torn", "garbage")


@dataclass
class CrashDisk:
    directory: Path
    content_by_inode: dict[int, bytes] = field(default_factory=dict)
    durable_names: dict[str, int] = field(default_factory=dict)
    file_syncs: int = 0
    dir_syncs: int = 0
    # Called before each fsync in the directory is recorded (not re-entered while it runs).
    before_sync: Callable[[], None] | None = None
    _in_hook: bool = False

    def __post_init__(self) -> None:
        self.directory = Path(os.path.abspath(self.directory))

    def __enter__(self) -> CrashDisk:
        self._patch = self._installed()
        self._patch.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._patch.__exit__(*exc)

    @contextmanager
    def _installed(self) -> Iterator[None]:
        saved: dict[str, Callable[[int], None]] = {"fsync": os.fsync}
        if hasattr(os, "fdatasync"):
            saved["fdatasync"] = os.fdatasync
        for name in saved:
            setattr(os, name, self._record)
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(os, name, fn)

    def _record(self, fd: int) -> None:
        where = Path(os.readlink(f"/proc/self/fd/{fd}"))
        st = os.fstat(fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        if where != self.directory and (is_dir or where.parent != self.directory):
            return  # not ours: nothing to model (and the real fsync is not needed in tests)
        if self.before_sync is not None and not self._in_hook:
            # The test may take a crash image here: the moment before this fsync lands.
            self._in_hook = True
            try:
                self.before_sync()
            finally:
                self._in_hook = False
        if is_dir:
            self.durable_names = self._listing()
            self.dir_syncs += 1
            return
        # Read through a fresh descriptor: ``fd`` may be write-only.
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            self.content_by_inode[st.st_ino] = f.read()
        self.file_syncs += 1

    def _listing(self) -> dict[str, int]:
        if not self.directory.exists():
            return {}
        return {p.name: p.stat().st_ino for p in self.directory.iterdir() if p.is_file()}

    def crash_image(self, target: Path, rng: random.Random) -> dict[str, str]:
        """Writes a possible post-crash state of the directory into ``target`` (created);
        returns what happened to each file, for messages."""
        target.mkdir(parents=True)
        current = self._listing()
        used_inodes = set(current.values())
        report: dict[str, str] = {}
        for name in sorted(set(current) | set(self.durable_names)):
            durable_ino = self.durable_names.get(name)
            current_ino = current.get(name)
            old_possible = durable_ino is not None and durable_ino not in used_inodes
            if current_ino is not None and (
                current_ino == durable_ino
                # Replaced by a rename since the last directory fsync: rename is atomic, so
                # the name holds the old file or the new one, never nothing.
                or (durable_ino is not None and not old_possible)
                or rng.random() < 0.5
            ):
                # The current file, durable or (if created since) made so by the crash.
                data, fate = self._fate(
                    (self.directory / name).read_bytes(),
                    self.content_by_inode.get(current_ino, b""),
                    rng,
                )
            elif (
                durable_ino is not None
                and old_possible
                and (current_ino is not None or rng.random() < 0.5)
            ):
                # Deleted or replaced since the last directory fsync: the old file comes back
                # with what was durable in it (its inode not being reused by another name).
                data = self.content_by_inode.get(durable_ino, b"")
                fate = f"old file back, {len(data)} bytes"
            else:
                report[name] = "absent"
                continue
            (target / name).write_bytes(data)
            report[name] = fate
        return report

    @staticmethod
    def _fate(now: bytes, durable: bytes, rng: random.Random) -> tuple[bytes, str]:
        zeros = b""  # durable zeros past the changes, which stay where nothing overwrote them
        if not now.startswith(durable):
            same = _common_prefix_bytes(now, durable)
            if durable.count(0, same) == len(durable) - same:
                # Space allocated ahead, written over or cut since its last fsync.
                durable, zeros = durable[:same], durable[same:]
            else:
                durable = b""  # rewritten since its last fsync: nothing of it is known durable
        tail = now[len(durable) :]
        if not tail and not zeros:
            return now, "synced"
        fate = rng.choice(FATES)
        if fate == "written" or not tail:
            return (
                (now, fate)
                if fate == "written" or rng.random() < 0.5
                else (durable + zeros, "lost")
            )
        if fate == "lost":
            out = durable
        elif fate == "torn":
            cut = rng.randrange(len(tail))
            out, fate = durable + tail[:cut], f"torn after {cut} of {len(tail)} bytes"
        else:
            garbled = bytearray(tail)
            for _ in range(rng.randint(1, 3)):
                start = rng.randrange(len(garbled))
                span = rng.randint(1, min(16, len(garbled) - start))
                filler = bytes(span) if rng.random() < 0.3 else rng.randbytes(span)
                garbled[start : start + span] = filler
            if rng.random() < 0.5:
                del garbled[rng.randrange(len(garbled)) :]
            out, fate = durable + bytes(garbled), f"garbage in {len(tail)} unsynced bytes"
        if len(out) < len(durable) + len(zeros):
            out += zeros[len(out) - len(durable) :]
        return out, fate


def _common_prefix_bytes(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (memcmp-fast halvings)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
