"""The one leader-following loop (dfs/leader.py), against scripted metaservers."""

from __future__ import annotations

import random

import anyio
import pytest

from dfs.leader import HINT_HOPS_MAX, LeaderFollower
from dfs.wire.errors import AuthError, Busy, NotFound, NotLeader, Timeout, Unavailable

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

A, B, C, D = "a:1", "b:1", "c:1", "d:1"


def follower(**kwargs: object) -> LeaderFollower:
    return LeaderFollower(
        [A, B, C], attempt_timeout_s=0.5, backoff_min_s=0.001, backoff_max_s=0.002,
        rng=random.Random(1), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


class Cluster:
    """Answers per address: an exception to raise, or "ok"."""

    def __init__(self, answers: dict[str, Exception | str]) -> None:
        self.answers = answers
        self.tried: list[str] = []

    async def attempt(self, address: str, attempt_s: float) -> str:
        assert 0 < attempt_s <= 0.5
        self.tried.append(address)
        answer = self.answers.get(address, Unavailable("down"))
        if isinstance(answer, Exception):
            raise answer
        return f"{answer} from {address}"


@pytest.mark.anyio
async def test_hint_followed_and_leader_remembered() -> None:
    f = follower()
    cluster = Cluster({A: NotLeader(C), C: "ok"})
    assert await f.call("op", cluster.attempt, timeout_s=5) == "ok from c:1"
    assert cluster.tried == [A, C] and f.leader == C
    assert await f.call("op", cluster.attempt, timeout_s=5) == "ok from c:1"
    assert cluster.tried == [A, C, C]  # straight to the leader


@pytest.mark.anyio
async def test_down_and_electing_servers_are_skipped_with_backoff() -> None:
    f = follower()
    cluster = Cluster({A: Unavailable("down"), B: NotLeader(None), C: "ok"})
    assert await f.call("op", cluster.attempt, timeout_s=5) == "ok from c:1"
    assert cluster.tried == [A, B, C]


@pytest.mark.anyio
async def test_a_hinted_new_member_joins_the_addresses() -> None:
    f = follower()
    cluster = Cluster({A: NotLeader(D), D: "ok"})
    assert await f.call("op", cluster.attempt, timeout_s=5) == "ok from d:1"
    assert f.addresses == [A, B, C, D]
    f.learn_members([B, D])
    assert f.addresses == [B, D]


@pytest.mark.anyio
async def test_a_ring_of_hints_is_broken_by_backoff_and_the_deadline() -> None:
    f = follower()
    cluster = Cluster({A: NotLeader(B), B: NotLeader(A), C: NotLeader(A)})
    with pytest.raises(Unavailable, match=r"no metaserver answered in 0\.2 s"):
        await f.call("op", cluster.attempt, timeout_s=0.2)
    # The ring is walked (with a pause every HINT_HOPS_MAX hints) until the deadline.
    assert len(cluster.tried) > HINT_HOPS_MAX


@pytest.mark.anyio
async def test_past_the_deadline_a_timeout_or_unavailable() -> None:
    f = follower()
    with pytest.raises(Timeout):
        await f.call("op", Cluster({A: Timeout("slow"), B: Timeout("slow"),
                                    C: Timeout("slow")}).attempt, timeout_s=0.05)  # fmt: skip
    with pytest.raises(Unavailable):
        await f.call("op", Cluster({}).attempt, timeout_s=0.05)


@pytest.mark.anyio
async def test_other_errors_are_the_answer() -> None:
    f = follower()
    for error in (NotFound("no"), AuthError("secret")):
        cluster = Cluster({A: error})
        with pytest.raises(type(error)):
            await f.call("op", cluster.attempt, timeout_s=5)
        assert cluster.tried == [A]
    # An owner may retry more (a chunkserver: another secret at one metaserver).
    f = follower(also_retry=(AuthError,))
    cluster = Cluster({A: AuthError("secret"), B: Busy("busy"), C: "ok"})
    assert await f.call("op", cluster.attempt, timeout_s=5) == "ok from c:1"


@pytest.mark.anyio
async def test_attempt_timeout_bounded_by_what_is_left() -> None:
    f = follower()
    seen: list[float] = []

    async def attempt(address: str, attempt_s: float) -> str:
        seen.append(attempt_s)
        await anyio.sleep(0)
        return "ok"

    await f.call("op", attempt, timeout_s=0.1)
    await f.call("op", attempt, timeout_s=5, attempt_timeout_s=0.3)
    assert seen[0] <= 0.1 and seen[1] == pytest.approx(0.3)


@pytest.mark.anyio
async def test_one_round_gives_up_once_every_address_failed() -> None:
    f = follower()
    cluster = Cluster({A: NotLeader(D)})  # D (hinted) and the others are down
    with pytest.raises(Unavailable, match="no metaserver answered"):
        await f.call("op", cluster.attempt, timeout_s=5, one_round=True)
    assert sorted(cluster.tried) == [A, B, C, D]
    cluster.answers[B] = "ok"
    assert await f.call("op", cluster.attempt, timeout_s=5, one_round=True) == "ok from b:1"
