"""The chunkserver's config file and its data directory's lock and identity files.

Config file (TOML, version 1)::

    listen = "127.0.0.1:7101"           # host:port to serve on (port 0: any free port)
    data_dir = "/var/lib/dfs/cs1"       # chunk files, identity (uuid, cs_id), lock
    credential_file = "/etc/dfs/c1.pem" # TLS clusters: this server's credential (dfs/pki.py),
                                        # which holds the key that checks chunk tokens
    secret_file = "/etc/dfs/secret"     # secret-only clusters (no credential_file): the
                                        # cluster secret (dfs.secret format, mode 0600)
    metaservers = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    address = "10.0.0.5:7101"           # optional; where others reach us (default: listen)
    host = "rack1-node5"                # optional; the machine this server runs on, for
                                        # placement: replicas of a chunk go to distinct
                                        # hosts (default: the host of address)
    rack = "rack1"                      # optional; its rack (default: none), then distinct
                                        # racks when the cluster has enough
    capacity_bytes = 0                  # optional; 0: the size of data_dir's file system
    heartbeat_ms = 1000                 # optional; 10 .. 60000
    fsync = true                        # optional; false only for tests
    drop_behind = true                  # optional; a big write's pages leave the page
                                        # cache once on the disk (pagecache.py, DROP-BEHIND)
    direct_writes = true                # optional; a big aligned write goes to the disk
                                        # with O_DIRECT (pagecache.py, DIRECT WRITES)
    disk_jobs = 4                       # optional; disk operations running at once, 1 .. 64
    metrics_port = 9102                 # optional; Prometheus metrics on the listen host
                                        # (0: any free port; absent: off)
    replicate_bytes_per_s = 67108864    # optional; chunk.replicate copy rate, all copies
                                        # together (default 64 MiB/s; 0: no limit)
    replicate_jobs = 2                  # optional; copies at once, 1 .. 64 (more wait)
    report_interval_ms = 60000          # optional; block report period, 10 .. 86400000
    report_chunks_per_call = 8192       # optional; 1 .. 8192 (smaller only for tests)
    scrub_bytes_per_s = 16777216        # optional; scrubber rate (default 16 MiB/s; 0: off)
    scrub_interval_ms = 0               # optional; pause between scrub passes, 0 .. 86400000
    scrub_period_ms = 604800000         # optional; a pass over every replica is spread over
                                        # this (default 7 days; 0: as fast as the rate lets)
    inject_eio_chunk_ids = []           # optional; TESTS ONLY: reads and data writes of
                                        # replicas of these chunk ids fail as with EIO
    conn_inflight_bytes_max = 33554432  # optional; budgets (ARCHITECTURE.md, "Budgets"):
    inflight_bytes_max = 100663296      #   bytes in flight per connection and in all
    host_conns_max = 256                #   connections per peer host
    conns_max = 4096                    #   and in all (lowered to fit the fd limit)

Unknown keys are refused; a bad config exits with code 2 and says what is wrong.

Data directory (besides the store's ``chunks/`` and ``quarantine/``, see ``store.py``)::

    lock    flock()ed while a server runs on the directory: two servers never share one
    uuid    this server's identity, made on first start (a uuid4, one line)
    cs_id   the id the metaserver gave that uuid (one line), for logs and ``cs.status``
    scrub_cursor  the last replica the scrubber verified (one line: its chunk id; 0 at a
            pass's end), so that a restart resumes the pass (``repair.py``)

Ops (docs/PROTOCOL.md; ``timeout_ms`` optional on every request, default 5000, at most
60000)::

    chunk.write  {chunk_id, version, length, offset, token, expiry_ms, chain, sync, [size],
                  [expect_length]} + payload -> {}
    chunk.read   {chunk_id, version, offset, size, token, expiry_ms} -> payload
    chunk.sync   {chunk_id, version, token, expiry_ms, chain, [expect_length]} -> {}
    chunk.info   {chunk_id} -> {version, length}
    chunk.delete {chunks: [[chunk_id, version], ...]} -> {deleted: [chunk_id, ...]}
    chunk.replicate {chunk_id, version, length, sources, token, expiry_ms} -> {length}
    cs.status    {} -> {cs_id, uuid, address, capacity_bytes, used_bytes, chunks, pid,
                        scrub_bytes, scrub_passes, bad_chunks, data_dir}

Chain replication: ``chunk.write`` and ``chunk.sync`` run locally and, at the same time, on
``chain[0]`` with ``chain[1:]``; the answer comes only when both succeeded. An error carries
``address`` in its details: the server where it happened (ours, or the one a downstream
server named), so that the client can report the failing replica. The forwarded request
carries a deadline 10 % shorter than ours, so a downstream timeout reaches us before our own.

Heartbeats: on start, ``cs.register`` (uuid, address, host, rack, capacity, used, pid) to the leader
(the last one known first, then each configured address; ``NotLeader`` hints are followed),
then ``cs.heartbeat`` every ``heartbeat_ms``. A heartbeat answered ``NotFound`` (the leader
does not know our id) registers again. With no metaserver answering, data is still served
and the attempts go on; the change of state (reachable / unreachable) is logged once. The
capacity sent is the store's ``capacity_now``: a full file system shows as full.

Block reports ride on the heartbeat rounds: after a round that reached the leader, a report
is sent if none has gone to that leader yet (so right after each registration and each
change of leader) or ``report_interval_ms`` passed since the last. Its parts go back to back
to one leader; a failure, or a leader change between parts, leaves it due for the next
round. Bad replicas (store.py rule 6) have their own loop: woken by the store's ``on_bad``
hook, and every ``heartbeat_ms`` while some are unacknowledged.

"""

