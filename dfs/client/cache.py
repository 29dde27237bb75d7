"""The client's caches: attributes, directory entries and xattrs with a short TTL, chunk
locations until they fail. Pure: the caller passes the clock.

Attributes and entries (``MetaCache``). ``getattr`` and ``lookup`` answers, and the
attributes that come with every mutation and every ``readdir`` page, are kept for
``attr_ttl_s`` (1 s by default, as NFS's ``acregmin`` and FUSE's usual attr timeout): long
enough that a burst of ``stat``s or lookups (``ls -l``, path walks) costs one RPC, short
enough that other clients' changes show up soon. This client's own mutations update or
drop what they touch at once (``FsClient`` does this next to each call), so a client
always sees its own changes. ``open`` bypasses the cache (close-to-open consistency).

Absent names are cached too (*negative entries*), under the same TTL: a lookup answered
``NotFound``, or a name this client removed. ``cp`` looks a new name up twice (its own
``stat``, then the kernel's lookup before the create), and the second costs no round trip.
Another client's create of a name looked up here is seen once the TTL has passed, as its
removals and attribute changes are; a name never looked up here is always asked for, so
that a file created and closed on another mount opens here at once (close-to-open). (A
directory this client created could answer every absent name itself for the TTL, saving
the lookup before each create in it; that would hide such files for up to the TTL, so it
is not done.)

Extended attributes (``xattr``): values and absences by (ino, name), for the TTL; an inode
this client created has none (``no_xattrs``) until it sets one, and neither has an inode
whose fresh cached attributes say ``has_xattrs`` false (MooseFS's "no xattr" flag). The
kernel asks for ``security.capability`` before every write (to clear file capabilities),
and ``ls -l`` asks every file for ``security.selinux`` and its POSIX ACL, so without this
each of those would cost a round trip. The flag is not trusted for an inode whose xattrs
this client changed (``_xattrs_changed``): attributes asked for before the change may
arrive after it.

Chunk locations (``LocationCache``). ``fs.locate`` answers by (ino, chunk index), holes
included (a chunk absent from the answer is a hole until this client writes it). An entry
lives until ``location_ttl_s``, until its read token is about to expire, or until a read
through it fails (``Stale``, ``NotFound``, ``PermissionDenied``: the caller drops it); a
write handle or a truncate from this client drops the inode's or the chunk's entries, as
the chunk's version changes.

Every cache is bounded (``entries_max``); past it the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from dfs.client.records import Attr, ChunkLocation

Clock = Callable[[], float]
K = TypeVar("K")
V = TypeVar("V")

# A read token that expires within this margin is not used: the read may take a while
# and a chunkserver refuses an expired token (PermissionDenied).
TOKEN_MARGIN_MS = 10_000
# The inode number of a negative entry in ``MetaCache._names`` (inodes start at 1).
_ABSENT = 0


class MetaCache:
    """Attributes by inode, directory entries by (parent, name) (present or absent), and
    xattrs by (ino, name), each with a TTL; see the module docstring for the rules."""

    def __init__(self, *, ttl_s: float, clock: Clock, entries_max: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries_max = entries_max
        self._attrs: OrderedDict[int, tuple[Attr, float]] = OrderedDict()
        # (parent, name) -> (ino, or _ABSENT; until when).
        self._names: OrderedDict[tuple[int, bytes], tuple[int, float]] = OrderedDict()
        # ino -> {name: (value, or None for absent; until when)}.
        self._xattrs: OrderedDict[int, dict[bytes, tuple[bytes | None, float]]] = OrderedDict()
        # Inodes known to have no xattrs at all: ino -> until when.
        self._no_xattrs: OrderedDict[int, float] = OrderedDict()
        # Bumped by every ``drop_xattrs``: an answer asked for before a change made here is
        # not cached after it (a getxattr racing with this client's own setxattr).
        self._xattr_epoch = 0
        # Inodes whose xattrs this client changed: their attributes' ``has_xattrs`` may be
        # older than the change, so it is not used for them (a bounded set, oldest out).
        self._xattrs_changed: OrderedDict[int, None] = OrderedDict()

    def _expires(self) -> float:
        return self._clock() + self.ttl_s

    def _bound(self, table: OrderedDict[K, V]) -> K | None:
        """Evict the oldest item past the bound; returns its key."""
        if len(table) > self._entries_max:
            return table.popitem(last=False)[0]
        return None

    def _until(self, table: OrderedDict[int, float], ino: int) -> bool:
        """Whether ``table`` holds a fresh mark for ``ino`` (a stale one is removed)."""
        until = table.get(ino)
        if until is None:
            return False
        if until <= self._clock():
            del table[ino]
            return False
        return True

    def _mark(self, table: OrderedDict[int, float], ino: int) -> None:
        table[ino] = self._expires()
        table.move_to_end(ino)
        self._bound(table)

    # ------------------------------------------------------------------ attributes

    def attr(self, ino: int, *, kept: bool = False) -> Attr | None:
        """The cached attributes of ``ino`` if still fresh; with ``kept``, however old
        (the caller knows nobody else changed them: an inode this client made under a
        directory lease it still holds)."""
        item = self._attrs.get(ino)
        if item is None:
            return None
        if not kept and item[1] <= self._clock():
            del self._attrs[ino]
            return None
        return item[0]

    def put_attr(self, attr: Attr) -> None:
        if self.ttl_s <= 0:
            return
        self._attrs[attr.ino] = (attr, self._expires())
        self._attrs.move_to_end(attr.ino)
        self._bound(self._attrs)

    def drop_attr(self, ino: int) -> None:
        self._attrs.pop(ino, None)

    # ------------------------------------------------------------------ entries

    def _name(self, parent: int, name: bytes) -> int | None:
        """The fresh entry's inode (``_ABSENT`` for a negative one), or None."""
        item = self._names.get((parent, name))
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._names[(parent, name)]
            return None
        return item[0]

    def entry(self, parent: int, name: bytes) -> int | None:
        """The inode ``name`` in ``parent`` names, if a fresh entry says so (None also
        when the name is known absent: see ``absent``)."""
        ino = self._name(parent, name)
        return None if ino == _ABSENT else ino

    def absent(self, parent: int, name: bytes) -> bool:
        """Whether ``name`` is known not to exist in ``parent`` (a fresh negative entry)."""
        return self._name(parent, name) == _ABSENT

    def put_entry(self, parent: int, name: bytes, attr: Attr) -> None:
        """Remember that ``name`` in ``parent`` is ``attr`` (both the entry and the attr)."""
        if self.ttl_s <= 0:
            return
        self._put_name(parent, name, attr.ino)
        self.put_attr(attr)

    def put_absent(self, parent: int, name: bytes) -> None:
        """Remember that ``name`` is not in ``parent`` (a lookup said so, or this client
        removed it)."""
        if self.ttl_s <= 0:
            return
        self._put_name(parent, name, _ABSENT)

    def _put_name(self, parent: int, name: bytes, ino: int) -> None:
        key = (parent, name)
        self._names[key] = (ino, self._expires())
        self._names.move_to_end(key)
        self._bound(self._names)

    def drop_entry(self, parent: int, name: bytes) -> int | None:
        """Forget an entry (present or absent: a mutation's outcome is unknown); returns
        the inode it named (fresh or not), if known."""
        item = self._names.pop((parent, name), None)
        return item[0] if item is not None and item[0] != _ABSENT else None

    # ------------------------------------------------------------------ xattrs

    def xattr(
        self, ino: int, name: bytes, *, kept: bool = False, attr: Attr | None = None
    ) -> tuple[bool, bytes | None]:
        """(known, value): the value of xattr ``name`` of ``ino``, None when known absent;
        ``kept``: cached values however old (as for ``attr``). ``attr``: the inode's
        attributes as the caller knows them (their ``has_xattrs`` answers for a name not
        cached), else the cache's fresh ones."""
        names = self._xattrs.get(ino)
        if names is not None:
            item = names.get(name)
            if item is not None:
                if kept or item[1] > self._clock():
                    return True, item[0]
                del names[name]
        if self._until(self._no_xattrs, ino) or self._attr_says_no_xattrs(ino, attr):
            return True, None
        return False, None

    def _attr_says_no_xattrs(self, ino: int, attr: Attr | None) -> bool:
        if ino in self._xattrs_changed:
            return False
        attr = attr or self.attr(ino)
        return attr is not None and attr.has_xattrs is False

    @property
    def xattr_epoch(self) -> int:
        """Take before asking for an xattr; pass to ``put_xattr`` with the answer."""
        return self._xattr_epoch

    def put_xattr(self, ino: int, name: bytes, value: bytes | None, *, epoch: int) -> None:
        """Remember xattr ``name`` of ``ino`` (None: it is absent), unless this client
        changed xattrs since ``epoch``."""
        if self.ttl_s <= 0 or epoch != self._xattr_epoch:
            return
        names = self._xattrs.get(ino)
        if names is None:
            names = self._xattrs[ino] = {}
            self._bound(self._xattrs)
        else:
            self._xattrs.move_to_end(ino)
        names[name] = (value, self._expires())

    def put_no_xattrs(self, ino: int) -> None:
        """``ino`` is new (this client created it): it has no xattrs."""
        if self.ttl_s <= 0:
            return
        self._mark(self._no_xattrs, ino)

    def drop_xattrs(self, ino: int) -> None:
        """Forget what is known of ``ino``'s xattrs (this client changed them)."""
        self._xattr_epoch += 1
        self._no_xattrs.pop(ino, None)
        self._xattrs.pop(ino, None)
        self._xattrs_changed[ino] = None
        self._xattrs_changed.move_to_end(ino)
        self._bound(self._xattrs_changed)

    def clear(self) -> None:
        self._attrs.clear()
        self._names.clear()
        self._xattrs.clear()
        self._no_xattrs.clear()
        self._xattrs_changed.clear()


