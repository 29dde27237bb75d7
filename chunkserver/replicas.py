"""The chunk store's records of a replica, its file modes and id checks: shared by
``store.py`` and ``copies.py``. Pure (no I/O).

What it owns: the in-memory record of one replica (``Replica``) and of one found bad
(``BadReplica``), the modes replica files and directories are made with, and the check of
ids read off the wire. What it must not do: touch a file.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfs.wire.errors import Invalid
from dfs.wire.replicafile import CHUNK_ID_MAX, VERSION_MAX, ReplicaInfo

# Replicas are the users' bytes: only the chunkserver's own user may read them. The data
# directory is made (or made again, at start) 0700, each file in it 0600.
DIR_MODE = 0o700
FILE_MODE = 0o600


@dataclass(slots=True)
class Replica:
    """A replica in the store's table: what its file holds, and what is not durable yet."""

    chunk_id: int
    version: int
    length: int
    footprint_bytes: int
    # Written since the last fdatasync (or unknown: found at start).
    dirty: bool = True
    # Created since its directory was last fsynced: its name may not survive a crash.
    name_unsynced: bool = False
    # A drop-behind's writeback failed (``start_writeback``): the next sync fails for it,
    # since the kernel reports the error to one descriptor only, and this may be it.
    writeback_error: OSError | None = None

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(self.chunk_id, self.version, self.length)


@dataclass(slots=True)
class BadReplica:
    """A replica found bad in this run (rule 6): what the metaserver is told, until it acks."""

    version: int
    reason: str
    reported: bool = False


def check_ids(chunk_id: int, version: int) -> None:
    if not 0 < chunk_id <= CHUNK_ID_MAX or not 0 <= version <= VERSION_MAX:
        raise Invalid("chunk id or version out of range", chunk_id=chunk_id)


__all__ = ["DIR_MODE", "FILE_MODE", "BadReplica", "Replica", "check_ids"]
