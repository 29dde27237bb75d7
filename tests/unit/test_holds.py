"""Open-file holds on the leader (metaserver/holds.py): pure, with the clock passed in."""

from __future__ import annotations

import pytest

from metaserver.holds import Holds

pytestmark = pytest.mark.timeout(10)


def test_hold_release_and_other_clients() -> None:
    h = Holds(ttl_s=30, grace_s=15)
    h.restart(0.0)
    assert h.held(5, 1.0)  # in the grace everything is kept
    now = 20.0
    assert not h.held(5, now)
    h.hold(1, [5, 6], now)
    h.hold(2, [5], now)
    assert h.held(5, now) and h.held(6, now)
    h.release(1, [5, 6])
    assert h.held(5, now) and not h.held(6, now)  # client 2 still has 5 open
    h.release(2, [5])
    assert not h.held(5, now) and h.count() == 0


def test_keepalive_replaces_the_set_and_silence_expires() -> None:
    h = Holds(ttl_s=30, grace_s=15)
    h.restart(0.0)
    h.hold(1, [5, 6], 20.0)
    h.keepalive(1, [6, 7], 40.0)
    assert not h.held(5, 40.0) and h.held(6, 40.0) and h.held(7, 40.0)
    assert not h.held(6, 71.0)  # past the ttl even before expire() runs
    h.expire(71.0)
    assert h.count() == 0


def test_a_new_term_forgets_and_grants_grace() -> None:
    h = Holds(ttl_s=30, grace_s=15)
    h.restart(0.0)
    h.hold(1, [5], 20.0)
    h.restart(100.0)
    assert h.count() == 0 and h.held(9, 114.0) and not h.held(9, 115.0)
