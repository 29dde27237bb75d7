"""The metaservers' Raft membership, changed online: the ``admin.meta_*`` ops, the
members' view that ``status`` and ``meta.members`` answer, and a removed member's exit.

What it owns:
- ``admin.meta_add {address, node_id?}``: a new metaserver (started empty, ``join = true``)
  joins as a learner, catches up (by snapshot when the log it needs was compacted) and
  only then is promoted to voter, so that it never counts toward a quorum it cannot serve;
- ``admin.meta_remove {node_id}``: one member leaves; removing the leader first hands
  leadership to another voter and answers ``NotLeader`` pointing at it, which the client
  follows (its retry removes the old leader from the new one);
- retries: the client sends a request again after ``Timeout``, ``Unavailable`` or
  ``NotLeader``, also when its first attempt committed. So a change already made answers
  success: an add of a node that is a voter at that address (``was_voter``), a removal of
  an id not in the configuration (``was_member`` false);
- ``admin.transfer_leader {node_id?}``;
- ``meta.members {leader_only?}``: any node's view of the configuration (on the leader,
  with each member's replication);
- a removed member's exit (``watch``): a node that was a member and finds it no longer is
  (it applied its own removal, or a leader of its term or later does not list it) writes
  ``REMOVED`` into its data directory, stops serving and exits; started again, it refuses
  to run (``was_removed``) rather than campaign with a stale configuration.

What it must not do: decide Raft questions (the core checks one change at a time, and
refuses to leave no voter), or know the namespace. The Raft library does the changes
(``RaftNode.add_member`` / ``remove_member`` / ``transfer_leadership``); the addresses of
members travel in the ConfChange entries and in snapshots (node.py).

A change is one at a time: the core refuses a second while the first is being applied
(``Unavailable``, retried by the client). The checks a request gets before anything is
proposed are pure (``check_add``, ``check_remove``) so they are tested without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from dfs import rpc
from dfs.credentials import Credential
from dfs.types import LogIndex, NodeId
from dfs.wire.errors import DfsError, Exists, Invalid, NotFound, NotLeader, Timeout, Unavailable
from metaserver.raft.node import RaftNode, Replication
from metaserver.raft.types import NONE, ConfState

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]

# The marker a removed member leaves in its data directory.
REMOVED_FILE = "REMOVED"
# How often a member checks whether it is still one, and how long it must have been
# without a leader (or a learner) before it asks the others.
WATCH_PERIOD_S = 1.0
PROBE_AFTER_S = 3.0
# Connecting to and asking another metaserver (the new one on an add; peers on a probe).
ASK_TIMEOUT_S = 2.0
ADDRESS_MAX = 256

# Where an add starts (``check_add``).
AddFrom = Literal["new", "learner", "voter"]


# ---------------------------------------------------------------------- checks (pure)


def check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(address) > ADDRESS_MAX:
        raise Invalid("address: host:port", address=address)


def check_add(conf: ConfState, addresses: dict[NodeId, str], node_id: int, address: str) -> AddFrom:
    """Where an add of ``node_id`` at ``address`` starts: "new"; "learner" when it is
    already a learner at that address (an add that timed out while it caught up: this one
    resumes it); "voter" when it is already a voter at that address (an add whose answer
    was lost: nothing left to do). ``Invalid``/``Exists`` say why it may not be added."""
    check_address(address)
    if node_id < 1:
        raise Invalid("node_id >= 1", node_id=node_id)
    for member in conf.members():
        if member != node_id and addresses.get(member) == address:
            raise Exists(f"{address} is already metaserver {member}", node_id=int(member))
    if node_id in conf.members():
        kind: AddFrom = "voter" if node_id in conf.voters else "learner"
        if addresses.get(NodeId(node_id)) != address:
            raise Exists(
                f"metaserver {node_id} is a {kind} at {addresses.get(NodeId(node_id))}",
                node_id=node_id,
            )
        return kind
    return "new"


def check_remove(conf: ConfState, node_id: int) -> bool:
    """Whether ``node_id`` is a member to remove (False: it is not in the configuration,
    which is what a removal wants); ``Invalid`` for the last voter."""
    if node_id not in conf.members():
        return False
    if conf.voters == (node_id,):
        raise Invalid(f"metaserver {node_id} is the last voter", node_id=node_id)
    return True


def transfer_target(
    conf: ConfState, replication: Mapping[NodeId, Replication], leader: NodeId
) -> NodeId | None:
    """The voter other than ``leader`` to hand leadership to, or None if there is none:
    one the leader streams entries to and heard from recently (a dead voter keeps the
    match it had, which may be the highest, and would never take over), the most caught
    up of those; then the most caught up of the others. The lowest id on a tie."""
    others = [v for v in conf.voters if v != leader]
    if not others:
        return None

    def rank(v: NodeId) -> tuple[bool, int, int]:
        r = replication.get(v)
        if r is None:
            return (False, 0, -v)
        return (r.active and r.sending == "replicate", int(r.match), -v)

    return max(others, key=rank)


def removed_marker(data_dir: Path) -> Path:
    return data_dir / REMOVED_FILE


def was_removed(data_dir: Path) -> str | None:
    """What the marker of a removed member says, or None if this one was not removed (or
    its data directory cannot be read: starting the node then says why, in one line)."""
    try:
        return removed_marker(data_dir).read_text().strip() or "removed"
    except (FileNotFoundError, NotADirectoryError):
        return None


# ---------------------------------------------------------------------- the ops


class Membership:
    """The membership ops of one metaserver, and its watch (``watch``, a task the server
    runs). ``removed`` is set once this member finds it was removed: the daemon exits."""

    def __init__(self, node: RaftNode, credentials: Credential) -> None:
        self.node = node
        self._credentials = credentials
        self.removed = asyncio.Event()
        self._was_member = False
        self._tick_s = node.config.tick_ms / 1000

    def ops(self) -> dict[str, Handler]:
        return {
            "admin.meta_add": self.add,
            "admin.meta_remove": self.remove,
            "admin.transfer_leader": self.transfer_leader,
            "meta.members": self.members,
        }

    # ------------------------------------------------------------------ views

    def rows(self) -> list[dict[str, Any]]:
        """Every member of the configuration this node has applied: id, address, whether a
        voter or a learner; on the leader also its replication (``match``, ``lag`` behind
        the leader's last entry, ``sending``: probe/replicate/snapshot, ``active``: heard
        from since the leader's last quorum check)."""
        node = self.node
        st = node.status()
        replication = node.replication()
        rows = []
        for m in sorted(st.conf.members()):
            row: dict[str, Any] = {
                "id": int(m),
                "address": node.address_of(m),
                "learner": m in st.conf.learners,
                "membership": "learner" if m in st.conf.learners else "voter",
            }
            if m in replication:
                match, sending, active = replication[m]
                sending = "self" if m == node.id else sending
                row.update(match=int(match), lag=max(int(st.last_index) - int(match), 0),
                           sending=sending, active=active or m == node.id)  # fmt: skip
            rows.append(row)
        return rows

    def voter_addresses(self) -> list[str]:
        """The voters' addresses: where a client finds the leader (``fs.keepalive``)."""
        node = self.node
        voters = node.status().conf.voters
        return [a for a in (node.address_of(v) for v in voters) if a]

    async def members(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``meta.members``: this node's view; ``leader_only`` refuses it on a follower."""
        node = self.node
        if h.get("leader_only", False) and not node.is_leader:
            raise self._not_leader()
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
            "metaservers": self.rows(),
        }

    # ------------------------------------------------------------------ changes

    async def add(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``admin.meta_add``: learner, catch-up, voter. Answers ``{node_id, address,
        catch_up_ms, by_snapshot, was_voter}``. On ``Timeout`` the node stays a learner;
        the same request again resumes the wait. A node already a voter at ``address``
        is a success (``was_voter``): the request's retry after its promotion committed
        gets that answer."""
        address: str = h["address"]
        check_address(address)
        wanted: int = h.get("node_id", 0)
        node = self.node
        self._leader_only()
        deadline = time.monotonic() + timeout_s
        # Ask the new node who it is: its id is in its own config file, and it must be
        # empty (a node that was a member elsewhere would bring a log of its own).
        theirs = await self._ask(address, "meta.members")
        node_id = int(theirs["node_id"])
        if wanted and wanted != node_id:
            raise Invalid(f"{address} is metaserver {node_id}, not {wanted}", node_id=node_id)
        st = node.status()
        addresses = {m: node.address_of(m) or "" for m in st.conf.members()}
        start = check_add(st.conf, addresses, node_id, address)
        if start == "voter":
            return {"node_id": node_id, "address": address, "catch_up_ms": 0,
                    "by_snapshot": False, "was_voter": True}  # fmt: skip
        if start == "new" and (theirs["voters"] or theirs["learners"]):
            raise Invalid(
                f"{address} already has a membership (voters {theirs['voters']}): a new "
                "metaserver starts with an empty data_dir and join = true"
            )
        started = time.monotonic()
        if start == "new":
            log.info("metaserver node=%d event=meta_add member=%d address=%s step=learner",
                     node.id, node_id, address)  # fmt: skip
            await node.add_member(NodeId(node_id), address, learner=True, timeout_s=_left(deadline))
        by_snapshot = await self._catch_up(NodeId(node_id), deadline)
        log.info("metaserver node=%d event=meta_add member=%d address=%s step=voter "
                 "snapshot=%s", node.id, node_id, address, by_snapshot)  # fmt: skip
        await node.add_member(NodeId(node_id), address, learner=False, timeout_s=_left(deadline))
        return {
            "node_id": node_id,
            "address": address,
            "catch_up_ms": int((time.monotonic() - started) * 1000),
            "by_snapshot": by_snapshot,
            "was_voter": False,
        }

    async def _catch_up(self, node_id: NodeId, deadline: float) -> bool:
        """Wait until learner ``node_id`` holds every entry committed when the wait began
        and the leader streams entries to it (not probing, not sending a snapshot).
        Returns whether it needed a snapshot. Polls the leader's replication view
        once a tick: the core has no event for it, and a tick is what it moves in."""
        node = self.node
        target = node.status().commit
        # A new node starts empty: when the log before our snapshot is gone, it gets the
        # snapshot (a state seen only between two polls, too, for a small one).
        by_snapshot = node.snapshot_index > 0
        while True:
            replication = node.replication()
            if not replication:
                raise self._not_leader()
            match, sending, _ = replication.get(node_id, Replication(LogIndex(0), "gone", False))
            if sending == "gone":
                raise Unavailable(f"metaserver {node_id} left the configuration while it caught up")
            by_snapshot = by_snapshot or sending == "snapshot"
            if match >= target and sending == "replicate":
                return by_snapshot
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"metaserver {node_id} is still catching up (at {match} of {target}, "
                    f"{sending}); it stays a learner: add it again to resume",
                    node_id=int(node_id),
                    match=int(match),
                    target=int(target),
                )
            await asyncio.sleep(self._tick_s)

    async def remove(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``admin.meta_remove``: answers ``{voters, learners, was_member}``. A node not in
        the configuration is a success with ``was_member`` false: the leader cannot tell a
        retry whose first attempt committed (its answer lost) from a request for an id
        that never was a member, and either way the node is not one. The leader itself:
        leadership moves first, and the answer is ``NotLeader`` naming the new leader
        (``transfer_target``), where the client's retry removes it."""
        node_id: int = h["node_id"]
        node = self.node
        self._leader_only()
        st = node.status()
        if not check_remove(st.conf, node_id):
            return {
                "voters": [int(v) for v in st.conf.voters],
                "learners": [int(v) for v in st.conf.learners],
                "was_member": False,
            }
        if node_id == node.id:
            target = transfer_target(st.conf, node.replication(), node.id)
            assert target is not None  # check_remove: not the last voter
            log.info("metaserver node=%d event=meta_remove member=%d step=transfer to=%d",
                     node.id, node_id, target)  # fmt: skip
            await node.transfer_leadership(target, timeout_s=timeout_s)
            raise NotLeader(
                node.address_of(target),
                f"leadership moved to metaserver {target}, which removes this one",
                leader_id=int(target),
            )
        log.info("metaserver node=%d event=meta_remove member=%d address=%s",
                 node.id, node_id, node.address_of(NodeId(node_id)))  # fmt: skip
        await node.remove_member(NodeId(node_id), timeout_s=timeout_s)
        conf = node.status().conf
        return {
            "voters": [int(v) for v in conf.voters],
            "learners": [int(v) for v in conf.learners],
            "was_member": True,
        }

    async def transfer_leader(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``admin.transfer_leader``: to ``node_id``, or to the voter ``transfer_target`` picks.
        Answers ``{leader, leader_address}`` once it leads."""
        node = self.node
        self._leader_only()
        st = node.status()
        to: int = h.get("node_id", 0)
        if not to:
            target = transfer_target(st.conf, node.replication(), node.id)
            if target is None:
                raise Invalid("no other voter to lead")
            to = int(target)
        elif to not in st.conf.voters:
            raise Invalid(f"metaserver {to} is not a voter", node_id=to)
        if to != node.id:
            await node.transfer_leadership(NodeId(to), timeout_s=timeout_s)
        return {"leader": to, "leader_address": node.address_of(NodeId(to))}

    def _leader_only(self) -> None:
        if not self.node.is_leader:
            raise self._not_leader()

    def _not_leader(self) -> NotLeader:
        leader = self.node.leader_id
        return NotLeader(self.node.address_of(leader) if leader else None)

    async def _ask(self, address: str, op: str) -> dict[str, Any]:
        """One call to another metaserver on a connection of its own (rare: an add, a
        probe)."""
        host, _, port = address.rpartition(":")
        try:
            conn = await rpc.connect(
                host, int(port), self._credentials, name=f"meta-{self.node.id}",
                timeout_s=ASK_TIMEOUT_S, role="metaserver",
            )  # fmt: skip
        except (DfsError, OSError, TimeoutError) as e:
            # Not retried by the client: a wrong address, or a daemon not started.
            raise NotFound(f"no metaserver answers at {address}: {e}") from None
        try:
            header, _ = await conn.call(op, timeout_s=ASK_TIMEOUT_S)
            return header
        except (OSError, TimeoutError) as e:
            raise Unavailable(f"metaserver at {address} did not answer: {e}") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ removal

    async def watch(self) -> None:
        """Until this node finds it was removed (then ``removed`` is set): once a period,
        whether it still is a member. A member without a leader for ``PROBE_AFTER_S``, or
        a learner, asks the others; a leader that does not list it settles it."""
        node = self.node
        quiet_s = 0.0
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)  # a period, not a wait for a condition
            try:
                st = node.status()
            except Unavailable:
                return  # stopping
            members = st.conf.members()
            if node.id in members:
                self._was_member = True
            if not self._was_member:
                continue  # joining: not added yet
            if node.id not in members:
                self._on_removed(f"applied its own removal (voters {list(st.conf.voters)})")
                return
            if node.is_leader or (st.leader != NONE and node.id in st.conf.voters):
                quiet_s = 0.0
                continue
            quiet_s += WATCH_PERIOD_S
            if quiet_s < PROBE_AFTER_S:
                continue
            quiet_s = 0.0
            leader_view = await self._probe(members, int(st.term), int(node.applied_index))
            if leader_view is not None and node.id not in (
                leader_view["voters"] + leader_view["learners"]
            ):
                self._on_removed(
                    f"metaserver {leader_view['node_id']} leads in term {leader_view['term']} "
                    f"without it (voters {leader_view['voters']})"
                )
                return

    async def _probe(
        self, members: tuple[NodeId, ...], term: int, applied: int
    ) -> dict[str, Any] | None:
        """The view of a leader of term ``term`` or later among ``members`` that has applied
        at least what we have, if one answers. (Its configuration is as of what it applied:
        a new leader may not have applied yet the entry that added us; one that applied
        as far as we did and does not list us removed us after.)"""
        for m in members:
            address = self.node.address_of(m)
            if m == self.node.id or not address:
                continue
            with contextlib.suppress(DfsError):
                view = await self._ask(address, "meta.members")
                if (
                    view.get("role") == "leader"
                    and int(view.get("term", 0)) >= term
                    and int(view.get("applied", 0)) >= applied
                ):
                    return view
        return None

    def _on_removed(self, why: str) -> None:
        data_dir = self.node.config.data_dir
        log.warning("metaserver node=%d event=removed reason=%r: no longer a member; exiting",
                    self.node.id, why)  # fmt: skip
        with contextlib.suppress(OSError):
            removed_marker(data_dir).write_text(f"removed from the cluster: {why}\n")
        self.removed.set()


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.1)


__all__ = [
    "Membership",
    "check_add",
    "check_address",
    "check_remove",
    "transfer_target",
    "was_removed",
]
