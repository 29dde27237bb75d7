"""``DfsOperations``: the pyfuse3 request handlers, each a thin call into ``FsClient``.

What it owns: the FUSE side of the mount — file and directory handles (``fh``), turning
``Attr`` into ``EntryAttributes``, readdir offsets, the kernel-facing POSIX details listed
below, and turning every error into an errno (``errno_map``, the only place errno values are
chosen). What it must not do: decide file-system semantics (the metaserver does), cache
anything the client caches already, or block the trio loop (every call into the cluster is
awaited).

Inodes: a FUSE inode number is the dfs inode number, and the root is 1 on both sides
(``pyfuse3.ROOT_INODE == ROOT_INO``), so no table maps one to the other and every name of
a hard-linked inode is the same kernel inode. Lookup counts (``forget``) need no
bookkeeping: inodes live in the cluster, not in this process.

Rules kept here, as the kernel expects of a FUSE file system:
1. Every handler converts every exception: a ``DfsError`` by the map, anything else is a
   bug, logged once and answered EIO (``_errors``). Only ``FUSEError`` may leave a handler,
   or pyfuse3's main loop would stop; trio's ``Cancelled`` (a ``BaseException``) passes.
2. Timeouts: entries and attributes are given to the kernel with the client's attribute
   TTL, so the kernel trusts them exactly as long as ``FsClient`` would; absent names too
   (negative entries, ``lookup``).
3. Close-to-open: ``open`` revalidates with the metaserver (``FsClient.open``) and drops
   the kernel's cached attributes for the inode, so a file closed on another mount is read
   whole, at its new size; ``flush`` (every ``close(2)``) commits what this handle wrote.
   The kernel keeps the file's pages (``keep_cache``) only when its size, mtime and ctime
   are those this mount last opened it with and this mount has not written or truncated
   it since (``pages.py``); otherwise they are dropped at the open.
4. READDIRPLUS: ``readdir`` fills every entry's attributes from ``fs.readdir`` pages (one
   RPC per page of up to ``READDIR_PAGE`` entries, whatever the kernel's buffer size), with
   the page's cookies as offsets, so a listing costs no getattr per entry.
5. New inodes take the caller's uid and gid (``ctx``); the metaserver applies setgid
   directories. libfuse3 enables ``handle_killpriv``, which leaves clearing setuid/setgid
   to us: on chown, on truncate and on the first write through a handle by a non-root
   caller, as Linux does for a local file system.
6. Open files outlive their names, within this mount (NFS's "silly rename"): unlinking
   the last name of a file this mount has open renames it to a hidden name
   (``HIDDEN_PREFIX``) instead, and renaming over one first gives it a hidden hard link,
   so the visible rename stays atomic; the hidden name is removed when the last handle is
   released (or at unmount). Hidden names are left out of listings and the link count;
   a directory holding one cannot be removed (ENOTEMPTY), as on NFS. (The kernel sends
   RELEASE after close(2) returns: an rmdir that meets such a name waits up to
   ``HIDDEN_RELEASE_WAIT_S`` for a release in flight to remove it.) The cluster itself
   frees an inode at its last unlink (a hold for open files there is a later change),
   so an open file unlinked through another mount still becomes unreadable.
7. POSIX ACL xattrs are refused (EOPNOTSUPP): the permissions are the mode bits.
8. New files opened write-only (``create`` with O_WRONLY: what ``cp``, ``tar``, ``dd`` and
   editors' saves do) get ``FOPEN_DIRECT_IO``: their writes skip the kernel's page cache,
   and with it ``file_remove_privs``, which asks for the ``security.capability`` xattr
   before every write(2) of a cached file (a FUSE file system cannot have ``SB_NOSEC``):
   ``tar x`` made six such requests a file. Clearing setuid/setgid is ours then (rule 5,
   and again after a chmod gives them back). Other opens of the inode stay cached: the
   kernel drops the cached pages a direct write overlaps (the fix for xfstests'
   generic/209, in the kernels this project runs on and backported to 6.6's stable
   series; ``test_fuse_direct_writes.py`` checks it on the running kernel), so a reader
   or a shared mapping in this mount sees each write at once.
9. Locks: no lock handlers are defined, so libfuse does not claim POSIX or BSD lock support
   and the kernel keeps ``flock``/``fcntl`` locks itself, for this mount: they exclude each
   other between processes using this mount, not across mounts (sqlite and git need no more
   on one machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import anyio
import pyfuse3

from dfs.client import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Attr,
    DirEntry,
    File,
    FsClient,
)
from dfs.client.stats import OpStats
from dfs.fuse.errno_map import BAD_HANDLE, QUIET_ERRNOS, errno_for
from dfs.fuse.pages import PageStamps
from dfs.wire.errors import DfsError, Invalid, NotEmpty, NotFound, Unsupported
from dfs.wire.limits import NAME_BYTES_MAX

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# st_blksize, the preferred I/O size: one FUSE request (libfuse3 negotiates 1 MiB writes),
# so cp and friends copy in 1 MiB calls, one request each.
BLKSIZE_BYTES = 1 << 20
# statvfs block unit: f_frsize = f_bsize, as on ext4, so tools that multiply by either
# get the same answer.
STATFS_BLOCK_BYTES = 4096
# Inodes have no fixed table in dfs: report this many in total so that df -i shows a sane
# use fraction and nothing believes the file system is out of inodes.
STATFS_FILES_MAX = 1 << 32
# Entries asked for per fs.readdir page (the protocol allows up to 4096).
READDIR_PAGE = 1024
# Names given to open files whose last visible name was removed (rule 6).
HIDDEN_PREFIX = b".dfs-open-deleted-"
# close(2) returns before the kernel sends RELEASE (it is asynchronous for FUSE), so an
# rmdir right after the last close of an unlinked file can find its hidden name still
# there: rmdir waits this long for such a release in flight before it says ENOTEMPTY.
HIDDEN_RELEASE_WAIT_S = 1.0

# The identity of FUSE and dfs inode numbers rests on this.
assert pyfuse3.ROOT_INODE == ROOT_INO

# Setuid and setgid (with group execute): the bits Linux clears on write, truncate, chown.
_KILLPRIV_SGID = stat.S_ISGID | stat.S_IXGRP


def _privs_to_kill(mode: int) -> int:
    """The bits of ``mode`` that a write, truncate or chown must clear (Linux's
    ``should_remove_suid``: setuid always, setgid only with group execute)."""
    if not stat.S_ISREG(mode):
        return 0
    kill = mode & stat.S_ISUID
    if mode & _KILLPRIV_SGID == _KILLPRIV_SGID:
        kill |= stat.S_ISGID
    return kill


Handler = Callable[P, Coroutine[Any, Any, T]]


def _errors(op: str) -> Callable[[Handler[P, T]], Handler[P, T]]:
    """Rule 1 of the module docstring: only FUSEError leaves the handler."""

    def wrap(fn: Handler[P, T]) -> Handler[P, T]:
        @functools.wraps(fn)
        async def handler(*args: P.args, **kwargs: P.kwargs) -> T:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception as e:
                error = _single(e)
                code = errno_for(error, op)
                if code in QUIET_ERRNOS or not isinstance(error, DfsError):
                    raise pyfuse3.FUSEError(code) from None
                # EIO and the like: the mount's log is where the reason can be found.
                log.info("%s: %s", op, error)
                raise pyfuse3.FUSEError(code) from None
            finally:
                ops = args[0]
                assert isinstance(ops, DfsOperations)
                ops.stats.record(op, time.perf_counter() - start)

        return handler

    return wrap


def _single(e: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, as task groups wrap
    it; the group itself otherwise."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


# POSIX ACLs travel as these xattrs. The mount does not enforce ACLs (the kernel checks
# only mode bits here), so it refuses them: stored silently, they would make cp -a and tar
# believe permissions were set by ACL and skip the chmod (libacl falls back to chmod on
# EOPNOTSUPP).
_ACL_XATTRS = frozenset({b"system.posix_acl_access", b"system.posix_acl_default"})


def _check_not_acl(name: bytes) -> None:
    if name in _ACL_XATTRS:
        raise Unsupported("POSIX ACLs are not supported", name=name)


@dataclasses.dataclass
class _FileHandle:
    file: File
    # Setuid/setgid to clear on the next write (a non-root caller opened a file with them,
    # or, through a direct handle, a chmod gave them since: rule 8).
    kill_privs_on_write: bool
    uid: int = 0  # the opener's
    direct: bool = False  # opened with FOPEN_DIRECT_IO (rule 8)


@dataclasses.dataclass
class _DirHandle:
    ino: int
    # The last page fetched (entries after ``page_start``), and whether more follow it:
    # the kernel's buffer takes a few dozen entries per call, the page up to 1,024.
    page: list[DirEntry] = dataclasses.field(default_factory=list)
    page_start: int = -1
    more: bool = False


class DfsOperations(pyfuse3.Operations):
    """The request handlers of a dfs mount over one started ``FsClient``."""

    # No NFS export: the kernel resolves "." and ".." itself.
    supports_dot_lookup = False
    # Write-back caching in the kernel would delay writes past close(): close-to-open
    # needs every write to reach the client before flush returns.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FsClient, *, on_init: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.timeout_s = fs.options.attr_ttl_s
        self._on_init = on_init
        self._fh = itertools.count(1)
        self._files: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        # Last known attributes of inodes with open handles, and how many: fstat(2) of an
        # open file whose last name was removed answers from here.
        self._open_attrs: dict[int, tuple[Attr, int]] = {}
        # Hidden names (directory, name) keeping open, unlinked inodes alive (rule 6).
        self._hidden: dict[int, list[tuple[int, bytes]]] = {}
        self._hidden_dropped = anyio.Event()  # set (and renewed) as hidden names go
        self.stats = OpStats()  # requests from the kernel, by type: count and time
        # The version of each inode's pages in the kernel's page cache (rule 3).
        self.pages = PageStamps(fs.options.cache_entries_max)

    # ------------------------------------------------------------------ helpers

    def init(self) -> None:
        # Called by libfuse while it answers the kernel's INIT (must not raise).
        if self._on_init is not None:
            try:
                self._on_init()
            except Exception:
                log.exception("init callback failed")

    def entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = self.timeout_s
        e.attr_timeout = self.timeout_s
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLKSIZE_BYTES
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _hold(self, attr: Attr) -> None:
        _, count = self._open_attrs.get(attr.ino, (attr, 0))
        self._open_attrs[attr.ino] = (attr, count + 1)

    def _unhold(self, ino: int) -> None:
        held = self._open_attrs.get(ino)
        if held is None:
            return
        attr, count = held
        if count <= 1:
            del self._open_attrs[ino]
        else:
            self._open_attrs[ino] = (attr, count - 1)

    def _file(self, fh: int) -> File:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(BAD_HANDLE)
        return handle.file

    def _new_file(
        self, f: File, attr: Attr, ctx: pyfuse3.RequestContext, *, direct: bool = False
    ) -> int:
        fh = next(self._fh)
        kill = f.writable and ctx.uid != 0 and _privs_to_kill(attr.mode) != 0
        self._files[fh] = _FileHandle(f, kill, ctx.uid, direct)
        self._hold(attr)
        return fh

    @staticmethod
    def _invalidate_attrs(ino: int) -> None:
        """Make the kernel ask for ``ino``'s attributes again (close-to-open: the size it
        cached may predate another mount's close). Never blocks here: writeback caching is
        off, and attribute-only invalidation touches no page."""
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as e:  # the kernel may not know the inode (yet): nothing cached
            log.debug("invalidate_inode(%d): %s", ino, e)

    # ------------------------------------------------------------------ attributes

    @_errors("lookup")
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            return self.entry(await self.fs.lookup(parent_inode, name))
        except NotFound:
            if self.timeout_s <= 0:
                raise
        # A negative entry (st_ino 0), which the kernel keeps for the attribute TTL, as the
        # client does: a repeated lookup of an absent name (cp's stat, then its create)
        # costs no request (an O_EXCL create still asks, and the client answers from its
        # cache). This mount's own create replaces it at once; a name created on another
        # mount shows up here within the TTL, as its other changes do.
        negative = pyfuse3.EntryAttributes()
        negative.st_ino = 0
        negative.entry_timeout = self.timeout_s
        negative.attr_timeout = self.timeout_s
        return negative

    @_errors("getattr")
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            attr = await self.fs.getattr(inode)
        except NotFound:
            held = self._open_attrs.get(inode)
            if held is None:
                raise
            # Open, and its last name is gone: fstat still answers, with no links.
            attr = dataclasses.replace(held[0], nlink=0)
        else:
            if inode in self._open_attrs:
                self._open_attrs[inode] = (attr, self._open_attrs[inode][1])
        hidden = self._hidden.get(inode)
        if hidden:
            attr = dataclasses.replace(attr, nlink=max(0, attr.nlink - len(hidden)))
        return self.entry(attr)

    @_errors("setattr")
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes: dict[str, Any] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_size:
            changes["size"] = attr.st_size
        # pyfuse3 turns UTIME_NOW into this host's clock, with nanoseconds; UTIME_OMIT
        # arrives as the field not being set.
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if "size" in changes:
            self.pages.changed(inode)
        if not changes:  # ctime alone: every change sets it; nothing to do
            return self.entry(await self.fs.getattr(inode))
        kills_privs = "uid" in changes or "gid" in changes or ("size" in changes and ctx.uid != 0)
        if kills_privs and "mode" not in changes:
            current = await self.fs.getattr(inode)
            kill = _privs_to_kill(current.mode)
            if kill:
                changes["mode"] = stat.S_IMODE(current.mode) & ~kill
        if (
            "mode" in changes
            and inode in self._open_attrs
            and _privs_to_kill(stat.S_IFREG | changes["mode"])
        ):
            # The kernel would clear them at the next write of a non-root writer; a direct
            # handle's write does not pass there (rule 8).
            for handle in self._files.values():
                if handle.direct and handle.uid != 0 and handle.file.ino == inode:
                    handle.kill_privs_on_write = True
        return self.entry(await self.fs.setattr(inode, **changes))

    @_errors("readlink")
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    @_errors("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = await self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = STATFS_BLOCK_BYTES
        out.f_frsize = STATFS_BLOCK_BYTES
        out.f_blocks = st.bytes_total // STATFS_BLOCK_BYTES
        out.f_bfree = st.bytes_free // STATFS_BLOCK_BYTES
        out.f_bavail = out.f_bfree  # no blocks are reserved for root
        free_inodes = max(0, STATFS_FILES_MAX - st.inodes_used)
        out.f_files = st.inodes_used + free_inodes
        out.f_ffree = free_inodes
        out.f_favail = free_inodes
        out.f_namemax = NAME_BYTES_MAX
        return out

    @_errors("access")
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Not called with default_permissions (the kernel checks); kept for a mount
        # without it: the owner, group or other bits, and root may do anything but
        # execute a file that no one may execute.
        attr = await self.fs.getattr(inode)
        if mode == os.F_OK:
            return True
        if ctx.uid == 0:
            return not (mode & os.X_OK) or attr.is_dir or bool(attr.mode & 0o111)
        if ctx.uid == attr.uid:
            bits = (attr.mode >> 6) & 7
        elif ctx.gid == attr.gid or attr.gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (attr.mode >> 3) & 7
        else:
            bits = attr.mode & 7
        return mode & bits == mode

    @_errors("forget")
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Inodes live in the cluster; the kernel forgetting them frees nothing here.
        return None

    # ------------------------------------------------------------------ directories

    @_errors("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = next(self._fh)
        self._dirs[fh] = _DirHandle(inode)
        return fh

    @_errors("readdir")
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs.get(fh)
        if d is None:
            raise pyfuse3.FUSEError(BAD_HANDLE)
        entries = self._from_page(d, start_id)
        if entries is None:
            # The first call (0, also after rewinddir: always fresh) or a seek elsewhere.
            await self._fetch_page(d, start_id)
            entries = d.page
        while True:
            for e in entries:
                if e.name.startswith(HIDDEN_PREFIX):
                    continue
                if not pyfuse3.readdir_reply(token, e.name, self.entry(e.attr), e.cookie):
                    return
            if not d.more or not entries:
                return
            await self._fetch_page(d, entries[-1].cookie)
            entries = d.page

    @staticmethod
    def _from_page(d: _DirHandle, start_id: int) -> list[DirEntry] | None:
        if start_id == 0 or d.page_start < 0:
            return None
        if start_id == d.page_start:
            return d.page
        for i, e in enumerate(d.page):
            if e.cookie == start_id:
                rest = d.page[i + 1 :]
                if rest or not d.more:
                    return rest
                return None
        return None

    async def _fetch_page(self, d: _DirHandle, cookie: int) -> None:
        d.page, d.more = await self.fs.readdir_page(d.ino, cookie, READDIR_PAGE)
        d.page_start = cookie

    @_errors("releasedir")
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_errors("fsyncdir")
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        # Removals answered under a directory lease are shipped in batches: fsyncdir waits
        # for them to land (committed through Raft, durable on a majority of metaservers)
        # and reports one that failed in this directory, as a local file system reports a
        # writeback error. Every other metadata change was committed before it returned.
        d = self._dirs.get(fh)
        if d is None:
            raise pyfuse3.FUSEError(BAD_HANDLE)
        await self.fs.fsyncdir(d.ino)

    @_errors("mkdir")
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.entry(await self.fs.mkdir(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid))

    @_errors("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        hidden_somewhere = bool(self._hidden)
        try:
            await self.fs.rmdir(parent_inode, name)
        except NotEmpty:
            if not hidden_somewhere or not await self._hidden_released(parent_inode, name):
                raise
            await self.fs.rmdir(parent_inode, name)  # lands the hidden names' unlinks first

    async def _hidden_released(self, parent_inode: int, name: bytes) -> bool:
        """Wait up to HIDDEN_RELEASE_WAIT_S for releases the kernel has in flight to drop
        this mount's hidden names in the directory ``name`` (or a release that ran
        during the rmdir, which found its name still there). True when none is left."""
        ino = (await self.fs.lookup(parent_inode, name)).ino

        def holding() -> bool:
            return any(p == ino for names in self._hidden.values() for p, _ in names)

        with anyio.move_on_after(HIDDEN_RELEASE_WAIT_S):
            while holding():
                await self._hidden_dropped.wait()
        return not holding()

    # ------------------------------------------------------------------ names

    @_errors("mknod")
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.entry(
            await self.fs.mknod(parent_inode, name, mode, rdev, uid=ctx.uid, gid=ctx.gid)
        )

    @_errors("symlink")
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.entry(
            await self.fs.symlink(parent_inode, name, target, uid=ctx.uid, gid=ctx.gid)
        )

    @_errors("link")
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        # The answer carries the new nlink; the kernel shows it through every name, as all
        # names are the same kernel inode.
        return self.entry(await self.fs.link(inode, new_parent_inode, new_name))

    @_errors("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        victim = await self._open_victim(parent_inode, name)
        if victim is not None:
            hidden = self._hidden_name(victim)
            await self.fs.rename(parent_inode, name, parent_inode, hidden, RENAME_NOREPLACE)
            self._hidden.setdefault(victim, []).append((parent_inode, hidden))
            return
        await self.fs.unlink(parent_inode, name)

    async def _open_victim(self, parent: int, name: bytes) -> int | None:
        """The inode ``name`` names if removing the name would free a file open here."""
        if not self._open_attrs:
            return None
        try:
            attr = await self.fs.lookup(parent, name)
        except NotFound:
            return None
        links = attr.nlink - len(self._hidden.get(attr.ino, ()))
        if attr.ino in self._open_attrs and not attr.is_dir and links <= 1:
            return attr.ino
        return None

    @staticmethod
    def _hidden_name(ino: int) -> bytes:
        return HIDDEN_PREFIX + f"{ino}-{secrets.token_hex(4)}".encode()

    async def _drop_hidden(self, ino: int) -> None:
        # Each name stays listed until it is gone: an rmdir waiting for them to go must
        # not retry while an unlink is still on its way. (One that fails stays listed,
        # for the unmount to try again.)
        names = self._hidden.get(ino, [])
        try:
            while names:
                parent, hidden = names[0]
                with contextlib.suppress(NotFound):  # removed by someone else meanwhile
                    await self.fs.unlink(parent, hidden)
                names.pop(0)
        finally:
            if not names and self._hidden.get(ino) is names:
                del self._hidden[ino]
            self._hidden_dropped.set()
            self._hidden_dropped = anyio.Event()

    @_errors("rename")
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        dfs_flags = 0
        if flags & pyfuse3.RENAME_NOREPLACE:
            dfs_flags |= RENAME_NOREPLACE
        if flags & pyfuse3.RENAME_EXCHANGE:
            dfs_flags |= RENAME_EXCHANGE
        if flags & ~(pyfuse3.RENAME_NOREPLACE | pyfuse3.RENAME_EXCHANGE):
            raise Invalid("unknown rename flags", flags=flags)  # RENAME_WHITEOUT: overlayfs
        victim = None
        if dfs_flags == 0:
            victim = await self._open_victim(parent_inode_new, name_new)
        if victim is None:
            await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, dfs_flags)
            return
        # The target is open here: a hidden hard link keeps it, then the rename replaces
        # the visible name atomically.
        hidden = self._hidden_name(victim)
        await self.fs.link(victim, parent_inode_new, hidden)
        self._hidden.setdefault(victim, []).append((parent_inode_new, hidden))
        try:
            await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, 0)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if self._hidden.get(victim):
                    self._hidden[victim].remove((parent_inode_new, hidden))
                    if not self._hidden[victim]:
                        del self._hidden[victim]
                    try:
                        await self.fs.unlink(parent_inode_new, hidden)
                    except Exception as e:
                        log.warning("hidden link of ino %d left behind: %s", victim, e)
            raise

    # ------------------------------------------------------------------ xattrs

    @_errors("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        _check_not_acl(name)
        return await self.fs.getxattr(inode, name)

    @_errors("setxattr")
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        # XATTR_CREATE/XATTR_REPLACE were checked by pyfuse3 with a getxattr first.
        _check_not_acl(name)
        await self.fs.setxattr(inode, name, value)

    @_errors("listxattr")
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.fs.listxattr(inode)

    @_errors("removexattr")
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, name)

    # ------------------------------------------------------------------ files

    @_errors("open")
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        # libfuse3 passes O_TRUNC here (atomic_o_trunc), and FsClient.open truncates.
        f = await self.fs.open(inode, flags)
        try:
            attr = await self.fs.getattr(inode)
        except BaseException:
            await f.close()
            raise
        fh = self._new_file(f, attr, ctx)
        self._invalidate_attrs(inode)
        keep = self.pages.open(attr)
        if f.writable and flags & os.O_TRUNC:
            self.pages.changed(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_errors("create")
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        attr, f = await self.fs.create_and_open(
            parent_inode, name, mode, flags, uid=ctx.uid, gid=ctx.gid
        )
        direct = flags & os.O_ACCMODE == os.O_WRONLY  # rule 8
        fh = self._new_file(f, attr, ctx, direct=direct)
        self.pages.changed(attr.ino)  # an O_TRUNC create: the pages (if any) are gone
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=direct), self.entry(attr)

    @_errors("read")
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # pyfuse3 takes any contiguous buffer: a view of a prefetched block goes to the
        # kernel without a copy.
        return await self._file(fh).read_buffer(off, size)  # type: ignore[return-value]

    @_errors("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = await self._writing(fh)
        return await handle.file.write(off, buf)

    @_errors("fallocate")
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        # Only with the patched pyfuse3 (patches/): the stock one never calls it. A change
        # of the file's bytes or size, as a write (ext4's fallocate clears setuid too).
        handle = await self._writing(fh)
        await handle.file.fallocate(mode, offset, length)

    async def _writing(self, fh: int) -> _FileHandle:
        """The handle ``fh``, about to change its file: the kernel's cached pages of it
        are not kept at the next open, and setuid/setgid are cleared if due (rule 5)."""
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(BAD_HANDLE)
        self.pages.changed(handle.file.ino)
        if handle.kill_privs_on_write:
            handle.kill_privs_on_write = False
            current = await self.fs.getattr(handle.file.ino)
            kill = _privs_to_kill(current.mode)
            if kill:
                await self.fs.setattr(handle.file.ino, mode=stat.S_IMODE(current.mode) & ~kill)
        return handle

    @_errors("flush")
    async def flush(self, fh: int) -> None:
        # close(2) of a descriptor: commit what was written, so the next open anywhere
        # sees it (close-to-open), and report a failed write here, as NFS does. A small
        # file created under its directory's lease leaves that to the release, which
        # follows at once (files.py, CLOSE BEHIND).
        f = self._file(fh)
        if f.writable:
            await f.flush(behind=True)

    @_errors("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._file(fh).fsync(datasync)

    @_errors("release")
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        ino = handle.file.ino
        self._unhold(ino)
        try:
            await handle.file.close()
        finally:
            if ino not in self._open_attrs and ino in self._hidden:
                with anyio.CancelScope(shield=True):
                    await self._drop_hidden(ino)

    async def close_all(self) -> None:
        """Close every handle still open (the mount is going away): commit what they
        wrote. Errors are logged; each close is bounded by the client's timeout.
        The handles go first, and then the client's retries of what closes left (within
        its timeout): a file whose close(2) left its bytes for later (files.py, CLOSE
        BEHIND), its release cut off by the unmount or still retrying, queues its commit
        under a lease, and the queue lands after them."""
        handles, self._files = self._files, {}
        self._dirs.clear()
        self._open_attrs.clear()
        for fh, handle in handles.items():
            try:
                await handle.file.close()
            except Exception as e:
                log.warning("fh %d (ino %d): lost on unmount: %s", fh, handle.file.ino, e)
        await self.fs.finish_all(self.fs.options.timeout_s)
        try:
            await self.fs.dirleases.aclose()  # queued removals land before the unmount
        except Exception as e:
            log.warning("queued removals lost on unmount: %s", e)
        for ino in list(self._hidden):
            try:
                await self._drop_hidden(ino)
            except Exception as e:
                log.warning("hidden name of ino %d left behind: %s", ino, e)


__all__ = ["BLKSIZE_BYTES", "DfsOperations"]