from __future__ import annotations

import fcntl
import os
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from chunkserver.disk import DISK_JOBS_MAX
from chunkserver.peers import parse_address
from dfs.budget import LIMIT_KEYS, Limits, limits_from
from dfs.config import ConfigFile
from dfs.wire.errors import Invalid
from dfs.wire.limits import CS_LABEL_CHARS_MAX
from dfs.wire.replicafile import CHUNK_ID_MAX

CONFIG_VERSION = 1

T = TypeVar("T")
HEARTBEAT_MS_MIN = 10
HEARTBEAT_MS_MAX = 60_000
DISK_JOBS_LIMIT = 64
# docs/PROTOCOL.md: the most chunks one cs.report may carry.
REPORT_CHUNKS_PER_CALL_MAX = 8192
# Defaults: a copy at 64 MiB/s moves a 64 MiB chunk in a second without taking a disk's
# whole bandwidth from clients. The scrubber spreads each pass over a week, as Ceph's deep
# scrub does (HDFS's block scanner: three weeks), never faster than 16 MiB/s: reads verify
# checksums too, so the scrubber is for replicas nobody reads, and it must not take CPU or
# disk from clients (at full rate over a store of small replicas it took a third of a core
# per chunkserver, forever).
REPLICATE_BYTES_PER_S = 64 * 1024 * 1024
REPLICATE_JOBS = 2
REPORT_INTERVAL_MS = 60_000
SCRUB_BYTES_PER_S = 16 * 1024 * 1024
SCRUB_PERIOD_MS = 7 * 86_400_000
SCRUB_PERIOD_MS_MAX = 90 * 86_400_000
INTERVAL_MS_MAX = 86_400_000  # a day
INJECT_EIO_IDS_MAX = 1024

_CONFIG_KEYS = {
    "listen", "data_dir", "secret_file", "credential_file", "metaservers", "address", "capacity_bytes",
    "heartbeat_ms", "fsync", "disk_jobs", "replicate_bytes_per_s", "replicate_jobs",
    "report_interval_ms", "report_chunks_per_call", "scrub_bytes_per_s", "scrub_interval_ms",
    "scrub_period_ms", "inject_eio_chunk_ids", "host", "rack", "drop_behind", "direct_writes",
    "metrics_port",
} | LIMIT_KEYS  # fmt: skip
# How long a start tries for its data directory's lock, and the pause between attempts.
LOCK_WAIT_S = 1.0
LOCK_RETRY_S = 0.01


