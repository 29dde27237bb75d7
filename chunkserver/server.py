"""The chunkserver daemon: chunk replicas served over ``dfs.rpc``, chain replication, heartbeats.

    python -m chunkserver --config cs1.toml        (or: dfs chunkserver --config cs1.toml)

What it owns: the process (config, signals, logs, the data directory's lock and identity
files), the chunkserver ops of docs/PROTOCOL.md (version 1) mapped onto the store, the
forwarding of writes and syncs down the chain, and what goes to the metaserver leader:
registration, heartbeats, block reports (``cs.report``) and bad replicas
(``cs.bad_chunks``). The copy and scrub loops themselves are in ``repair.py``.

What it must not do: touch chunk files (``store.py`` does, in threads run by ``disk.py``),
or decide anything about placement or versions (the metaserver does; this server only
refuses what the token, the version rules and its limits do not allow).

The config file and the data directory (lock, identity): ``chunkserver/config.py``.

Shutdown on SIGTERM/SIGINT: stop listening, refuse new requests, let the ones in flight
finish (at most ``DRAIN_TIMEOUT_S``), close connections, wait for disk jobs, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chunkserver.config import (
    DataDirError,
    ServerConfig,
    load_config,
    load_identity,
    lock_data_dir,
    write_small_file,
)
from chunkserver.disk import INLINE_WRITE_BYTES_MAX, AsyncChunkStore, ChunkLock
from chunkserver.metrics import readings as chunkserver_readings
from chunkserver.peers import PeerPool, parse_address
from chunkserver.repair import Scrubber, Throttle, copy_in
from chunkserver.writes import Writes
from dfs import daemon, rpc
from dfs.credentials import Credential, Credentials, token_checker, token_client
from dfs.leader import LeaderFollower
from dfs.metrics import Reading, ServerMetrics
from dfs.ratelog import RateLimitedLog
from dfs.wire.errors import (
    AuthError,
    DfsError,
    Invalid,
    NotFound,
    Stale,
    Timeout,
    Unavailable,
)
from dfs.wire.limits import (
    BAD_CHUNKS_MAX,
    OP_TIMEOUT_MS_DEFAULT,
    OP_TIMEOUT_MS_MAX,
    READ_BYTES_MAX,
)
from dfs.wire.messages import uint_field
from dfs.wire.ops import CHUNKSERVER_OPS, admit, lookup
from dfs.wire.ops_chunk import CHUNK_READ, CHUNK_WRITE
from dfs.wire.spec import SERVER_ROLES
from dfs.wire.token import READ, WRITE

log = logging.getLogger("chunkserver")
# Failures of the periodic loops (heartbeats, reports) repeat every round while they last.
_loop_log = RateLimitedLog(log)

T = TypeVar("T")

# A downstream server gets this share of our remaining time, so that its answer (even a
# Timeout) arrives before we give up on it ourselves.
FORWARD_TIMEOUT_SHARE = 0.9
# One attempt at one metaserver: a commit takes milliseconds; a leader that has not
# answered in 2 s is as good as gone for this heartbeat (the next one comes soon). A call
# makes one round through the metaservers (dfs/leader.py), 2 s for each.
META_CALL_TIMEOUT_S = 2.0
# How long a stopping server lets requests in flight finish before it closes connections.
DRAIN_TIMEOUT_S = 5.0
# Signatures of access tokens remembered (``ChunkServer._check_token``): a client's reader
# holds one token per chunk, so this covers the chunks of many clients' open files.
TOKENS_VERIFIED_MAX = 4096


# ---------------------------------------------------------------------- request fields
# Every request's fields are checked once, at the edge (``ChunkServer.admit``), against
# their definitions in ``dfs/wire/ops_chunk.py``: the helpers below only read them, and
# check what a definition cannot say (addresses, this server's own address).


def _timeout_s(h: dict[str, Any]) -> float:
    timeout_ms: int = h.get("timeout_ms", OP_TIMEOUT_MS_DEFAULT)
    return min(max(timeout_ms, 1), OP_TIMEOUT_MS_MAX) / 1000


def _addresses(addresses: list[str], own_address: str, what: str) -> list[str]:
    for address in addresses:
        parse_address(address)  # Invalid unless a "host:port" string
    if own_address in addresses:
        raise Invalid(f"{what} this server", address=own_address)
    return list(addresses)


def _chain(h: dict[str, Any], own_address: str) -> list[str]:
    chain = h.get("chain")
    return [] if not chain else _addresses(chain, own_address, "chain loops back to")


def _request_bytes(h: dict[str, Any], payload: bytes) -> int:
    """What a request holds while it is handled (``dfs.rpc``'s budgets): its payload, and
    for a ``chunk.read`` the answer it asks for, counted until it is written."""
    size = h.get("size")
    if h.get("op") == "chunk.read" and type(size) is int and 0 < size <= READ_BYTES_MAX:
        return len(payload) + size
    return len(payload)


async def _within(deadline: float, job: Awaitable[T], what: str) -> T:
    """Await ``job`` until the loop time ``deadline``; ``Timeout`` after. (A disk job goes on
    in its thread and keeps its chunk locked until it ends: see disk.py.)"""
    try:
        async with asyncio.timeout_at(deadline):
            return await job
    except TimeoutError:
        raise Timeout(f"{what} did not finish in time") from None


# ---------------------------------------------------------------------- the server

Op = Callable[[dict[str, Any], bytes, float], Awaitable[rpc.HandlerResult]]


def _role(conn: rpc.Connection) -> str | None:
    """The role the peer proved in the handshake (``dfs/wire/auth.py``)."""
    return conn.peer.role if conn.peer is not None else None


class ChunkServer:
    def __init__(self, config: ServerConfig, credentials: Credential) -> None:
        self.config = config
        credentials = Credentials.of(credentials)
        self._credentials = credentials
        self._tokens = token_checker(credentials)
        # Tokens whose signature was checked, with the fields it covers (TOKEN CACHE below).
        self._tokens_verified: set[tuple[bytes, int, int, bytes, int, str]] = set()
        self.writes = Writes(self)
        self.cs_id = 0
        self.uuid = ""
        self.address = config.address or f"{config.listen_host}:{config.listen_port}"
        self.pid = os.getpid()
        self.store: AsyncChunkStore | None = None
        self._data_dir = ""  # the data directory, absolute: cs.status names it
        self.load = 0  # requests in flight
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._rpc: rpc.RpcServer | None = None
        self._lock_fd = -1
        self.peers = PeerPool(credentials, name="chunkserver")
        self.meta = PeerPool(credentials, name="chunkserver")
        # Another secret (AuthError) or a bad hint (Invalid) at one metaserver: try the next.
        self.meta_follower = LeaderFollower(
            config.metaservers,
            attempt_timeout_s=META_CALL_TIMEOUT_S,
            also_retry=(AuthError, Invalid),
            name="chunkserver",
        )
        self._meta_up: bool | None = None
        # The leader that took our last complete block report, and when the next is due
        # (loop time) even if the leader stays.
        self._report_leader: str | None = None
        self._registered = asyncio.Event()  # set while the leader knows our id
        self._report_next = 0.0
        # Last outcome of each kind of report ("report", "bad_chunks"): changes are logged.
        self._report_ok: dict[str, bool] = {}
        self._bad_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.replicate_throttle = Throttle(config.replicate_bytes_per_s)
        self._replicate_slots = asyncio.Semaphore(config.replicate_jobs)
        # One copy of a chunk at a time: a second chunk.replicate of it waits, then finds
        # the replica there.
        self._copy_locks: dict[int, ChunkLock] = {}
        self.scrubber: Scrubber | None = None
        self._ops: dict[str, Op] = {
            "chunk.write": self.writes.write,
            "chunk.write_many": self.writes.write_many,
            "chunk.read": self._chunk_read,
            "chunk.sync": self._chunk_sync,
            "chunk.info": self._chunk_info,
            "chunk.delete": self._chunk_delete,
            "chunk.quarantined": self._chunk_quarantined,
            "chunk.salvage": self._chunk_salvage,
            "chunk.replicate": self._chunk_replicate,
            "cs.status": self._cs_status,
        }
        assert set(self._ops) == set(CHUNKSERVER_OPS), "one handler per defined op"
        self.metrics: ServerMetrics | None = None
        self.metrics_port: int | None = None

    # ------------------------------------------------------------------ logs

    def _log(self, level: int, event: str, **kv: Any) -> None:
        if log.isEnabledFor(level):
            extra = "".join(f" {k}={v}" for k, v in kv.items())
            log.log(level, "chunkserver cs=%s event=%s%s", self.cs_id or "?", event, extra)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        cfg = self.config
        self._lock_fd = await asyncio.to_thread(lock_data_dir, cfg.data_dir)
        self.uuid, self.cs_id = await asyncio.to_thread(load_identity, cfg.data_dir)
        self.store = await AsyncChunkStore.open(
            cfg.data_dir,
            capacity_bytes=cfg.capacity_bytes,
            fsync=cfg.fsync,
            log_prefix=self._log_prefix(),
            disk_jobs_max=cfg.disk_jobs,
        )
        self.store.store.inject_eio_chunk_ids = frozenset(cfg.inject_eio_chunk_ids)
        self.store.store.drop_behind = cfg.drop_behind
        self.store.store.direct_writes = cfg.direct_writes
        self._data_dir = str(self.store.store.root.resolve())  # cs.status's data_dir
        loop = asyncio.get_running_loop()

        def on_bad(chunk_id: int, version: int) -> None:
            # Called in a disk thread: wake the reporting loop on the event loop. A loop
            # already closed (shutdown) drops the wake-up: after the restart the replica is
            # simply absent from the block report.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._bad_wake.set)

        self.store.store.on_bad = on_bad
        handler, inline = self.handle, self.handle_now
        if cfg.metrics_port is not None:
            self.metrics = ServerMetrics(CHUNKSERVER_OPS)
            handler = self.metrics.timed(self.handle)
            inline = self.metrics.timed_inline(self.handle_now, rpc.LATER)

            async def read() -> dict[str, Reading]:
                return chunkserver_readings(self)

            self.metrics.add_reader(read)
            self.metrics_port = self.metrics.start(cfg.listen_host, cfg.metrics_port)
        self._rpc = await rpc.serve(
            cfg.listen_host,
            cfg.listen_port,
            self._credentials,
            handler,
            name=f"cs-{self.cs_id or self.uuid[:8]}",
            role="chunkserver",
            inline_handler=inline,
            limits=cfg.limits,
            request_bytes=_request_bytes,
        )
        if cfg.address is None:
            self.address = f"{cfg.listen_host}:{self._rpc.port}"
        store = self.store.store
        self._log(logging.INFO, "listening", address=self.address, uuid=self.uuid,
                  pid=self.pid, chunks=store.chunk_count, used_bytes=store.used_bytes,
                  capacity_bytes=store.capacity_bytes)  # fmt: skip
        self._tasks.append(asyncio.create_task(self._meta_loop()))
        self._tasks.append(asyncio.create_task(self._report_loop()))
        self._tasks.append(asyncio.create_task(self._bad_loop()))
        if cfg.scrub_bytes_per_s > 0:
            self.scrubber = Scrubber(
                self.store,
                cfg.scrub_bytes_per_s,
                cfg.scrub_interval_ms / 1000,
                period_s=cfg.scrub_period_ms / 1000,
                cursor_path=cfg.data_dir / "scrub_cursor",
            )
            self._tasks.append(asyncio.create_task(self.scrubber.run()))

    async def stop(self) -> None:
        self._stopping = True
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # waits for a scrape in progress
        if self._rpc is not None and self._rpc.server is not None:
            self._rpc.server.close()  # no new connections
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._idle.wait()
        except TimeoutError:
            self._log(logging.INFO, "stop", detail="requests still running after drain",
                      load=self.load)  # fmt: skip
        if self._rpc is not None:
            self._rpc.close()
            with contextlib.suppress(TimeoutError):
                await self._rpc.wait_closed()
        await self.peers.close()
        await self.meta.close()
        if self.store is not None:
            await self.store.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _log_prefix(self) -> str:
        return f"chunkserver cs={self.cs_id or '?'}"

    # ------------------------------------------------------------------ requests

    async def handle(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> rpc.HandlerResult:
        op = header.get("op")
        spec = lookup(CHUNKSERVER_OPS, op)
        admit(spec, _role(conn), header)
        self._bind_client(conn, header)
        handler = self._ops[spec.name]
        if self._stopping:
            raise Unavailable("chunkserver is shutting down", address=self.address)
        self.load += 1
        self._idle.clear()
        try:
            return await handler(header, payload, _timeout_s(header))
        finally:
            self.load -= 1
            if self.load == 0:
                self._idle.set()

    def handle_now(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> rpc.HandlerResult | rpc._Later:
        """The inline handler (``dfs.rpc``): a ``chunk.read`` whose bytes are all in the page
        cache is answered in the read callback, with no task and no loop turn (the store
        reads them on the loop anyway, ``read_cached``); so is a small ``chunk.write`` at
        the end of its chain that the store can do on the loop (``write_now``); anything
        else, ``LATER``."""
        op = header.get("op")
        if self._stopping:
            return rpc.LATER
        if op == "chunk.write":
            # Only a small write at the end of its chain, and never past an earlier request
            # of this connection waiting for its task (a write to the same chunk, maybe);
            # known before the fields are checked, so a write for a task is checked once.
            if (
                conn.requests_running
                or header.get("chain")
                or len(payload) > INLINE_WRITE_BYTES_MAX
            ):
                return rpc.LATER
            admit(CHUNK_WRITE, _role(conn), header)
            self._bind_client(conn, header)
            w = self.writes.request(header, len(payload), header.get("client_name", ""))
            return None if self.writes.now(w, payload) else rpc.LATER
        if op != "chunk.read":
            return rpc.LATER
        admit(CHUNK_READ, _role(conn), header)
        self._bind_client(conn, header)
        chunk_id, version, offset, size = self._read_fields(header)
        try:
            data = self.store_now().read_cached(chunk_id, version, offset, size)
        except DfsError as e:
            e.details.setdefault("address", self.address)
            raise
        return rpc.LATER if data is None else ({}, data)

    def _bind_client(self, conn: rpc.Connection, header: dict[str, Any]) -> None:
        """The client a request's token must have been issued to (``client_name``): a
        client's own certificate name, whatever it sent; a server (a chunkserver
        forwarding down its chain, or copying a replica) names it for the client."""
        if _role(conn) not in SERVER_ROLES:
            header["client_name"] = token_client(self._credentials, conn.peer)

    def _check_token(self, h: dict[str, Any], chunk_id: int, version: int, mode: bytes) -> None:
        """``check_token`` of a request's ``token``, ``expiry_ms`` and ``client_name``."""
        self.check_token(h["token"], h["expiry_ms"], h.get("client_name", ""), chunk_id,
                         version, mode)  # fmt: skip

    def check_token(
        self, token: bytes, expiry_ms: int, client: str, chunk_id: int, version: int, mode: bytes
    ) -> None:
        """TOKEN CACHE: a reader sends the same token with every read of a chunk until it
        expires, and checking its signature (one or two HMAC-SHA256 in a secret-only
        cluster, an Ed25519 verification of 110 us in a TLS one) was a good part of a
        small read's work here. A token is remembered with exactly the fields its signature
        covered, so a hit is a signature already checked; the expiry is checked every time.
        At most ``TOKENS_VERIFIED_MAX`` are kept (all forgotten at once past it)."""
        now_ms = int(time.time() * 1000)
        key = (token, chunk_id, version, mode, expiry_ms, client)
        if key in self._tokens_verified and now_ms < expiry_ms:
            return
        self._tokens.check(token, chunk_id, version, mode, expiry_ms, now_ms, client)
        if len(self._tokens_verified) >= TOKENS_VERIFIED_MAX:
            self._tokens_verified.clear()
        self._tokens_verified.add(key)

    def store_now(self) -> AsyncChunkStore:
        assert self.store is not None, "requests are served only after start()"
        return self.store

    def chain_of(self, h: dict[str, Any]) -> list[str]:
        """A request's ``chain``, checked: host:port strings, never this server."""
        return _chain(h, self.address)

    def _read_fields(self, h: dict[str, Any]) -> tuple[int, int, int, int]:
        """A ``chunk.read``'s (chunk_id, version, offset, size), its token checked."""
        chunk_id: int = h["chunk_id"]
        version: int = h["version"]
        self._check_token(h, chunk_id, version, READ)
        return chunk_id, version, h["offset"], h["size"]

    async def _chunk_read(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        chunk_id, version, offset, size = self._read_fields(h)
        store = self.store_now()
        try:
            # Served on the loop from the page cache, when it can be: no deadline to arm.
            data = store.read_cached(chunk_id, version, offset, size)
        except DfsError as e:
            e.details.setdefault("address", self.address)
            raise
        if data is None:
            deadline = asyncio.get_running_loop().time() + timeout_s
            data = await self.local(
                store.read_pooled(chunk_id, version, offset, size), deadline, "chunk.read"
            )
        return {}, data

    async def _chunk_sync(self, h: dict[str, Any], payload: bytes, timeout_s: float) -> None:
        chunk_id: int = h["chunk_id"]
        version: int = h["version"]
        self._check_token(h, chunk_id, version, WRITE)
        chain = _chain(h, self.address)
        expect_length: int | None = h.get("expect_length")
        deadline = asyncio.get_running_loop().time() + timeout_s
        local = self.local(
            self.store_now().sync(chunk_id, version, expect_length), deadline, "chunk.sync"
        )
        fields = {
            "chunk_id": chunk_id, "version": version, "token": h["token"],
            "expiry_ms": h["expiry_ms"], "client_name": h.get("client_name", ""),
        }  # fmt: skip
        if expect_length is not None:
            fields["expect_length"] = expect_length
        await self.with_chain(local, chain, "chunk.sync", b"", deadline, fields)

    async def _chunk_info(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        chunk_id: int = h["chunk_id"]
        info = self.store_now().info(chunk_id)
        if info is None:
            raise NotFound("no replica of this chunk here", chunk_id=chunk_id)
        return {"version": info.version, "length": info.length}, b""

    async def _chunk_quarantined(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        copies = await self.store_now().quarantined(h["chunk_id"])
        return {"copies": [dataclasses.asdict(c) for c in copies]}, b""

    async def _chunk_salvage(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        chunk_id, version, length = h["chunk_id"], h["version"], h["length"]
        info, lost = await self.store_now().salvage(
            chunk_id, h["copy"], version, length, h.get("zero", False)
        )
        self._log(logging.WARNING, "salvaged", chunk=chunk_id, version=version, lost=lost)
        return {"version": info.version, "length": info.length, "lost_blocks": lost}, b""

    async def _chunk_delete(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        entries: list[tuple[int, int]] = [(c[0], c[1]) for c in h["chunks"]]
        store = self.store_now()
        deadline = asyncio.get_running_loop().time() + timeout_s
        # In bulk (disk.py DELETES IN BULK): each delete takes its chunk's lock, so a read or
        # write of that chunk in flight finishes first.
        removed = await self.local(
            store.delete_many([(chunk_id, version) for chunk_id, version in entries]),
            deadline,
            "chunk.delete",
        )
        deleted = sorted({chunk_id for (chunk_id, _), r in zip(entries, removed, strict=True) if r})
        if deleted:
            self._log(logging.INFO, "deleted", chunks=len(deleted), asked=len(entries))
        return {"deleted": deleted}, b""

    async def _chunk_replicate(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        chunk_id: int = h["chunk_id"]
        version: int = h["version"]
        self._check_token(h, chunk_id, version, WRITE)
        length: int = h["length"]
        sources = _addresses(h["sources"], self.address, "sources include")
        deadline = asyncio.get_running_loop().time() + timeout_s
        await self.local(
            self._replicate(chunk_id, version, length, sources, h["token"], h["expiry_ms"],
                            deadline),
            deadline,
            "chunk.replicate",
        )  # fmt: skip
        return {"length": length}, b""

    async def _replicate(
        self,
        chunk_id: int,
        version: int,
        length: int,
        sources: list[str],
        token: bytes,
        expiry_ms: int,
        deadline: float,
    ) -> None:
        store = self.store_now()
        lock = self._copy_locks.get(chunk_id)
        if lock is None:
            lock = self._copy_locks[chunk_id] = ChunkLock()
        try:
            await lock.acquire(True)
            try:
                info = store.info(chunk_id)
                if info is not None and info.version > version:
                    raise Stale(
                        "a newer replica is here already",
                        chunk_id=chunk_id,
                        version=version,
                        replica_version=info.version,
                    )
                if info is not None and info.version == version and info.length >= length:
                    return  # already here (an earlier copy, or a client's write)
                async with self._replicate_slots:
                    started = asyncio.get_running_loop().time()
                    await copy_in(
                        store, self.peers, self.replicate_throttle, chunk_id=chunk_id,
                        version=version, length=length, sources=sources, token=token,
                        expiry_ms=expiry_ms, deadline=deadline,
                    )  # fmt: skip
                    elapsed_ms = int((asyncio.get_running_loop().time() - started) * 1000)
                self._log(logging.INFO, "replicated", chunk=chunk_id, version=version,
                          length=length, elapsed_ms=elapsed_ms)  # fmt: skip
            finally:
                lock.release(True)
        finally:
            if lock.idle and self._copy_locks.get(chunk_id) is lock:
                del self._copy_locks[chunk_id]

    async def _cs_status(
        self, h: dict[str, Any], payload: bytes, timeout_s: float
    ) -> rpc.HandlerResult:
        store = self.store_now().store
        capacity_bytes = await asyncio.to_thread(store.capacity_now)
        scrubber = self.scrubber
        return {
            "cs_id": self.cs_id,
            "uuid": self.uuid,
            "address": self.address,
            "capacity_bytes": capacity_bytes,
            "used_bytes": store.used_bytes,
            "chunks": store.chunk_count,
            "pid": self.pid,
            "scrub_bytes": 0 if scrubber is None else scrubber.bytes_verified,
            "scrub_passes": 0 if scrubber is None else scrubber.passes,
            "bad_chunks": store.bad_found,
            # Where the replicas are: a client on this machine reads them from their files
            # (dfs/client/localread.py, SHORT-CIRCUIT READS) once it has checked the
            # directory's uuid and lock; it grants nothing the file modes do not.
            "data_dir": self._data_dir,
        }, b""

    async def local(self, job: Awaitable[T], deadline: float, what: str) -> T:
        """A local store operation: errors name this server (the client reports it)."""
        try:
            return await _within(deadline, job, what)
        except DfsError as e:
            e.details.setdefault("address", self.address)
            raise

    async def with_chain(
        self,
        local: Awaitable[Any],
        chain: list[str],
        op: str,
        payload: bytes,
        deadline: float,
        fields: dict[str, Any],
    ) -> None:
        """Run ``local`` and the same op on the rest of the chain at once; succeed only if
        both did. The local error wins when both failed: it is the nearer replica."""
        if not chain:
            await local
            return
        results = await asyncio.gather(
            local, self.forward(chain, op, payload, deadline, fields), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def forward(
        self, chain: list[str], op: str, payload: bytes, deadline: float, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """``op`` to the next server of ``chain`` with the rest of it; its answer's header."""
        target, rest = chain[0], chain[1:]
        remaining_s = deadline - asyncio.get_running_loop().time()
        try:
            if remaining_s <= 0:
                raise Timeout(f"{op} out of time before forwarding")
            reply, _ = await self.peers.call(
                target,
                op,
                payload,
                timeout_s=remaining_s,
                chain=rest,
                timeout_ms=max(int(remaining_s * 1000 * FORWARD_TIMEOUT_SHARE), 1),
                **fields,
            )
        except DfsError as e:
            # A downstream server's own error already names it (or the one after it).
            e.details.setdefault("address", target)
            raise
        return reply

    # ------------------------------------------------------------------ metaserver

    async def _meta_loop(self) -> None:
        """Register, then heartbeat every heartbeat_ms, for the life of the server. Block
        reports go from their own loop (``_report_loop``): a long report, or a leader slow
        to judge one, must not hold back the heartbeats that keep this server alive."""
        period_s = self.config.heartbeat_ms / 1000
        registered = False
        while True:
            try:
                if not registered:
                    await self._register()
                    registered = True
                    self._report_leader = None  # a report right after each registration
                    self._registered.set()
                else:
                    await self._heartbeat()
            except NotFound as e:
                if registered:
                    # The leader does not know our id (its state was made afresh): register
                    # again at once.
                    self._log(logging.INFO, "reregister", reason=repr(str(e)))
                    registered = False
                    self._registered.clear()
                    continue
                self._meta_state(False, f"error={str(e)!r}")
            except DfsError as e:
                self._meta_state(False, f"error={str(e)!r}")
            except Exception:
                # A bug or a local disk error (saving cs_id): keep serving data, retry later.
                _loop_log.log(logging.ERROR, "heartbeat_failed",
                              "chunkserver cs=%s event=heartbeat_failed", self.cs_id or "?",
                              exc_info=True)  # fmt: skip
            await asyncio.sleep(period_s)  # the heartbeat period, not a wait for a condition

    async def _meta_fields(self) -> dict[str, Any]:
        store = self.store_now().store
        return {
            "address": self.address,
            "capacity_bytes": await asyncio.to_thread(store.capacity_now),
            "used_bytes": store.used_bytes,
            "pid": self.pid,
        }

    @property
    def host(self) -> str:
        """This server's host label: the config's ``host``, else its address's host."""
        return self.config.host or self.address.rpartition(":")[0].strip("[]")

    async def _register(self) -> None:
        fields = await self._meta_fields()
        header = await self._meta_call(
            "cs.register", uuid=self.uuid, host=self.host, rack=self.config.rack, **fields
        )
        cs_id = uint_field(header, "cs_id")
        if cs_id < 1:
            raise Invalid("metaserver gave cs_id 0")
        if cs_id != self.cs_id:
            if self.cs_id:
                # The metaserver gave our uuid another id than before: its state was made
                # afresh. Follow it (it decides ids); the old id's chunks are its to judge.
                log.warning("chunkserver cs=%d event=cs_id_changed new=%d uuid=%s",
                            self.cs_id, cs_id, self.uuid)  # fmt: skip
            await asyncio.to_thread(write_small_file, self.config.data_dir / "cs_id", str(cs_id))
            self.cs_id = cs_id
            self.store_now().store.log_prefix = self._log_prefix()
        self._log(logging.INFO, "registered", uuid=self.uuid, metaserver=self.meta_follower.leader)
        self._meta_state(True, f"leader={self.meta_follower.leader}")

    async def _heartbeat(self) -> None:
        store = self.store_now().store
        fields = await self._meta_fields()
        await self._meta_call(
            "cs.heartbeat", cs_id=self.cs_id, chunks=store.chunk_count, load=self.load, **fields
        )
        self._meta_state(True, f"leader={self.meta_follower.leader}")

    async def _report_loop(self) -> None:
        """Once registered, check every heartbeat_ms whether a block report is due."""
        period_s = self.config.heartbeat_ms / 1000
        while True:
            await self._registered.wait()
            await self._report_if_due()
            await asyncio.sleep(period_s)  # the check's period, not a wait for a condition

    async def _report_if_due(self) -> None:
        """Send a block report when none went to this leader yet or the interval passed.
        A failure is logged (once per change) and leaves it due for the next round."""
        loop = asyncio.get_running_loop()
        leader = self.meta_follower.leader
        if leader == self._report_leader and loop.time() < self._report_next:
            return
        try:
            chunks, parts = await self._block_report(leader)
        except DfsError as e:
            self._report_state("report", False, f"error={str(e)!r}")
            return
        except Exception:
            _loop_log.log(logging.ERROR, "report_failed", "chunkserver cs=%s event=report_failed",
                          self.cs_id or "?", exc_info=True)  # fmt: skip
            return
        self._report_leader = leader
        self._report_next = loop.time() + self.config.report_interval_ms / 1000
        self._report_state("report", True, f"leader={leader}")
        self._log(logging.INFO, "block_report", chunks=chunks, parts=parts, leader=leader)

    async def _block_report(self, leader: str | None) -> tuple[int, int]:
        """``cs.report`` in parts of ``report_chunks_per_call`` (id order), all to
        ``leader``; returns (chunks, parts)."""
        replicas = await asyncio.to_thread(self.store_now().list_chunks)
        per_call = self.config.report_chunks_per_call
        parts = max(1, -(-len(replicas) // per_call))
        for part in range(parts):
            if self.meta_follower.leader != leader:
                # A metaserver that did not see part 0 cannot use the rest: start again.
                raise Unavailable("the leader changed during a block report")
            page = replicas[part * per_call : (part + 1) * per_call]
            await self._meta_call(
                "cs.report",
                cs_id=self.cs_id,
                chunks=[[r.chunk_id, r.version, r.length] for r in page],
                part=part,
                final=part == parts - 1,
            )
        return len(replicas), parts

    async def _bad_loop(self) -> None:
        """Tell the leader about bad replicas (store.py rule 6) as soon as they are found,
        and again every heartbeat_ms until it acknowledges them."""
        period_s = self.config.heartbeat_ms / 1000
        while True:
            self._bad_wake.clear()  # before looking: a replica found bad after this wakes us
            pending = self.store_now().store.bad_pending(BAD_CHUNKS_MAX)
            if pending and self.cs_id:
                try:
                    await self._meta_call(
                        "cs.bad_chunks", cs_id=self.cs_id, chunks=[list(p) for p in pending]
                    )
                except DfsError as e:
                    self._report_state("bad_chunks", False, f"error={str(e)!r}")
                except Exception:
                    _loop_log.log(logging.ERROR, "bad_chunks_failed",
                                  "chunkserver cs=%s event=bad_chunks_failed", self.cs_id or "?",
                                  exc_info=True)  # fmt: skip
                else:
                    self.store_now().store.bad_acknowledged(pending)
                    self._report_state("bad_chunks", True, f"leader={self.meta_follower.leader}")
                    self._log(logging.INFO, "bad_chunks_reported",
                              chunks=",".join(f"{i}:{v}" for i, v in pending[:16]),
                              count=len(pending))  # fmt: skip
                    continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await self._bad_wake.wait()  # a new bad replica, or the retry period

    def _report_state(self, kind: str, ok: bool, detail: str) -> None:
        """Log a report kind's failures and recoveries once per change (a metaserver that
        does not take them yet would otherwise fill the log every second)."""
        if self._report_ok.get(kind) == ok:
            return
        first = kind not in self._report_ok
        self._report_ok[kind] = ok
        if ok and first:
            return  # a first success is not news
        event = f"{kind}_ok" if ok else f"{kind}_failed"
        log.info("chunkserver cs=%s event=%s %s", self.cs_id or "?", event, detail)

    def _meta_state(self, up: bool, detail: str) -> None:
        """Log reachability once per change, not once per attempt."""
        if up == self._meta_up:
            return
        self._meta_up = up
        event = "metaserver_reachable" if up else "metaserver_unreachable"
        log.info("chunkserver cs=%s event=%s %s", self.cs_id or "?", event, detail)

    async def _meta_call(self, op: str, **fields: Any) -> dict[str, Any]:
        """``op`` at the leader (``dfs/leader.py``: the last known one, then the configured
        addresses, following ``NotLeader`` hints): one round through them, each attempt
        within ``META_CALL_TIMEOUT_S``; the next heartbeat tries again."""

        async def attempt(address: str, attempt_s: float) -> tuple[dict[str, Any], bytes]:
            return await self.meta.call(
                address,
                op,
                timeout_s=attempt_s,
                timeout_ms=max(1, int(attempt_s * 1000 * FORWARD_TIMEOUT_SHARE)),
                **fields,
            )

        header, _ = await self.meta_follower.call(
            op,
            attempt,
            timeout_s=META_CALL_TIMEOUT_S * len(self.meta_follower.addresses),
            one_round=True,
        )
        return header


# ---------------------------------------------------------------------- process


async def serve(config: ServerConfig, credentials: Credential) -> int:
    """Run until SIGTERM/SIGINT; exit code 0, or 1 when the server cannot start."""
    server = ChunkServer(config, credentials)
    try:
        await server.start()
    except (DataDirError, OSError) as e:
        log.error("chunkserver event=start_failed reason=%r", str(e))
        await server.stop()
        return 1
    await daemon.wait_for_stop()
    server._log(logging.INFO, "shutdown", load=server.load)
    await server.stop()
    server._log(logging.INFO, "stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon.main("chunkserver", argv, load_config, serve, fast_loop=True, check=token_checker)


__all__ = ["ChunkServer", "main", "serve"]
