#!/usr/bin/env python3
"""A pass-through FUSE file system over a backing directory: the benchmark's baseline.

    passthrough.py SOURCE MOUNTPOINT [-o OPT,OPT] [--attr-timeout S] [--readahead-kb N]
                   [--pid-file F]

It serves SOURCE's files at MOUNTPOINT on the same binding as the dfs mount (pyfuse3,
libfuse3's low-level inode API, on trio) and with the options ``scripts/bench fs`` gives it
(the dfs mount's own), so that what separates the two in a benchmark is the file system,
not FUSE: no network, no replication, no cache of its own. Every handler does its ``os``
call at once on the trio loop and awaits nothing, so requests are served one at a time,
each as fast as the local disk answers it.

What it owns: the map from kernel inodes to backing paths, and nothing else. An inode is the
backing file's own ``st_ino`` (the root is ``pyfuse3.ROOT_INODE``); each inode keeps the
set of paths it was seen under (hard links) and the kernel's lookup count, and is forgotten
when the kernel forgets it. Open files are backing file descriptors (``fh`` is the fd).
Errors are the backing system calls' own errnos.

It runs in the foreground until unmounted (``fusermount3 -u``) or sent SIGTERM/SIGINT;
once the kernel's INIT is answered it raises the mount's readahead (the kernel resets it
when the connection starts, so not before, as the dfs mount does) and then writes
``PID\\nMOUNTPOINT\\n`` to ``--pid-file``: that is how a caller knows the mount is live.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pyfuse3
import trio

log = logging.getLogger("passthrough")


def _fuse_error(e: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):
    """The handlers: each maps its inode to a backing path and makes the system call."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: str, attr_timeout_s: float) -> None:
        super().__init__()
        self.attr_timeout_s = attr_timeout_s
        # Called by libfuse as it answers the kernel's INIT (set by the serving task).
        self.on_init: Callable[[], None] | None = None
        self._paths: dict[int, set[str]] = {pyfuse3.ROOT_INODE: {source}}
        self._inos: dict[str, int] = {source: pyfuse3.ROOT_INODE}  # the reverse of _paths
        self._lookups: dict[int, int] = {pyfuse3.ROOT_INODE: 1}
        self._source_ino = os.lstat(source).st_ino

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()

    # ------------------------------------------------------------------ inode table

    def _path(self, ino: int) -> str:
        paths = self._paths.get(ino)
        if not paths:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return next(iter(paths))

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self._source_ino else st.st_ino

    def _remember(self, path: str, st: os.stat_result) -> int:
        """Count one lookup of ``path`` (the kernel now holds a reference to its inode)."""
        ino = self._ino(st)
        self._paths.setdefault(ino, set()).add(path)
        self._inos[path] = ino
        self._lookups[ino] = self._lookups.get(ino, 0) + 1
        return ino

    def _forget_path(self, path: str) -> None:
        ino = self._inos.pop(path, None)
        if ino is not None and ino in self._paths:
            self._paths[ino].discard(path)

    def _entry(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"):
            setattr(e, name, getattr(st, name))
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self.attr_timeout_s
        e.attr_timeout = self.attr_timeout_s
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _new_entry(self, path: str, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """A file just created at ``path``: owned by the caller, counted as looked up."""
        try:
            if ctx.uid != os.geteuid() or ctx.gid != os.getegid():
                os.lchown(path, ctx.uid, ctx.gid)
            st = os.lstat(path)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._entry(self._remember(path, st), st)

    # ------------------------------------------------------------------ names

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            st = os.lstat(path)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._entry(self._remember(path, st), st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            left = self._lookups.get(ino, 0) - count
            if left > 0 or ino == pyfuse3.ROOT_INODE:
                self._lookups[ino] = max(left, 1)
            else:
                self._lookups.pop(ino, None)
                for path in self._paths.pop(ino, set()):
                    if self._inos.get(path) == ino:
                        del self._inos[path]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(self._path(inode))
        except OSError as e:
            raise _fuse_error(e) from None
        return self._entry(inode, st)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        target: int | str = fh if fh is not None else path
        try:
            if fields.update_size:
                os.truncate(target, attr.st_size)
            if fields.update_mode:
                if fh is not None:
                    os.chmod(fh, stat.S_IMODE(attr.st_mode))
                elif not stat.S_ISLNK(os.lstat(path).st_mode):
                    os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                if fh is not None:
                    os.fchown(fh, uid, gid)
                else:
                    os.lchown(path, uid, gid)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                if fh is not None:
                    os.utime(fh, ns=(atime, mtime))
                else:
                    os.utime(path, ns=(atime, mtime), follow_symlinks=False)
            st = os.fstat(fh) if fh is not None else os.lstat(path)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._entry(inode, st)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as e:
            raise _fuse_error(e) from None

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mknod(path, mode=mode & ~ctx.umask, device=rdev)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._new_entry(path, ctx)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode & ~ctx.umask)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._new_entry(path, ctx)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            os.symlink(os.fsdecode(target), path)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._new_entry(path, ctx)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(new_parent_inode, new_name)
        try:
            os.link(self._path(inode), path, follow_symlinks=False)
            st = os.lstat(path)
        except OSError as e:
            raise _fuse_error(e) from None
        return self._entry(self._remember(path, st), st)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        try:
            os.unlink(path)
        except OSError as e:
            raise _fuse_error(e) from None
        self._forget_path(path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        try:
            os.rmdir(path)
        except OSError as e:
            raise _fuse_error(e) from None
        self._forget_path(path)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags:  # RENAME_EXCHANGE / RENAME_NOREPLACE have no os call
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        try:
            os.rename(old, new)
        except OSError as e:
            raise _fuse_error(e) from None
        # Every remembered path at or below ``old`` now lives below ``new`` (a scan of
        # the table only when a directory moved: nothing else has paths below it).
        self._forget_path(new)
        moved = [old]
        if os.path.isdir(new):
            prefix = old + os.sep
            moved += [p for p in self._inos if p.startswith(prefix)]
        for path in moved:
            ino = self._inos.pop(path, None)
            if ino is not None:
                self._paths[ino].discard(path)
                self._paths[ino].add(new + path[len(old) :])
                self._inos[new + path[len(old) :]] = ino

    # ------------------------------------------------------------------ files

    # O_DIRECT is the caller's request to bypass the mount's page cache, which the kernel
    # does; the backing file is read through its own page cache (as a chunkserver's is), and
    # its alignment rules would refuse the unaligned buffers of os.pread.
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        try:
            fd = os.open(self._path(inode), flags & ~(os.O_CREAT | os.O_DIRECT))
        except OSError as e:
            raise _fuse_error(e) from None
        return pyfuse3.FileInfo(fh=fd)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, (flags | os.O_CREAT) & ~os.O_DIRECT, mode & ~ctx.umask)
        except OSError as e:
            raise _fuse_error(e) from None
        return pyfuse3.FileInfo(fh=fd), self._new_entry(path, ctx)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise _fuse_error(e) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            return os.pwrite(fh, buf, off)
        except OSError as e:
            raise _fuse_error(e) from None

    async def flush(self, fh: int) -> None:
        pass  # writes went to the backing file as they came

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            (os.fdatasync if datasync else os.fsync)(fh)
        except OSError as e:
            raise _fuse_error(e) from None

    async def release(self, fh: int) -> None:
        try:
            os.close(fh)
        except OSError as e:
            raise _fuse_error(e) from None

    # ------------------------------------------------------------------ directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets are positions in the sorted listing (stable while the directory holds
        # still, which is all a benchmark needs).
        path = self._path(fh)
        try:
            names = sorted(os.listdir(path))
            for i, name in enumerate(names[start_id:], start_id + 1):
                child = os.path.join(path, name)
                st = os.lstat(child)
                if not pyfuse3.readdir_reply(
                    token, os.fsencode(name), self._entry(self._ino(st), st), i
                ):
                    return
                self._remember(child, st)
        except OSError as e:
            raise _fuse_error(e) from None

    async def releasedir(self, fh: int) -> None:
        pass

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        fd = os.open(self._path(fh), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self._path(pyfuse3.ROOT_INODE))
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(out, name, getattr(st, name))
        for name in ("f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    # ------------------------------------------------------------------ xattrs

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return os.getxattr(self._path(inode), name, follow_symlinks=False)
        except OSError as e:
            raise _fuse_error(e) from None

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        try:
            names = os.listxattr(self._path(inode), follow_symlinks=False)
        except OSError as e:
            raise _fuse_error(e) from None
        return [os.fsencode(n) for n in names]

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        try:
            os.setxattr(self._path(inode), name, value, follow_symlinks=False)
        except OSError as e:
            raise _fuse_error(e) from None

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            os.removexattr(self._path(inode), name, follow_symlinks=False)
        except OSError as e:
            raise _fuse_error(e) from None


# ---------------------------------------------------------------------- process


def _set_readahead(mountpoint: str, kb: int) -> None:
    """The mount's ``read_ahead_kb`` in /sys/class/bdi (its device from mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        devices = [line.split()[2] for line in f if line.split()[4] == mountpoint]
    if devices:
        try:
            Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb").write_text(f"{kb}\n")
        except OSError as e:
            log.info("readahead left as it is: %s", e)


async def _serve(args: argparse.Namespace, ops: Passthrough) -> None:
    live = trio.Event()
    ops.on_init = live.set

    async def when_live() -> None:
        await live.wait()
        if args.readahead_kb > 0:
            _set_readahead(args.mountpoint, args.readahead_kb)
        if args.pid_file is not None:
            tmp = args.pid_file.with_suffix(".tmp")
            tmp.write_text(f"{os.getpid()}\n{args.mountpoint}\n")
            os.replace(tmp, args.pid_file)

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(when_live)
        nursery.start_soon(on_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="passthrough.py", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="the backing directory")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", default="default_permissions",
                        help="comma-separated mount options (default: default_permissions)")  # fmt: skip
    parser.add_argument("--attr-timeout", type=float, default=1.0,
                        help="seconds the kernel keeps entries and attributes (default 1)")  # fmt: skip
    parser.add_argument("--readahead-kb", type=int, default=1024,
                        help="the mount's read_ahead_kb, set once live (0: the kernel's)")  # fmt: skip
    parser.add_argument("--pid-file", type=Path, default=None,
                        help="written once the mount is live: PID, then the mountpoint")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="passthrough: %(message)s")
    args.mountpoint = os.path.realpath(args.mountpoint)
    source = os.path.realpath(args.source)
    ops = Passthrough(source, args.attr_timeout)
    options = {o for o in args.options.split(",") if o}
    options |= {"fsname=passthrough", "subtype=passthrough"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(_serve, args, ops)
    finally:
        pyfuse3.close(unmount=True)
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