class LocationCache:
    """Chunk locations by (ino, index); ``None`` records a hole."""

    def __init__(
        self,
        *,
        ttl_s: float,
        clock: Clock,
        wall_clock_ms: Callable[[], int],
        entries_max: int = 100_000,
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._entries_max = entries_max
        self._count = 0
        # ino -> index -> (location or None for a hole, expires at); inodes in LRU order.
        self._by_ino: OrderedDict[int, dict[int, tuple[ChunkLocation | None, float]]]
        self._by_ino = OrderedDict()
        # ino -> (size, mtime_ns) when its locations were cached: see ``revalidate``.
        self._stamps: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # Drops per inode, so that an answer asked for before a drop is not cached after it
        # (a locate racing with a write handle would cache a hole for a chunk that now
        # exists). ``_era`` grows when the table is cleared to keep it bounded.
        self._drops: dict[int, int] = {}
        self._era = 0

    def epoch(self, ino: int) -> tuple[int, int]:
        """Take before asking ``fs.locate``; pass to ``put`` with the answer."""
        return self._era, self._drops.get(ino, 0)

    def revalidate(self, attr: Attr, *, own_change: bool = False) -> None:
        """Attributes fresh from the metaserver. At an ``open``: if the file's size or mtime
        changed since they were last seen, another client wrote it and the inode's cached
        locations (lengths, holes) are dropped (close-to-open). After this client's own
        change (``own_change``: it dropped what it changed already) they are only noted."""
        stamp = (attr.size, attr.mtime_ns)
        if not own_change and self._stamps.get(attr.ino, stamp) != stamp:
            self.drop(attr.ino)
        self._stamps[attr.ino] = stamp
        self._stamps.move_to_end(attr.ino)
        if len(self._stamps) > self._entries_max:
            self._stamps.popitem(last=False)

    def get(self, ino: int, index: int) -> tuple[bool, ChunkLocation | None]:
        """(known, location): ``known`` is False when the cache has no usable answer."""
        chunks = self._by_ino.get(ino)
        if chunks is None:
            return False, None
        item = chunks.get(index)
        if item is None:
            return False, None
        location, expires = item
        if expires <= self._clock() or (
            location is not None and location.expiry_ms - TOKEN_MARGIN_MS <= self._wall_clock_ms()
        ):
            del chunks[index]
            self._count -= 1
            return False, None
        return True, location

    def put(
        self,
        ino: int,
        index: int,
        location: ChunkLocation | None,
        *,
        epoch: tuple[int, int] | None = None,
    ) -> None:
        """Cache an answer, unless the inode's locations were dropped since ``epoch``."""
        if epoch is not None and epoch != self.epoch(ino):
            return
        chunks = self._by_ino.get(ino)
        if chunks is None:
            chunks = self._by_ino[ino] = {}
        else:
            self._by_ino.move_to_end(ino)
        if index not in chunks:
            self._count += 1
        chunks[index] = (location, self._clock() + self.ttl_s)
        while self._count > self._entries_max and len(self._by_ino) > 1:
            _, evicted = self._by_ino.popitem(last=False)
            self._count -= len(evicted)

    def drop(self, ino: int, index: int | None = None) -> None:
        """Forget one chunk's location, or (``index`` None) all of the inode's."""
        self._dropped(ino)
        chunks = self._by_ino.get(ino)
        if chunks is None:
            return
        if index is None:
            del self._by_ino[ino]
            self._count -= len(chunks)
        elif chunks.pop(index, None) is not None:
            self._count -= 1

    def drop_from(self, ino: int, first_index: int) -> None:
        """Forget the locations of chunk ``first_index`` and every later one (truncate)."""
        self._dropped(ino)
        chunks = self._by_ino.get(ino)
        if chunks is None:
            return
        for index in [i for i in chunks if i >= first_index]:
            del chunks[index]
            self._count -= 1

    def _dropped(self, ino: int) -> None:
        if len(self._drops) >= self._entries_max and ino not in self._drops:
            self._drops.clear()
            self._era += 1
        self._drops[ino] = self._drops.get(ino, 0) + 1


__all__ = ["LocationCache", "MetaCache"]
