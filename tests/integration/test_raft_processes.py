"""The Raft library as real processes: three ``metaserver.raft.kvserver`` on loopback.

What these tests check, end to end through sockets, fsync and ``kill -9``:
- every acknowledged write survives the crash of the leader and is on every node afterwards,
  and no (client, seq) is applied twice (values are built by appends, so a duplicate shows);
- a node whose newest log segment lost its tail (cut mid-record) recovers and catches up;
- a node that fell behind the leader's snapshot catches up through InstallSnapshot;
- a client with the wrong secret is refused and the server goes on serving.

Rules: every process is started here and ended by PID in the fixture's finalizer; waits poll
with a deadline, nothing sleeps to wait for a condition. The servers' logs go to files in the
test's tmp dir and are printed when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs.ports import free_loopback_ports
from dfs.secret import write_secret
from dfs.wire.errors import AuthError, DfsError
from metaserver.raft.kvclient import KvClient, KvPool

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
# Short ticks keep elections (10-20 ticks) well under a second, and still leave heartbeats
# (every tick) ample slack on a loaded two-core machine.
TICK_MS = 50
DEADLINE_S = 30.0


class Cluster:
    """Three kvserver processes and the files they use, under ``root``."""

    def __init__(self, root: Path, n: int = 3, initial: int = 3, **options: Any) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.secret_file = root / "secret"
        write_secret(self.secret_file, SECRET)
        self.ids = list(range(1, n + 1))
        self.initial = initial  # nodes 1..initial bootstrap the group; the others join later
        ports = free_loopback_ports(n)
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=True)}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.options = {"tick_ms": TICK_MS, "debug_ops": True, **options}
        self.pool = KvPool(list(self.addresses.values()), SECRET, name="test")

    def data_dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    def log_path(self, i: int) -> Path:
        return self.root / f"node{i}.log"

    def config_path(self, i: int) -> Path:
        path = self.root / f"node{i}.toml"
        lines = [
            f"id = {i}",
            f'listen = "{self.addresses[i]}"',
            f'data_dir = "{self.data_dir(i)}"',
            f'secret_file = "{self.secret_file}"',
        ]
        options = {**self.options, "join": i > self.initial}
        for key, value in options.items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
        lines.append("[peers]")
        # A joining node needs the addresses of the others to answer them; an initial member
        # must list exactly the initial members (they become the first voters).
        peers = self.ids if i > self.initial else self.ids[: self.initial]
        lines += [f'{n} = "{self.addresses[n]}"' for n in peers]
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, i: int) -> None:
        assert i not in self.procs or self.procs[i].poll() is not None
        with open(self.log_path(i), "ab") as log_file:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "metaserver.raft.kvserver", "--config",
                 str(self.config_path(i))],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )  # fmt: skip

    def start_all(self) -> None:
        for i in self.ids[: self.initial]:
            self.start(i)

    def kill(self, i: int) -> None:
        """kill -9, by PID, and reap it."""
        proc = self.procs.pop(i)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def end_all(self) -> None:
        for i in list(self.procs):
            proc = self.procs.pop(i)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def logs(self) -> str:
        out = []
        for i in self.ids:
            if self.log_path(i).exists():
                out.append(f"----- node {i} -----\n" + self.log_path(i).read_text()[-20000:])
        return "\n".join(out)

    async def call(self, i: int, op: str, timeout_s: float = 2.0, **fields: Any) -> dict[str, Any]:
        header, _ = await self.pool.call(self.addresses[i], op, timeout_s, **fields)
        return header

    async def try_status(self, i: int) -> dict[str, Any] | None:
        try:
            return await self.call(i, "status")
        except DfsError:
            return None

    async def wait_leader(self, among: list[int] | None = None) -> int:
        """The id of a node that says it leads and that the others running agree on."""
        among = among or list(self.procs)

        async def leader() -> int | None:
            statuses = [await self.try_status(i) for i in among]
            leaders = {s["node_id"] for s in statuses if s is not None and s["role"] == "leader"}
            if len(leaders) != 1:
                return None
            (lead,) = leaders
            if all(s is not None and s["leader"] == lead for s in statuses):
                return lead
            return None

        return await eventually(leader, "a leader")

    async def wait_converged(self, ids: list[int] | None = None) -> dict[str, str]:
        """Wait until every node applied the leader's commit index; return the (equal) data."""
        ids = ids or self.ids[: self.initial]

        async def converged() -> dict[str, str] | None:
            statuses = {i: await self.try_status(i) for i in ids}
            if any(s is None for s in statuses.values()):
                return None
            leaders = [s for s in statuses.values() if s is not None and s["role"] == "leader"]
            if len(leaders) != 1:
                return None
            commit = leaders[0]["commit"]
            if any(s is None or s["applied"] != commit for s in statuses.values()):
                return None
            dumps = [await self.call(i, "dump") for i in ids]
            if any(d["applied"] != commit for d in dumps):
                return None
            assert all(d["data"] == dumps[0]["data"] for d in dumps), "replicas diverged"
            data: dict[str, str] = dumps[0]["data"]
            return data

        return await eventually(converged, "all nodes to apply the leader's commit index")


