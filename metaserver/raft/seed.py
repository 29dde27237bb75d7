"""A node's snapshot data (the driver's format), and a Raft directory seeded from an image.

What it owns: the bytes of a snapshot's ``data`` as ``node.py`` writes and reads them
(format version 1, in ``node.py``'s docstring: ``msgpack([1, [[node_id, "host:port"], ...],
app_bytes])``), and ``seed``: an empty directory written so that a node started on it
begins from a given state machine image at a given index and term, with a given
membership, as if it had installed that snapshot from a leader (a metaserver group
restored from a backup: ``metaserver/restore.py``). What it must not do: know what the
image means (bytes of the application), or touch a directory that holds a log.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgpack

from dfs.types import LogIndex, NodeId, Term
from metaserver.raft.storage import RaftStorage
from metaserver.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

NODE_SNAPSHOT_VERSION = 1


def snapshot_data(members: dict[NodeId, str], app: bytes) -> bytes:
    """A snapshot's ``data``: the peer address map and the state machine's image."""
    rows = [[int(n), a] for n, a in sorted(members.items())]
    packed: bytes = msgpack.packb([NODE_SNAPSHOT_VERSION, rows, app], use_bin_type=True)
    return packed


class NotEmptyError(Exception):
    """The directory already holds a Raft log or snapshot."""


def seed(
    directory: Path,
    *,
    index: int,
    term: int,
    voters: Sequence[int],
    app: bytes,
    members: dict[NodeId, str] | None = None,
    commands: Sequence[bytes] = (),
    sync: bool = True,
) -> None:
    """Write ``directory`` (made if missing; it must hold no log) so that a node started on
    it begins from ``app`` as of (``index``, ``term``) with ``voters`` as the membership.
    ``commands``: application commands appended after the snapshot, at ``term``; they are
    committed by the first leader, on every member that was seeded alike. ``members``:
    addresses the snapshot carries (None: each node takes its config's peers)."""
    assert index >= 1 and term >= 1 and voters
    directory.mkdir(parents=True, exist_ok=True)
    storage = RaftStorage.open(directory, sync=sync)
    try:
        hs, snap, entries = storage.initial_state()
        if hs != HardState() or snap is not None or entries:
            raise NotEmptyError(f"{directory} already holds a Raft log: restore into an empty one")
        conf = ConfState(voters=tuple(sorted(NodeId(v) for v in voters)))
        meta = SnapshotMeta(LogIndex(index), Term(term), conf)
        storage.install_snapshot(Snapshot(meta, snapshot_data(members or {}, app)))
        hard = HardState(term=Term(term), commit=LogIndex(index))
        tail = [
            Entry(Term(term), LogIndex(index + 1 + k), EntryType.NORMAL, data)
            for k, data in enumerate(commands)
        ]
        storage.append(tail, hard)
        storage.sync()
    finally:
        storage.close()


__all__ = ["NODE_SNAPSHOT_VERSION", "NotEmptyError", "seed", "snapshot_data"]
