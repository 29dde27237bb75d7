"""The file commands of the CLI (``dfs ls/put/get/cat/rm/mkdir/mv/stat``) over ``FsClient``.

What it owns: turning paths and local files into ``FsClient`` calls, and progress for long
copies. What it must not do: know the protocol (``FsClient`` does) or import click (the
commands in ``main.py`` do; progress is reported through a callback).

Paths in the cluster are absolute, as bytes (``os.fsencode`` of what the user typed), so a
name that is not valid UTF-8 round-trips.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from dfs.client import Attr, FsClient
from dfs.credentials import Credential
from dfs.wire.errors import Exists, Invalid, IsDir, NotDir, NotFound

COPY_PIECE_BYTES = 4 << 20  # one write call of put / one read of get: the client's buffer size
Progress = Callable[[int], None]  # called with the bytes done since the last call


@asynccontextmanager
async def client(meta: list[str], secret: Credential, timeout_s: float) -> AsyncIterator[FsClient]:
    async with FsClient.open_cluster(meta, secret, timeout_s=timeout_s) as fs:
        yield fs


def remote(path: str) -> bytes:
    """A cluster path as bytes; relative paths are taken from the root."""
    b = os.fsencode(path)
    return b if b.startswith(b"/") else b"/" + b


async def _lookup_maybe(fs: FsClient, path: bytes) -> Attr | None:
    try:
        return await fs.resolve(path)
    except NotFound:
        return None


async def put(
    fs: FsClient,
    local: Path,
    path: bytes,
    progress: Progress | None = None,
    mode: int | None = None,
) -> int:
    """Copy local file ``local`` to ``path`` (into it, when ``path`` is a directory).
    Returns the bytes copied; the data is durable (fsynced on every replica) on return."""
    target = await _lookup_maybe(fs, path)
    if target is not None and target.is_dir:
        path = path.rstrip(b"/") + b"/" + os.fsencode(local.name)
    parent, name = await fs.resolve_parent(path)
    with open(local, "rb") as src:
        st = os.fstat(src.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise IsDir(f"{local} is a directory")
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode
        _, f = await fs.create_and_open(
            parent.ino, name, stat.S_IFREG | perm, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        )
        done = 0
        buf = bytearray(COPY_PIECE_BYTES)
        view = memoryview(buf)
        try:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                await f.write(done, bytes(view[:n]))
                done += n
                if progress:
                    progress(n)
            await f.fsync()
        except BaseException:
            # A failed copy must not leave a file of the right size with holes where the
            # upload failed (a size check would pass): remove it, then report the error.
            with contextlib.suppress(Exception):
                await f.close()
            with contextlib.suppress(Exception):
                await fs.unlink(parent.ino, name)
            raise
        await f.close()
    return done


async def get(fs: FsClient, path: bytes, out: BinaryIO, progress: Progress | None = None) -> int:
    """Copy cluster file ``path`` into the open binary file ``out``; returns bytes copied."""
    attr = await fs.resolve(path)
    if attr.is_dir:
        raise IsDir("is a directory", path=path)
    f = await fs.open(attr.ino, os.O_RDONLY)
    done = 0
    try:
        while True:
            data = await f.read(done, COPY_PIECE_BYTES)
            if not data:
                break
            out.write(data)
            done += len(data)
            if progress:
                progress(len(data))
    finally:
        await f.close()
    return done


async def size_of(fs: FsClient, path: bytes) -> int:
    return (await fs.resolve(path)).size


async def mkdir(fs: FsClient, path: bytes, parents: bool, mode: int = 0o755) -> None:
    if not parents:
        parent, name = await fs.resolve_parent(path)
        await fs.mkdir(parent.ino, name, mode)
        return
    cur = b""
    for part in [p for p in path.split(b"/") if p]:
        cur += b"/" + part
        try:
            attr = await fs.resolve(cur)
        except NotFound:
            parent, name = await fs.resolve_parent(cur)
            with contextlib.suppress(Exists):  # made by someone else meanwhile: fine for -p
                await fs.mkdir(parent.ino, name, mode)
            continue
        if not attr.is_dir:
            raise NotDir("not a directory", path=cur)


async def rm(fs: FsClient, path: bytes, recursive: bool) -> int:
    """Remove ``path`` (a directory only with ``recursive``); returns entries removed."""
    parent, name = await fs.resolve_parent(path)
    attr = await fs.lookup(parent.ino, name)
    if not attr.is_dir:
        await fs.unlink(parent.ino, name)
        return 1
    if not recursive:
        raise IsDir("is a directory (use -r)", path=path)
    return await _rm_tree(fs, parent.ino, name, attr.ino)


async def _rm_tree(fs: FsClient, parent: int, name: bytes, ino: int) -> int:
    removed = 0
    while True:
        entries = [e async for e in fs.readdir(ino)]
        if not entries:
            break
        for e in entries:
            if e.attr.is_dir:
                removed += await _rm_tree(fs, ino, e.name, e.attr.ino)
            else:
                await fs.unlink(ino, e.name)
                removed += 1
    await fs.rmdir(parent, name)
    return removed + 1


async def mv(fs: FsClient, src: bytes, dst: bytes) -> None:
    """``mv``: into ``dst`` when it is a directory, else onto ``dst`` (replacing it)."""
    sparent, sname = await fs.resolve_parent(src)
    target = await _lookup_maybe(fs, dst)
    if target is not None and target.is_dir:
        dparent, dname = target, sname
    else:
        dparent, dname = await fs.resolve_parent(dst)
    await fs.rename(sparent.ino, sname, dparent.ino, dname)


def _mode_text(mode: int) -> str:
    return stat.filemode(mode)


def _time_text(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


_ESCAPES = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def shown_name(name: bytes) -> str:
    """A file name as ``ls -b`` prints it: a control character, a backslash and a byte
    that is not UTF-8 become escapes (``\\n``, ``\\033``, ``\\377``), so that no name can move
    the cursor, recolour the terminal or pass for two lines."""
    text = name.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            out.append(f"\\{code - 0xDC00:03o}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\{code:03o}")
        else:
            out.append(ch)
    return "".join(out)


async def ls(fs: FsClient, path: bytes, long: bool) -> list[str]:
    attr = await fs.resolve(path)
    entries: list[tuple[bytes, Attr]]
    if not attr.is_dir:
        entries = [(os.path.basename(path), attr)]
    else:
        entries = sorted([(e.name, e.attr) async for e in fs.readdir(attr.ino)], key=lambda x: x[0])
    lines = []
    for name, a in entries:
        shown = shown_name(name)
        if not long:
            lines.append(shown)
            continue
        if a.is_symlink:
            shown += " -> " + shown_name(await fs.readlink(a.ino))
        lines.append(
            f"{_mode_text(a.mode)} {a.nlink:3d} {a.uid:5d} {a.gid:5d} {a.size:12d} "
            f"{_time_text(a.mtime_ns)} {shown}"
        )
    return lines


async def stat_text(fs: FsClient, path: bytes) -> str:
    a = await fs.resolve(path, follow_symlinks=False)
    kind = {
        stat.S_IFREG: "regular file",
        stat.S_IFDIR: "directory",
        stat.S_IFLNK: "symbolic link",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
    }.get(stat.S_IFMT(a.mode), "unknown")
    lines = [
        f"  File: {shown_name(path)}",
        f"  Size: {a.size}  Blocks: {a.blocks}  {kind}",
        f" Inode: {a.ino}  Links: {a.nlink}  Goal: {a.goal}",
        f"Access: ({stat.S_IMODE(a.mode):04o}/{_mode_text(a.mode)})  Uid: {a.uid}  Gid: {a.gid}",
        f"Access: {_ns_text(a.atime_ns)}",
        f"Modify: {_ns_text(a.mtime_ns)}",
        f"Change: {_ns_text(a.ctime_ns)}",
    ]
    return "\n".join(lines)


def _ns_text(ns: int) -> str:
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s)) + f".{frac:09d}"


def stdout_binary() -> BinaryIO:
    return sys.stdout.buffer


__all__ = ["Invalid", "get", "ls", "mkdir", "mv", "put", "rm", "stat_text"]
