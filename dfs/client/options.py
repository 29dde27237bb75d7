"""The client's tunables, with the reason for each default. Pure."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ClientOptions:
    # How long attributes and directory entries are trusted without asking (NFS acregmin,
    # FUSE's usual attr timeout). 0 disables the cache.
    attr_ttl_s: float = 1.0
    # Overall deadline of one operation, retries included: past it the caller gets Timeout
    # or Unavailable. 30 s rides out a leader election (1-2 s) and a chunkserver declared
    # dead (10 s) with room to spare.
    timeout_s: float = 30.0
    # One metaserver attempt. An election takes 1-2 s; a dead leader costs at most this
    # much before the next metaserver is tried. The server is told 90 % of it (timeout_ms).
    attempt_timeout_s: float = 2.0
    # TCP connect and handshake, per attempt.
    connect_timeout_s: float = 5.0
    # One chunk.read / chunk.write / chunk.sync call: a 4 MiB write through a chain of three
    # with fsync takes well under a second here; 10 s is a replica that is not coming back.
    io_timeout_s: float = 10.0
    # Concurrent metadata mutations (each needs its own session, a "lane").
    lanes_max: int = 64
    # Write-back buffer per open file and size of one chunk.write: a few MiB keeps the
    # per-call overhead (a msgpack header, a round trip) negligible next to the copy.
    write_buffer_bytes: int = 4 * MiB
    # A chunk.write of at most this many bytes goes to every replica at once instead of
    # along the chain (chunkio.py, FAN-OUT): a small file's close waits one round trip to
    # the slowest replica, not three hops out and back, and each replica, the end of its
    # own chain, answers a small write in its read callback (chunkserver ``handle_now``).
    # Measured on a 2-core machine, 4 KiB files, four alternated pairs on one cluster: the
    # close's p50 1.43-1.67 ms against 1.77-2.12 ms along the chain, and 2.7-2.8 ms of CPU
    # a file over every process against 2.9-3.4 (the mount spends ~250 µs more, each
    # chunkserver ~180 µs less). Large writes keep the chain: there, the client's bandwidth
    # counts. 0 turns it off.
    fanout_write_bytes_max: int = 256 * KiB
    # chunk.write calls in flight per open file: enough to keep a chain's pipeline full
    # while the next buffer fills; bounds a file's dirty memory to about 5 buffers.
    uploads_in_flight_max: int = 4
    # Read-ahead for sequential reads: fetched in blocks of this size, up to this far ahead,
    # concurrently. The window doubles from two blocks while reads stay sequential. A block
    # is one chunk.read: 4 MiB keeps the per-call cost small next to the bytes, and eight
    # of them in flight keep every replica's disk and the loopback busy while the kernel
    # asks 1 MiB at a time (A/B with dd, caches dropped: 1 MiB blocks and an 8 MiB window
    # read at about half the speed). A handle holds at most window + 2 blocks.
    readahead_block_bytes: int = 4 * MiB
    readahead_max_bytes: int = 32 * MiB
    # Largest chunk.read asked for at once; larger ranges are split and read concurrently.
    read_piece_bytes: int = 4 * MiB
    # How long a chunk location (or a hole) is trusted when nothing fails: locations change
    # only by re-replication and rebalancing, and a failed read drops them at once.
    location_ttl_s: float = 60.0
    # Bound of each cache (attributes, entries, chunk locations).
    cache_entries_max: int = 100_000
    # What ``close`` (FUSE flush) promises. False (the default, as MooseFS, HDFS's hflush
    # and local file systems): every replica of the chain holds the bytes (in its page
    # cache) and the commit is done; ``fsync`` makes them durable. True (the mount's
    # ``--sync-on-close``): every close is also an fsync, durable on every replica.
    sync_on_close: bool = False
    # Closed files whose chunks were written but not synced, remembered so that an
    # ``fsync`` of a descriptor later opened for writing syncs them (as a local file system's
    # fsync covers every dirty page of the file). Past this many files the oldest is
    # forgotten: a later fsync then no longer covers that file's closed writes (the
    # chunkservers' kernels write them back within their dirty-page expiry anyway).
    unsynced_closed_max: int = 65_536
    # Removals (unlink, rmdir) under directory leases: answered at once, shipped in
    # batches (dfs/client/dirleases.py). False: every removal waits for its own commit.
    dir_leases: bool = True
    # SHORT-CIRCUIT READS (dfs/client/localread.py): a replica whose chunkserver keeps it
    # on this machine, in a directory this process may read, is read from its file instead
    # of through the chunkserver. Measured on a 2-core machine, a local 3 + 3 cluster: see
    # docs/PERFORMANCE.md, fifth round. False: every read goes through a chunkserver.
    local_reads: bool = True
    # Name this client gives in the handshake (for servers' logs).
    name: str = "dfs-client"

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.attempt_timeout_s <= 0 or self.io_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if self.write_buffer_bytes <= 0 or self.readahead_block_bytes <= 0:
            raise ValueError("buffer sizes must be > 0")
        if self.uploads_in_flight_max < 1 or self.lanes_max < 1:
            raise ValueError("uploads_in_flight_max and lanes_max must be >= 1")


__all__ = ["ClientOptions"]
