"""A replicated key-value server: the Raft library run as a real process, for tests and benchmarks.

    python -m metaserver.raft.kvserver --config node1.toml

What it owns: the process (config, signals, logging), one ``dfs.rpc`` listener that serves
both the peers' ``raft`` frames and the clients, and the mapping of client ops onto the
``RaftNode`` and the ``KvStateMachine``. No Raft logic lives here.

Config file (TOML, version 1): the Raft keys of ``metaserver/raft/config.py``, and::

    debug_ops = false                   # optional; true enables "dump" (tests only)

Client ops (requests on ``dfs.rpc``; ``timeout_ms`` optional everywhere, default 5000):

    put     {client: int, seq: int, key: str, value: str} -> {value: str}   the value after
    append  {client: int, seq: int, key: str, value: str} -> {value: str}
    get     {key: str} -> {value: str | None}                 linearizable (lease/ReadIndex)
    status  {} -> {node_id, term, role, leader, leader_address, commit, applied, last_index,
                   voters, learners}                           local view, any node
    add_member {node_id, address, learner: bool}; remove_member {node_id};
    transfer_leader {node_id}                                  leader only
    dump    {} -> {applied: int, data: {key: value}, commands: int}   debug_ops only

Mutations and reads on a follower fail with ``NotLeader`` whose ``leader_hint`` is the
leader's "host:port" (when known). ``client``/``seq`` make a retried mutation apply once.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfs import daemon, rpc
from dfs.config import ConfigFile
from dfs.credentials import Credential
from dfs.types import NodeId
from dfs.wire.errors import DfsError, Invalid, Stale, TooBig, Unsupported
from dfs.wire.messages import field, uint_field
from metaserver.raft.config import NODE_KEYS, parse_node
from metaserver.raft.kv import KEY_BYTES_MAX, VALUE_BYTES_MAX, KvStateMachine, encode_command
from metaserver.raft.node import NodeConfig, RaftNode
from metaserver.raft.peer import RAFT_OP

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
# Default server-side deadline of one client op: a commit takes milliseconds; five seconds
# covers an election (1-2 s) plus a slow disk, after which the client retries.
OP_TIMEOUT_S = 5.0
OP_TIMEOUT_S_MAX = 60.0


@dataclass(slots=True)
class ServerConfig:
    node: NodeConfig
    listen_host: str
    listen_port: int
    secret_file: Path
    credential_file: Path | None = None
    debug_ops: bool = False


def load_config(path: Path) -> ServerConfig:
    """Parse and check a config file; ``ValueError`` says what is wrong."""
    config = ConfigFile.load(path, NODE_KEYS | {"debug_ops"})
    section = parse_node(config)
    return ServerConfig(
        node=section.node,
        listen_host=section.listen_host,
        listen_port=section.listen_port,
        secret_file=section.secret_file,
        credential_file=section.credential_file,
        debug_ops=config.get("debug_ops", bool, False),
    )


class KvServer:
    def __init__(self, config: ServerConfig, credentials: Credential) -> None:
        self.config = config
        self.state_machine = KvStateMachine()
        self.node = RaftNode(config.node, self.state_machine, credentials)
        self._credentials = credentials
        self._rpc: rpc.RpcServer | None = None

    async def start(self) -> None:
        await self.node.start()
        cfg = self.config
        self._rpc = await rpc.serve(
            cfg.listen_host,
            cfg.listen_port,
            self._credentials,
            self.handle,
            name=f"kv-{cfg.node.id}",
            role="metaserver",
            oneway_handler=self.node.take_frame,
            inline_handler=self.handle_inline,
        )
        log.info("kvserver node=%d event=listening address=%s:%d",
                 cfg.node.id, cfg.listen_host, self._rpc.port)  # fmt: skip

    async def stop(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            try:
                await self._rpc.wait_closed()
            except TimeoutError:
                log.info("kvserver node=%d event=stop connections slow to close", self.node.id)
        await self.node.stop()

    def handle_inline(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> rpc.Reply | rpc._Later:
        """Mutations, in the read callback: proposed at once, answered from the apply
        (``RaftNode.propose_nowait``), so that a commit's path has no task for the request
        and no loop turn to wake one; the Ready the proposals make is taken once the read's
        requests are all in (``conn.after_read``). Anything else goes to ``handle``."""
        op = header.get("op")
        if op != "put" and op != "append":
            return rpc.LATER
        client, seq, key, value = _mutation(header)
        data = encode_command(client, seq, op, key, value)
        reply = conn.reply_later(header)

        def answered(result: Any, error: DfsError | None) -> None:
            if error is not None:
                reply.fail(error)
            elif isinstance(result, dict):
                # KvStateMachine's refusals: a sequence number older than the session's.
                reply.fail(Stale(str(result.get("error"))))
            else:
                reply.send(({"value": result}, b""))

        try:
            self.node.propose_nowait(data, _timeout_s(header), answered)
        except DfsError as e:
            reply.fail(e)
            return reply
        conn.after_read(self.node.ready_now)
        return reply

    async def handle(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes] | None:
        op = header.get("op")
        node = self.node
        if op == RAFT_OP:
            node.receive(header, payload)
            return None
        timeout_s = _timeout_s(header)
        if op == "get":
            key = field(header, "key", str)
            await node.read_index(timeout_s)
            return {"value": self.state_machine.get(key)}, b""
        if op == "status":
            st = node.status()
            return {
                "node_id": int(st.id),
                "term": int(st.term),
                "role": st.role.name.lower(),
                "leader": int(st.leader),
                "leader_address": node.address_of(st.leader),
                "commit": int(st.commit),
                "applied": int(node.applied_index),
                "last_index": int(st.last_index),
                "voters": [int(v) for v in st.conf.voters],
                "learners": [int(v) for v in st.conf.learners],
            }, b""
        if op == "add_member":
            node_id = NodeId(uint_field(header, "node_id"))
            address = field(header, "address", str)
            if node_id < 1 or ":" not in address:
                raise Invalid("node_id >= 1 and address host:port")
            learner = field(header, "learner", bool, False)
            await node.add_member(node_id, address, learner=learner, timeout_s=timeout_s)
            return None
        if op == "remove_member":
            await node.remove_member(NodeId(uint_field(header, "node_id")), timeout_s=timeout_s)
            return None
        if op == "transfer_leader":
            to = NodeId(uint_field(header, "node_id"))
            await node.transfer_leadership(to, timeout_s=timeout_s)
            return None
        if op == "dump" and self.config.debug_ops:
            sm = self.state_machine
            return {
                "applied": int(node.applied_index),
                "data": sm.data,
                "commands": sm.applied_commands,
            }, b""
        raise Unsupported(f"unknown op {op!r}", op=str(op))


def _timeout_s(header: dict[str, Any]) -> float:
    timeout_ms = uint_field(header, "timeout_ms", int(OP_TIMEOUT_S * 1000))
    return min(max(timeout_ms, 1) / 1000, OP_TIMEOUT_S_MAX)


def _mutation(header: dict[str, Any]) -> tuple[int, int, str, str]:
    """A put's or an append's (client, seq, key, value), checked."""
    client = uint_field(header, "client")
    seq = uint_field(header, "seq")
    key = field(header, "key", str)
    value = field(header, "value", str)
    if len(key) > KEY_BYTES_MAX:
        raise TooBig("key too long", limit=KEY_BYTES_MAX)
    if len(value) > VALUE_BYTES_MAX:
        raise TooBig("value too long", limit=VALUE_BYTES_MAX)
    return client, seq, key, value


async def serve(config: ServerConfig, credentials: Credential) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal node error (exit 1)."""
    server = KvServer(config, credentials)
    await server.start()
    failed = await daemon.wait_for_stop(server.node.failed)
    log.info("kvserver node=%d event=shutdown failed=%s", config.node.id, failed)
    await server.stop()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return daemon.main("metaserver.raft.kvserver", argv, load_config, serve, fast_loop=True)


if __name__ == "__main__":
    sys.exit(main())
