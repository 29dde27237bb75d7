"""metaserver/namespace/cluster.py: labels, draining, forgetting, rebalance; the cached
policy; the snapshot's cluster state (version 4) and the loading of version 3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from dfs.wire.errors import ErrorCode
from metaserver.chunks.policy import ClusterPolicy, Labels, Rebalance
from metaserver.namespace import ROOT_INO, SNAPSHOT_VERSION, Namespace, encode_command

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CHUNK = 4096
E = ErrorCode


def without_sessions(ns: Namespace) -> Any:
    blob = msgpack.unpackb(ns.snapshot(), raw=False)
    return blob[:7] + blob[8:]


class Fs:
    """A namespace driven as the metaserver drives it: one session, rising seq and time."""

    def __init__(self) -> None:
        self.ns = Namespace(CHUNK, trash_s_default=0)  # the trash: test_namespace_trash.py
        self.seq = 0

    def do(self, op: str, **args: Any) -> dict[str, Any]:
        self.seq += 1
        return self.ns.apply(encode_command(op, 7, self.seq, 1000 + self.seq, args))

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        result = self.do(op, **args)
        assert result["ok"], result
        return result

    def err(self, op: str, **args: Any) -> ErrorCode:
        before = without_sessions(self.ns)
        result = self.do(op, **args)
        assert not result["ok"], result
        assert without_sessions(self.ns) == before, f"{op} failed but changed the state"
        return ErrorCode(result["err"]["code"])

    def register(self, n: int) -> list[int]:
        return [
            int(self.ok("cs_register", uuid=f"u{i}", address=f"h{i}:1")["cs_id"]) for i in range(n)
        ]

    def create(self, parent: int, name: bytes) -> int:
        r = self.ok("create", parent=parent, name=name, mode=0o644, uid=0, gid=0)
        return int(r["attr"]["ino"])


@pytest.fixture
def fs() -> Iterator[Fs]:
    f = Fs()
    yield f
    f.ns.check_invariants()


def test_register_keeps_labels_and_the_policy_names_them(fs: Fs) -> None:
    assert fs.ns.policy() == ClusterPolicy()
    a = fs.ok("cs_register", uuid="a", address="10.0.0.1:7101", host="h1", rack="r1")["cs_id"]
    b = fs.ok("cs_register", uuid="b", address="10.0.0.2:7101")["cs_id"]
    policy = fs.ns.policy()
    assert policy.labels == {a: Labels("h1", "r1")}
    assert policy.labels_of(b, "10.0.0.2:7101") == Labels("10.0.0.2")
    # A re-registration without labels keeps them; with a new rack, changes only that.
    assert fs.ok("cs_register", uuid="a", address="10.0.0.1:7102")["cs_id"] == a
    assert fs.ns.policy() is policy  # unchanged: the cached value
    fs.ok("cs_register", uuid="a", address="10.0.0.1:7102", rack="r2")
    assert fs.ns.policy().labels[a] == Labels("h1", "r2")
    # A rack alone, for a server without labels: the host is its address's.
    fs.ok("cs_register", uuid="b", address="10.0.0.2:7101", rack="r9")
    assert fs.ns.policy().labels[b] == Labels("10.0.0.2", "r9")
    assert fs.err("cs_register", uuid="c", address="x:1", host="") is E.INVALID
    assert fs.err("cs_register", uuid="c", address="x:1", host=7) is E.PROTOCOL
    assert fs.err("cs_register", uuid="c", address="x:1", zone="z") is E.PROTOCOL


def test_drain_is_idempotent_and_cached(fs: Fs) -> None:
    a, b = fs.register(2)
    fs.ok("cs_drain", cs_id=b, draining=True)
    policy = fs.ns.policy()
    assert policy.draining == frozenset({b})
    fs.ok("cs_drain", cs_id=b, draining=True)
    assert fs.ns.policy() is policy
    fs.ok("cs_drain", cs_id=a, draining=True)
    fs.ok("cs_drain", cs_id=b, draining=False)
    assert fs.ns.policy().draining == frozenset({a})
    assert fs.err("cs_drain", cs_id=99, draining=True) is E.NOT_FOUND
    assert fs.err("cs_drain", cs_id=a) is E.PROTOCOL
    assert fs.err("cs_drain", cs_id=0, draining=True) is E.INVALID


def test_forget_refused_while_a_replica_set_names_it(fs: Fs) -> None:
    a, b, c = fs.register(3)
    f = fs.create(ROOT_INO, b"f")
    chunk = fs.ok("write_handle", ino=f, index=0, replicas=[a, b])
    fs.ok("cs_drain", cs_id=b, draining=True)
    assert fs.err("cs_forget", cs_id=b) is E.INVALID
    # The replica leaves the set (the core trimmed it): forget is allowed; the id is
    # gone from the table, the policy and the uuid map, and never given again.
    fs.ok("replica_drop", chunk_id=chunk["chunk_id"], cs_id=b)
    fs.ok("cs_forget", cs_id=b)
    assert b not in fs.ns.chunkservers() and fs.ns.policy().draining == frozenset()
    assert fs.err("cs_forget", cs_id=b) is E.NOT_FOUND
    again = fs.ok("cs_register", uuid="u1", address="h1:1")["cs_id"]
    assert again not in (a, b, c)
    # Garbage and reserved first chunks that named a forgotten server no longer do.
    fs.ok("unlink", parent=ROOT_INO, name=b"f")
    assert list(fs.ns.garbage.values()) == [[a]]
    fs.ok("reserve", holder=5, replicas=[[a, c], [c, a], [a]])
    fs.ok("cs_forget", cs_id=a)
    assert list(fs.ns.garbage.values()) == [[]]
    # One placed on the forgotten server alone is no longer handed out (no first chunk
    # without a replica); the others keep their other replica.
    assert [r for _, r, _ in fs.ns.pools[5].values()] == [[c], [c]]
    assert len(fs.ns.reserved_chunks) == 2


def test_rebalance_start_stop(fs: Fs) -> None:
    fs.register(1)
    fs.ok("rebalance_start", threshold_bp=500, bandwidth_bps=10 << 20)
    policy = fs.ns.policy()
    assert policy.rebalance == Rebalance(5.0, 10 << 20, run=1)
    fs.ok("rebalance_start", threshold_bp=500, bandwidth_bps=10 << 20)
    assert fs.ns.policy() is policy
    fs.ok("rebalance_start", threshold_bp=250, bandwidth_bps=0)  # a change: a new run
    assert fs.ns.policy().rebalance == Rebalance(2.5, 0, run=2)
    # The core's verdict on run 1 (decided before the change committed) ends nothing.
    fs.ok("rebalance_stop", reason="balanced", run=1)
    assert fs.ns.policy().rebalance == Rebalance(2.5, 0, run=2)
    fs.ok("rebalance_stop", reason="balanced", run=2)
    assert fs.ns.policy().rebalance is None and fs.ns.rebalance_stop_reason() == "balanced"
    fs.ok("rebalance_stop", reason="operator")  # none running: nothing changes
    assert fs.ns.rebalance_stop_reason() == "balanced"
    fs.ok("rebalance_start", threshold_bp=250, bandwidth_bps=0)  # the same again: run 3
    assert fs.ns.policy().rebalance == Rebalance(2.5, 0, run=3)
    fs.ok("rebalance_stop", reason="operator")  # the operator's stop ends any run
    assert fs.ns.policy().rebalance is None
    assert fs.err("rebalance_start", threshold_bp=0, bandwidth_bps=0) is E.INVALID
    assert fs.err("rebalance_start", threshold_bp=10_001, bandwidth_bps=0) is E.INVALID
    assert fs.err("rebalance_start", threshold_bp=100, bandwidth_bps=-1) is E.INVALID
    assert fs.err("rebalance_stop", reason="x", run=0) is E.INVALID


def test_snapshot_keeps_the_cluster_state(fs: Fs) -> None:
    a, b = fs.register(2)
    fs.ok("cs_register", uuid="u0", address="h0:1", host="host-a", rack="r1")
    fs.ok("cs_drain", cs_id=b, draining=True)
    fs.ok("rebalance_start", threshold_bp=300, bandwidth_bps=1 << 20)
    blob = fs.ns.snapshot()
    assert msgpack.unpackb(blob, raw=False)[0] == SNAPSHOT_VERSION == 7
    copy = Namespace(CHUNK)
    copy.restore(blob)
    copy.check_invariants()
    assert copy.policy() == fs.ns.policy()
    assert copy.policy().labels == {a: Labels("host-a", "r1")}
    assert copy.snapshot() == blob


def test_a_version_3_snapshot_still_loads(fs: Fs) -> None:
    fs.register(2)
    fs.create(ROOT_INO, b"f")
    blob = msgpack.unpackb(fs.ns.snapshot(), raw=False)
    old = msgpack.packb([3, *blob[1:10]], use_bin_type=True)
    restored = Namespace(CHUNK)
    restored.restore(old)
    restored.check_invariants()
    assert restored.policy() == ClusterPolicy() and len(restored.chunkservers()) == 2
    assert restored.lookup(ROOT_INO, b"f")["ino"] >= 2
    # Written back, it is a current snapshot with an empty cluster state.
    assert msgpack.unpackb(restored.snapshot(), raw=False)[10] == [[], [], None, "", 0]


def test_a_snapshot_naming_an_unknown_server_is_refused(fs: Fs) -> None:
    fs.register(1)
    blob = msgpack.unpackb(fs.ns.snapshot(), raw=False)
    blob[10] = [[], [42], None, "", 0]
    with pytest.raises(ValueError, match="malformed"):
        Namespace(CHUNK).restore(msgpack.packb(blob, use_bin_type=True))
