"""The checks an ``admin.meta_*`` request gets before anything is proposed
(``metaserver/membership.py``): unknown ids, the last voter, an address or id already a
member, an add that resumes a learner; the choice of the next leader; the marker a removed
member leaves. And the client's side: it follows the leader's list of members."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfs.client.meta import MetaClient
from dfs.types import LogIndex, NodeId
from dfs.wire.errors import Exists, Invalid
from metaserver.membership import (
    check_add,
    check_address,
    check_remove,
    removed_marker,
    transfer_target,
    was_removed,
)
from metaserver.raft.node import Replication
from metaserver.raft.types import ConfState

pytestmark = pytest.mark.timeout(10)

CONF = ConfState(voters=(NodeId(1), NodeId(2), NodeId(3)), learners=(NodeId(4),))
ADDRESSES = {NodeId(i): f"10.0.0.{i}:7000" for i in (1, 2, 3, 4)}


def test_add_a_new_node() -> None:
    assert check_add(CONF, ADDRESSES, 5, "10.0.0.5:7000") == "new"


def test_add_resumes_a_learner_at_its_address() -> None:
    assert check_add(CONF, ADDRESSES, 4, "10.0.0.4:7000") == "learner"


def test_add_of_a_voter_at_its_address_is_done() -> None:
    """The client's retry of an add whose promotion committed, its answer lost."""
    assert check_add(CONF, ADDRESSES, 2, "10.0.0.2:7000") == "voter"


@pytest.mark.parametrize(
    ("node_id", "address", "error", "words"),
    [
        (5, "10.0.0.2:7000", Exists, "already metaserver 2"),  # address of a voter
        (5, "10.0.0.4:7000", Exists, "already metaserver 4"),  # address of a learner
        (2, "10.0.0.9:7000", Exists, "is a voter at 10.0.0.2:7000"),
        (4, "10.0.0.9:7000", Exists, "is a learner at 10.0.0.4:7000"),
        (0, "10.0.0.9:7000", Invalid, "node_id"),
        (5, "10.0.0.9", Invalid, "host:port"),
        (5, "10.0.0.9:99999", Invalid, "host:port"),
        (5, ":7000", Invalid, "host:port"),
    ],
)
def test_add_refused(node_id: int, address: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        check_add(CONF, ADDRESSES, node_id, address)


def test_remove() -> None:
    assert check_remove(CONF, 2) is True
    assert check_remove(CONF, 4) is True  # a learner
    alone = ConfState(voters=(NodeId(3),), learners=(NodeId(4),))
    with pytest.raises(Invalid, match="last voter"):
        check_remove(alone, 3)
    assert check_remove(alone, 4) is True


def test_remove_of_a_non_member_is_done() -> None:
    """Not an error: the client's retry of a removal that committed, its answer lost."""
    assert check_remove(CONF, 7) is False
    assert check_remove(ConfState(voters=(NodeId(3),)), 7) is False


def live(match: int) -> Replication:
    return Replication(LogIndex(match), "replicate", True)


def test_transfer_target_is_the_most_caught_up_other_voter() -> None:
    replication = {NodeId(1): live(90), NodeId(2): live(100), NodeId(3): live(100),
                   NodeId(4): live(200)}  # fmt: skip
    assert transfer_target(CONF, replication, NodeId(1)) == 2  # a tie: the lower id
    assert transfer_target(CONF, replication, NodeId(2)) == 3
    assert transfer_target(CONF, {}, NodeId(3)) == 1  # nothing known: the lowest id
    assert transfer_target(ConfState(voters=(NodeId(1),)), replication, NodeId(1)) is None


def test_transfer_target_prefers_voters_the_leader_replicates_to() -> None:
    """A dead voter keeps the match it had, maybe the highest: it is not chosen while a
    voter the leader streams to and hears from is there; then the match decides."""
    dead = Replication(LogIndex(150), "replicate", False)
    probing = Replication(LogIndex(140), "probe", True)
    replication = {NodeId(1): live(150), NodeId(2): dead, NodeId(3): live(100)}
    assert transfer_target(CONF, replication, NodeId(1)) == 3
    replication[NodeId(3)] = probing
    assert transfer_target(CONF, replication, NodeId(1)) == 2  # none live: the match
    replication[NodeId(3)] = live(10)
    assert transfer_target(CONF, replication, NodeId(1)) == 3


def test_check_address_accepts_host_port() -> None:
    check_address("meta-4.example:7001")
    check_address("[::1]:7001")


def test_removed_marker(tmp_path: Path) -> None:
    assert was_removed(tmp_path) is None
    removed_marker(tmp_path).write_text("removed from the cluster: because\n")
    assert was_removed(tmp_path) == "removed from the cluster: because"


def test_client_follows_the_members_it_learns() -> None:
    meta = MetaClient(object(), ["a:1", "b:1", "c:1"], timeout_s=1, attempt_timeout_s=1,  # type: ignore[arg-type]
                      lanes_max=1)  # fmt: skip
    meta.learn_members(["b:1", "c:1", "d:1"])
    assert meta.addresses == ["b:1", "c:1", "d:1"]
    meta.learn_members([])  # an empty or malformed list changes nothing
    meta.learn_members([None, 3])
    assert meta.addresses == ["b:1", "c:1", "d:1"]
