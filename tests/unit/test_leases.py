"""The leader's table of directory leases (metaserver/leases.py): pure, time passed in."""

from __future__ import annotations

from metaserver.leases import DirLeases


def test_grant_blocks_other_holders_until_release_or_expiry() -> None:
    leases = DirLeases(lease_ms=1000)
    assert not leases
    lease = leases.grant(5, holder=1, conn="c1", now=10.0)
    assert leases and lease.expiry_s == 11.0
    assert leases.blocking(5, holder=1, now=10.5) is None  # its own holder
    assert leases.blocking(5, holder=2, now=10.5) is lease
    assert leases.blocking(5, holder=0, now=10.5) is lease  # a request without a holder
    assert leases.blocking(6, holder=2, now=10.5) is None
    assert leases.release(2, [5]) == []  # only the holder releases
    assert leases.release(1, [5]) == [lease] and lease.released
    assert leases.blocking(5, holder=2, now=10.5) is None
    lease = leases.grant(5, holder=1, conn="c1", now=20.0)
    assert leases.blocking(5, holder=2, now=21.0) is None  # expired: dropped
    assert not leases and lease.released


def test_renewal_by_the_holder_keeps_the_lease_and_a_new_term_forgets_all() -> None:
    leases = DirLeases(lease_ms=1000)
    first = leases.grant(5, holder=1, conn="c1", now=10.0)
    first.recalled = True
    again = leases.grant(5, holder=1, conn="c2", now=10.5)
    assert again is first and again.expiry_s == 11.5 and again.conn == "c2"
    assert not again.recalled
    leases.grant(6, holder=2, conn="c3", now=10.5)
    assert [lease.ino for lease in leases.expire(11.6)] == [5, 6]
    leases.grant(7, holder=2, conn="c3", now=12.0)
    gone = leases.restart()
    assert [lease.ino for lease in gone] == [7] and gone[0].released and not leases


def test_changes_in_flight_are_counted_per_directory() -> None:
    leases = DirLeases()
    leases.enter([5, 6])
    leases.enter([5])
    leases.leave([5, 6])
    assert leases.busy(5) and not leases.busy(6)
    leases.leave([5])
    assert not leases.busy(5)
