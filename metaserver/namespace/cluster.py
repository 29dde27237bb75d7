"""The operator's decisions about chunkservers: their labels, draining, forgetting, and a
running rebalance. Pure.

What it owns: the ops that change these (``cs_register``, ``cs_drain``, ``cs_forget``,
``rebalance_start``, ``rebalance_stop``; and ``restored``, a restored group's first), their state (``ClusterState``, kept in the
namespace's ``State.cluster`` and in its snapshot) and the one value the chunk core reads
from it, ``ClusterPolicy`` (``metaserver/chunks/policy.py``), built once per change and
cached. The chunkserver table itself (id, uuid, address) stays in ``state.py``; this module
adds to it what an operator decides about each entry.

Rules (as ``ops.py``'s): every op checks all its arguments and the state first, then
changes it; nothing iterates a set (``draining`` is an insertion-ordered dict). Every op
that changes the policy drops the cached value, so ``policy()`` returns the same object
until the next change (the chunk core may compare by identity).

Snapshot (``state.py``, version 4 on): one array ``[labels, draining, rebalance,
stop_reason]`` with ``labels`` ``[[cs_id, host, rack], ...]`` (registration order),
``draining`` ``[cs_id, ...]`` (order drained), ``rebalance`` ``[threshold_bp,
bandwidth_bps, run]`` or nil, ``stop_reason`` the last ``rebalance_stop``'s reason ("" none),
``runs`` the starts counted so far.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dfs.wire.errors import Invalid, NotFound
from dfs.wire.limits import CS_ADDRESS_CHARS_MAX, CS_LABEL_CHARS_MAX, CS_UUID_CHARS_MAX, INT63_MAX
from metaserver.chunks.policy import ClusterPolicy, Labels, Rebalance
from metaserver.namespace.commands import arg_bool, arg_int, arg_str, check_fields

if TYPE_CHECKING:  # state.py holds a ClusterState: it imports this module
    from metaserver.namespace.state import State

Result = dict[str, Any]

# A rebalance's threshold, in hundredths of a point of used fraction: 0.01 .. 100 points.
THRESHOLD_BP_MIN = 1
THRESHOLD_BP_MAX = 10_000
STOP_REASON_CHARS_MAX = 200


class ClusterState:
    """Labels, draining chunkservers and the running rebalance; the cached policy."""

    __slots__ = ("_policy", "draining", "labels", "rebalance", "runs", "stop_reason")

    def __init__(self) -> None:
        self.labels: dict[int, tuple[str, str]] = {}  # cs_id -> (host, rack)
        self.draining: dict[int, None] = {}  # ordered: never iterate a set
        # (threshold_bp, bandwidth_bps, run): the running rebalance, ``run`` its start's number
        self.rebalance: tuple[int, int, int] | None = None
        self.runs = 0
        self.stop_reason = ""
        self._policy: ClusterPolicy | None = None

    def changed(self) -> None:
        self._policy = None

    def policy(self) -> ClusterPolicy:
        policy = self._policy
        if policy is None:
            rebalance = None
            if self.rebalance is not None:
                threshold_bp, bandwidth_bps, run = self.rebalance
                rebalance = Rebalance(threshold_bp / 100, bandwidth_bps, run)
            policy = self._policy = ClusterPolicy(
                draining=frozenset(self.draining),
                labels=MappingProxyType({c: Labels(h, r) for c, (h, r) in self.labels.items()}),
                rebalance=rebalance,
            )
        return policy

    def forget(self, cs_id: int) -> None:
        self.labels.pop(cs_id, None)
        self.draining.pop(cs_id, None)
        self.changed()

    def to_wire(self) -> list[Any]:
        return [
            [[cs_id, host, rack] for cs_id, (host, rack) in self.labels.items()],
            list(self.draining),
            list(self.rebalance) if self.rebalance is not None else None,
            self.stop_reason,
            self.runs,
        ]

    @classmethod
    def from_wire(cls, blob: list[Any]) -> ClusterState:
        labels, draining, rebalance, stop_reason, runs = blob
        cs = cls()
        for cs_id, host, rack in labels:
            cs.labels[int(cs_id)] = (str(host), str(rack))
        for cs_id in draining:
            cs.draining[int(cs_id)] = None
        if rebalance is not None:
            threshold_bp, bandwidth_bps, run = rebalance
            cs.rebalance = (int(threshold_bp), int(bandwidth_bps), int(run))
        cs.runs = int(runs)
        cs.stop_reason = str(stop_reason)
        return cs

    def check(self, known: dict[int, Any]) -> None:
        """Every label and drain names a registered chunkserver (for the invariants)."""
        assert all(c in known for c in self.labels), "labels of an unknown chunkserver"
        assert all(c in known for c in self.draining), "draining an unknown chunkserver"


def _known(st: State, a: dict[str, Any]) -> int:
    cs_id = arg_int(a, "cs_id", 1, INT63_MAX)
    if cs_id not in st.cs_table:
        raise NotFound("no such chunkserver", cs_id=cs_id)
    return cs_id


def _label(a: dict[str, Any], key: str) -> str | None:
    """An optional label: absent is None; present it is a str (the rack may be empty)."""
    if key not in a:
        return None
    if a[key] == "":
        return ""
    return arg_str(a, key, CS_LABEL_CHARS_MAX)


# --- ops --------------------------------------------------------------------------------

_CS_REGISTER = frozenset({"uuid", "address", "host", "rack"})


def cs_register(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """A chunkserver's id: stable for its uuid (allocated the first time); address updated.
    ``host`` and ``rack`` (optional: a chunkserver older than labels sends neither) replace
    its labels when given; absent, the ones it had are kept."""
    check_fields(a, _CS_REGISTER)
    uuid = arg_str(a, "uuid", CS_UUID_CHARS_MAX)
    address = arg_str(a, "address", CS_ADDRESS_CHARS_MAX)
    host = _label(a, "host")
    rack = _label(a, "rack")
    if host == "":
        raise Invalid("host must not be empty", field="host")
    cs_id = st.cs_by_uuid.get(uuid)
    if cs_id is None:
        cs_id = st.next_cs_id
        st.next_cs_id = cs_id + 1
        st.cs_by_uuid[uuid] = cs_id
    st.cs_table[cs_id] = (uuid, address)
    cluster = st.cluster
    if host is not None or rack is not None:
        old_host, old_rack = cluster.labels.get(cs_id, (address.rpartition(":")[0], ""))
        labels = (host if host is not None else old_host, rack if rack is not None else old_rack)
        if cluster.labels.get(cs_id) != labels:
            cluster.labels[cs_id] = labels
            cluster.changed()
    return {"ok": True, "cs_id": cs_id}


_CS_DRAIN = frozenset({"cs_id", "draining"})


def cs_drain(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Start (``draining`` true) or stop decommissioning a chunkserver. Idempotent."""
    check_fields(a, _CS_DRAIN)
    cs_id = _known(st, a)
    draining = arg_bool(a, "draining")
    cluster = st.cluster
    if draining != (cs_id in cluster.draining):
        if draining:
            cluster.draining[cs_id] = None
        else:
            del cluster.draining[cs_id]
        cluster.changed()
    return {"ok": True}


