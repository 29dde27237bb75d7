"""The operator's client ops on the leader: rebalancing, draining and forgetting
chunkservers, the chunkserver part of ``status``, fsck and goals of a subtree.

What it owns: checking what an admin request's definition (``dfs/wire/ops_meta.py``,
checked at the server's edge) cannot say, turning it into a namespace command (the
operator's decisions are hard state: ``metaserver/namespace/cluster.py``) or a read of the
chunk core's view (``Repair.rebalance_plan`` / ``rebalance_progress``), and each
chunkserver's state as ``status`` shows it. What it must not do: move replicas (the chunk
core does, reading ``Namespace.policy()``), or decide anything a follower would need (every
decision goes through Raft; the registry is the leader's soft state).

Ops (docs/PROTOCOL.md, "Metaserver: cluster operations"; leader only)::

    admin.rebalance {action: "start", threshold_pct?, bandwidth_bps?} -> progress
                    {action: "stop"} -> progress
                    {action: "status"} -> progress
                    {action: "plan", threshold_pct?} -> plan
    admin.drain     {cs_id, draining: bool} -> {chunkserver: row}
    admin.forget    {cs_id} -> {}     refused (Invalid) while alive or holding replicas
    admin.fsck      {path, cursor?} -> {files, summary, cursor, total, settling}
    admin.goals     {path, recursive?, cursor?} -> {goal, kind} | {files, dirs, others,
                                                                cursor, total}
    admin.set_goal  {path, goal, recursive?, cursor?} -> {changed, unchanged, cursor}

The three subtree ops go one page of the walk at a time (``metaserver/namespace/tree.py``:
``cursor`` None once done; the caller sends back the one it got); ``path`` is absolute,
as bytes, and is resolved on the leader (the last symlink not followed). ``admin.fsck``'s
page is ``metaserver/fsck.py``'s. ``admin.set_goal`` is one ``set_goal_tree`` command a
page: a retry of a page (same session and sequence) gets its first answer. Directory
leases: a holder gives the files it creates the goal of the directory as it was
granted, so the leases on directories of the subtree are recalled before a page, and
those on the directories whose goal it changed after it (one granted meanwhile).

``progress`` is ``Repair.rebalance_progress()`` plus ``stop_reason`` (why the last run
ended, "" while one runs or none did); ``row`` is one entry of ``status``'s
``chunkservers``.

A chunkserver's ``state``: ``drained`` once it is draining and no replica set names it
(safe to remove, whether it runs or not), else ``dead`` if the registry has not heard it
within the dead timeout, else ``draining`` or ``alive``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from dfs.wire.errors import Invalid
from dfs.wire.messages import field
from metaserver import fsck
from metaserver.chunks.placement import Registry
from metaserver.leasedesk import LeaseDesk
from metaserver.namespace import Namespace
from metaserver.namespace.state import Inode
from metaserver.namespace.tree import WALK_LIMIT_MAX, resolve
from metaserver.repair import Repair

Handler = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]
Propose = Callable[[str, dict[str, Any], dict[str, Any], float], Awaitable[dict[str, Any]]]

# A rebalance's threshold when the operator names none (HDFS's balancer's default).
THRESHOLD_PCT_DEFAULT = 10.0
THRESHOLD_PCT_MIN = 0.01
THRESHOLD_PCT_MAX = 100.0
STOP_REASON_OPERATOR = "stopped by the operator"
# Replica counts per chunkserver walk the chunk table: at most once per this many seconds
# (status is polled once a second by a waiting decommission).
REPLICA_COUNT_TTL_S = 1.0
# Entries one set_goal_tree command changes at most (one Raft entry, applied on every
# metaserver: a few milliseconds).
SET_GOAL_PAGE = 4096


class Admin:
    def __init__(
        self,
        ns: Namespace,
        registry: Registry,
        repair: Repair,
        *,
        propose: Propose,
        read: Callable[[float], Awaitable[None]],
        leader_view: Callable[[], None],
        know_all_chunkservers: Callable[[], None],
        desk: LeaseDesk | None = None,
    ) -> None:
        self.ns = ns
        self.registry = registry
        self.repair = repair
        self._propose = propose
        self._read = read
        self._leader_view = leader_view
        self._know_all = know_all_chunkservers
        self._desk = desk
        self._counts: dict[int, tuple[int, int]] = {}
        self._counts_at = (-1, float("-inf"))  # (chunk table size, monotonic time)

    def ops(self) -> dict[str, Handler]:
        return {
            "admin.rebalance": self.rebalance,
            "admin.drain": self.drain,
            "admin.forget": self.forget,
            "admin.fsck": self.fsck,
            "admin.goals": self.goals,
            "admin.set_goal": self.set_goal,
        }

    # --------------------------------------------------------------- ops

    async def rebalance(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        action: str = h["action"]
        if action == "start":
            threshold = _threshold(h)
            bandwidth: int = h.get("bandwidth_bps", 0)
            args = {"threshold_bp": round(threshold * 100), "bandwidth_bps": bandwidth}
            await self._propose("rebalance_start", args, h, timeout_s)
        elif action == "stop":
            await self._propose("rebalance_stop", {"reason": STOP_REASON_OPERATOR}, h, timeout_s)
        elif action == "status":
            await self._read(timeout_s)
        elif action == "plan":
            await self._read(timeout_s)
            running = self.ns.policy().rebalance
            default = running.threshold_pct if running is not None else THRESHOLD_PCT_DEFAULT
            return self.repair.rebalance_plan(_threshold(h, default))
        else:
            raise Invalid("action: start, stop, status or plan", action=action)
        return self.progress()

    async def drain(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        cs_id: int = h["cs_id"]
        draining: bool = h["draining"]
        await self._propose("cs_drain", {"cs_id": cs_id, "draining": draining}, h, timeout_s)
        self._counts_at = (-1, float("-inf"))
        rows = [r for r in self.chunkservers(time.monotonic()) if r["id"] == cs_id]
        return {"chunkserver": rows[0] if rows else None}

    async def forget(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        cs_id: int = h["cs_id"]
        await self._read(timeout_s)
        # An unknown id is refused by the namespace as it applies (NotFound), not here: a
        # retry of a forget that committed gets the first answer from the session table.
        self._know_all()
        if self.registry.is_alive(cs_id, time.monotonic()):
            raise Invalid(
                "the chunkserver is alive: stop it first (a new leader counts every "
                "chunkserver alive until its dead timeout has passed)",
                cs_id=cs_id,
            )
        # The namespace refuses while a replica set names it (checked as it applies).
        await self._propose("cs_forget", {"cs_id": cs_id}, h, timeout_s)
        self.registry.servers.pop(cs_id, None)
        return {}

    # --------------------------------------------------------------- subtrees

    def _root(self, h: dict[str, Any]) -> Inode:
        return resolve(self.ns, h["path"])

    async def fsck(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        self._know_all()
        root = self._root(h)
        now = self.repair.clock()
        return fsck.fsck_page(self.ns, self.registry, self.repair.core, now, root,
                              h.get("cursor"), unpushed=self.repair.is_unpushed)  # fmt: skip

    async def goals(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        recursive: bool = h.get("recursive", False)
        await self._read(timeout_s)
        root = self._root(h)
        if not recursive:
            kind = "file" if root.chunks is not None else "dir" if root.dir else "other"
            return {"goal": root.goal, "kind": kind}
        return fsck.goals_page(self.ns, root, h.get("cursor"))

    async def set_goal(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        goal: int = h["goal"]
        recursive: bool = h.get("recursive", False)
        await self._read(timeout_s)
        root = self._root(h)
        if self._desk is not None and self._desk.leases:
            below = self._leased_below(root.ino) if recursive else [root.ino]
            await self._desk.recall(below, 0, timeout_s)
        args: dict[str, Any] = {"ino": root.ino, "goal": goal, "recursive": recursive,
                                "limit": min(SET_GOAL_PAGE, WALK_LIMIT_MAX)}  # fmt: skip
        if h.get("cursor") is not None:
            args["cursor"] = h["cursor"]
        result = await self._propose("set_goal_tree", args, h, timeout_s)
        if self._desk is not None and self._desk.leases:
            leased = self._desk.leases.by_ino
            await self._desk.recall([d for d in result["dirs"] if d in leased], 0, timeout_s)
        return {k: result[k] for k in ("changed", "unchanged", "cursor")}

    def _leased_below(self, root_ino: int) -> list[int]:
        """The leased directories in the subtree of ``root_ino`` (each one's parents are
        followed up to the namespace's root)."""
        assert self._desk is not None
        inodes = self.ns.inodes
        out = []
        for ino in list(self._desk.leases.by_ino):
            seen = ino
            while True:
                if seen == root_ino:
                    out.append(ino)
                    break
                inode = inodes.get(seen)
                if inode is None or inode.dir is None or inode.dir.parent == seen:
                    break
                seen = inode.dir.parent
        return out

    # --------------------------------------------------------------- status

    def progress(self) -> dict[str, Any]:
        """The rebalance's progress (the chunk core's), and why the last run ended."""
        return {**self.repair.rebalance_progress(), "stop_reason": self.ns.rebalance_stop_reason()}

    def replica_counts(self, now_s: float) -> dict[int, tuple[int, int]]:
        """cs_id -> (replicas, bytes) the chunk table places there; recomputed when the
        table's size changed or ``REPLICA_COUNT_TTL_S`` passed."""
        size, at = self._counts_at
        if size != len(self.ns.chunk_table) or now_s - at >= REPLICA_COUNT_TTL_S:
            self._counts = self.ns.replicas_by_chunkserver()
            self._counts_at = (len(self.ns.chunk_table), now_s)
        return self._counts

    def _state(self, cs_id: int, now_s: float, draining: bool, replicas: int) -> str:
        """alive, dead, draining or drained (``dfs status``'s words)."""
        if draining and not replicas:
            return "drained"
        if not self.registry.is_alive(cs_id, now_s):
            return "dead"
        return "draining" if draining else "alive"

    def states(self, now_s: float) -> dict[str, int]:
        """How many chunkservers are in each state, their replicas counted as they last
        reported them (cheap, for metrics: no pass over the chunk table)."""
        self._know_all()
        draining = self.ns.policy().draining
        out: dict[str, int] = {}
        for cs_id in self.ns.chunkservers():
            info = self.registry.servers[cs_id]
            state = self._state(cs_id, now_s, cs_id in draining, info.chunks)
            out[state] = out.get(state, 0) + 1
        return out

    def chunkservers(self, now_s: float) -> list[dict[str, Any]]:
        """``status``'s ``chunkservers`` (leader only: the registry is its soft state)."""
        self._know_all()
        policy = self.ns.policy()
        counts = self.replica_counts(now_s)
        rows = []
        for cs_id in sorted(self.ns.chunkservers()):
            info = self.registry.servers[cs_id]
            heard = info.last_heard_s
            alive = self.registry.is_alive(cs_id, now_s)
            draining = cs_id in policy.draining
            replicas, replica_bytes = counts.get(cs_id, (0, 0))
            state = self._state(cs_id, now_s, draining, replicas)
            labels = policy.labels_of(cs_id, info.address)
            rows.append(
                {
                    "id": cs_id,
                    "address": info.address,
                    "alive": alive,
                    "state": state,
                    "draining": draining,
                    "host": labels.host,
                    "rack": labels.rack,
                    "capacity_bytes": info.capacity_bytes,
                    "used_bytes": info.used_bytes,
                    "chunks": info.chunks,
                    "replicas": replicas,
                    "replica_bytes": replica_bytes,
                    "load": info.load,
                    "pid": info.pid,
                    "last_heartbeat_ms_ago": (
                        None if heard is None else int((now_s - heard) * 1000)
                    ),
                }
            )
        return rows


def _threshold(h: dict[str, Any], default: float = THRESHOLD_PCT_DEFAULT) -> float:
    value = field(h, "threshold_pct", (int, float), default)
    if not THRESHOLD_PCT_MIN <= value <= THRESHOLD_PCT_MAX:
        raise Invalid(f"threshold_pct: {THRESHOLD_PCT_MIN}..{THRESHOLD_PCT_MAX} points")
    return float(value)
