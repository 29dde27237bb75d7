"""``MetaCache``'s rules for what is absent (negative entries) and for xattrs (dfs/client/cache.py), with an injected clock: pure, no cluster."""

from __future__ import annotations

import pytest

from dfs.client.cache import MetaCache
from dfs.client.records import Attr

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

DIR = 0o040755
FILE = 0o100644


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attr(ino: int, mode: int = FILE, has_xattrs: bool | None = None) -> Attr:
    return Attr(ino=ino, mode=mode, nlink=1, uid=0, gid=0, size=0, atime_ns=0, mtime_ns=0,
                ctime_ns=0, has_xattrs=has_xattrs)  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> MetaCache:
    return MetaCache(ttl_s=1.0, clock=clock, entries_max=100)


def test_negative_entry_lives_for_the_ttl_and_a_create_replaces_it(
    cache: MetaCache, clock: Clock
) -> None:
    assert not cache.absent(1, b"a")
    cache.put_absent(1, b"a")
    assert cache.absent(1, b"a") and cache.entry(1, b"a") is None
    assert not cache.absent(1, b"b") and not cache.absent(2, b"a")
    clock.now += 0.99
    assert cache.absent(1, b"a")
    clock.now += 0.02
    assert not cache.absent(1, b"a")  # expired: ask again
    cache.put_absent(1, b"a")
    cache.put_entry(1, b"a", attr(5))
    assert not cache.absent(1, b"a") and cache.entry(1, b"a") == 5


def test_only_names_looked_up_or_removed_are_absent(cache: MetaCache) -> None:
    cache.put_entry(7, b"x", attr(8))
    assert not cache.absent(7, b"y")  # never looked up: unknown, to be asked for
    cache.put_absent(7, b"x")  # a known removal
    assert cache.absent(7, b"x") and cache.entry(7, b"x") is None


def test_an_entry_forgotten_without_a_known_outcome_is_neither(cache: MetaCache) -> None:
    cache.put_absent(7, b"b")
    cache.put_entry(7, b"a", attr(8))
    # A timed-out rename of a to b: either may exist now.
    assert cache.drop_entry(7, b"a") == 8
    assert cache.drop_entry(7, b"b") is None
    assert not cache.absent(7, b"a") and not cache.absent(7, b"b")
    assert cache.entry(7, b"a") is None and cache.entry(7, b"b") is None


def test_xattrs_of_a_new_inode_and_their_invalidation(cache: MetaCache, clock: Clock) -> None:
    assert cache.xattr(5, b"security.capability") == (False, None)
    cache.put_no_xattrs(5)
    assert cache.xattr(5, b"security.capability") == (True, None)
    cache.put_xattr(6, b"user.a", b"1", epoch=cache.xattr_epoch)
    cache.put_xattr(6, b"user.b", None, epoch=cache.xattr_epoch)
    assert cache.xattr(6, b"user.a") == (True, b"1")
    assert cache.xattr(6, b"user.b") == (True, None)
    assert cache.xattr(6, b"user.c") == (False, None)
    cache.drop_xattrs(5)
    cache.drop_xattrs(6)
    assert cache.xattr(5, b"security.capability") == (False, None)
    assert cache.xattr(6, b"user.a") == (False, None)
    cache.put_no_xattrs(5)
    cache.put_xattr(6, b"user.a", b"1", epoch=cache.xattr_epoch)
    clock.now += 1.01
    assert cache.xattr(5, b"x") == (False, None) and cache.xattr(6, b"user.a") == (False, None)


def test_ttl_zero_caches_nothing(clock: Clock) -> None:
    cache = MetaCache(ttl_s=0, clock=clock)
    cache.put_absent(1, b"a")
    cache.put_no_xattrs(3)
    cache.put_xattr(3, b"n", b"v", epoch=cache.xattr_epoch)
    assert not cache.absent(1, b"a")
    assert cache.xattr(3, b"n") == (False, None)


def test_an_xattr_asked_for_before_a_change_here_is_not_cached(cache: MetaCache) -> None:
    epoch = cache.xattr_epoch
    cache.drop_xattrs(6)  # this client's setxattr, while the getxattr was on its way
    cache.put_xattr(6, b"user.a", b"old", epoch=epoch)
    assert cache.xattr(6, b"user.a") == (False, None)


def test_attributes_without_xattrs_answer_every_name_absent(cache: MetaCache, clock: Clock) -> None:
    cache.put_attr(attr(5, has_xattrs=False))
    cache.put_attr(attr(6, has_xattrs=True))
    cache.put_attr(attr(7))  # the server did not say
    assert cache.xattr(5, b"security.selinux") == (True, None)
    assert cache.xattr(6, b"security.selinux") == (False, None)
    assert cache.xattr(7, b"security.selinux") == (False, None)
    clock.now += 1.01  # the attributes expired: so did what they said
    assert cache.xattr(5, b"security.selinux") == (False, None)


def test_no_xattrs_flag_is_not_trusted_after_a_change_here(cache: MetaCache) -> None:
    cache.drop_xattrs(5)  # this client's setxattr ...
    cache.put_attr(attr(5, has_xattrs=False))  # ... and attributes asked for before it
    assert cache.xattr(5, b"user.a") == (False, None)