# ---------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen_host: str
    listen_port: int
    data_dir: Path
    secret_file: Path | None  # None: a TLS cluster's, whose credential checks the tokens
    metaservers: tuple[str, ...]
    credential_file: Path | None = None  # TLS (dfs/credentials.py); None: the secret only
    address: str | None = None  # None: the listen address (with the bound port)
    capacity_bytes: int = 0
    heartbeat_ms: int = 1000
    fsync: bool = True
    drop_behind: bool = True
    direct_writes: bool = True
    disk_jobs: int = DISK_JOBS_MAX
    replicate_bytes_per_s: int = REPLICATE_BYTES_PER_S
    replicate_jobs: int = REPLICATE_JOBS
    report_interval_ms: int = REPORT_INTERVAL_MS
    report_chunks_per_call: int = REPORT_CHUNKS_PER_CALL_MAX
    scrub_bytes_per_s: int = SCRUB_BYTES_PER_S
    scrub_interval_ms: int = 0
    scrub_period_ms: int = SCRUB_PERIOD_MS
    inject_eio_chunk_ids: tuple[int, ...] = ()
    host: str | None = None  # None: the host of the advertised address
    rack: str = ""
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None  # Prometheus on the listen host (dfs/metrics.py); None: off


def load_config(path: Path) -> ServerConfig:
    """Parse and check a config file; ``ValueError`` says what is wrong."""
    file = ConfigFile.load(path, _CONFIG_KEYS)
    get = file.get

    def address(key: str, value: str) -> tuple[str, int]:
        try:
            host, port = parse_address(value)
        except Invalid:
            raise file.error(f"{key} must be 'host:port', not {value!r}") from None
        return host, port

    listen = get("listen", str)
    # Port 0 (any free port) is allowed here only: it is a local choice, never an address.
    listen_host, listen_port = file.address("listen", listen, port_zero=True)
    metaservers = get("metaservers", list)
    if not metaservers or not all(isinstance(m, str) for m in metaservers):
        raise ValueError(f"{path}: metaservers must be a non-empty list of 'host:port'")
    for m in metaservers:
        address("metaservers", m)
    advertised = file.raw.get("address")
    if advertised is not None:
        if not isinstance(advertised, str):
            raise ValueError(f"{path}: address must be a string")
        address("address", advertised)
    elif listen_host in ("0.0.0.0", "::"):
        # Peers and the metaserver need an address they can reach: a wildcard is none.
        raise ValueError(f"{path}: listening on {listen!r} needs an 'address' to advertise")
    host = file.raw.get("host")
    if host is not None and (type(host) is not str or not 1 <= len(host) <= CS_LABEL_CHARS_MAX):
        raise ValueError(f"{path}: host must be a string of 1..{CS_LABEL_CHARS_MAX} characters")
    config = ServerConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        data_dir=Path(get("data_dir", str)),
        secret_file=file.optional_path("secret_file"),
        credential_file=file.optional_path("credential_file"),
        metaservers=tuple(metaservers),
        address=advertised,
        capacity_bytes=get("capacity_bytes", int, 0),
        heartbeat_ms=get("heartbeat_ms", int, 1000),
        fsync=get("fsync", bool, True),
        drop_behind=get("drop_behind", bool, True),
        direct_writes=get("direct_writes", bool, True),
        disk_jobs=get("disk_jobs", int, DISK_JOBS_MAX),
        replicate_bytes_per_s=get("replicate_bytes_per_s", int, REPLICATE_BYTES_PER_S),
        replicate_jobs=get("replicate_jobs", int, REPLICATE_JOBS),
        report_interval_ms=get("report_interval_ms", int, REPORT_INTERVAL_MS),
        report_chunks_per_call=get("report_chunks_per_call", int, REPORT_CHUNKS_PER_CALL_MAX),
        scrub_bytes_per_s=get("scrub_bytes_per_s", int, SCRUB_BYTES_PER_S),
        scrub_interval_ms=get("scrub_interval_ms", int, 0),
        scrub_period_ms=get("scrub_period_ms", int, SCRUB_PERIOD_MS),
        inject_eio_chunk_ids=tuple(get("inject_eio_chunk_ids", list, [])),
        host=host,
        rack=get("rack", str, ""),
        limits=limits_from(file.raw, path),
        metrics_port=file.port("metrics_port"),
    )
    if config.secret_file is None and config.credential_file is None:
        raise ValueError(f"{path}: needs credential_file (TLS) or secret_file")
    if len(config.rack) > CS_LABEL_CHARS_MAX:
        raise ValueError(f"{path}: rack must be at most {CS_LABEL_CHARS_MAX} characters")
    if config.capacity_bytes < 0:
        raise ValueError(f"{path}: capacity_bytes must be >= 0 (0: the file system's size)")
    if not HEARTBEAT_MS_MIN <= config.heartbeat_ms <= HEARTBEAT_MS_MAX:
        raise ValueError(
            f"{path}: heartbeat_ms must be between {HEARTBEAT_MS_MIN} and {HEARTBEAT_MS_MAX}"
        )
    if not 1 <= config.disk_jobs <= DISK_JOBS_LIMIT:
        raise ValueError(f"{path}: disk_jobs must be between 1 and {DISK_JOBS_LIMIT}")
    for key in ("replicate_bytes_per_s", "scrub_bytes_per_s"):
        if getattr(config, key) < 0:
            raise ValueError(f"{path}: {key} must be >= 0 (0: no limit / off)")
    if not 1 <= config.replicate_jobs <= DISK_JOBS_LIMIT:
        raise ValueError(f"{path}: replicate_jobs must be between 1 and {DISK_JOBS_LIMIT}")
    if not HEARTBEAT_MS_MIN <= config.report_interval_ms <= INTERVAL_MS_MAX:
        raise ValueError(
            f"{path}: report_interval_ms must be between {HEARTBEAT_MS_MIN} and {INTERVAL_MS_MAX}"
        )
    if not 1 <= config.report_chunks_per_call <= REPORT_CHUNKS_PER_CALL_MAX:
        raise ValueError(
            f"{path}: report_chunks_per_call must be between 1 and {REPORT_CHUNKS_PER_CALL_MAX}"
        )
    if not 0 <= config.scrub_interval_ms <= INTERVAL_MS_MAX:
        raise ValueError(f"{path}: scrub_interval_ms must be between 0 and {INTERVAL_MS_MAX}")
    if not 0 <= config.scrub_period_ms <= SCRUB_PERIOD_MS_MAX:
        raise ValueError(f"{path}: scrub_period_ms must be between 0 and {SCRUB_PERIOD_MS_MAX}")
    ids = config.inject_eio_chunk_ids
    if len(ids) > INJECT_EIO_IDS_MAX or not all(
        type(i) is int and 0 < i <= CHUNK_ID_MAX for i in ids
    ):
        raise ValueError(f"{path}: inject_eio_chunk_ids must be a list of chunk ids")
    return config


