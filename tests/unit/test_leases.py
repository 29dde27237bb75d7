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


def test_a_new_directory_is_leased_to_its_maker_unless_somebody_leases_it_already() -> None:
    """``LeaseDesk.granted_new``: the answer of a mkdir batch sent again after a leader
    change must not take the lease another client took on the directory meanwhile."""
    from types import SimpleNamespace

    from metaserver.leasedesk import LeaseDesk

    inodes = {7: SimpleNamespace(dir=object()), 8: SimpleNamespace(dir=object()),
              9: SimpleNamespace(dir=None)}  # fmt: skip

    async def read(timeout_s: float) -> None:
        raise AssertionError("granted_new reads nothing")

    desk = LeaseDesk(SimpleNamespace(inodes=inodes), read, lambda: None)  # type: ignore[arg-type]
    desk.granted_new(7, holder=1, conn="maker")
    assert desk.leases.by_ino[7].holder == 1 and desk.leases.by_ino[7].conn == "maker"
    other = desk.leases.grant(8, holder=2, conn="other", now=0.0)
    desk.granted_new(8, holder=1, conn="maker")  # the replayed answer
    assert desk.leases.by_ino[8] is other
    desk.granted_new(9, holder=1, conn="maker")  # not a directory (any more)
    desk.granted_new(10, holder=1, conn="maker")  # gone
    assert set(desk.leases.by_ino) == {7, 8}


def test_a_holder_renews_only_its_own_live_leases_on_their_connection() -> None:
    leases = DirLeases(lease_ms=1000)
    mine = leases.grant(5, holder=1, conn="c1", now=10.0)
    recalled = leases.grant(6, holder=1, conn="c1", now=10.0)
    recalled.recalled = True
    elsewhere = leases.grant(7, holder=1, conn="c2", now=10.0)
    theirs = leases.grant(8, holder=2, conn="c1", now=10.0)
    late = leases.grant(9, holder=1, conn="c1", now=9.0)
    assert leases.renew(1, "c1", [5, 6, 7, 8, 9, 10], now=10.5) == [5]
    assert mine.expiry_s == 11.5
    assert (recalled.expiry_s, elsewhere.expiry_s, theirs.expiry_s) == (11.0, 11.0, 11.0)
    assert late.expiry_s == 10.0  # expired at 10.0: not brought back


def test_admin_changes_of_a_subtree_recall_every_lease() -> None:
    """A restore from the trash (and a recursive goal or trash time) changes directories
    known only as it runs: every lease is recalled first. A holder renewing its lease
    meanwhile would otherwise go on answering from a listing without the restored names."""
    from types import SimpleNamespace

    from metaserver.leasedesk import LeaseDesk

    async def read(timeout_s: float) -> None:
        return None

    desk = LeaseDesk(SimpleNamespace(inodes={}), read, lambda: None)  # type: ignore[arg-type]
    desk.leases.grant(7, holder=1, conn="a", now=0.0)
    desk.leases.grant(8, holder=2, conn="b", now=0.0)
    for op in ("admin.trash_restore", "admin.set_goal", "admin.set_trash_time"):
        assert sorted(desk.touched(op, {"path": b"/x"})) == [7, 8]
    assert desk.touched("admin.trash_list", {"path": b"/x"}) == []
