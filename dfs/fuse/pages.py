"""Whether the kernel may keep a file's cached pages at ``open`` (FUSE's ``keep_cache``).

What it owns: for each inode this mount has opened, the attributes (size, mtime, ctime) of
the version its pages in the kernel's page cache were read under. What it must not do:
talk to the cluster (``open`` hands it attributes the client has just revalidated) or
decide anything about attributes the kernel caches (``operations.py`` invalidates those).

Close-to-open, as NFS does it. At every ``open`` the client revalidates the attributes
with the metaserver (``FsClient.open``). If they are the ones recorded here, nobody changed
the file since this mount last read it, and the kernel keeps its pages (``keep_cache``);
otherwise the kernel drops them (``keep_cache`` off) and reads the file anew. Either way
the attributes at this open are recorded: every page read from here on is of this
version, or of a later one, whose attributes then differ at the next open.

A change through this mount forgets the inode (``changed``): writes through the kernel's
page cache (writeback caching is off, so every write reaches us) leave its pages right, as
do direct writes of new files (operations.py rule 8: the kernel drops the pages they
overlap), but the commit at ``close`` gives the file new attributes, which we
cannot tell apart from another mount's change that raced it. So the next open after our
own write or truncate drops the pages once. Cheap to be safe: one re-read.

Every change of a file's bytes moves its ctime on the metaserver, so two versions never
share all three attributes.
"""

from __future__ import annotations

from collections import OrderedDict

from dfs.client import Attr

# Inodes remembered (least recently opened forgotten first): past this, an open of a
# forgotten inode just drops its pages, as before keep_cache.
PAGE_STAMPS_MAX = 100_000


def stamp(attr: Attr) -> tuple[int, int, int]:
    return attr.size, attr.mtime_ns, attr.ctime_ns


class PageStamps:
    """The version of each inode's pages in the kernel (see the module docstring)."""

    def __init__(self, entries_max: int = PAGE_STAMPS_MAX) -> None:
        self._stamps: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        self._entries_max = entries_max

    def open(self, attr: Attr) -> bool:
        """An ``open`` with attributes fresh from the metaserver: whether the kernel may
        keep the inode's pages."""
        now = stamp(attr)
        keep = self._stamps.get(attr.ino) == now
        self._stamps[attr.ino] = now
        self._stamps.move_to_end(attr.ino)
        if len(self._stamps) > self._entries_max:
            self._stamps.popitem(last=False)
        return keep

    def changed(self, ino: int) -> None:
        """This mount changed the file's bytes or size: its next open drops the pages."""
        self._stamps.pop(ino, None)

    def __len__(self) -> int:
        return len(self._stamps)


__all__ = ["PAGE_STAMPS_MAX", "PageStamps", "stamp"]
