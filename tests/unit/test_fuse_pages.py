"""``keep_cache`` decisions of the mount (``dfs/fuse/pages.py``): the kernel keeps a file's
pages at ``open`` only when the file is as this mount last opened it and this mount has
not changed it since (close-to-open, as NFS)."""

from __future__ import annotations

import dataclasses

from dfs.client import Attr
from dfs.fuse.pages import PageStamps

FILE = Attr(
    ino=7, mode=0o100644, nlink=1, uid=0, gid=0, size=100, atime_ns=1, mtime_ns=2, ctime_ns=3
)


def test_first_open_drops_and_an_unchanged_file_keeps() -> None:
    pages = PageStamps()
    assert not pages.open(FILE)  # nothing known of the pages: drop them
    assert pages.open(FILE)
    assert pages.open(dataclasses.replace(FILE, atime_ns=99))  # a read moves only atime


def test_another_clients_change_drops_the_pages() -> None:
    for change in ({"size": 101}, {"mtime_ns": 5}, {"ctime_ns": 4}):
        pages = PageStamps()
        pages.open(FILE)
        changed = dataclasses.replace(FILE, **change)
        assert not pages.open(changed), change
        assert pages.open(changed), change  # and the new version's pages are kept after


def test_this_mounts_own_change_drops_the_pages_once() -> None:
    pages = PageStamps()
    pages.open(FILE)
    pages.changed(FILE.ino)
    # Even with the same attributes: the commit's new ones could not be told apart from
    # another mount's change that raced ours.
    assert not pages.open(FILE)
    assert pages.open(FILE)
    pages.changed(12345)  # an inode never opened: nothing to forget
    assert pages.open(FILE)


def test_bounded_and_least_recently_opened_forgotten_first() -> None:
    pages = PageStamps(entries_max=2)
    a, b, c = (dataclasses.replace(FILE, ino=ino) for ino in (1, 2, 3))
    pages.open(a)
    pages.open(b)
    pages.open(a)  # a is now the most recent
    pages.open(c)  # b goes
    assert len(pages) == 2
    assert pages.open(a) and pages.open(c)
    assert not pages.open(b)