async def eventually(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``probe`` until it returns something other than None, within DEADLINE_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        result = await probe()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling interval, not a wait for the condition


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.end_all()
        # pytest shows a test's captured output only when it fails: the servers' logs.
        print(cluster.logs())


async def write_until(count: Callable[[], int], target: int, what: str) -> None:
    await eventually(lambda: _done(count() >= target), what)


async def _done(ok: bool) -> bool | None:
    return True if ok else None


def tokens(value: str) -> list[str]:
    return [t for t in value.split(";") if t]


async def test_acknowledged_writes_survive_leader_kill(clusters: Callable[..., Cluster]) -> None:
    c = clusters()
    c.start_all()
    leader = await c.wait_leader()
    writers = 6
    acked: dict[int, list[int]] = {k: [] for k in range(writers)}
    stop = asyncio.Event()

    async def writer(k: int) -> None:
        client = KvClient(pool=c.pool)
        n = 0
        while not stop.is_set():
            n += 1
            await client.append(f"key{k % 2}", f"{k}.{n};", deadline_s=DEADLINE_S)
            acked[k].append(n)

    def total() -> int:
        return sum(len(v) for v in acked.values())

    tasks = [asyncio.create_task(writer(k)) for k in range(writers)]
    try:
        await write_until(total, 100, "writes before the crash")
        c.kill(leader)
        before = total()
        await write_until(total, before + 100, "writes under a new leader")
        new_leader = await c.wait_leader()
        assert new_leader != leader
        c.start(leader)
        after = total()
        await write_until(total, after + 100, "writes after the restart")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    data = await c.wait_converged()
    seen: set[str] = set()
    for value in data.values():
        ts = tokens(value)
        assert len(ts) == len(set(ts)), "a (client, seq) was applied twice"
        seen.update(ts)
    for k, seqs in acked.items():
        key_tokens = set(tokens(data[f"key{k % 2}"]))
        missing = [n for n in seqs if f"{k}.{n}" not in key_tokens]
        assert not missing, f"acknowledged writes of writer {k} lost: {missing[:10]}"
        # Each writer's appends land in its own order (one in flight per session).
        order = [int(t.split(".")[1]) for t in tokens(data[f"key{k % 2}"]) if t.startswith(f"{k}.")]
        assert order == sorted(order)
    await c.pool.close()


async def test_node_with_torn_log_tail_recovers_and_catches_up(
    clusters: Callable[..., Cluster],
) -> None:
    c = clusters()
    c.start_all()
    leader = await c.wait_leader()
    client = KvClient(pool=c.pool)
    for n in range(30):
        await client.append("k", f"a{n};")
    follower = next(i for i in c.ids if i != leader)
    c.kill(follower)
    segments = sorted(c.data_dir(follower).glob("*.seg"))
    newest = segments[-1]
    # The records end where the zeros allocated ahead of them begin (a checksum ending in
    # zero bytes only moves the cut a little further into the last record).
    records_end = len(newest.read_bytes().rstrip(b"\0"))
    with open(newest, "r+b") as f:
        f.truncate(records_end - 5)  # inside the last record's checksum: a torn write
    for n in range(30):
        await client.append("k", f"b{n};")
    c.start(follower)
    for n in range(30):
        await client.append("k", f"c{n};")
    data = await c.wait_converged()
    assert tokens(data["k"]) == [f"{p}{n}" for p in "abc" for n in range(30)]
    assert "dropped the torn tail" in c.log_path(follower).read_text()
    await c.pool.close()


async def test_lagging_node_catches_up_by_snapshot(clusters: Callable[..., Cluster]) -> None:
    c = clusters(snapshot_entries=40)
    c.start_all()
    leader = await c.wait_leader()
    client = KvClient(pool=c.pool)
    await client.put("x", "0")
    follower = next(i for i in c.ids if i != leader)
    c.kill(follower)

    async def writer(k: int) -> None:
        session = KvClient(pool=c.pool)
        for n in range(50):
            await session.put(f"w{k}", str(n))

    await asyncio.gather(*(writer(k) for k in range(4)))
    c.start(follower)
    await client.put("x", "1")
    data = await c.wait_converged()
    assert data == {"x": "1", **{f"w{k}": "49" for k in range(4)}}
    follower_log = c.log_path(follower).read_text()
    assert "event=snapshot_installed" in follower_log, "caught up without a snapshot"
    await c.pool.close()


async def test_wrong_secret_is_refused_and_the_server_keeps_serving(
    clusters: Callable[..., Cluster],
) -> None:
    c = clusters()
    c.start_all()
    leader = await c.wait_leader()
    intruder = KvClient([c.addresses[leader]], b"x" * 32, attempt_timeout_s=2)
    with pytest.raises(AuthError):
        await intruder.put("k", "evil", deadline_s=5)
    await intruder.close()
    client = KvClient(pool=c.pool)
    assert await client.put("k", "good") == "good"
    assert await client.get("k") == "good"
    await eventually(
        lambda: _done("event=auth_failed" in c.log_path(leader).read_text()),
        "the server to log the refused handshake",
    )
    data = await c.wait_converged()
    assert data == {"k": "good"}
    await c.pool.close()


async def test_membership_change_and_leadership_transfer(clusters: Callable[..., Cluster]) -> None:
    c = clusters(n=4, initial=3)
    c.start_all()
    leader = await c.wait_leader()
    client = KvClient(pool=c.pool)
    for n in range(20):
        await client.append("k", f"{n};")
    # Add node 4 (it starts empty with join = true and learns everything from the leader).
    c.start(4)
    await c.call(
        leader, "add_member", node_id=4, address=c.addresses[4], timeout_s=12, timeout_ms=10_000
    )
    await client.append("k", "added;")
    data = await c.wait_converged([1, 2, 3, 4])
    assert tokens(data["k"])[-1] == "added"
    status = await c.call(4, "status")
    assert status["voters"] == [1, 2, 3, 4]
    # Hand leadership to the new node, then remove the old leader.
    await c.call(leader, "transfer_leader", node_id=4, timeout_s=12, timeout_ms=10_000)
    assert await c.wait_leader([1, 2, 3, 4]) == 4
    await c.call(4, "remove_member", node_id=leader, timeout_s=12, timeout_ms=10_000)
    rest = [i for i in (1, 2, 3, 4) if i != leader]
    await client.append("k", "removed;")
    data = await c.wait_converged(rest)
    assert tokens(data["k"])[-2:] == ["added", "removed"]
    assert (await c.call(4, "status"))["voters"] == rest
    await c.pool.close()
