"""Where a node handles its Readies (``RaftNode.ready_now``): a Ready made by the raft frames
of one read, or by the proposals of one read of a client's requests, that needs no wait, is
handled in that read callback, not by the loop task.

Three ``KvServer`` nodes in one process on loopback, fsync off (the path is the same with it
on; only its time differs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dfs.ports import free_loopback_ports
from dfs.types import NodeId
from metaserver.raft.kvclient import KvClient
from metaserver.raft.kvserver import KvServer, ServerConfig
from metaserver.raft.node import NodeConfig
from metaserver.raft.types import Ready

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

SECRET = b"s" * 32
LEADER_DEADLINE_S = 20.0


async def _cluster(root: Path) -> list[KvServer]:
    ports = free_loopback_ports(3)
    peers = {NodeId(i + 1): f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    servers = []
    for node_id, address in peers.items():
        node = NodeConfig(id=node_id, data_dir=root / f"n{node_id}", peers=peers, fsync=False)
        config = ServerConfig(node, "127.0.0.1", int(address.rpartition(":")[2]), root / "s")
        server = KvServer(config, SECRET)
        await server.start()
        servers.append(server)
    return servers


async def _leader(servers: list[KvServer]) -> KvServer:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEADER_DEADLINE_S
    while loop.time() < deadline:
        for s in servers:
            if s.node.is_leader and s.node.applied_index >= s.node.status().commit > 0:
                return s
        await asyncio.sleep(0.02)  # polling interval
    raise AssertionError(f"no leader in {LEADER_DEADLINE_S} s")


def _stored_commit(server: KvServer) -> int:
    storage = server.node._storage
    assert storage is not None
    return int(storage._hard_state.commit)


def test_followers_write_and_acknowledge_in_the_read_callback(tmp_path: Path) -> None:
    """Every follower Ready that carries entries is handled where the append arrived (in
    the read callback); the loop task handles none of them. The puts still commit, and the
    commit index, written after the answers, reaches every node's storage."""

    async def main() -> None:
        servers = await _cluster(tmp_path)
        try:
            leader = await _leader(servers)
            addresses = [leader.node.address_of(leader.node.id) or ""]
            client = KvClient(addresses, SECRET)
            await client.put("warm", "up")
            by_loop_task: dict[int, list[Ready]] = {s.node.id: [] for s in servers}
            for s in servers:
                real = s.node._handle_ready

                async def recorded(raw: Any, rd: Ready, real: Any = real, n: Any = s.node) -> None:
                    by_loop_task[n.id].append(rd)
                    await real(raw, rd)

                s.node._handle_ready = recorded  # type: ignore[method-assign]
            for i in range(30):
                assert await client.put(f"k{i}", f"v{i}") == f"v{i}"
            await client.close()
            followers = [s for s in servers if s is not leader]
            last = leader.node.status().last_index
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LEADER_DEADLINE_S
            while any(s.node.status().last_index < last for s in followers):
                assert loop.time() < deadline, "a follower did not catch up"
                await asyncio.sleep(0.01)  # polling interval
            for s in followers:
                with_entries = [rd for rd in by_loop_task[s.node.id] if rd.entries]
                assert with_entries == [], f"node {s.node.id}: {len(with_entries)} by the task"
            # A commit index that moved alone is written later, not lost: once idle, every
            # node's storage has the last commit.
            while any(_stored_commit(s) < last for s in servers):
                assert loop.time() < deadline, "a commit index was never written"
                await asyncio.sleep(0.01)  # polling interval
        finally:
            for s in servers:
                await s.stop()

    asyncio.run(main())


def test_a_leader_proposes_and_answers_without_a_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client's puts: the leader takes each in the read callback (``handle_inline``),
    its Ready with the new entry is handled there too (never by the loop task), and the
    answer is written from the apply: the task handler sees no put."""

    by_handler: list[str] = []
    real_handle = KvServer.handle

    async def handled(self: KvServer, conn: Any, header: dict[str, Any], payload: bytes) -> Any:
        by_handler.append(str(header.get("op")))
        return await real_handle(self, conn, header, payload)

    monkeypatch.setattr(KvServer, "handle", handled)  # before start, which binds it

    async def main() -> None:
        servers = await _cluster(tmp_path)
        try:
            leader = await _leader(servers)
            client = KvClient([leader.node.address_of(leader.node.id) or ""], SECRET)
            await client.put("warm", "up")
            by_loop_task: list[Ready] = []
            real_ready = leader.node._handle_ready

            async def recorded(raw: Any, rd: Ready) -> None:
                by_loop_task.append(rd)
                await real_ready(raw, rd)

            leader.node._handle_ready = recorded  # type: ignore[method-assign]
            for i in range(30):
                assert await client.put(f"k{i}", f"v{i}") == f"v{i}"
            assert await client.append("k0", "+") == "v0+"
            assert await client.get("k0") == "v0+"
            await client.close()
            assert [rd for rd in by_loop_task if rd.entries] == []
            assert "put" not in by_handler and "append" not in by_handler
            assert "get" in by_handler  # the wrapper is the one serving
        finally:
            for s in servers:
                await s.stop()

    asyncio.run(main())
