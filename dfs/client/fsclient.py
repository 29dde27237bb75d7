"""``FsClient``: a POSIX-shaped API over the metaservers and chunkservers.

This is what the CLI and the FUSE adapter call. It is inode-based, like pyfuse3's
``Operations``: names are bytes, inodes are ints (the root is ``ROOT_INO``), attributes are
``Attr`` records, and errors are ``DfsError``s from ``dfs.wire.errors`` (never errno: the
FUSE adapter maps them). Path helpers (``resolve``, ``resolve_parent``) serve the CLI.

What it owns: the caches (``cache.py``) and the table of inodes open in this client
(``files.py``; their life from open to last close is ``openfiles.py``); it builds each metaserver request (docs/PROTOCOL.md) and keeps the caches
true to this client's own mutations, next to each call. What it must not do: import
asyncio or server code (it runs under trio in the mount; ``tests/unit/test_boundaries.py``).

Lifetime: a client lives in a task group, which runs its connections' readers and writers,
its uploads and its read-ahead::

    async with FsClient.open_cluster(["127.0.0.1:7001", ...], credentials) as fs:
        attr = await fs.resolve(b"/a/b")
        async with await fs.open(attr.ino, os.O_RDONLY) as f:
            data = await f.read(0, 1 << 20)

or, for an owner with a task group of its own (the FUSE adapter)::

    fs = FsClient(tg, addresses, credentials, options=ClientOptions(...))
    await fs.start()          # finds the leader, learns chunk_size (fs.statfs)
    ...
    await fs.aclose()         # closes connections; files should be closed before

Leaving the block (or ``aclose``) without closing written files loses their uncommitted
writes, as a crash would.

Open inodes outlive their handles when a close leaves changes behind (its flush failed or
was cancelled): the client keeps the inode, lets its uploads finish and commits what
landed in the background (``openfiles.py``, ``_finish``), and only then forgets it. An ``open`` meanwhile
joins that state, so one inode never has two write-back states in one client.

Consistency: attributes and entries are cached for ``attr_ttl_s``; this client's own
mutations update them at once; ``open`` always asks the metaserver (close-to-open), and
``File.close``/``flush``/``fsync`` commit. Within one client every handle on an inode shares
one write-back buffer, so reads see the client's own writes at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import stat
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dfs.client.cache import Clock, LocationCache, MetaCache
from dfs.client.chunkio import ChunkIo
from dfs.client.conn import single_errors
from dfs.client.dirleases import LOCAL_COOKIE_BASE, DirLease, DirLeases
from dfs.client.fileio import FileIo
from dfs.client.handle import File
from dfs.client.holdsync import HoldSync
from dfs.client.inopool import InoPool
from dfs.client.localread import LocalReads
from dfs.client.meta import MetaClient
from dfs.client.openfiles import OpenFiles
from dfs.client.options import ClientOptions
from dfs.client.paths import PathResolution, check_name
from dfs.client.pool import ConnectionPool
from dfs.client.records import Attr, DirEntry, StatFs, WriteHandle
from dfs.client.xattrs import XATTR_CREATE, XATTR_REPLACE, XattrCalls
from dfs.credentials import Credential
from dfs.leader import RETRYABLE
from dfs.wire.errors import (
    DfsError,
    NotFound,
    Unavailable,
)
from dfs.wire.limits import (
    DIR_BLOCKS,
    DIR_SIZE_BYTES,
    MKDIR_BITS,
    ROOT_INO,
    SYMLINK_TARGET_BYTES_MAX,
)
from dfs.wire.messages import field

log = logging.getLogger(__name__)

# readdir page size when iterating a whole directory.
READDIR_PAGE = 1024

# Linux renameat2 flags, as the protocol numbers them.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class FsClient(PathResolution, XattrCalls, OpenFiles):
    """A client of one dfs cluster. See the module docstring for its lifetime."""

    def __init__(
        self,
        task_group: TaskGroup,
        meta_addresses: Sequence[str],
        credentials: Credential,
        *,
        options: ClientOptions | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options = options or ClientOptions()
        self._task_group = task_group
        self._rng = rng or random.Random()
        clock = clock or anyio.current_time
        self._pool = ConnectionPool(
            task_group, credentials, name=options.name, connect_timeout_s=options.connect_timeout_s
        )
        self.meta = MetaClient(
            self._pool,
            meta_addresses,
            timeout_s=options.timeout_s,
            attempt_timeout_s=options.attempt_timeout_s,
            lanes_max=options.lanes_max,
            rng=self._rng,
        )
        self.stats = self._pool.stats  # RPCs sent, by op
        local = None
        if options.local_reads:
            pool, io_timeout_s = self._pool, options.io_timeout_s

            async def cs_status(address: str) -> dict[str, Any]:
                header, _ = await pool.call(address, "cs.status", timeout_s=io_timeout_s)
                return header

            local = LocalReads(cs_status, clock, task_group.start_soon)
        self.chunks = ChunkIo(
            self._pool,
            io_timeout_s=options.io_timeout_s,
            fanout_bytes_max=options.fanout_write_bytes_max,
            local=local,
        )
        self.cache = MetaCache(
            ttl_s=options.attr_ttl_s, clock=clock, entries_max=options.cache_entries_max
        )
        self.locations = LocationCache(
            ttl_s=options.location_ttl_s,
            clock=clock,
            wall_clock_ms=lambda: time.time_ns() // 1_000_000,
            entries_max=options.cache_entries_max,
        )
        self._io: FileIo | None = None
        self._init_open_files()
        # This client's open-file hold id (PROTOCOL.md, fs.open): random, so that two
        # clients never share one; the leader keeps an unlinked file we hold as an orphan.
        self.holder = random.SystemRandom().getrandbits(62) + 1
        # Every request says who sent it (directory leases), and waits for the removals
        # this client answered under its leases to land first (dirleases.py).
        self.meta.holder = self.holder
        self.dirleases = DirLeases(
            self.meta,
            self._pool,
            task_group,
            on_lost=self._forget,
            on_commit_lost=self._commit_lost,
            on_commit_landed=self._commit_landed,
            is_open=self._is_open,
            land_behind=self._land_behind,
            enabled=options.dir_leases,
        )
        self.meta.before = self.dirleases.before
        self.holds = HoldSync(
            self.meta,
            task_group,
            self.holder,
            open_inos=lambda: sorted(self._open),
            writing=lambda: sorted({c for i in self._open.values() for c in i.writing()}),
        )
        # Inode numbers and first chunks for the creates answered under a lease.
        self._inos = InoPool(self.meta, task_group, self.holder)
        self._pool.on_oneway = self.dirleases.on_oneway
        self._uid = os.getuid()
        self._gid = os.getgid()

    # ------------------------------------------------------------------ lifetime

    @classmethod
    @asynccontextmanager
    async def open_cluster(
        cls,
        meta_addresses: Sequence[str],
        credentials: Credential,
        *,
        attr_ttl_s: float | None = None,
        timeout_s: float | None = None,
        options: ClientOptions | None = None,
        clock: Clock | None = None,
    ) -> AsyncIterator[FsClient]:
        """A started client in a task group of its own, closed when the block ends.
        ``attr_ttl_s`` and ``timeout_s``, when given, override ``options``."""
        options = options or ClientOptions()
        if attr_ttl_s is not None:
            options = dataclasses.replace(options, attr_ttl_s=attr_ttl_s)
        if timeout_s is not None:
            options = dataclasses.replace(options, timeout_s=timeout_s)
        with single_errors():
            async with anyio.create_task_group() as tg:
                fs = cls(tg, meta_addresses, credentials, options=options, clock=clock)
                try:
                    await fs.start()
                    yield fs
                finally:
                    await fs.aclose()
                    tg.cancel_scope.cancel()

    async def start(self) -> None:
        """Reach the metaservers and learn the cluster's chunk size. Raises ``Timeout``/
        ``Unavailable`` after ``timeout_s`` if no metaserver answers, ``AuthError`` on a
        wrong secret."""
        statfs = await self.statfs()
        self._io = FileIo(
            meta=self.meta,
            chunks=self.chunks,
            locations=self.locations,
            task_group=self._task_group,
            chunk_size=statfs.chunk_size,
            options=self.options,
            on_attr=self._own_attr,
            defer_commit=self._defer_commit,
            land_commits=self._land_commits,
            close_behind=self._close_behind,
            behind_failed=self._behind_failed,
        )

    async def aclose(self) -> None:
        """Close every connection. Files still open lose what they have not committed."""
        await self.dirleases.aclose()
        for scope in list(self._finishers):
            scope.cancel()
        self._drop_behind()
        self._open.clear()
        with anyio.CancelScope(shield=True):
            await self.holds.aclose()
            await self._pool.aclose()

    @property
    def chunk_size(self) -> int:
        return self._file_io().chunk_size

    def _file_io(self) -> FileIo:
        if self._io is None:
            raise Unavailable("client not started")
        return self._io

    # ------------------------------------------------------------------ attributes

    def _own_attr(self, attr: Attr) -> None:
        """Attributes the metaserver returned for this client's own change."""
        self.cache.put_attr(attr)
        self.dirleases.saw_attr(attr)
        self.locations.revalidate(attr, own_change=True)
        inode = self._open.get(attr.ino)
        if inode is not None:
            inode.saw(attr)

    def _local(self, attr: Attr) -> Attr:
        """``attr`` with this client's uncommitted size, mtime and attributes over it."""
        inode = self._open.get(attr.ino)
        if inode is None or not inode.dirty:
            return attr
        return inode.overlay(attr)

    def _known(self, ino: int) -> Attr | None:
        """The attributes of ``ino`` this client can answer with at once: a leased
        directory's own, a fresh cached answer, or the last this client saw of an inode it
        made under a lease it still holds, however old (``DirLeases.made_here``: nobody
        else can have changed them). None: ask the metaservers."""
        attr = self.dirleases.dir_attr(ino)
        if attr is not None:
            return attr
        return self.cache.attr(ino, kept=self.dirleases.made_here(ino))

    @staticmethod
    def _attr(header: dict[str, Any]) -> Attr:
        return Attr.from_wire(header.get("attr"))

    async def getattr(self, ino: int, *, fresh: bool = False) -> Attr:
        """The inode's attributes: as known here (``_known``) unless ``fresh``."""
        attr = None if fresh else self._known(ino)
        if attr is None:
            attr = self._attr(await self.meta.read("fs.getattr", ino=ino))
            self.cache.put_attr(attr)
        return self._local(attr)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        """The attributes of ``name`` in directory ``parent`` (``NotFound`` if absent)."""
        check_name(name)
        ino = self.cache.entry(parent, name)
        if ino is not None:
            attr = self._known(ino)
            if attr is not None:
                return self._local(attr)
        elif self.cache.absent(parent, name):
            raise NotFound("no such name (cached)", name=name)
        leased, found = self.dirleases.lookup(parent, name)
        if leased:
            if found is None:  # the leased listing is complete: known absent
                raise NotFound("no such name (leased listing)", name=name)
            attr = self._known(found.ino)
            if attr is not None:  # the name is the lease's, the attributes known here
                return self._local(attr)
        try:
            header = await self.meta.read("fs.lookup", parent=parent, name=name)
        except NotFound:
            self.cache.put_absent(parent, name)
            raise
        attr = self._attr(header)
        attr = self.dirleases.dir_attr(attr.ino) or attr  # a leased directory's: ours
        self.cache.put_entry(parent, name, attr)
        return self._local(attr)

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        atime_now: bool = False,
        mtime_now: bool = False,
    ) -> Attr:
        """Change attributes; ``size`` truncates or extends (the server cuts or drops
        chunks). ``*_now`` use the server's clock. Returns the new attributes.

        On a file this client has open for writing, a change of mode, owner or times is
        not sent at once: it joins the file's next commit (``OpenInode.set_attrs``: at
        ``flush``/``fsync``/``close``, or within ``attr_ttl_s``), so that ``tar``'s
        ``futimens``, ``fchown`` and ``fchmod`` of a file it is writing cost no round trip
        of their own. This client sees the change at once."""
        fields: dict[str, Any] = {
            k: v
            for k, v in (
                ("mode", mode),
                ("uid", uid),
                ("gid", gid),
                ("atime_ns", atime_ns),
                ("mtime_ns", mtime_ns),
            )
            if v is not None
        }
        if atime_now:
            fields["atime_now"] = True
        if mtime_now:
            fields["mtime_now"] = True
        if size is None and not (atime_now or mtime_now) and fields:
            # A directory this client holds the lease on: answered here, shipped in the
            # lease's next batch (tar sets every directory's owner, mode and times).
            queued = self.dirleases.queue_setattr(ino, fields)
            if queued is not None:
                self.cache.put_attr(queued)
                return queued
        inode = self._open.get(ino)
        if (
            inode is not None
            and inode.writers > 0
            and size is None
            and not (atime_now or mtime_now)
            and fields
            and self.options.attr_ttl_s > 0
        ):
            inode.set_attrs(**fields)
            return await self.getattr(ino)
        if size is not None:
            if inode is not None:
                return self._local(await inode.truncate(size, **fields))
            header = await self.meta.mutate("fs.setattr", ino=ino, size=size, **fields)
            self.locations.drop(ino)
        else:
            if inode is not None and inode.dirty:
                # Commit the writes first, or their commit would overwrite what is set here
                # (mtime) with what was true before. Synced only as a close is: a table
                # that counts bytes a power loss took is settled by the leader's length
                # recovery (metaserver/repair.py), not by an fsync per commit.
                await inode.flush(sync=self.options.sync_on_close)
            header = await self.meta.mutate("fs.setattr", ino=ino, **fields)
        attr = self._attr(header)
        self._own_attr(attr)
        return self._local(attr)

    async def set_goal(self, ino: int, goal: int) -> Attr:
        """Set the replication goal of a file or directory (1..16)."""
        attr = self._attr(await self.meta.mutate("fs.set_goal", ino=ino, goal=goal))
        self.cache.put_attr(attr)
        self.dirleases.saw_attr(attr)
        inode = self._open.get(ino)
        if inode is not None:
            inode.saw(attr)  # its ctime moved: not another client's change
        return attr

    async def statfs(self) -> StatFs:
        statfs = StatFs.from_wire(await self.meta.read("fs.statfs"))
        self._note_free(statfs)
        return statfs

    # ------------------------------------------------------------------ directories

    async def readdir_page(
        self, ino: int, cookie: int = 0, limit: int = READDIR_PAGE
    ) -> tuple[list[DirEntry], bool]:
        """One page of directory ``ino`` after ``cookie`` (0: from the start), with
        attributes; and whether more entries follow. Pass the last entry's ``cookie`` to
        continue. ``.`` and ``..`` are not listed.

        Under a lease held here, when every entry's attributes are known here
        (``_known``), the listing is the lease's, whole, with no round trip: ``rm -rf``
        lists every directory a ``tar x`` just made, and ``ls -l`` after a ``cp -r``. Its
        cookies are the lease's (``DirLease.cookies``); one of them after the lease is
        gone ends the listing (only a ``seekdir`` across a ``rewinddir`` can ask that)."""
        local = cookie == 0 or cookie > LOCAL_COOKIE_BASE
        lease = self.dirleases.valid(ino) if local else None
        if lease is not None:
            listing = self._leased_listing(lease, cookie)
            if listing is not None:
                return listing, False
        if cookie > LOCAL_COOKIE_BASE:
            return [], False
        header = await self.meta.read("fs.readdir", ino=ino, cookie=cookie, limit=limit)
        entries = [DirEntry.from_wire(e) for e in field(header, "entries", list)]
        more = field(header, "more", bool, False)
        out = []
        for entry in entries:
            attr = self._shown(entry.attr)
            self.cache.put_entry(ino, entry.name, attr)
            out.append(_with_attr(entry, self._local(attr)))
        return out, more

    def _leased_listing(self, lease: DirLease, after: int) -> list[DirEntry] | None:
        """The entries of ``lease``'s listing after cookie ``after`` (0: all), each with
        its attributes as known here; None if one's are not."""
        cookies = lease.cookies
        out = []
        for name, entry in lease.names.items():
            cookie = cookies[name]
            if cookie <= after:
                continue
            attr = self._known(entry.ino)
            if attr is None:
                return None
            out.append(DirEntry(name, self._local(attr), cookie))
        return out

    def _shown(self, attr: Attr) -> Attr:
        """A listed entry's attributes as this client knows them: a leased directory's
        are its own (``dirleases.dir_attr``)."""
        return (self.dirleases.dir_attr(attr.ino) or attr) if attr.is_dir else attr

    async def readdir(self, ino: int) -> AsyncIterator[DirEntry]:
        """Every entry of directory ``ino``, page by page."""
        cookie = 0
        while True:
            entries, more = await self.readdir_page(ino, cookie)
            for entry in entries:
                yield entry
            if not more or not entries:
                return
            cookie = entries[-1].cookie

    async def mkdir(
        self, parent: int, name: bytes, mode: int, *, uid: int | None = None, gid: int | None = None
    ) -> Attr:
        check_name(name)
        mode = mode if stat.S_IFMT(mode) else mode | stat.S_IFDIR
        if stat.S_ISDIR(mode):
            # Under the parent's lease: answered here, queued, and the new directory
            # leased to this client (dirleases.py, ``queue_new``).
            lease = await self.dirleases.lease_for_create(parent)
            if lease is not None:
                made = self._new_leased(
                    "fs.mkdir", lease, name, stat.S_IFDIR | (mode & MKDIR_BITS), uid, gid,
                    fields={},
                )  # fmt: skip
                if made is not None:
                    return self._local(made[0])
        header = await self._adding("fs.mkdir", parent, name, mode=mode, **self._owner(uid, gid))
        return self._created(parent, name, header)

    async def rmdir(self, parent: int, name: bytes) -> None:
        check_name(name)
        if await self.dirleases.remove("fs.rmdir", parent, name, is_open=self._is_open):
            self._removed(parent, name)
            return
        try:
            await self.meta.mutate("fs.rmdir", parent=parent, name=name)
        except BaseException:
            self._forget(parent, name)
            raise
        self._removed(parent, name)

    # ------------------------------------------------------------------ names

    async def create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        *,
        uid: int | None = None,
        gid: int | None = None,
        exclusive: bool = True,
    ) -> tuple[Attr, bool]:
        """Create a regular file; returns its attributes and whether it was created
        (False: it existed and ``exclusive`` was False). ``Exists`` if ``exclusive``."""
        attr, created, _ = await self._create(
            parent, name, mode, uid=uid, gid=gid, exclusive=exclusive, first_chunk=False
        )
        return attr, created

    async def _create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        *,
        uid: int | None,
        gid: int | None,
        exclusive: bool,
        first_chunk: bool,
    ) -> tuple[Attr, bool, WriteHandle | None]:
        """``fs.create``; with ``first_chunk``, a created file comes with the write handle
        of its chunk 0 (one Raft command for both: PROTOCOL.md)."""
        check_name(name)
        mode = mode if stat.S_IFMT(mode) else mode | stat.S_IFREG
        extra: dict[str, Any] = {"first_chunk": True} if first_chunk else {}
        if first_chunk:
            extra["holder"] = self.holder  # created to be opened: held from the start
        header = await self._adding(
            "fs.create", parent, name, mode=mode, exclusive=exclusive,
            **self._owner(uid, gid), **extra,
        )  # fmt: skip
        created = field(header, "created", bool, True)
        attr = self._created(parent, name, header, new_inode=created)
        wire = header.get("handle")
        handle = WriteHandle.from_wire(0, wire) if created and isinstance(wire, dict) else None
        return attr, created, handle

    async def create_and_open(
        self,
        parent: int,
        name: bytes,
        mode: int,
        flags: int,
        *,
        uid: int | None = None,
        gid: int | None = None,
    ) -> tuple[Attr, File]:
        """``open(2)`` with O_CREAT in one metadata round trip (FUSE's ``create``):
        O_EXCL makes it exclusive; an existing file is opened (and O_TRUNC truncates it).
        A new file opened for writing comes with its first chunk's write handle, so that
        its first write needs no ``fs.write_handle`` of its own."""
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        # Under the directory's lease, the create is answered here and the new file's
        # commits go through the queue.
        lease = await self.dirleases.lease_for_create(parent) if writable else None
        if lease is not None:
            opened = await self._create_leased(lease, name, mode, flags, uid=uid, gid=gid)
            if opened is not None:
                return opened
        attr, created, write_handle = await self._create(
            parent,
            name,
            mode,
            uid=uid,
            gid=gid,
            exclusive=bool(flags & os.O_EXCL),
            first_chunk=writable,
        )
        if created:
            return await self._open_created(attr, flags, write_handle, lease, name)
        # Someone else's file: close-to-open revalidation applies as to any open.
        attr, file = await self._open_attr(await self._open_fresh(attr.ino), flags)
        return self._local(attr), file

    async def _create_leased(
        self,
        lease: DirLease,
        name: bytes,
        mode: int,
        flags: int,
        *,
        uid: int | None,
        gid: int | None,
    ) -> tuple[Attr, File] | None:
        """Create ``name`` under ``lease`` without a round trip (``_new_leased``), with the
        first chunk reserved with its inode number. None: the caller creates the
        synchronous way."""
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            return None
        made = self._new_leased(
            "fs.create", lease, name, stat.S_IFREG | stat.S_IMODE(mode), uid, gid,
            fields={"exclusive": True},
        )  # fmt: skip
        if made is None:
            return None
        attr, handle = made
        return await self._open_created(attr, flags, handle, lease, name)

    def _new_leased(
        self,
        op: str,
        lease: DirLease,
        name: bytes,
        mode: int,
        uid: int | None,
        gid: int | None,
        *,
        fields: dict[str, Any],
        size: int = 0,
    ) -> tuple[Attr, WriteHandle] | None:
        """Answer ``op`` (a create, mkdir or symlink: ``mode`` as the namespace will make
        it) of ``name`` under ``lease`` without a round trip: an inode number reserved for
        this client (inopool.py; a file's first chunk comes with it) and the attributes
        the namespace will give, the op queued for the lease's next batch (dirleases.py,
        "New files"). Returns the attributes and the reserved chunk's handle; None where
        that cannot be (the name is listed, no reserved entry is at hand, the directory's
        attributes are not known here): the caller goes the synchronous way."""
        check_name(name)
        parent = lease.attr
        if parent is None or name in lease.names or not parent.goal:
            return None
        entry = self._inos.take(parent.goal)
        if entry is None:
            return None
        owner = self._owner(uid, gid)
        if parent.mode & stat.S_ISGID:  # as the namespace does (state.py, new_inode)
            owner["gid"] = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        is_dir = stat.S_ISDIR(mode)
        now_ns = time.time_ns()  # the leader stamps its own when the batch lands
        attr = Attr(
            ino=entry.ino, mode=mode, nlink=2 if is_dir else 1,
            size=DIR_SIZE_BYTES if is_dir else size, atime_ns=now_ns, mtime_ns=now_ns,
            ctime_ns=now_ns, goal=parent.goal, blocks=DIR_BLOCKS if is_dir else 0,
            has_xattrs=False, **owner,
        )  # fmt: skip
        request = {"parent": lease.ino, "name": name, "ino": entry.ino, **owner, **fields}
        if op != "fs.symlink":
            request["mode"] = mode
        if not self.dirleases.queue_new(op, lease, name, attr, request):
            self._inos.give_back(parent.goal, entry)
            return None
        self._added(lease.ino, name, attr, lease.attr, new_inode=True)
        return attr, entry.handle

    async def _open_created(
        self,
        attr: Attr,
        flags: int,
        handle: WriteHandle | None,
        lease: DirLease | None,
        name: bytes,
    ) -> tuple[Attr, File]:
        """Open a file this client just created, with chunk 0's write ``handle`` if it
        came with the create, and, under ``lease``, its commits through the queue."""
        attr, file = await self._open_attr(attr, flags)
        if handle is not None:
            file.inode.adopt_handle(handle)
        if lease is not None:
            file.inode.created_under = (lease, name)
        return self._local(attr), file

    async def mknod(
        self,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int = 0,
        *,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Attr:
        check_name(name)
        header = await self._adding(
            "fs.mknod", parent, name, mode=mode, rdev=rdev, **self._owner(uid, gid)
        )
        return self._created(parent, name, header)

    async def symlink(
        self,
        parent: int,
        name: bytes,
        target: bytes,
        *,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Attr:
        check_name(name)
        if target and b"\0" not in target and len(target) <= SYMLINK_TARGET_BYTES_MAX:
            # (Else the leader says what is wrong.)
            lease = await self.dirleases.lease_for_create(parent)
            if lease is not None:
                made = self._new_leased(
                    "fs.symlink", lease, name, stat.S_IFLNK | 0o777, uid, gid,
                    fields={"target": target}, size=len(target),
                )  # fmt: skip
                if made is not None:
                    return self._local(made[0])
        header = await self._adding(
            "fs.symlink", parent, name, target=target, **self._owner(uid, gid)
        )
        return self._created(parent, name, header)

    async def readlink(self, ino: int) -> bytes:
        header = await self.meta.read("fs.readlink", ino=ino)
        return field(header, "target", bytes)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        """A hard link ``new_name`` in ``new_parent`` to ``ino``; returns its attributes."""
        check_name(new_name)
        self.dirleases.forget_made(ino)  # reachable by the new name from now on
        inode = self._open.get(ino)
        if inode is not None:
            await self._land_first([inode])  # the new name may be where others look first
            inode.created_under = None  # a second name: no more commits through a queue
        header = await self._adding("fs.link", new_parent, new_name, ino=ino)
        return self._created(new_parent, new_name, header, new_inode=False)

    async def unlink(self, parent: int, name: bytes) -> None:
        """Remove ``name``. Under a lease on ``parent`` the answer is given at once and the
        removal ships later, in a batch (dirleases.py: what that promises); a failure to
        land is raised by the next ``fsyncdir(parent)``."""
        check_name(name)
        if self.holds.pending:
            await self.holds.send_pending()
        if await self.dirleases.remove("fs.unlink", parent, name, is_open=self._is_open):
            self._removed(parent, name)
            return
        try:
            await self.meta.mutate("fs.unlink", parent=parent, name=name)
        except BaseException:
            self._forget(parent, name)
            raise
        self._removed(parent, name)

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """Atomically rename; ``flags`` as ``renameat2``: ``RENAME_NOREPLACE`` (``Exists`` if
        the target exists), ``RENAME_EXCHANGE`` (swap two existing names)."""
        check_name(name)
        check_name(new_name)
        if self.holds.pending:
            await self.holds.send_pending()
        # The new name may be where another client looks first (files.py, CLOSE BEHIND);
        # an exchange moves the other name too.
        await self._land_first(
            self._behind_in(parent, name) + self._behind_in(new_parent, new_name)
        )
        # From the request on, another client may reach what the names name by the new
        # ones, without a recall of these leases: they go first (and what was made under
        # them with them, ``made_here``).
        self.dirleases.forget(parent)
        self.dirleases.forget(new_parent)
        try:
            await self.meta.mutate(
                "fs.rename",
                parent=parent,
                name=name,
                new_parent=new_parent,
                new_name=new_name,
                flags=flags,
            )
        finally:
            # Not ``_removed``: the old name stays when both names were links to one inode
            # (POSIX: nothing happens), and the new one names an inode the cache may not
            # know.
            self._forget(parent, name)
            self._forget(new_parent, new_name)

    async def _adding(self, op: str, parent: int, name: bytes, **fields: Any) -> dict[str, Any]:
        """``op``, which adds ``name`` to ``parent``. When its outcome is unknown (no answer
        in time, or cancelled: it may still land), what this client knew of the directory
        is forgotten, its lease's listing included."""
        leased = self.dirleases.lease_of(parent)
        try:
            header = await self.meta.mutate(op, parent=parent, name=name, **fields)
        except BaseException as e:
            if not isinstance(e, DfsError) or isinstance(e, RETRYABLE):
                self._forget(parent, name)
            raise
        if self.dirleases.lease_of(parent) is not leased:
            # Granted while this was on its way: the grant's listing and nlink may
            # count this change already, or not; the lease goes (asked for again).
            self.dirleases.forget(parent)
        return header

    async def fsyncdir(self, ino: int) -> None:
        """Wait until this client's removals have landed; raise the first that failed in
        directory ``ino`` since the last ``fsyncdir`` of it (as a writeback error);
        files whose close left their bytes for later land first (files.py, CLOSE
        BEHIND)."""
        await self._land_first(self._behind_in(ino))
        await self.dirleases.fsyncdir(ino)

    def _owner(self, uid: int | None, gid: int | None) -> dict[str, int]:
        return {
            "uid": self._uid if uid is None else uid,
            "gid": self._gid if gid is None else gid,
        }

    def _created(
        self, parent: int, name: bytes, header: dict[str, Any], *, new_inode: bool = True
    ) -> Attr:
        """Cache what a mutation that added ``name`` to ``parent`` answered: the entry, the
        inode's attributes, the parent's (its mtime, and nlink for a directory, changed:
        the answer's ``parent_attr``, else forgotten). A ``new_inode`` has no xattrs."""
        wire = header.get("parent_attr")
        parent_attr = Attr.from_wire(wire) if wire is not None else None
        return self._added(parent, name, self._attr(header), parent_attr, new_inode=new_inode)

    def _added(
        self, parent: int, name: bytes, attr: Attr, parent_attr: Attr | None, *, new_inode: bool
    ) -> Attr:
        """``name`` in ``parent`` is ``attr`` now (added here, synchronously or under a
        lease), and the parent's attributes ``parent_attr`` (None: unknown)."""
        self.cache.put_entry(parent, name, attr)
        self.dirleases.note_added(parent, name, attr, parent_attr)
        known = self.dirleases.dir_attr(parent)  # a leased one's: ours
        if known is not None:
            self.cache.put_attr(known)
        elif parent_attr is not None and not self.dirleases.made_here(parent):
            self.cache.put_attr(parent_attr)
        else:
            # Unknown; or a directory made here, whose cached attributes are kept past
            # the TTL: an answer that a batch of it may have overtaken must not be.
            self.cache.drop_attr(parent)
        if new_inode:
            self.cache.put_no_xattrs(attr.ino)
        return self._local(attr)

    def _removed(self, parent: int, name: bytes) -> None:
        """``name`` was removed from ``parent`` (the mutation succeeded, or is queued)."""
        self.dirleases.note_removed(parent, name)
        ino = self.cache.drop_entry(parent, name)
        self.cache.put_absent(parent, name)
        if ino is not None:
            self.cache.drop_attr(ino)  # nlink and ctime changed
        self.cache.drop_attr(parent)

    def _forget(self, parent: int, name: bytes) -> None:
        """A mutation of ``name`` in ``parent`` ended without a known outcome."""
        self.dirleases.forget(parent)
        ino = self.cache.drop_entry(parent, name)
        if ino is not None:
            self.cache.drop_attr(ino)
        self.cache.drop_attr(parent)


def _with_attr(entry: DirEntry, attr: Attr) -> DirEntry:
    return entry if attr is entry.attr else dataclasses.replace(entry, attr=attr)


__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INO",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "FsClient",
    "check_name",
]
