"""An in-memory fake cluster speaking docs/PROTOCOL.md over real ``dfs.rpc`` listeners.

What it is for: testing the client (``dfs.client``) without the real metaserver and
chunkserver, and with faults the real ones cannot be asked for on cue. What it is: one
asyncio ``FakeCluster`` (metaservers sharing one in-memory namespace, chunkservers holding
chunk replicas in memory) behind ``dfs.rpc.serve`` on loopback, authenticated with the
cluster secret, so the client runs its real wire, handshake and retry code. What it must
not do: import ``metaserver`` or ``chunkserver`` (it is a model of them, written from the
protocol document alone), or grow into a second implementation: it is small on purpose.

The model, faithful where the client can tell:
- Namespace: inodes (attributes, directory entries with stable readdir cookies, symlink
  targets, xattrs, chunk ids per index), the chunk table (id, version, length, replica
  ids), and sessions: a mutation with (``client``, ``seq``) is applied once; the same pair
  again gets the first answer (result or error). Every mutation request that arrives, on
  any metaserver and retries included, is recorded as (op, client, seq) in ``requests``.
- Chunks: ``fs.write_handle`` allocates (version 1, on ``goal`` live chunkservers, taken
  round-robin) or bumps the version (dropping dead replicas, and those the writer names
  in ``drop``, from the chain, but never the last); tokens are
  signed with ``dfs.wire.token`` and checked by the chunkservers. A chunkserver seeing a
  newer version truncates its replica to the handle's ``length`` first (``Stale`` if it
  holds less); an older one is ``Stale``; ``chunk.sync`` and ``chunk.read`` need the
  replica's own version. An empty ``chunk.write`` is allowed (it moves the version).
  ``expect_length`` (on ``chunk.write`` and ``chunk.sync``) is checked as a chunkserver
  does: a replica shorter than it answers ``Stale`` to a sync, a sync write that leaves it
  short, and a write past its end. ``chunk.write_many`` applies each write as a
  ``chunk.write`` along the chain and lists the errors as a chunkserver does (unlike a
  chunkserver, a write that fails on one replica goes no further down the chain).
- Truncation (``fs.setattr size``) drops the chunks past the size, shortens the table's
  length of the chunk the size falls inside and bumps its version; the leader's push of
  that version is simulated: each live replica holding at least the new length cuts
  itself to it and takes the version (others stay behind: stale, never served).
- ``fs.commit`` entries are ``[index, length, chunk_id, version]``: ``Stale`` (the whole
  commit) when the file's chunk at ``index`` is not ``chunk_id`` or its version is not
  ``version`` (a truncate or another writer may have cut the uncommitted bytes). Its
  optional ``mode``, ``uid``, ``gid``, ``atime_ns`` are set; without ``mtime_ns`` the mtime
  stays. Every commit is recorded in ``commits``.
- ``fs.punch`` drops the chunks whose bytes inside the file all lie in the range (their
  replicas are left alone: garbage collection is not modelled). ``blocks`` is made from
  the chunks' lengths, not from the size and the punched spans as the namespace makes it,
  so ``fs.allocate`` only answers the attributes (and is recorded in ``allocates``).
- ``fs.create`` with ``first_chunk`` answers a ``handle`` for chunk 0 (allocated as
  ``fs.write_handle`` does); mutations that add a name answer ``parent_attr``.
- Chain forwarding is simulated: the first chunkserver applies the write to each later
  one's store directly (failing as that one would).
- Time is the real clock; tokens expire after ``token_ttl_ms``.

Faults (change them on the loop's thread, e.g. through ``ClusterThread.call``):
- ``cluster.set_leader(i)``; followers answer ``NotLeader`` with the leader's address as
  hint, or none with ``cluster.hints = False``.
- ``meta.hang = True``: that metaserver accepts requests and never answers.
- ``cluster.faults.append(MetaFault(op, kind, count))``: the next ``count`` requests of
  ``op`` (at the leader) fail: ``"unavailable"`` (not applied), ``"timeout"`` (applied,
  then answered ``Timeout``), ``"hang"`` (applied, never answered): the lost-reply cases
  that make a client retry with the same seq. ``then`` runs when it fires (a leader change
  right after a commit whose answer was lost).
- Chunkserver: ``corrupt`` (chunk ids whose reads fail ``Corrupt``), ``alive = False``
  (not placed on, not located, requests fail ``Unavailable``), ``hang = True``,
  ``fail_writes`` (errors the next ``chunk.write`` calls it receives answer with); a
  replica's ``data`` can be cut to model one that lost bytes in a crash. ``stale`` counts
  the ``Stale`` answers it gave.

``ClusterThread`` runs a ``FakeCluster`` on an asyncio loop in a thread of its own, so a
client under trio (or under asyncio, in another loop) can talk to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dfs import rpc
from dfs.wire.errors import (
    Corrupt,
    DfsError,
    Exists,
    Invalid,
    IsDir,
    NameTooLong,
    NoAttr,
    NoSpace,
    NotDir,
    NotEmpty,
    NotFound,
    NotLeader,
    PermissionDenied,
    ProtocolError,
    Stale,
    Timeout,
    Unavailable,
    Unsupported,
    errors_to_wire,
)
from dfs.wire.limits import CHUNK_SIZE_BYTES_DEFAULT, ROOT_INO
from dfs.wire.messages import field as wire_field
from dfs.wire.messages import uint_field
from dfs.wire.ops import CHUNKSERVER_OPS, METASERVER_OPS, admit, lookup
from dfs.wire.ops_meta import COMMANDS
from dfs.wire.token import READ, WRITE, Checker, make_token, token_key

T = TypeVar("T")

HOST = "127.0.0.1"
CHUNK_SIZE_DEFAULT = CHUNK_SIZE_BYTES_DEFAULT
TOKEN_TTL_MS_DEFAULT = 600_000
GOAL_DEFAULT = 3

# The mutations (requests with a session), as the protocol's definitions name them.
MUTATIONS = frozenset({*COMMANDS, "fs.write_handle"})


def _now_ns() -> int:
    return time.time_ns()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _forever() -> None:
    await asyncio.Event().wait()


# ---------------------------------------------------------------------------- namespace


@dataclass
class FakeInode:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    size: int = 0
    rdev: int = 0
    goal: int = GOAL_DEFAULT
    parent: int = 0  # directories: the parent directory
    children: dict[bytes, int] = field(default_factory=dict)
    cookies: dict[bytes, int] = field(default_factory=dict)
    next_cookie: int = 1
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    chunks: dict[int, int] = field(default_factory=dict)  # index -> chunk id

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass
class FakeChunk:
    id: int
    version: int
    length: int
    replicas: list[int]  # chunkserver ids


@dataclass
class MetaFault:
    op: str
    kind: str  # "unavailable" | "timeout" | "hang"
    count: int = 1
    # Called (on the loop) each time the fault fires, e.g. to move the leadership away.
    then: Callable[[FakeCluster], None] | None = None


@dataclass
class Commit:
    ino: int
    size: int
    mtime_ns: int | None
    chunks: list[list[int]]
    attrs: dict[str, int] = field(default_factory=dict)  # mode, uid, gid, atime_ns


def _check_name(name: Any) -> bytes:
    if not isinstance(name, bytes):
        raise Invalid("name must be bytes")
    if len(name) > 255:
        raise NameTooLong("name too long")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise Invalid("invalid name")
    return name


class FakeNamespace:
    """The state the metaservers share (the part a Raft group would replicate)."""

    def __init__(self, cluster: FakeCluster, chunk_size: int) -> None:
        self.cluster = cluster
        self.chunk_size = chunk_size
        self.inodes: dict[int, FakeInode] = {}
        self.chunks: dict[int, FakeChunk] = {}
        self._next_ino = itertools.count(ROOT_INO + 1)
        self._next_chunk = itertools.count(1)
        self._placement = itertools.count()
        self.sessions: dict[int, tuple[int, dict[str, Any] | DfsError]] = {}
        self.commits: list[Commit] = []
        self.allocates: list[tuple[int, int, int]] = []  # fs.allocate: (ino, offset, length)
        self.dropped: list[int] = []  # chunkserver ids writers reported with ``drop``
        self.keepalives: list[dict[str, Any]] = []  # the fs.keepalive headers, in order
        self.keepalive_ms = 5000
        now = _now_ns()
        self.inodes[ROOT_INO] = FakeInode(
            ROOT_INO, stat.S_IFDIR | 0o755, 0, 0, 2, now, now, now, parent=ROOT_INO
        )

    # -------------------------------------------------------------- helpers

    def inode(self, ino: Any) -> FakeInode:
        node = self.inodes.get(ino) if type(ino) is int else None
        if node is None:
            raise NotFound("no such inode", ino=ino if type(ino) is int else -1)
        return node

    def directory(self, ino: Any) -> FakeInode:
        node = self.inode(ino)
        if not node.is_dir:
            raise NotDir("not a directory", ino=node.ino)
        return node

    def attr(self, node: FakeInode) -> dict[str, Any]:
        used = sum(self.chunks[c].length for c in node.chunks.values() if c in self.chunks)
        return {
            "ino": node.ino,
            "mode": node.mode,
            "nlink": node.nlink,
            "uid": node.uid,
            "gid": node.gid,
            "size": node.size,
            "atime_ns": node.atime_ns,
            "mtime_ns": node.mtime_ns,
            "ctime_ns": node.ctime_ns,
            "rdev": node.rdev,
            "goal": node.goal,
            "blocks": (used + 511) // 512,
            "has_xattrs": bool(node.xattrs),
        }

    def _new(self, parent: FakeInode, name: bytes, mode: int, h: dict[str, Any]) -> FakeInode:
        if name in parent.children:
            raise Exists("name exists")
        now = _now_ns()
        node = FakeInode(
            next(self._next_ino),
            mode,
            uint_field(h, "uid", 0),
            uint_field(h, "gid", 0),
            1,
            now,
            now,
            now,
            goal=parent.goal,
        )
        self.inodes[node.ino] = node
        self._add_entry(parent, name, node)
        return node

    def _add_entry(self, parent: FakeInode, name: bytes, node: FakeInode) -> None:
        parent.children[name] = node.ino
        parent.cookies[name] = parent.next_cookie
        parent.next_cookie += 1
        parent.mtime_ns = parent.ctime_ns = _now_ns()
        if node.is_dir:
            node.parent = parent.ino
            parent.nlink += 1

    def _remove_entry(self, parent: FakeInode, name: bytes) -> FakeInode:
        node = self.inodes[parent.children.pop(name)]
        del parent.cookies[name]
        parent.mtime_ns = parent.ctime_ns = _now_ns()
        if node.is_dir:
            parent.nlink -= 1
        return node

    def _drop_link(self, node: FakeInode) -> None:
        node.nlink -= 1 if not node.is_dir else node.nlink
        node.ctime_ns = _now_ns()
        if node.nlink <= 0:
            del self.inodes[node.ino]
            for chunk_id in node.chunks.values():
                self.chunks.pop(chunk_id, None)

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.inodes[ino].parent

    def _parent(self, parent: FakeInode) -> dict[str, Any]:
        """What a mutation that added a name answers about the directory."""
        return {"parent_attr": self.attr(parent)}

    def _replicas(self, chunk: FakeChunk) -> list[dict[str, Any]]:
        return [
            {"id": cs.cs_id, "address": cs.address}
            for cs_id in chunk.replicas
            if (cs := self.cluster.chunkserver(cs_id)) is not None and cs.alive
        ]

    # -------------------------------------------------------------- reads

    def read(self, op: str, h: dict[str, Any]) -> dict[str, Any]:
        if op == "fs.lookup":
            parent = self.directory(h.get("parent"))
            ino = parent.children.get(_check_name(h.get("name")))
            if ino is None:
                raise NotFound("no such name")
            return {"attr": self.attr(self.inodes[ino])}
        if op in ("fs.getattr", "fs.open"):  # holds are not modelled: opens just getattr
            return {"attr": self.attr(self.inode(h.get("ino")))}
        if op == "fs.release":
            return {}
        if op == "fs.keepalive":
            self.keepalives.append(h)
            return {"keepalive_ms": self.keepalive_ms}
        if op == "fs.readdir":
            node = self.directory(h.get("ino"))
            cookie = uint_field(h, "cookie", 0)
            limit = uint_field(h, "limit", 1024)
            if not 1 <= limit <= 4096:
                raise Invalid("limit out of range")
            listed = sorted((c, n) for n, c in node.cookies.items() if c > cookie)
            page = listed[:limit]
            entries = [[n, self.attr(self.inodes[node.children[n]]), c] for c, n in page]
            return {"entries": entries, "more": len(listed) > limit}
        if op == "fs.readlink":
            node = self.inode(h.get("ino"))
            if not stat.S_ISLNK(node.mode):
                raise Invalid("not a symlink")
            return {"target": node.target}
        if op == "fs.getxattr":
            value = self.inode(h.get("ino")).xattrs.get(wire_field(h, "name", bytes))
            if value is None:
                raise NoAttr("no such attribute")
            return {"value": value}
        if op == "fs.listxattr":
            return {"names": sorted(self.inode(h.get("ino")).xattrs)}
        if op == "fs.statfs":
            used = sum(c.length * len(c.replicas) for c in self.chunks.values())
            total = 1 << 40
            return {
                "bytes_total": total,
                "bytes_used": used,
                "bytes_free": total - used,
                "inodes_used": len(self.inodes),
                "chunk_size": self.chunk_size,
                "chunkservers_alive": sum(cs.alive for cs in self.cluster.chunkservers),
            }
        if op == "fs.locate":
            node = self.inode(h.get("ino"))
            index = uint_field(h, "index")
            count = uint_field(h, "count")
            if not 1 <= count <= 1024:
                raise Invalid("count out of range")
            expiry_ms = _now_ms() + self.cluster.token_ttl_ms
            found = []
            for i in range(index, index + count):
                chunk_id = node.chunks.get(i)
                if chunk_id is None:
                    continue
                chunk = self.chunks[chunk_id]
                found.append(
                    {
                        "index": i,
                        "chunk_id": chunk.id,
                        "version": chunk.version,
                        "length": chunk.length,
                        "replicas": self._replicas(chunk),
                        "token": make_token(
                            self.cluster.token_key, chunk.id, chunk.version, READ, expiry_ms
                        ),
                        "expiry_ms": expiry_ms,
                    }
                )
            return {"chunks": found}
        raise Unsupported(f"unknown op {op}")

    # -------------------------------------------------------------- mutations

    def mutate(self, op: str, h: dict[str, Any]) -> dict[str, Any]:
        """Apply once per (client, seq): a repeated pair gets the first answer."""
        client = uint_field(h, "client", 0)
        seq = uint_field(h, "seq", 0)
        if client:
            last = self.sessions.get(client)
            if last is not None and last[0] == seq:
                answer = last[1]
                if isinstance(answer, DfsError):
                    raise answer
                return answer
            if last is not None and seq < last[0]:
                raise Invalid("sequence number went backwards", client=client, seq=seq)
        try:
            result = self._apply(op, h)
        except DfsError as e:
            if client:
                self.sessions[client] = (seq, e)
            raise
        if client:
            self.sessions[client] = (seq, result)
        return result

    def _apply(self, op: str, h: dict[str, Any]) -> dict[str, Any]:
        if op in ("fs.mkdir", "fs.create", "fs.mknod", "fs.symlink"):
            parent = self.directory(h.get("parent"))
            name = _check_name(h.get("name"))
            mode = uint_field(h, "mode", 0)
            if op == "fs.mkdir":
                node = self._new(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), h)
                node.nlink = 2
            elif op == "fs.create":
                existing = parent.children.get(name)
                if existing is not None:
                    if wire_field(h, "exclusive", bool, True):
                        raise Exists("name exists")
                    node = self.inodes[existing]
                    if node.is_dir:
                        raise IsDir("is a directory")
                    return {"attr": self.attr(node), "created": False}
                node = self._new(parent, name, stat.S_IFREG | stat.S_IMODE(mode), h)
                result = {"attr": self.attr(node), "created": True, **self._parent(parent)}
                if h.get("first_chunk") is True and any(
                    cs.alive for cs in self.cluster.chunkservers
                ):
                    result["handle"] = self._write_handle({"ino": node.ino, "index": 0})
                return result
            elif op == "fs.mknod":
                if stat.S_IFMT(mode) not in (
                    stat.S_IFREG,
                    stat.S_IFIFO,
                    stat.S_IFSOCK,
                    stat.S_IFCHR,
                    stat.S_IFBLK,
                ):
                    raise Invalid("bad mknod type")
                node = self._new(parent, name, mode, h)
                node.rdev = uint_field(h, "rdev", 0)
            else:
                target = wire_field(h, "target", bytes)
                node = self._new(parent, name, stat.S_IFLNK | 0o777, h)
                node.target = target
                node.size = len(target)
            return {"attr": self.attr(node), **self._parent(parent)}
        if op == "fs.link":
            node = self.inode(h.get("ino"))
            if node.is_dir:
                raise PermissionDenied("cannot link a directory")
            parent = self.directory(h.get("parent"))
            name = _check_name(h.get("name"))
            if name in parent.children:
                raise Exists("name exists")
            self._add_entry(parent, name, node)
            node.nlink += 1
            node.ctime_ns = _now_ns()
            return {"attr": self.attr(node), **self._parent(parent)}
        if op in ("fs.unlink", "fs.rmdir"):
            parent = self.directory(h.get("parent"))
            name = _check_name(h.get("name"))
            ino = parent.children.get(name)
            if ino is None:
                raise NotFound("no such name")
            node = self.inodes[ino]
            if op == "fs.unlink" and node.is_dir:
                raise IsDir("is a directory")
            if op == "fs.rmdir":
                if not node.is_dir:
                    raise NotDir("not a directory")
                if node.children:
                    raise NotEmpty("directory not empty")
            self._remove_entry(parent, name)
            self._drop_link(node)
            return {}
        if op == "fs.rename":
            return self._rename(h)
        if op == "fs.setattr":
            return self._setattr(h)
        if op == "fs.setxattr":
            node = self.inode(h.get("ino"))
            name = wire_field(h, "name", bytes)
            flags = uint_field(h, "flags", 0)
            if flags & 1 and name in node.xattrs:
                raise Exists("attribute exists")
            if flags & 2 and name not in node.xattrs:
                raise NoAttr("no such attribute")
            node.xattrs[name] = wire_field(h, "value", bytes)
            node.ctime_ns = _now_ns()
            return {}
        if op == "fs.removexattr":
            node = self.inode(h.get("ino"))
            if node.xattrs.pop(wire_field(h, "name", bytes), None) is None:
                raise NoAttr("no such attribute")
            node.ctime_ns = _now_ns()
            return {}
        if op == "fs.set_goal":
            node = self.inode(h.get("ino"))
            goal = uint_field(h, "goal")
            if not 1 <= goal <= 16:
                raise Invalid("goal out of range")
            node.goal = goal
            return {"attr": self.attr(node)}
        if op == "fs.write_handle":
            return self._write_handle(h)
        if op == "fs.commit":
            node = self.inode(h.get("ino"))
            size = uint_field(h, "size")
            mtime_ns = wire_field(h, "mtime_ns", int) if "mtime_ns" in h else None
            chunks = wire_field(h, "chunks", list)
            attrs: dict[str, int] = {
                k: wire_field(h, k, int) for k in ("mode", "uid", "gid", "atime_ns") if k in h
            }
            for entry in chunks:
                if (
                    not isinstance(entry, list)
                    or len(entry) != 4
                    or any(type(x) is not int for x in entry)
                ):
                    raise ProtocolError("chunks must hold [index, length, chunk_id, version]")
            for index, _, chunk_id, version in chunks:
                if node.chunks.get(index) != chunk_id:
                    raise Stale("the chunk was truncated away: data lost", index=index)
                if self.chunks[chunk_id].version != version:
                    raise Stale("the chunk changed version since this write", index=index)
            for _, length, chunk_id, _ in chunks:
                chunk = self.chunks[chunk_id]
                chunk.length = max(chunk.length, length)
            node.size = max(node.size, size)
            if mtime_ns is not None:
                node.mtime_ns = mtime_ns
            if "mode" in attrs:
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attrs["mode"])
            node.uid = attrs.get("uid", node.uid)
            node.gid = attrs.get("gid", node.gid)
            node.atime_ns = attrs.get("atime_ns", node.atime_ns)
            node.ctime_ns = _now_ns()
            self.commits.append(Commit(node.ino, size, mtime_ns, [list(c) for c in chunks], attrs))
            return {"attr": self.attr(node)}
        if op == "fs.punch":
            return self._punch(h)
        if op == "fs.allocate":
            node = self.inode(h.get("ino"))
            self.allocates.append((node.ino, uint_field(h, "offset"), uint_field(h, "length")))
            return {"attr": self.attr(node), "filled_bytes": 0}
        raise Unsupported(f"unknown op {op}")

    def _punch(self, h: dict[str, Any]) -> dict[str, Any]:
        """Drop the chunks whose bytes inside the file all lie in the range (PROTOCOL.md)."""
        node = self.inode(h.get("ino"))
        if node.is_dir:
            raise IsDir("is a directory")
        offset, length = uint_field(h, "offset"), uint_field(h, "length")
        if length < 1:
            raise Invalid("empty range")
        end, cs = offset + length, self.chunk_size
        first = -(-offset // cs)
        stop = max(first, end // cs if end < node.size else -(-node.size // cs))
        dropped = [i for i in node.chunks if first <= i < stop]
        for index in dropped:
            self.chunks.pop(node.chunks.pop(index), None)
        node.mtime_ns = node.ctime_ns = _now_ns()
        return {"attr": self.attr(node), "first": first, "stop": stop, "dropped": len(dropped)}

    def _setattr(self, h: dict[str, Any]) -> dict[str, Any]:
        node = self.inode(h.get("ino"))
        now = _now_ns()
        if "mode" in h:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(uint_field(h, "mode"))
        if "uid" in h:
            node.uid = uint_field(h, "uid")
        if "gid" in h:
            node.gid = uint_field(h, "gid")
        if "size" in h:
            if node.is_dir:
                raise IsDir("is a directory")
            size = uint_field(h, "size")
            cs = self.chunk_size
            for index, chunk_id in list(node.chunks.items()):
                if index * cs >= size:
                    del node.chunks[index]
                    self.chunks.pop(chunk_id, None)
                elif size < (index + 1) * cs:
                    # The chunk the size falls inside: cut, with a new version pushed to
                    # its replicas (writers of the old one are refused from now on).
                    chunk = self.chunks[chunk_id]
                    chunk.length = min(chunk.length, size - index * cs)
                    chunk.version += 1
                    self._push_cut(chunk)
            node.size = size
            node.mtime_ns = now
        if "atime_ns" in h:
            node.atime_ns = wire_field(h, "atime_ns", int)
        if h.get("atime_now") is True:
            node.atime_ns = now
        if "mtime_ns" in h:
            node.mtime_ns = wire_field(h, "mtime_ns", int)
        if h.get("mtime_now") is True:
            node.mtime_ns = now
        node.ctime_ns = now
        return {"attr": self.attr(node)}

    def _push_cut(self, chunk: FakeChunk) -> None:
        """The leader's empty ``chunk.write`` of a truncated chunk's new version."""
        for cs_id in chunk.replicas:
            cs = self.cluster.chunkserver(cs_id)
            reachable = cs is not None and cs.alive and not cs.hang
            replica = cs.replicas.get(chunk.id) if cs is not None and reachable else None
            if replica is None or replica.version >= chunk.version:
                continue
            if len(replica.data) < chunk.length:
                continue  # it missed data: stays at its version, stale
            del replica.data[chunk.length :]
            replica.version = chunk.version
            replica.synced_bytes = min(replica.synced_bytes, len(replica.data))

    def _rename(self, h: dict[str, Any]) -> dict[str, Any]:
        parent = self.directory(h.get("parent"))
        name = _check_name(h.get("name"))
        new_parent = self.directory(h.get("new_parent"))
        new_name = _check_name(h.get("new_name"))
        flags = uint_field(h, "flags", 0)
        ino = parent.children.get(name)
        if ino is None:
            raise NotFound("no such name")
        node = self.inodes[ino]
        target_ino = new_parent.children.get(new_name)
        if node.is_dir and self._is_ancestor(ino, new_parent.ino):
            raise Invalid("cannot move a directory into itself")
        if flags & 2:  # EXCHANGE
            if target_ino is None:
                raise NotFound("no such target")
            target = self.inodes[target_ino]
            if target.is_dir and self._is_ancestor(target_ino, parent.ino):
                raise Invalid("cannot move a directory into itself")
            self._remove_entry(parent, name)
            self._remove_entry(new_parent, new_name)
            self._add_entry(parent, name, target)
            self._add_entry(new_parent, new_name, node)
            return {}
        if target_ino is not None:
            if flags & 1:  # NOREPLACE
                raise Exists("target exists")
            if target_ino == ino:
                return {}
            target = self.inodes[target_ino]
            if node.is_dir and not target.is_dir:
                raise NotDir("target is not a directory")
            if not node.is_dir and target.is_dir:
                raise IsDir("target is a directory")
            if target.children:
                raise NotEmpty("target directory not empty")
            self._remove_entry(new_parent, new_name)
            self._drop_link(target)
        self._remove_entry(parent, name)
        self._add_entry(new_parent, new_name, node)
        node.ctime_ns = _now_ns()
        return {}

    def _write_handle(self, h: dict[str, Any]) -> dict[str, Any]:
        node = self.inode(h.get("ino"))
        if not stat.S_ISREG(node.mode):
            raise IsDir("not a regular file") if node.is_dir else Invalid("not a regular file")
        index = uint_field(h, "index")
        cluster = self.cluster
        chunk_id = node.chunks.get(index)
        if chunk_id is None:
            alive = [cs for cs in cluster.chunkservers if cs.alive]
            if not alive:
                raise NoSpace("no live chunkserver")
            start = next(self._placement)
            count = min(node.goal, len(alive))
            chosen = [alive[(start + i) % len(alive)].cs_id for i in range(count)]
            chunk = FakeChunk(next(self._next_chunk), 1, 0, chosen)
            self.chunks[chunk.id] = chunk
            node.chunks[index] = chunk.id
        else:
            chunk = self.chunks[chunk_id]
            live = [i for i in chunk.replicas if (cs := cluster.chunkserver(i)) and cs.alive]
            if not live:
                raise Unavailable("no live replica of the chunk")
            if all((cs := cluster.chunkserver(i)) is None or cs.hang for i in live):
                # The leader's push of the new version would reach none: no handle.
                raise Unavailable("no replica of the chunk took its new version")
            drop = wire_field(h, "drop", list, [])
            kept = [i for i in live if i not in drop]
            self.dropped.extend(i for i in live if i in drop)
            chunk.replicas = kept or live[:1]
            chunk.version += 1
            self._push_cut(chunk)  # the leader pushes every new version (PROTOCOL.md)
        expiry_ms = _now_ms() + cluster.token_ttl_ms
        return {
            "chunk_id": chunk.id,
            "version": chunk.version,
            "length": chunk.length,
            "chain": self._replicas(chunk),
            "token": make_token(cluster.token_key, chunk.id, chunk.version, WRITE, expiry_ms),
            "expiry_ms": expiry_ms,
        }


# ---------------------------------------------------------------------------- servers


class FakeMetaServer:
    """One metaserver: answers from the shared namespace if it leads, else NotLeader."""

    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.server: rpc.RpcServer | None = None
        self.address = ""
        self.hang = False

    async def handle(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes]:
        cluster = self.cluster
        op = header.get("op")
        # Checked at the edge against the protocol's definitions, as a metaserver does.
        admit(lookup(METASERVER_OPS, op), conn.peer.role if conn.peer else None, header)
        assert isinstance(op, str)
        if op in MUTATIONS:
            cluster.requests.append((op, header.get("client", 0), header.get("seq", 0)))
        else:
            cluster.reads.append(op)
        if self.hang:
            await _forever()
        if cluster.leader is not self:
            hint = cluster.leader.address if cluster.hints and cluster.leader else None
            raise NotLeader(hint)
        fault = next((f for f in cluster.faults if f.op == op and f.count > 0), None)
        if fault is not None:
            fault.count -= 1
            if fault.then is not None:
                fault.then(cluster)
            if fault.kind == "unavailable":
                raise Unavailable("injected fault")
        namespace = cluster.namespace
        result = namespace.mutate(op, header) if op in MUTATIONS else namespace.read(op, header)
        if fault is not None and fault.kind == "timeout":
            raise Timeout("injected fault: applied, answer lost")
        if fault is not None and fault.kind == "hang":
            await _forever()
        return result, b""


@dataclass
class FakeReplica:
    version: int
    data: bytearray = field(default_factory=bytearray)
    synced_bytes: int = 0  # length of the replica at its last sync


class FakeChunkServer:
    """One chunkserver: replicas in memory, tokens checked, the chain simulated."""

    def __init__(self, cluster: FakeCluster, cs_id: int) -> None:
        self.cluster = cluster
        self.cs_id = cs_id
        self.server: rpc.RpcServer | None = None
        self.address = ""
        self.replicas: dict[int, FakeReplica] = {}
        self.alive = True
        self.hang = False
        # Alive (it heartbeats) but its writes fail, naming it: a dead disk. Only a
        # writer's report (fs.write_handle ``drop``) takes it out of a chain.
        self.broken = False
        self.corrupt: set[int] = set()
        self.fail_writes: list[DfsError] = []  # the next chunk.write calls answer these
        self.reads = 0
        self.write_sizes: list[int] = []
        self.syncs = 0
        self.stale = 0  # Stale answers given

    def _check(self, h: dict[str, Any], mode: bytes) -> tuple[int, int]:
        chunk_id = uint_field(h, "chunk_id")
        version = uint_field(h, "version")
        Checker(key=self.cluster.token_key).check(
            wire_field(h, "token", bytes),
            chunk_id,
            version,
            mode,
            uint_field(h, "expiry_ms"),
            _now_ms(),
        )
        return chunk_id, version

    def _stale(self, message: str, **details: Any) -> Stale:
        self.stale += 1
        return Stale(message, **details)

    def _next(self, h: dict[str, Any]) -> tuple[FakeChunkServer | None, dict[str, Any]]:
        chain = wire_field(h, "chain", list, [])
        if not chain:
            return None, h
        nxt = self.cluster.chunkserver_at(chain[0])
        if nxt is None or not nxt.alive:
            raise Unavailable("next replica in the chain is down", address=chain[0])
        return nxt, {**h, "chain": chain[1:]}

    def apply_write(self, h: dict[str, Any], payload: bytes) -> None:
        if not self.alive:
            raise Unavailable("chunkserver down")
        if self.broken:
            raise Unavailable("replica broken", address=self.address)
        chunk_id, version = self._check(h, WRITE)
        offset = uint_field(h, "offset")
        length = uint_field(h, "length")
        expect = _expect_length(h)
        sync = h.get("sync") is True
        end = offset + len(payload)
        replica = self.replicas.get(chunk_id)
        have = 0  # the replica's length under this version, before this write
        if replica is None:
            if length > 0 and not (offset == 0 and len(payload) >= length):
                raise NotFound("no replica here, and the handle says it holds data")
        else:
            if version < replica.version:
                raise self._stale("older version", chunk_id=chunk_id)
            have = len(replica.data)
            if version > replica.version:
                if have < length:
                    raise self._stale("replica shorter than the handle's length")
                have = length
        after = max(have, end) if payload else have
        if expect is not None and have < expect and (offset > have or (sync and after < expect)):
            raise self._stale("replica shorter than the writer's acknowledged length")
        if replica is None:
            replica = self.replicas[chunk_id] = FakeReplica(version)
        elif version > replica.version:
            del replica.data[length:]
            replica.version = version
            replica.synced_bytes = min(replica.synced_bytes, len(replica.data))
        if payload:
            if len(replica.data) < offset:
                replica.data.extend(bytes(offset - len(replica.data)))
            replica.data[offset:end] = payload
        self.write_sizes.append(len(payload))
        if sync:
            replica.synced_bytes = len(replica.data)
            self.syncs += 1
        nxt, rest = self._next(h)
        if nxt is not None:
            nxt.apply_write(rest, payload)

    def apply_write_many(self, h: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """Each write as a ``chunk.write`` of it alone along the chain; the errors listed
        as a chunkserver lists them."""
        chain = wire_field(h, "chain", list, [])
        errors: list[DfsError | None] = []
        start = 0
        for item in h["writes"]:
            data = payload[start : start + item["size"]]
            start += item["size"]
            try:
                self.apply_write({**item, "chain": chain}, data)
                errors.append(None)
            except DfsError as e:
                e.details.setdefault("address", self.address)
                errors.append(e)
        wire = errors_to_wire(errors)
        return {} if wire is None else {"errors": wire}

    def apply_sync(self, h: dict[str, Any]) -> None:
        if not self.alive:
            raise Unavailable("chunkserver down")
        if self.broken:
            raise Unavailable("replica broken", address=self.address)
        chunk_id, version = self._check(h, WRITE)
        replica = self.replicas.get(chunk_id)
        if replica is None:
            raise NotFound("no such chunk", chunk_id=chunk_id)
        if version != replica.version:
            raise self._stale("sync of another version than the replica's", chunk_id=chunk_id)
        expect = _expect_length(h)
        if expect is not None and len(replica.data) < expect:
            raise self._stale("replica shorter than the writer's acknowledged length")
        replica.synced_bytes = len(replica.data)
        self.syncs += 1
        nxt, rest = self._next(h)
        if nxt is not None:
            nxt.apply_sync(rest)

    async def handle(
        self, conn: rpc.Connection, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes]:
        if self.hang:
            await _forever()
        if not self.alive:
            raise Unavailable("chunkserver down")
        op = header.get("op")
        admit(lookup(CHUNKSERVER_OPS, op), conn.peer.role if conn.peer else None, header)
        if op == "chunk.write":
            if self.fail_writes:
                raise self.fail_writes.pop(0)
            self.apply_write(header, payload)
            return {}, b""
        if op == "chunk.write_many":
            if self.fail_writes:
                raise self.fail_writes.pop(0)
            return self.apply_write_many(header, payload), b""
        if op == "chunk.sync":
            self.apply_sync(header)
            return {}, b""
        if op == "chunk.read":
            chunk_id, version = self._check(header, READ)
            self.reads += 1
            replica = self.replicas.get(chunk_id)
            if replica is None:
                raise NotFound("no such chunk", chunk_id=chunk_id)
            if replica.version != version:
                raise self._stale("version mismatch", chunk_id=chunk_id)
            if chunk_id in self.corrupt:
                raise Corrupt("checksum mismatch", chunk_id=chunk_id)
            offset, size = header["offset"], header["size"]
            return {}, bytes(replica.data[offset : offset + size])
        if op == "chunk.info":
            replica = self.replicas.get(uint_field(header, "chunk_id"))
            if replica is None:
                raise NotFound("no such chunk")
            return {"version": replica.version, "length": len(replica.data)}, b""
        raise Unsupported(f"unknown op {op}")


def _expect_length(h: dict[str, Any]) -> int | None:
    return uint_field(h, "expect_length") if "expect_length" in h else None


# ---------------------------------------------------------------------------- cluster


class FakeCluster:
    """Metaservers and chunkservers on loopback, sharing one fake namespace."""

    def __init__(self, *, secret: bytes, chunk_size: int, token_ttl_ms: int) -> None:
        self.secret = secret
        self.token_key = token_key(secret)
        self.token_ttl_ms = token_ttl_ms
        self.namespace = FakeNamespace(self, chunk_size)
        self.metas: list[FakeMetaServer] = []
        self.chunkservers: list[FakeChunkServer] = []
        self.leader: FakeMetaServer | None = None
        self.hints = True
        self.faults: list[MetaFault] = []
        self.requests: list[tuple[str, int, int]] = []  # mutations: (op, client, seq)
        self.reads: list[str] = []  # read ops, in arrival order

    @classmethod
    async def start(
        cls,
        *,
        metaservers: int = 1,
        chunkservers: int = 3,
        chunk_size: int = CHUNK_SIZE_DEFAULT,
        secret: bytes | None = None,
        token_ttl_ms: int = TOKEN_TTL_MS_DEFAULT,
    ) -> FakeCluster:
        cluster = cls(
            secret=secret or os.urandom(32), chunk_size=chunk_size, token_ttl_ms=token_ttl_ms
        )
        try:
            for node_id in range(1, metaservers + 1):
                meta = FakeMetaServer(cluster, node_id)
                meta.server = await rpc.serve(
                    HOST, 0, cluster.secret, meta.handle, name=f"fake-meta{node_id}"
                )
                meta.address = f"{HOST}:{meta.server.port}"
                cluster.metas.append(meta)
            for cs_id in range(1, chunkservers + 1):
                cs = FakeChunkServer(cluster, cs_id)
                cs.server = await rpc.serve(
                    HOST, 0, cluster.secret, cs.handle, name=f"fake-cs{cs_id}"
                )
                cs.address = f"{HOST}:{cs.server.port}"
                cluster.chunkservers.append(cs)
        except BaseException:
            await cluster.close()
            raise
        cluster.leader = cluster.metas[0] if cluster.metas else None
        return cluster

    @property
    def meta_addresses(self) -> list[str]:
        return [m.address for m in self.metas]

    def set_leader(self, index: int | None, *, hints: bool | None = None) -> None:
        """Make ``metas[index]`` the leader (None: no leader, an election); ``hints``:
        whether followers name the leader in their ``NotLeader`` answers."""
        self.leader = None if index is None else self.metas[index]
        if hints is not None:
            self.hints = hints

    def hang_metaservers(self, hang: bool = True) -> None:
        for meta in self.metas:
            meta.hang = hang

    def hang_chunkservers(self, hang: bool = True) -> None:
        for cs in self.chunkservers:
            cs.hang = hang

    def fail_next_writes(self, error: DfsError) -> None:
        """The next ``chunk.write`` each chunkserver receives fails with ``error``."""
        for cs in self.chunkservers:
            cs.fail_writes.append(error)

    def chunkserver(self, cs_id: int) -> FakeChunkServer | None:
        return next((cs for cs in self.chunkservers if cs.cs_id == cs_id), None)

    def chunkserver_at(self, address: str) -> FakeChunkServer | None:
        return next((cs for cs in self.chunkservers if cs.address == address), None)

    def file_chunks(self, ino: int) -> dict[int, FakeChunk]:
        """index -> chunk of a file (for tests)."""
        node = self.namespace.inode(ino)
        return {i: self.namespace.chunks[c] for i, c in sorted(node.chunks.items())}

    async def close(self) -> None:
        servers = [m.server for m in self.metas if m.server is not None]
        servers += [cs.server for cs in self.chunkservers if cs.server is not None]
        for server in servers:
            server.close()
        for server in servers:
            # As the daemons do: a connection slow to finish closing (a peer that does not
            # read) is closed already; the fake cluster does not wait for it past the bound.
            with contextlib.suppress(TimeoutError):
                await server.wait_closed()


# ---------------------------------------------------------------------------- threads


class LoopThread:
    """An asyncio loop in a daemon thread: ``run(coro)`` and ``call(fn)`` block the caller
    until the loop has done them. For servers that a client on another loop (trio, or a
    second asyncio loop) talks to."""

    def __init__(self, name: str = "fake-cluster-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout_s)

    def stop(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            self.run(cancel_rest())
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class ClusterThread:
    """``with ClusterThread(chunk_size=...) as c:`` a ``FakeCluster`` on a ``LoopThread``.

    ``c.meta_addresses``, ``c.secret``; ``c.call(lambda cluster: ...)`` runs a function on
    the cluster's loop (fault injection, inspection) and returns its result.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self.thread: LoopThread | None = None
        self.cluster: FakeCluster | None = None

    def __enter__(self) -> ClusterThread:
        self.thread = LoopThread()
        try:
            self.cluster = self.thread.run(FakeCluster.start(**self._kwargs))
        except BaseException:
            self.thread.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.thread is not None
        try:
            if self.cluster is not None:
                self.thread.run(self.cluster.close())
        finally:
            self.thread.stop()

    def _cluster(self) -> FakeCluster:
        assert self.cluster is not None, "not started"
        return self.cluster

    @property
    def meta_addresses(self) -> list[str]:
        return self._cluster().meta_addresses

    @property
    def secret(self) -> bytes:
        return self._cluster().secret

    def call(self, fn: Callable[[FakeCluster], T]) -> T:
        assert self.thread is not None
        cluster = self._cluster()
        return self.thread.call(lambda: fn(cluster))

    def run(self, fn: Callable[[FakeCluster], Awaitable[T]]) -> T:
        assert self.thread is not None
        cluster = self._cluster()

        async def main() -> T:
            return await fn(cluster)

        return self.thread.run(main())


__all__ = [
    "ClusterThread",
    "Commit",
    "FakeChunk",
    "FakeChunkServer",
    "FakeCluster",
    "FakeInode",
    "FakeMetaServer",
    "FakeNamespace",
    "FakeReplica",
    "LoopThread",
    "MetaFault",
]
