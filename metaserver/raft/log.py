"""The Raft log in memory: the entries after the latest snapshot, and the term at each index.

What it owns: the list of entries since the snapshot (``offset`` is the snapshot's index,
``offset_term`` its term), lookups by index, and the three ways the list changes: append
(by the core, which extends ``entries``), cutting a conflicting suffix, and compaction
behind a snapshot.

What it must not do: any I/O (``storage.py`` holds the durable copy), or decide what may be
cut or compacted: ``core.py`` asserts that no committed entry is ever cut and compacts only
behind a snapshot of applied state.
"""

from __future__ import annotations

from collections.abc import Sequence

from dfs.types import LogIndex, Term
from metaserver.raft.types import Entry


class RaftLog:
    """Entries after the snapshot, in memory; ``entries[i].index == offset + 1 + i``."""

    __slots__ = ("entries", "offset", "offset_term")

    def __init__(self, offset: LogIndex, offset_term: Term, entries: Sequence[Entry]) -> None:
        self.offset = offset  # index of the last entry covered by the snapshot
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        for i, e in enumerate(self.entries):
            assert e.index == offset + 1 + i, "log entries must be contiguous"

    def last_index(self) -> LogIndex:
        return LogIndex(self.offset + len(self.entries))

    def last_term(self) -> Term:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, i: int) -> Term | None:
        """The term at ``i``, or None if compacted away or beyond the end."""
        if i == self.offset:
            return self.offset_term
        k = i - self.offset - 1
        if 0 <= k < len(self.entries):
            return self.entries[k].term
        return None

    def match_term(self, i: int, t: int) -> bool:
        return self.term(i) == t

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (must not be compacted)."""
        assert lo > self.offset
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def truncate_from(self, i: int) -> None:
        del self.entries[i - self.offset - 1 :]

    def compact_to(self, i: int, t: Term) -> None:
        del self.entries[: i - self.offset]
        self.offset = LogIndex(i)
        self.offset_term = t
