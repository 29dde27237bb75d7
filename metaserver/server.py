"""The metaserver daemon: the namespace state machine on a Raft node, served over ``dfs.rpc``.

    python -m metaserver --config meta1.toml        (or: dfs metaserver --config meta1.toml)

What it owns: the process (config, signals, logs), one listener for peers, clients and
chunkservers, the mapping of the protocol's ops (docs/PROTOCOL.md, version 1) onto Raft
proposals and linearizable reads of ``metaserver.namespace``, the chunkserver registry (soft
state, leader only: ``placement.Registry``), placement of new chunks and the signing of
chunk access tokens.

What it must not do: decide file-system semantics (the namespace does, deterministically, on
every replica) or Raft questions (the node does). Everything that changes the namespace is a
command in the log; the only thing decided here, on the leader, before proposing, is what
must not be decided on every replica: the time (``now_ns``) and the replicas of a new chunk.

Reads (``fs.lookup``, ``fs.getattr``, ``fs.readdir``, ...) are linearizable: the leader
serves them on its lease while it holds (``read_lease``, on by default: no round trip to the
followers), else confirms with a quorum that it still leads (ReadIndex); it waits for its
state machine to reach its commit index, then reads the local state. A follower answers
``NotLeader`` with the leader's address, for reads and writes alike.

The config file: ``metaserver/config.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from dfs import daemon, rpc
from dfs.credentials import Credential, Credentials, token_client, token_minter
from dfs.metrics import Reading, ServerMetrics
from dfs.wire.errors import (
    DfsError,
    Invalid,
    NotFound,
    NotLeader,
    Unsupported,
    error_from_wire,
)
from dfs.wire.limits import (
    LOCATE_COUNT_MAX,
    OP_TIMEOUT_MS_DEFAULT,
    OP_TIMEOUT_MS_MAX,
    READDIR_LIMIT_MAX,
)
from dfs.wire.messages import uint_field
from dfs.wire.ops import METASERVER_OPS, RAFT, admit, lookup, refuse_role
from dfs.wire.ops_meta import COMMANDS, FS_CREATE
from dfs.wire.spec import METASERVER
from dfs.wire.token import READ, WRITE
from metaserver.access import caller_of
from metaserver.access import check as check_access
from metaserver.admin import Admin
from metaserver.admin_trash import TrashAdmin
from metaserver.backup import Backups
from metaserver.chunks import handles
from metaserver.chunks.placement import Placer, Registry
from metaserver.config import MetaConfig, load_config
from metaserver.holds import KEEPALIVE_S, Holds
from metaserver.leasedesk import LeaseDesk
from metaserver.membership import Membership, was_removed
from metaserver.metrics import readings as metaserver_readings
from metaserver.namespace import Namespace, encode_command, pools
from metaserver.namespace.commands import BATCH_OPS
from metaserver.namespace.ops import ORPHANS_BATCH_MAX
from metaserver.raft.node import RaftNode
from metaserver.raft.peer import RAFT_OP
from metaserver.raft.storage import CorruptLogError, StorageLockedError
from metaserver.raft.types import Role
from metaserver.repair import Repair
from metaserver.salvage import Salvager

log = logging.getLogger(__name__)

# Server-side deadline of one op (``timeout_ms``'s default, dfs/wire/limits.py): a commit
# takes milliseconds; the default covers an election plus a slow disk, after which the
# client retries with the same seq.
OP_TIMEOUT_S = OP_TIMEOUT_MS_DEFAULT / 1000
# How long a truncate waits for the cut chunk's replicas to take the new version: they
# answer in milliseconds; one that does not within this is left stale (never served).
CUT_PUSH_TIMEOUT_S = 3.0


Handler = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]

# Every request is checked at the edge (``handle``) against its definition in
# dfs/wire/ops_meta.py, the peer's role first; the handlers below read checked fields.
# Mutations (``COMMANDS``: op -> namespace command) are proposed with their definition's
# fields as the command's arguments.
# The requests fs.batch may hold (PROTOCOL.md): those whose namespace op is a BATCH_OPS.
BATCHABLE = tuple(op for op, ns_op in COMMANDS.items() if ns_op in BATCH_OPS)


def _role(conn: rpc.Connection) -> str | None:
    """The role the peer proved in the handshake (``dfs/wire/auth.py``)."""
    return conn.peer.role if conn.peer is not None else None


class MetaServer:
    def __init__(self, config: MetaConfig, credentials: Credential) -> None:
        self.config = config
        self.ns = Namespace(
            chunk_size_bytes=config.chunk_size_bytes, trash_s_default=config.trash_time_s
        )
        credentials = Credentials.of(credentials)
        self.node = RaftNode(config.node, self.ns, credentials)
        self.registry = Registry(config.dead_timeout_s, started_s=time.monotonic())
        self.placer = Placer(config.placement, cluster=self.ns.policy)
        self._credentials = credentials
        self._mint = token_minter(credentials)
        self._rpc: rpc.RpcServer | None = None
        self._leader_term = -1  # the term in which the registry's soft state was gathered
        self._cs_conns: dict[str, rpc.Connection] = {}
        self.repair = Repair(
            self,
            interval_s=config.repair_interval_s,
            quiet_s=config.repair_quiet_s,
            gc_grace_s=config.gc_grace_s,
            jobs=config.replication_jobs,
        )
        self._repair_task: asyncio.Task[None] | None = None
        self.holds = Holds(grace_s=config.hold_grace_s)
        # How often clients announce holds and the chunks they write: three times within
        # the shorter of a new leader's grace and the upkeep's quiet window, so that one
        # lost announcement costs neither; at most KEEPALIVE_S, at least 0.5 s.
        shortest_s = min(config.hold_grace_s, config.repair_quiet_s or KEEPALIVE_S)
        self._keepalive_ms = int(min(max(shortest_s / 3, 0.5), KEEPALIVE_S) * 1000)
        self._orphan_task: asyncio.Task[None] | None = None
        self.desk = LeaseDesk(self.ns, self._read, self._leader_view, BATCHABLE)
        self.admin = Admin(
            self.ns, self.registry, self.repair, propose=self._propose, read=self._read,
            leader_view=self._leader_view, know_all_chunkservers=self.know_all_chunkservers,
            desk=self.desk,
        )  # fmt: skip
        self.trash = TrashAdmin(self.ns, propose=self._propose, read=self._read)
        self._ops: dict[str, Handler] = {
            "fs.lookup": self._lookup,
            "fs.getattr": self._getattr,
            "fs.readdir": self._readdir,
            "fs.readlink": self._readlink,
            "fs.getxattr": self._getxattr,
            "fs.listxattr": self._listxattr,
            "fs.statfs": self._statfs,
            "fs.locate": self._locate,
            "fs.write_handle": self._write_handle,
            "cs.register": self._cs_register,
            "cs.heartbeat": self._cs_heartbeat,
            "fs.open": self._open,
            "fs.release": self._release,
            "fs.keepalive": self._keepalive,
            "fs.reserve": self._reserve,
            "cs.report": self._cs_report,
            "cs.bad_chunks": self._cs_bad_chunks,
            "status": self._status,
            **self.admin.ops(),  # admin.rebalance, .drain, .forget, .fsck, .goals, .set_goal
            **self.trash.ops(),  # admin.trash_*, .set_trash_time, .usage
        }
        self.membership = Membership(self.node, credentials)
        self._ops.update(self.membership.ops())  # admin.meta_*, meta.members
        self._ops.update(Backups(self.node, config.chunk_size_bytes, self._read).ops())
        self._ops.update(Salvager(self).ops())  # admin.salvage
        # Every op the protocol defines for a metaserver has its handler here (Raft's frame
        # goes to the node, mutations to ``_propose``, leases to the desk, ``fs.batch`` to
        # ``_batch`` with its connection), and no other.
        served = {*self._ops, *COMMANDS, "fs.dir_lease", "fs.lease_renew", "fs.lease_release",
                  "fs.batch", RAFT.name}  # fmt: skip
        assert served == set(METASERVER_OPS), served ^ set(METASERVER_OPS)
        self._membership_task: asyncio.Task[None] | None = None
        # Connections whose refused Raft frames were logged (once per connection).
        self._raft_refused: weakref.WeakSet[rpc.Connection] = weakref.WeakSet()
        self.metrics: ServerMetrics | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        await self.node.start()
        cfg = self.config
        handler = self.handle
        if cfg.metrics_port is not None:
            self.metrics = ServerMetrics(METASERVER_OPS)
            handler = self.metrics.timed(self.handle)

            async def read() -> dict[str, Reading]:
                return metaserver_readings(self)

            self.metrics.add_reader(read)
            self.metrics_port = self.metrics.start(cfg.listen_host, cfg.metrics_port)
        self._rpc = await rpc.serve(
            cfg.listen_host,
            cfg.listen_port,
            self._credentials,
            handler,
            name=f"meta-{cfg.node.id}",
            role="metaserver",
            oneway_handler=self._take_frame,
            limits=cfg.limits,
        )
        log.info("metaserver node=%d event=listening address=%s:%d",
                 cfg.node.id, cfg.listen_host, self._rpc.port)  # fmt: skip
        self._repair_task = asyncio.ensure_future(self.repair.run())
        self._orphan_task = asyncio.ensure_future(self._orphan_loop())
        self._membership_task = asyncio.ensure_future(self.membership.watch())

    async def stop(self) -> None:
        if self._membership_task is not None:
            self._membership_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._membership_task
        if self._orphan_task is not None:
            self._orphan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._orphan_task
        if self._repair_task is not None:
            self._repair_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repair_task
        await self.repair.stop()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # waits for a scrape in progress
        for conn in self._cs_conns.values():
            conn.close()
        if self._rpc is not None:
            self._rpc.close()
            try:
                await self._rpc.wait_closed()
            except TimeoutError:
                log.info("metaserver node=%d event=stop connections slow to close", self.node.id)
        await self.node.stop()

    # ------------------------------------------------------------------ dispatch

    async def handle(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes] | None:
        op = header.get("op")
        if op == RAFT_OP:
            if _role(conn) != METASERVER:
                raise refuse_role(RAFT, _role(conn))
            self.node.receive(header, payload)
            return None
        spec = lookup(METASERVER_OPS, op)
        admit(spec, _role(conn), header)
        # Whom the tokens this request gets are issued to (dfs/wire/token.py).
        header["client_name"] = token_client(self._credentials, conn.peer)
        caller = caller_of(conn.peer)
        timeout_ms: int = header.get("timeout_ms", OP_TIMEOUT_MS_DEFAULT)
        timeout_s = min(max(timeout_ms, 1), OP_TIMEOUT_MS_MAX) / 1000
        async with self.desk.guard(spec.name, header, timeout_s):
            if caller is not None:  # after the guard: recalled leases' batches have landed
                check_access(self.ns, caller, spec.name, header)
            return await self._dispatch(conn, spec.name, header, timeout_s)

    def _take_frame(self, conn: rpc.Connection, header: dict[str, Any], payload: bytes) -> bool:
        """The one-way handler: Raft frames go to the node, from metaservers only. One from
        anyone else is dropped (a one-way frame has no answer) and logged once per
        connection: a client that knows the secret must not move terms or logs."""
        if header.get("op") != RAFT_OP:
            return False
        role = _role(conn)
        if role == METASERVER:
            return self.node.take_frame(conn, header, payload)
        if conn not in self._raft_refused:
            self._raft_refused.add(conn)
            log.warning("metaserver node=%d event=raft_refused peer=%s role=%s",
                        self.node.id, conn.peername, role)  # fmt: skip
        return True

    async def _dispatch(
        self, conn: rpc.Connection, op: str, header: dict[str, Any], timeout_s: float
    ) -> tuple[dict[str, Any], bytes]:
        if op == "fs.dir_lease":
            lease = await self.desk.dir_lease(conn, header, timeout_s)
            if "batch_ops" in lease and caller_of(conn.peer) is not None:
                # A client restricted to a user answers nothing ahead of the leader: its
                # changes are checked (metaserver/access.py) and answered one by one.
                lease["batch_ops"] = []
            return lease, b""
        if op == "fs.lease_release":
            return self.desk.lease_release(header), b""
        if op == "fs.lease_renew":
            return await self.desk.lease_renew(conn, header, timeout_s), b""
        if op == "fs.batch":
            return await self._batch(conn, header, timeout_s), b""
        if op == "fs.create" and header.get("first_chunk") is True:
            return await self._create_with_chunk(header, timeout_s), b""
        command = COMMANDS.get(op)
        if op in ("fs.unlink", "fs.rename"):
            header = {**header, "keep": self._keep(header)}
        if command is not None:
            args = METASERVER_OPS[op].args(header)
            result = await self._propose(command, args, header, timeout_s)
            cut = result.pop("cut", None)
            if cut is not None:
                await self._push_version(
                    cut["chunk_id"], cut["version"], cut["length"], cut["replicas"]
                )
            if op == "fs.commit":
                self._touch_committed(header["chunks"])
            return result, b""
        handler = self._ops.get(op)
        if handler is None:
            raise Unsupported(f"unknown op {op!r}", op=op)
        return await handler(header, timeout_s), b""

    def _leader_view(self) -> None:
        """Raise ``NotLeader`` on a follower; on a new term of leadership, reset the soft
        state. The term, not a flag, tells: a leader that lost and won back leadership
        without serving a request in between must still forget what it heard before."""
        node = self.node
        if not node.is_leader:
            leader = node.leader_id
            raise NotLeader(node.address_of(leader) if leader else None)
        term = int(node.term)
        if term != self._leader_term:
            self._leader_term = term
            self.registry.restart(time.monotonic())
            self.repair.restart()
            self.holds.restart(time.monotonic())
            self.desk.restart()

    async def _read(self, timeout_s: float) -> None:
        self._leader_view()
        await self.node.read_index(timeout_s)

    async def _propose(
        self, op: str, args: dict[str, Any], header: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        self._leader_view()
        client = uint_field(header, "client", 0)
        seq = uint_field(header, "seq", 0)
        data = encode_command(op, client, seq, time.time_ns(), args)
        result = await self.node.propose(data, timeout_s)
        if not result.get("ok"):
            raise error_from_wire(result.get("err"))
        return {k: v for k, v in result.items() if k != "ok"}

    def _touch_committed(self, entries: list[Any]) -> None:
        """The upkeep leaves chunks a client just committed alone for a while."""
        for entry in entries:
            if isinstance(entry, list) and len(entry) == 4:
                self.repair.committed(entry[2])

    # ------------------------------------------------------------------ open-file holds

    def _keep(self, h: dict[str, Any]) -> bool:
        """Must the inode an unlink or rename is about to free stay as an orphan? (The
        namespace decides whether the op frees anything; this only says what to do if so.)"""
        if not self.node.is_leader:
            return False
        try:
            if h.get("op") == "fs.unlink":
                target = self.ns.lookup(h["parent"], h["name"])
            else:
                target = self.ns.lookup(h["new_parent"], h["new_name"])
        except DfsError:
            return False
        return self.holds.held(int(target["ino"]), time.monotonic())

    def _hold_created(self, h: dict[str, Any], result: dict[str, Any]) -> None:
        """``fs.create`` with ``first_chunk`` and ``holder``: created to be written, the
        file is held open by its creator from now on. (Every request carries ``holder``,
        for directory leases: a plain create is not an open.)"""
        holder = h.get("holder", 0)
        attr = result.get("attr")
        if holder and isinstance(attr, dict):
            self.holds.hold(holder, [int(attr["ino"])], time.monotonic())

    async def _open(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """getattr (linearizable, for close-to-open) and a hold for the client's session."""
        ino, client = h["ino"], h.get("holder", 0)
        await self._read(timeout_s)
        attr = self.ns.getattr(ino)
        if client:
            self.holds.hold(client, [ino], time.monotonic())
        return {"attr": attr}

    async def _release(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        inos, client = h["inos"], h.get("holder", 0)
        self._leader_view()
        self.holds.release(client, inos)
        await self._free_orphans([i for i in inos if i in self.ns.orphans], timeout_s)
        return {}

    async def _keepalive(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The client's holds, and the chunks it is writing (uploads not yet committed):
        those count as touched, so that the upkeep does not copy a chunk under a busy
        writer (the copy's fence would cost the writer its uncommitted bytes)."""
        inos, client = h["inos"], h.get("holder", 0)
        writing: list[int] = h.get("writing", [])
        self._leader_view()
        self.holds.keepalive(client, inos, time.monotonic())
        for chunk_id in writing:
            if chunk_id in self.ns.chunk_table:
                self.repair.writing(chunk_id)
        # The voters' addresses: a long-lived client follows membership changes.
        return {"keepalive_ms": self._keepalive_ms,
                "metaservers": self.membership.voter_addresses()}  # fmt: skip

    async def _batch(
        self, conn: rpc.Connection, h: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """``fs.batch``: what a client answered under its directory leases (removals,
        creates, mkdirs, symlinks, attribute changes of the directory, commits of files it
        created there), checked as each would be alone, then one command
        (``metaserver/namespace/batch.py``). A directory made in the batch comes with its
        maker's lease on it (``LeaseDesk.granted_new``)."""
        ops = h["ops"]
        holder = h.get("holder", 0)
        self._leader_view()
        subs: list[list[Any]] = []
        holds: list[bool] = []
        for sub in ops:
            if type(sub) is not list or len(sub) != 2 or type(sub[1]) is not dict:
                raise Invalid("ops: each sub-op is [op, fields]")
            op, fields = sub
            if op not in BATCHABLE:
                raise Invalid(f"ops: only {', '.join(BATCHABLE)} may be batched", op=op)
            if op == "fs.setattr" and any(k in fields for k in ("size", "atime_now", "mtime_now")):
                raise Invalid("ops: a batched setattr sets no size and no server time")
            held = fields.get("hold") is True  # a create of a file still open
            if op == "fs.unlink":
                fields = {**fields, "op": op, "keep": self._keep({**fields, "op": op})}
            ns_op, spec = COMMANDS[op], METASERVER_OPS[op]
            args = spec.args(spec.check(fields))
            if ns_op == "create" or ("ino" in args and ns_op in ("mkdir", "symlink")):
                # Answered under a lease: its inode number (and a file's first chunk)
                # come from the sender's pool (namespace/pools.py).
                args["pool"] = holder
            subs.append([ns_op, args])
            holds.append(held)
        result = await self._propose("batch", {"ops": subs}, h, timeout_s)
        results = result["results"]
        for (ns_op, args), answer, held in zip(subs, results, holds, strict=True):
            if ns_op == "commit":
                self._touch_committed(args["chunks"])
            elif ns_op == "create" and answer.get("ok"):
                chunk = answer.get("chunk")
                if chunk is not None:
                    self.repair.writing(int(chunk["chunk_id"]))
                if held:  # open at the sender when it sent the batch: held from now on
                    self.holds.hold(holder, [int(answer["attr"]["ino"])], time.monotonic())
            elif ns_op == "mkdir" and answer.get("ok") and holder:
                self.desk.granted_new(int(answer["attr"]["ino"]), holder, conn)
        return {"results": results}

    async def _reserve(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``fs.reserve``: ``count`` inode numbers, each with a first chunk placed for
        ``goal`` replicas, for the creates ``holder`` answers under its directory leases
        (namespace/pools.py). Answers ``entries`` (``{ino, handle}``, the handle as
        ``fs.write_handle`` answers) and ``ttl_ms``; none where no chunkserver can take
        a chunk."""
        holder, count, goal = h["holder"], h["count"], h["goal"]
        self._leader_view()
        self.know_all_chunkservers()
        alive = self.registry.alive(time.monotonic())
        sets: list[list[int]] = []
        for _ in range(count):
            replicas = self.placer.place(alive, goal, reserve_bytes=self.ns.chunk_size_bytes)
            if len(replicas) != goal:
                break
            sets.append(replicas)
        if not sets:
            return {"entries": [], "ttl_ms": 0}
        result = await self._propose("reserve", {"holder": holder, "replicas": sets}, h, timeout_s)
        entries = [
            {
                "ino": ino,
                "handle": self._handle_answer(
                    {"chunk_id": chunk_id, "version": 1, "length": 0, "replicas": replicas},
                    h["client_name"],
                ),
            }
            for ino, chunk_id, replicas in result["entries"]
        ]
        return {"entries": entries, "ttl_ms": pools.POOL_TTL_NS // 1_000_000}

    async def _free_orphans(self, candidates: list[int], timeout_s: float) -> None:
        now = time.monotonic()
        free = [ino for ino in candidates if not self.holds.held(ino, now)]
        for i in range(0, len(free), ORPHANS_BATCH_MAX):
            result = await self._propose(
                "release_orphans", {"inos": free[i : i + ORPHANS_BATCH_MAX]}, {}, timeout_s
            )
            log.info("metaserver node=%d event=orphans_released count=%d",
                     self.node.id, result.get("released", 0))  # fmt: skip

    async def _orphan_loop(self) -> None:
        """Expire holds of silent clients; expire the trash (a bounded batch); free
        orphans nobody holds (leader only)."""
        while True:
            await asyncio.sleep(1.0)  # a period, not a wait for a condition
            if not self.is_leader:
                continue
            try:
                self.holds.expire(time.monotonic())
                self.desk.expire()
                expired = await self.trash.expire(OP_TIMEOUT_S)
                if expired:
                    log.info("metaserver node=%d event=trash_expired count=%d",
                             self.node.id, expired)  # fmt: skip
                if self.ns.orphans:
                    await self._free_orphans(list(self.ns.orphans), OP_TIMEOUT_S)
            except (DfsError, TimeoutError) as e:
                log.info("metaserver node=%d event=orphan_sweep_failed error=%s",
                         self.node.id, e)  # fmt: skip

    # ------------------------------------------------------------------ reads

    async def _lookup(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        parent, name = h["parent"], h["name"]
        await self._read(timeout_s)
        return {"attr": self.ns.lookup(parent, name)}

    async def _getattr(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino = h["ino"]
        await self._read(timeout_s)
        return {"attr": self.ns.getattr(ino)}

    async def _readdir(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino, cookie = h["ino"], h.get("cookie", 0)
        limit = min(max(h.get("limit", 1024), 1), READDIR_LIMIT_MAX)
        await self._read(timeout_s)
        entries, more = self.ns.readdir(ino, cookie, limit)
        return {"entries": entries, "more": more}

    async def _readlink(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino = h["ino"]
        await self._read(timeout_s)
        return {"target": self.ns.readlink(ino)}

    async def _getxattr(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino, name = h["ino"], h["name"]
        await self._read(timeout_s)
        return {"value": self.ns.getxattr(ino, name)}

    async def _listxattr(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino = h["ino"]
        await self._read(timeout_s)
        return {"names": self.ns.listxattr(ino)}

    async def _statfs(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        alive = self.registry.alive(time.monotonic())
        total = sum(c.capacity_bytes for c in alive)
        used = sum(c.used_bytes for c in alive)
        stats = self.ns.stats()
        return {
            "bytes_total": total,
            "bytes_used": used,
            "bytes_free": max(total - used, 0),
            "inodes_used": stats["inodes"],
            "chunk_size": self.ns.chunk_size_bytes,
            "chunkservers_alive": len(alive),
        }

    def know_all_chunkservers(self) -> None:
        """Give the registry an entry for every chunkserver the namespace knows (those not
        heard from yet in this term are alive only within the new leader's grace)."""
        for cs_id, entry in self.ns.chunkservers().items():
            self.registry.known(cs_id, entry["address"])

    def _replicas(self, cs_ids: list[int], now_s: float) -> list[dict[str, Any]]:
        """Live replicas of ``cs_ids`` with their addresses, in the given order."""
        known = self.ns.chunkservers()
        out = []
        for cs_id in cs_ids:
            entry = known.get(cs_id)
            if entry is None:
                continue
            self.registry.known(cs_id, entry["address"])
            if self.registry.is_alive(cs_id, now_s):
                info = self.registry.servers[cs_id]
                out.append({"id": cs_id, "address": info.address, "load": info.load})
        return out

    async def _locate(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino, index = h["ino"], h["index"]
        count = min(max(h.get("count", 1), 1), LOCATE_COUNT_MAX)
        await self._read(timeout_s)
        now_s = time.monotonic()
        expiry_ms = time.time_ns() // 1_000_000 + self.config.token_ttl_ms
        chunks = []
        for c in self.ns.chunks(ino, index, count):
            chunks.append(
                {
                    **c,
                    "replicas": self._replicas(c["replicas"], now_s),
                    "token": self._mint(
                        c["chunk_id"],
                        c["version"],
                        READ,
                        expiry_ms,
                        h["client_name"],
                    ),
                    "expiry_ms": expiry_ms,
                }
            )
        return {"chunks": chunks}

    # ------------------------------------------------------------------ writes

    async def _write_handle(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ino, index = h["ino"], h["index"]
        # No ReadIndex round here: the state read below only guides placement, and the
        # command itself is ordered by the log (the namespace re-checks everything in
        # apply). A deposed leader's proposal simply fails. But an error read from that
        # state is no answer: a deposed leader (paused, then resumed) may not know the
        # inode yet. Then a ReadIndex round first: it confirms leadership and catches up.
        self._leader_view()
        replicas: list[int] = []
        drop: list[int] = []
        try:
            existing = self.ns.chunks(ino, index, 1)
            self.ns.getattr(ino)
        except DfsError:
            await self._read(timeout_s)
            existing = self.ns.chunks(ino, index, 1)
        # The replicas' rules: metaserver/chunks/handles.py.
        if existing:
            handles.check_writable(existing[0])
            now_s = time.monotonic()
            reported: list[int] = h.get("drop", [])
            self.know_all_chunkservers()
            drop = handles.handle_drop(existing[0], reported, self.registry, now_s)
        else:
            # If another handle allocates the chunk first, the namespace bumps that one's
            # version and ignores this placement.
            goal = int(self.ns.getattr(ino)["goal"])
            now_s = time.monotonic()
            self.know_all_chunkservers()
            replicas = handles.place_chunk(
                self.placer, self.registry, goal, self.ns.chunk_size_bytes, now_s
            )
        args: dict[str, Any] = {"ino": ino, "index": index, "replicas": replicas}
        if drop:
            args["drop"] = drop
        result = await self._propose("write_handle", args, h, timeout_s)
        chunk_id = int(result["chunk_id"])
        self.repair.writing(chunk_id)
        # Whether the command bumped an existing chunk, as it was applied: another handle
        # may have allocated the chunk after ``existing`` was read. (A result cached for a
        # retry by an older version of this code lacks the flag.)
        allocated = result.get("allocated", not existing)
        if not allocated:
            # The leader gives the replicas the new version before the writer writes
            # (as GFS's master and MooseFS's do): a replica that cannot take it is stale
            # from now on, leaves the set, and is not in the chain the writer gets.
            kept, length = await self.repair.settle_handle(
                chunk_id, int(result["version"]), int(result["length"]), result["replicas"]
            )
            result = {"chunk_id": chunk_id, "version": int(result["version"]), "length": length,
                      "replicas": kept}  # fmt: skip
        expiry_ms = time.time_ns() // 1_000_000 + self.config.token_ttl_ms
        known = self.ns.chunkservers()
        chain = [
            {"id": cs_id, "address": known[cs_id]["address"]}
            for cs_id in result["replicas"]
            if cs_id in known
        ]
        return {
            "chunk_id": result["chunk_id"],
            "version": result["version"],
            "length": result["length"],
            "chain": chain,
            "token": self._mint(
                result["chunk_id"],
                result["version"],
                WRITE,
                expiry_ms,
                h["client_name"],
            ),
            "expiry_ms": expiry_ms,
        }

    async def _push_version(
        self, chunk_id: int, version: int, length: int, replicas: list[int]
    ) -> dict[str, Any]:
        """Give a chunk's replicas its new version (after a truncate's cut, a new write
        handle; ``Repair.settle_version``). The caller's answer waits for the push
        (bounded), so the client's next read or write finds the replicas at the new
        version. Returns the chunk's ``{chunk_id, version, length, replicas}`` afterwards."""
        kept, _, length = await self.repair.settle_version(chunk_id, version, length, replicas)
        return {"chunk_id": chunk_id, "version": version, "length": length, "replicas": kept}

    async def _create_with_chunk(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``fs.create`` with ``first_chunk``: the file and its chunk 0 in one command, and
        the answer carries the chunk's write handle (``handle``, as ``fs.write_handle``
        answers), so that a small file costs one Raft commit less. Placement is decided
        here, as for ``fs.write_handle``; when it cannot be (no chunkserver heard from
        yet, none with space) the file is created without a chunk and the writer asks
        ``fs.write_handle`` later, as it would have."""
        op, args = COMMANDS["fs.create"], FS_CREATE.args(h)
        self._leader_view()
        with contextlib.suppress(DfsError):
            goal = int(self.ns.getattr(args["parent"])["goal"])  # the new file inherits it
            self.know_all_chunkservers()
            args["replicas"] = handles.place_first_chunk(
                self.placer, self.registry, goal, self.ns.chunk_size_bytes, time.monotonic()
            )
        if not args.get("replicas"):
            args.pop("replicas", None)
        result = await self._propose(op, args, h, timeout_s)
        self._hold_created(h, result)
        chunk = result.pop("chunk", None)
        if chunk is not None:
            self.repair.writing(int(chunk["chunk_id"]))
            result["handle"] = self._handle_answer(chunk, h["client_name"])
        return result

    def _handle_answer(self, chunk: dict[str, Any], client: str) -> dict[str, Any]:
        """A write handle's answer (``fs.write_handle``'s fields) for ``chunk``, its token
        issued to ``client``."""
        expiry_ms = time.time_ns() // 1_000_000 + self.config.token_ttl_ms
        known = self.ns.chunkservers()
        return {
            "chunk_id": chunk["chunk_id"],
            "version": chunk["version"],
            "length": chunk["length"],
            "chain": [
                {"id": cs_id, "address": known[cs_id]["address"]}
                for cs_id in chunk["replicas"]
                if cs_id in known
            ],
            "token": self._mint(chunk["chunk_id"], chunk["version"], WRITE, expiry_ms, client),
            "expiry_ms": expiry_ms,
        }

    # ------------------------------------------------------------------ repair's link

    @property
    def is_leader(self) -> bool:
        if not self.node.is_leader:
            return False
        self._leader_view()  # a new term resets the soft state before repair acts
        return True

    async def propose_internal(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A command the leader proposes for itself (no client session)."""
        return await self._propose(op, args, {}, OP_TIMEOUT_S)

    async def cs_call(self, cs_id: int, op: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        entry = self.ns.chunkservers().get(cs_id)
        if entry is None:
            raise NotFound("unknown chunkserver", cs_id=cs_id)
        info = self.registry.servers.get(cs_id)
        address = info.address if info is not None and info.address else entry["address"]
        conn = await self._chunkserver_conn(address, min(timeout_s, CUT_PUSH_TIMEOUT_S))
        header, _ = await conn.call(op, b"", timeout_s=timeout_s, **fields)
        return header

    def token(self, chunk_id: int, version: int) -> tuple[bytes, int]:
        expiry_ms = time.time_ns() // 1_000_000 + self.config.token_ttl_ms
        return self._mint(chunk_id, version, WRITE, expiry_ms), expiry_ms

    async def _chunkserver_conn(self, address: str, timeout_s: float) -> rpc.Connection:
        conn = self._cs_conns.get(address)
        if conn is None or conn.closed:
            host, _, port = address.rpartition(":")
            conn = await rpc.connect(
                host, int(port), self._credentials, name=f"meta-{self.node.id}", timeout_s=timeout_s,
                role="metaserver",
            )  # fmt: skip
            self._cs_conns[address] = conn
        return conn

    # ------------------------------------------------------------------ chunkservers

    async def _cs_register(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        uuid, address = h["uuid"], h["address"]
        if ":" not in address:
            raise Invalid("address must be host:port")
        args = {"uuid": uuid, "address": address}
        for label in ("host", "rack"):  # optional: a chunkserver older than labels has none
            if label in h:
                args[label] = h[label]
        result = await self._propose("cs_register", args, h, timeout_s)
        cs_id = int(result["cs_id"])
        self._heartbeat(cs_id, address, h)
        log.info("metaserver node=%d event=cs_registered cs=%d address=%s",
                 self.node.id, cs_id, address)  # fmt: skip
        return {"cs_id": cs_id}

    async def _cs_heartbeat(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self._leader_view()
        cs_id = h["cs_id"]
        known = self.ns.chunkservers().get(cs_id)
        if known is None:
            raise NotFound("unknown chunkserver: register first", cs_id=cs_id)
        address = h.get("address", known["address"])
        self._heartbeat(cs_id, address, h)
        return {}

    def _reporter(self, h: dict[str, Any]) -> int:
        self._leader_view()
        cs_id: int = h["cs_id"]
        if cs_id not in self.ns.chunkservers():
            raise NotFound("unknown chunkserver: register first", cs_id=cs_id)
        return cs_id

    async def _cs_report(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        cs_id = self._reporter(h)
        chunks, part, final = h["chunks"], h.get("part", 0), h.get("final", True)
        await self.repair.report(cs_id, chunks, part, final)
        return {}

    async def _cs_bad_chunks(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        cs_id = self._reporter(h)
        chunks = h["chunks"]
        log.warning("metaserver node=%d event=bad_replicas cs=%d chunks=%s",
                    self.node.id, cs_id, [e[0] for e in chunks[:16]])  # fmt: skip
        await self.repair.bad_replicas(cs_id, chunks)
        return {}

    def _heartbeat(self, cs_id: int, address: str, h: dict[str, Any]) -> None:
        info = self.registry.servers.get(cs_id)
        was_alive = info is not None and info.last_heard_s is not None
        self.registry.heartbeat(
            cs_id,
            address,
            time.monotonic(),
            capacity_bytes=h.get("capacity_bytes", 0),
            used_bytes=h.get("used_bytes", 0),
            chunks=h.get("chunks", 0),
            load=h.get("load", 0),
            pid=h.get("pid", 0),
        )
        if not was_alive:
            log.info("metaserver node=%d event=cs_alive cs=%d address=%s",
                     self.node.id, cs_id, address)  # fmt: skip

    # ------------------------------------------------------------------ status

    async def _status(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        node = self.node
        st = node.status()
        now_s = time.monotonic()
        chunkservers: list[dict[str, Any]] = []
        rebalance = None
        if st.role == Role.LEADER:
            self._leader_view()  # a new term of leadership resets the soft state first
            chunkservers = self.admin.chunkservers(now_s)
            rebalance = self.admin.progress()
        health = None
        if st.role == Role.LEADER:
            found = await self.repair.health_now(now_s)
            health = None if found is None else found.as_dict()
        stats = self.ns.stats()
        return {
            "node_id": int(st.id),
            "pid": os.getpid(),
            "term": int(st.term),
            "role": st.role.name.lower(),
            "leader": int(st.leader),
            "leader_address": node.address_of(st.leader),
            "commit": int(st.commit),
            "applied": int(node.applied_index),
            "metaservers": self.membership.rows(),
            "chunkservers": chunkservers,
            "rebalance": rebalance,
            "health": health,
            "orphans": len(self.ns.orphans),
            "holds": self.holds.count() if st.role == Role.LEADER else None,
            "holds_in_grace": (self.holds.in_grace(now_s) if st.role == Role.LEADER else None),
            "files": stats["files"],
            "dirs": stats["dirs"],
            "chunks": stats["chunks"],
            "bytes": stats["bytes"],
            "trash_files": stats["trash_files"],
            "trash_bytes": stats["trash_bytes"],
            "chunk_size": self.ns.chunk_size_bytes,
        }


async def serve(config: MetaConfig, credentials: Credential) -> int:
    """Run until SIGTERM/SIGINT or this node's removal from the cluster (exit 0), or a
    fatal node error (exit 1). A node removed earlier does not start (exit 1); nor does one
    that cannot (port in use, a data directory it cannot make or lock, a damaged log): it
    logs one line saying why."""
    removed = was_removed(config.node.data_dir)
    if removed is not None:
        log.error("metaserver node=%d event=refused %s; to join again, empty %s and add it",
                  config.node.id, removed, config.node.data_dir)  # fmt: skip
        return 1
    server = MetaServer(config, credentials)
    try:
        await server.start()
    except (OSError, CorruptLogError, StorageLockedError) as e:
        log.error("metaserver node=%d event=start_failed reason=%r", config.node.id, str(e))
        await server.stop()
        return 1
    failed = await daemon.wait_for_stop(server.node.failed, also=server.membership.removed)
    log.info("metaserver node=%d event=shutdown failed=%s", config.node.id, failed)
    await server.stop()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return daemon.main("metaserver", argv, load_config, serve, fast_loop=True)
