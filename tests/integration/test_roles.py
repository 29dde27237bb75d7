"""Roles on a real cluster, tried as an attacker who knows the cluster secret would
(docs/ARCHITECTURE.md, "Operations, limits and roles"; the definitions' roles: dfs/wire/ops_meta.py, dfs/wire/ops_chunk.py).

What these tests check:
- a client-role connection that sends raw Raft frames (``TIMEOUT_NOW``, an ``APP`` of a
  higher term), one-way or as a request, moves no metaserver's term; the same frame from a
  metaserver-role connection does (the control: the frames are real ones);
- a client may not register or heartbeat as a chunkserver, a chunkserver may not send
  ``fs.*``: each is answered ``PermissionDenied`` and the connection stays usable;
- a client-role ``chunk.delete`` of a live replica is refused and the replica is read back
  whole afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from quick_timers import QUICK_TIMERS

from dfs import rpc
from dfs.cli import cluster as local
from dfs.secret import load_secret
from dfs.wire.errors import PermissionDenied
from dfs.wire.limits import ROOT_INO
from dfs.wire.token import READ, make_token, token_key
from metaserver.raft.peer import PEER_WIRE_VERSION, RAFT_OP
from metaserver.raft.types import Message, MessageType, message_to_wire
from tools.testing import localcluster
from tools.testing.localcluster import running

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Layout]:
    with running(
        tmp_path_factory.mktemp("cluster"), chunkservers=1, chunk_size=1 << 20,
        **QUICK_TIMERS,
    ) as lay:  # fmt: skip
        yield lay


async def _connect(address: str, secret: bytes, role: str) -> rpc.Connection:
    host, _, port = address.rpartition(":")
    return await rpc.connect(host, int(port), secret, name="attacker", role=role, timeout_s=5)


async def _status(conn: rpc.Connection) -> dict[str, Any]:
    header, _ = await conn.call("status", timeout_s=5)
    return header


def _raft_frame(kind: MessageType, to: int, frm: int, term: int) -> dict[str, Any]:
    m = Message(kind, to, frm, term)  # type: ignore[arg-type]
    return {"op": RAFT_OP, "v": PEER_WIRE_VERSION, "m": [message_to_wire(m)]}


async def test_raft_frames_from_a_client_move_no_term(layout: local.Layout) -> None:
    secret = load_secret(layout.secret_file)
    st = await local.cluster_status(layout.meta_addresses, secret)
    leader = int(st["leader"])
    follower_address = next(a for a in layout.meta_addresses if a != st["leader_address"])
    conn = await _connect(follower_address, secret, "client")
    try:
        before = await _status(conn)
        follower, term = int(before["node_id"]), int(before["term"])
        # One-way, as a peer sends them: dropped. A status answered on the same connection
        # comes after them, so it sees whatever they did.
        conn.send_oneway_nowait(_raft_frame(MessageType.TIMEOUT_NOW, follower, leader, term))
        conn.send_oneway_nowait(_raft_frame(MessageType.APP, follower, leader, term + 5))
        after = await _status(conn)
        assert int(after["term"]) == term, "a client's raft frame moved the term"
        # As a request: answered PermissionDenied, and the connection goes on serving.
        frame = _raft_frame(MessageType.TIMEOUT_NOW, follower, leader, term)
        with pytest.raises(PermissionDenied):
            await conn.call(RAFT_OP, timeout_s=5, **{k: v for k, v in frame.items() if k != "op"})
        assert int((await _status(conn))["term"]) == term
    finally:
        conn.close()

    # The control: the same frame from a metaserver-role connection is a real one.
    peer = await _connect(follower_address, secret, "metaserver")
    try:
        peer.send_oneway_nowait(_raft_frame(MessageType.TIMEOUT_NOW, follower, leader, term))

        async def moved() -> bool | None:
            return True if int((await _status(peer))["term"]) > term else None

        with anyio.fail_after(20):  # an election takes well under a second here
            while not await moved():
                await anyio.sleep(0.05)  # polling interval
    finally:
        peer.close()
    await local.wait_ready(layout, 30.0)


async def _refused(conn: rpc.Connection, op: str, **fields: Any) -> None:
    with pytest.raises(PermissionDenied) as refused:
        await conn.call(op, timeout_s=5, **fields)
    assert refused.value.details.get("op") == op


async def test_each_role_sends_only_its_own_ops(layout: local.Layout) -> None:
    secret = load_secret(layout.secret_file)
    st = await local.cluster_status(layout.meta_addresses, secret)
    client = await _connect(st["leader_address"], secret, "client")
    chunkserver = await _connect(st["leader_address"], secret, "chunkserver")
    try:
        await _refused(client, "cs.register", uuid="intruder", address="127.0.0.1:1")
        await _refused(client, "cs.heartbeat", cs_id=1, address="127.0.0.1:1")
        await _refused(client, "cs.bad_chunks", cs_id=1, chunks=[[1, 1]])
        await _refused(chunkserver, "fs.mkdir", parent=ROOT_INO, name=b"x", mode=0o40755,
                       uid=0, gid=0)  # fmt: skip
        # Both connections still serve what their roles may send.
        assert (await _status(client))["role"] == "leader"
        header, _ = await client.call("fs.getattr", timeout_s=5, ino=ROOT_INO)
        assert header["attr"]["ino"] == ROOT_INO
        assert (await _status(chunkserver))["role"] == "leader"
    finally:
        client.close()
        chunkserver.close()


async def test_a_client_cannot_delete_a_replica(layout: local.Layout) -> None:
    secret = load_secret(layout.secret_file)
    data = b"precious" * 1000
    chunk = await localcluster.write_and_locate(layout.meta_addresses, secret, b"victim", data)
    replica = chunk["replicas"][0]["address"]
    conn = await _connect(replica, secret, "client")
    try:
        entry = [chunk["chunk_id"], chunk["version"] + 1]
        await _refused(conn, "chunk.delete", chunks=[entry])
        await _refused(conn, "chunk.info", chunk_id=chunk["chunk_id"])
        expiry_ms = time.time_ns() // 1_000_000 + 60_000
        token = make_token(token_key(secret), chunk["chunk_id"], chunk["version"], READ,
                           expiry_ms)  # fmt: skip
        _, payload = await conn.call(
            "chunk.read", timeout_s=5, chunk_id=chunk["chunk_id"], version=chunk["version"],
            offset=0, size=len(data), token=token, expiry_ms=expiry_ms,
        )  # fmt: skip
        assert bytes(payload) == data
    finally:
        conn.close()