_CS_FORGET = frozenset({"cs_id"})


def cs_forget(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Remove a chunkserver from the cluster for good: refused while any chunk's replica set
    names it. Its id is never given again. Garbage it held and the first chunks reserved
    for creates (pools.py, which live a day) no longer name it: the server is gone, and
    with it those replicas (a reserved chunk keeps its other replicas, as a chunk whose
    replica died; one placed there alone is dropped, and a create that would use it is
    refused as any expired reservation is). O(chunks + reserved entries)."""
    check_fields(a, _CS_FORGET)
    cs_id = _known(st, a)
    holding = sum(1 for c in st.chunk_table.values() if cs_id in c.replicas)
    if holding:
        raise Invalid("the chunkserver still holds replicas", cs_id=cs_id, replicas=holding)
    uuid, _ = st.cs_table.pop(cs_id)
    del st.cs_by_uuid[uuid]
    for replicas in st.garbage.values():
        if cs_id in replicas:
            replicas.remove(cs_id)
    for holder, pool in list(st.pools.items()):
        for ino, (chunk_id, replicas, until_ns) in list(pool.items()):
            if cs_id not in replicas:
                continue
            left = [c for c in replicas if c != cs_id]
            if left:
                pool[ino] = (chunk_id, left, until_ns)
            else:  # placed there alone (goal 1): no longer a first chunk to hand out
                del pool[ino]
                del st.reserved_chunks[chunk_id]
        if not pool:
            del st.pools[holder]
    st.cluster.forget(cs_id)
    return {"ok": True}


_REBALANCE_START = frozenset({"threshold_bp", "bandwidth_bps"})


def rebalance_start(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Start a rebalance, or change the running one's threshold and bandwidth: either is a
    new run (numbered: ``runs``), which a stop decided under an earlier one does not end."""
    check_fields(a, _REBALANCE_START)
    threshold_bp = arg_int(a, "threshold_bp", THRESHOLD_BP_MIN, THRESHOLD_BP_MAX)
    bandwidth_bps = arg_int(a, "bandwidth_bps", 0, INT63_MAX)
    cluster = st.cluster
    if cluster.rebalance is None or cluster.rebalance[:2] != (threshold_bp, bandwidth_bps):
        cluster.runs += 1
        cluster.rebalance = (threshold_bp, bandwidth_bps, cluster.runs)
        cluster.stop_reason = ""
        cluster.changed()
    return {"ok": True}


_REBALANCE_STOP = frozenset({"reason", "run"})


def rebalance_stop(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """End the running rebalance (the operator's ``--stop``, or the chunk core once the
    cluster is balanced); ``reason`` is kept for ``status``. ``run`` (optional: the core
    names the run it judged) makes it end that run only: an operator's start that committed
    in between is not ended by a verdict on the run before. Idempotent: a stop with none
    running changes nothing."""
    check_fields(a, _REBALANCE_STOP)
    reason = arg_str(a, "reason", STOP_REASON_CHARS_MAX)
    run = arg_int(a, "run", 1, INT63_MAX) if "run" in a else None
    cluster = st.cluster
    if cluster.rebalance is not None and run in (None, cluster.rebalance[2]):
        cluster.rebalance = None
        cluster.stop_reason = reason
        cluster.changed()
    return {"ok": True}


_RESTORED = frozenset({"chunk_id_floor"})


def restored(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """The first command of a group restored from a backup (``metaserver/restore.py``):
    chunk ids go on from ``chunk_id_floor`` (never back), so that no new chunk takes the id
    of one written after the backup was taken, which chunkservers may still hold."""
    check_fields(a, _RESTORED)
    floor = arg_int(a, "chunk_id_floor", 1, INT63_MAX)
    st.next_chunk_id = max(st.next_chunk_id, floor)
    return {"ok": True}


CLUSTER_OPS: dict[str, Callable[[State, int, dict[str, Any]], Result]] = {
    "cs_register": cs_register,
    "cs_drain": cs_drain,
    "cs_forget": cs_forget,
    "rebalance_start": rebalance_start,
    "rebalance_stop": rebalance_stop,
    "restored": restored,
}