# ---------------------------------------------------------------------- data directory


class DataDirError(Exception):
    """The data directory cannot be used (locked by another server, unreadable identity)."""


def write_small_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_data_dir(data_dir: Path) -> int:
    """Take the directory's lock for the life of the process; returns the fd to keep.
    Tried for ``LOCK_WAIT_S``: a client checking that a server runs here (``dfs/client/
    localread.py``) holds a shared lock for a moment, which must not stop a restart."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DataDirError(f"{data_dir} is in use by another chunkserver") from None
            time.sleep(LOCK_RETRY_S)  # a pause between attempts, not a wait for a condition


def load_identity(data_dir: Path) -> tuple[str, int]:
    """(uuid, cs_id) from the data directory; makes the uuid on first start. cs_id 0: not
    registered yet (ids given by the metaserver start at 1)."""
    uuid_path = data_dir / "uuid"
    try:
        text = uuid_path.read_text().strip()
    except FileNotFoundError:
        text = str(uuidlib.uuid4())
        write_small_file(uuid_path, text)
    try:
        uuid = str(uuidlib.UUID(text))
    except ValueError:
        raise DataDirError(f"{uuid_path} does not hold a uuid") from None
    cs_id = 0
    try:
        cs_text = (data_dir / "cs_id").read_text().strip()
    except FileNotFoundError:
        cs_text = ""
    if cs_text:
        if not cs_text.isdigit():
            raise DataDirError(f"{data_dir / 'cs_id'} does not hold an id")
        cs_id = int(cs_text)
    return uuid, cs_id


__all__ = [
    "CONFIG_VERSION",
    "DataDirError",
    "ServerConfig",
    "load_config",
    "load_identity",
    "lock_data_dir",
    "write_small_file",
]
