"""The mutation ops: POSIX rules over ``State``. Pure.

This module owns what each op may do and which error it gives (the errno a local Linux
file system such as ext4 gives, written next to each check). It does not decode commands,
keep sessions or know the snapshot format: ``namespace.py`` calls ``OPS[op](state, now_ns,
args)`` with the decoded args, inside the session table, and turns a raised ``DfsError``
into the error result.

Rules:
1. Atomic: every handler checks all its arguments and every error condition first, and
   only then changes the state; nothing after the first change may raise. A failed op
   therefore changes nothing, and its error can be replayed to a retry.
2. Deterministic: the only clock is ``now_ns`` (the leader's, from the command), the only
   ids are the state's counters, and nothing iterates a set.
3. Order of checks: argument types and values (names, modes, ranges) first, then the state
   (inodes, directories, entries) in the order Linux's VFS checks them, so a request with
   several faults gets the error Linux would give for the state part.
4. Times as POSIX: a created inode takes ``now_ns`` for all three times; a directory whose
   entries change gets mtime = ctime = now; every change of an inode moves its ctime.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

from dfs.wire.errors import (
    Exists,
    Invalid,
    IsDir,
    NoAttr,
    NoSpace,
    NotDir,
    NotEmpty,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Stale,
    TooBig,
    TooManyLinks,
    Unavailable,
)
from dfs.wire.limits import (
    GOAL_MAX,
    GOAL_MIN,
    INT63_MAX,
    MKDIR_BITS,
    MODE_MAX,
    PERMISSION_BITS,
    UINT32_MAX,
    UINT64_MAX,
)
from metaserver.namespace import pools, rstats, trash
from metaserver.namespace.commands import (
    DIR_ENTRIES_MAX,
    INT64_MIN,
    LINKS_MAX,
    REPLICAS_MAX,
    XATTR_BYTES_PER_INODE_MAX,
    arg_bool,
    arg_bytes,
    arg_commit_chunks,
    arg_ino,
    arg_int,
    arg_int_list,
    arg_name,
    arg_opt_int,
    arg_size,
    arg_symlink_target,
    arg_xattr_value,
    check_fields,
    check_xattr_name,
    chunk_index_max,
)
from metaserver.namespace.state import ROOT_INO, Chunk, DirData, Inode, State, attr, chunk_info

Result = dict[str, Any]
Handler = Callable[[State, int, dict[str, Any]], Result]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2


def _ok() -> Result:
    return {"ok": True}


def _touch_dir(d: Inode, now_ns: int) -> None:
    d.mtime_ns = now_ns
    d.ctime_ns = now_ns


def _check_room(d: DirData, name: bytes) -> None:
    """``name`` may be added to directory ``d``."""
    if name in d.entries:
        raise Exists("name exists", name=name)
    if len(d.entries) >= DIR_ENTRIES_MAX:
        raise NoSpace(f"directory has {DIR_ENTRIES_MAX} entries")


def _uid_gid(a: dict[str, Any]) -> tuple[int, int]:
    return arg_int(a, "uid", 0, UINT32_MAX), arg_int(a, "gid", 0, UINT32_MAX)


# --- creating names -------------------------------------------------------------------

_MKDIR = frozenset({"parent", "name", "mode", "uid", "gid", "ino", "pool"})


def _reserved(a: dict[str, Any]) -> tuple[int, int] | None:
    """The ``(ino, holder)`` of an op a client answered under its directory lease (an
    inode number from its pool: pools.py), or None for an ordinary one."""
    reserved_ino = arg_ino(a, "ino") if "ino" in a else None
    holder = arg_int(a, "pool", 1, INT63_MAX) if "pool" in a else None
    if (reserved_ino is None) != (holder is None):
        raise Invalid("a reserved inode number comes with its pool")
    if reserved_ino is None or holder is None:
        return None
    return reserved_ino, holder


def mkdir(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """mkdir(2). With ``ino`` and ``pool``: a mkdir answered under the parent's lease
    takes that reserved inode number (its reserved first chunk is simply not used)."""
    check_fields(a, _MKDIR)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    mode = arg_int(a, "mode", 0, MODE_MAX)
    uid, gid = _uid_gid(a)
    reserved = _reserved(a)
    if stat.S_IFMT(mode) not in (0, stat.S_IFDIR):
        raise Invalid("mkdir mode names another file type", mode=mode)
    parent, d = st.directory(parent_ino)
    _check_room(d, name)
    if reserved is not None:
        pools.check_take(st, reserved[1], reserved[0], now_ns)
    # --- checked: change the state ---
    if reserved is not None:
        pools.take(st, reserved[1], reserved[0])
    mode = stat.S_IFDIR | (mode & MKDIR_BITS)
    inode = st.new_inode(parent, mode, uid, gid, 0, now_ns, reserved and reserved[0])
    d.insert(name, inode.ino)
    rstats.named(st, inode, parent.ino, name)
    parent.nlink += 1  # the new directory's ".."
    _touch_dir(parent, now_ns)
    return {"ok": True, "attr": attr(inode), "parent_attr": attr(parent)}


_CREATE = frozenset(
    {"parent", "name", "mode", "uid", "gid", "exclusive", "replicas", "ino", "pool"}
)


def create(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """open(O_CREAT). With ``replicas`` (optional: the leader placed a first chunk), a
    created file also gets its chunk 0 allocated on them, as ``write_handle`` would in a
    command of its own: the answer's ``chunk`` (``{chunk_id, version, length, replicas}``)
    is the writer's first handle, and a small file costs one command less.

    With ``ino`` and ``pool`` (a holder): the create a client answered under its
    directory lease (pools.py), always exclusive: the file takes the reserved inode
    number, and its chunk 0 the reserved chunk, whatever ``replicas`` says."""
    check_fields(a, _CREATE)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    mode = arg_int(a, "mode", 0, MODE_MAX)
    uid, gid = _uid_gid(a)
    exclusive = arg_bool(a, "exclusive", False)
    replicas = arg_int_list(a, "replicas", REPLICAS_MAX) if "replicas" in a else []
    reserved = _reserved(a)
    reserved_ino, holder = reserved if reserved is not None else (None, None)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise Invalid("create mode names another file type", mode=mode)
    _check_replicas(st, replicas)
    parent, d = st.directory(parent_ino)
    entry = d.entries.get(name)
    if entry is not None:
        # open(O_CREAT): EEXIST with O_EXCL, EISDIR on a directory, else opens what is there.
        if exclusive or reserved_ino is not None:
            raise Exists("name exists", name=name)
        existing = st.inodes[entry[0]]
        if existing.dir is not None:
            raise IsDir("is a directory", name=name)
        return {"ok": True, "attr": attr(existing), "created": False}
    _check_room(d, name)
    chunk_id: int | None = None
    if reserved_ino is not None and holder is not None:
        chunk_id, replicas = pools.check_take(st, holder, reserved_ino, now_ns)
    # --- checked: change the state ---
    if reserved_ino is not None and holder is not None:
        pools.take(st, holder, reserved_ino)
    mode = stat.S_IFREG | (mode & PERMISSION_BITS)
    inode = st.new_inode(parent, mode, uid, gid, 0, now_ns, reserved_ino)
    d.insert(name, inode.ino)
    rstats.named(st, inode, parent.ino, name)
    _touch_dir(parent, now_ns)
    result: Result = {"ok": True, "attr": attr(inode), "created": True, "parent_attr": attr(parent)}
    if replicas:
        chunk = st.allocate_chunk(inode, 0, list(replicas), chunk_id)
        result["chunk"] = chunk_info(chunk)
    return result


def _check_replicas(st: State, replicas: list[int]) -> None:
    """A new chunk's replica set: distinct, known chunkservers (empty: no chunk)."""
    if len(set(replicas)) != len(replicas):
        raise Invalid("replicas must be distinct chunkservers", replicas=replicas)
    for cs_id in replicas:
        if cs_id not in st.cs_table:
            raise Invalid("unknown chunkserver", cs_id=cs_id)


_MKNOD = frozenset({"parent", "name", "mode", "rdev", "uid", "gid"})
_MKNOD_TYPES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def mknod(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _MKNOD)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    mode = arg_int(a, "mode", 0, MODE_MAX)
    rdev = arg_int(a, "rdev", 0, UINT64_MAX) if "rdev" in a else 0
    uid, gid = _uid_gid(a)
    fmt = stat.S_IFMT(mode) or stat.S_IFREG  # mknod(2): a zero file type means regular
    if fmt not in _MKNOD_TYPES:
        raise Invalid("mknod makes no directories or symlinks", mode=mode)  # EINVAL/EPERM
    if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = 0  # only device nodes have a device number
    parent, d = st.directory(parent_ino)
    _check_room(d, name)
    inode = st.new_inode(parent, fmt | (mode & PERMISSION_BITS), uid, gid, rdev, now_ns)
    d.insert(name, inode.ino)
    rstats.named(st, inode, parent.ino, name)
    _touch_dir(parent, now_ns)
    return {"ok": True, "attr": attr(inode), "parent_attr": attr(parent)}


_SYMLINK = frozenset({"parent", "name", "target", "uid", "gid", "ino", "pool"})


def symlink(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """symlink(2); ``ino`` and ``pool`` as ``mkdir``'s."""
    check_fields(a, _SYMLINK)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    target = arg_symlink_target(a, "target")
    uid, gid = _uid_gid(a)
    reserved = _reserved(a)
    parent, d = st.directory(parent_ino)
    _check_room(d, name)
    if reserved is not None:
        pools.check_take(st, reserved[1], reserved[0], now_ns)
    # --- checked: change the state ---
    if reserved is not None:
        pools.take(st, reserved[1], reserved[0])
    inode = st.new_inode(
        parent, stat.S_IFLNK | 0o777, uid, gid, 0, now_ns, reserved and reserved[0]
    )
    inode.target = target
    inode.size = len(target)
    d.insert(name, inode.ino)
    rstats.named(st, inode, parent.ino, name)
    _touch_dir(parent, now_ns)
    return {"ok": True, "attr": attr(inode), "parent_attr": attr(parent)}


_LINK = frozenset({"ino", "parent", "name"})


def link(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _LINK)
    ino = arg_ino(a, "ino")
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    # Linux order: the source (ENOENT), the new parent, the new name (EEXIST), then
    # vfs_link: a directory (EPERM), then the file system's link limit (EMLINK).
    inode = st.inode(ino)
    parent, d = st.directory(parent_ino)
    _check_room(d, name)
    if inode.dir is not None:
        raise PermissionDenied("hard links to directories are not allowed", ino=ino)
    if inode.nlink == 0:  # removed (trash, orphan): link(2) of an unlinked file is ENOENT
        raise NotFound("the inode has no name left", ino=ino)
    if inode.nlink >= LINKS_MAX:
        raise TooManyLinks(f"inode has {LINKS_MAX} links", ino=ino)
    d.insert(name, ino)
    rstats.named(st, inode, parent_ino, name)
    inode.nlink += 1
    inode.ctime_ns = now_ns
    _touch_dir(parent, now_ns)
    return {"ok": True, "attr": attr(inode), "parent_attr": attr(parent)}


# --- removing names -------------------------------------------------------------------


def _drop_link(
    st: State, inode: Inode, now_ns: int, keep: bool, parent: Inode, name: bytes
) -> None:
    """The name ``name`` of a non-directory in ``parent`` is gone (removed from the
    directory already): count it; with its last name, put a regular file with a trash
    time in the trash (trash.py), or keep it as an orphan with ``keep`` (the leader knows
    a client holds it open) until the leader releases it (``release_orphans``), or free
    the inode."""
    rstats.unnamed(st, inode, parent.ino)
    inode.nlink -= 1
    inode.ctime_ns = now_ns
    if inode.nlink == 0:
        if trash.keeps(inode):
            trash.put(st, inode, parent.ino, name, now_ns)
        elif keep and inode.chunks is not None:
            st.orphans[inode.ino] = None
        else:
            st.release(inode)


_UNLINK = frozenset({"parent", "name", "keep", "ino"})


def _expected(a: dict[str, Any], name: bytes, ino: int) -> None:
    """An optional ``ino`` (the inode the client believes ``name`` names: a removal queued
    under a directory lease, docs/ARCHITECTURE.md "Directory leases") must be the one
    the name names now: a late removal must never take another client's new file of the
    same name. ``Stale`` (ESTALE), not ``NotFound``: the name exists, the client's view
    of it is out of date."""
    expected = arg_opt_int(a, "ino", 1, INT63_MAX)
    if expected is not None and expected != ino:
        raise Stale("the name names another inode now", name=name, ino=ino)


def unlink(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _UNLINK)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    keep = arg_bool(a, "keep", False)
    parent, d = st.directory(parent_ino)
    entry = d.entries.get(name)
    if entry is None:
        raise NotFound("no such name", name=name)
    _expected(a, name, entry[0])
    inode = st.inodes[entry[0]]
    if inode.dir is not None:
        raise IsDir("unlink of a directory", name=name)  # Linux gives EISDIR
    d.remove(name)
    _drop_link(st, inode, now_ns, keep, parent, name)
    _touch_dir(parent, now_ns)
    return _ok()


_RMDIR = frozenset({"parent", "name", "ino"})


def rmdir(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _RMDIR)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    parent, d = st.directory(parent_ino)
    entry = d.entries.get(name)
    if entry is None:
        raise NotFound("no such name", name=name)
    _expected(a, name, entry[0])
    inode = st.inodes[entry[0]]
    if inode.dir is None:
        raise NotDir("rmdir of a non-directory", name=name)
    if inode.dir.entries:
        raise NotEmpty("directory not empty", name=name)
    d.remove(name)
    rstats.unnamed(st, inode, parent.ino)
    parent.nlink -= 1  # its ".." is gone
    st.release(inode)
    _touch_dir(parent, now_ns)
    return _ok()


# --- rename ---------------------------------------------------------------------------

_RENAME = frozenset({"parent", "name", "new_parent", "new_name", "flags", "keep"})


def _is_ancestor_or_self(st: State, ancestor: int, ino: int) -> bool:
    """Whether directory ``ancestor`` is directory ``ino`` or above it. O(depth)."""
    inodes = st.inodes
    while True:
        if ino == ancestor:
            return True
        if ino == ROOT_INO:
            return False
        d = inodes[ino].dir
        assert d is not None
        ino = d.parent


def rename(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """rename(2) / renameat2(2), checks in the order of Linux's ``do_renameat2``."""
    check_fields(a, _RENAME)
    parent_ino = arg_ino(a, "parent")
    name = arg_name(a, "name")
    new_parent_ino = arg_ino(a, "new_parent")
    new_name = arg_name(a, "new_name")
    flags = arg_int(a, "flags", 0, INT63_MAX) if "flags" in a else 0
    keep = arg_bool(a, "keep", False)
    if flags not in (0, RENAME_NOREPLACE, RENAME_EXCHANGE):
        raise Invalid("unknown rename flags", flags=flags)  # EINVAL, as renameat2
    parent, d = st.directory(parent_ino)
    new_parent, new_d = st.directory(new_parent_ino)
    entry = d.entries.get(name)
    if entry is None:
        raise NotFound("no such name", name=name)
    src = st.inodes[entry[0]]
    new_entry = new_d.entries.get(new_name)
    dst = st.inodes[new_entry[0]] if new_entry is not None else None
    if flags == RENAME_NOREPLACE and dst is not None:
        raise Exists("target exists", name=new_name)
    if flags == RENAME_EXCHANGE and dst is None:
        raise NotFound("exchange target missing", name=new_name)
    # A directory cannot move below itself (EINVAL); a target that is above the source
    # cannot be replaced (it contains the source: ENOTEMPTY), nor exchanged (EINVAL).
    if src.dir is not None and _is_ancestor_or_self(st, src.ino, new_parent.ino):
        raise Invalid("cannot move a directory into its own subtree", name=name)
    if dst is not None and dst.dir is not None and _is_ancestor_or_self(st, dst.ino, parent.ino):
        if flags == RENAME_EXCHANGE:
            raise Invalid("cannot exchange a directory with its own descendant")
        raise NotEmpty("target directory is an ancestor of the source", name=new_name)
    if dst is src:
        return _ok()  # the same inode under both names: POSIX says do nothing
    if flags == RENAME_EXCHANGE:
        assert dst is not None
        _exchange(st, d, name, parent, src, new_d, new_name, new_parent, dst, now_ns)
        return _ok()
    if dst is not None:
        if src.dir is not None:
            if dst.dir is None:
                raise NotDir("cannot replace a non-directory with a directory")
            if dst.dir.entries:
                raise NotEmpty("target directory not empty", name=new_name)
        elif dst.dir is not None:
            raise IsDir("cannot replace a directory with a non-directory")
    elif new_d is not d:
        _check_room(new_d, new_name)
    # --- checked: change the state ---
    if dst is not None:
        new_d.remove(new_name)
        if dst.dir is not None:
            rstats.unnamed(st, dst, new_parent.ino)
            new_parent.nlink -= 1  # the replaced directory's ".." is gone
            st.release(dst)
        else:
            _drop_link(st, dst, now_ns, keep, new_parent, new_name)
    d.remove(name)
    rstats.unnamed(st, src, parent.ino)
    new_d.insert(new_name, src.ino)  # a fresh cookie: readdir sees the moved entry anew
    if src.dir is not None and new_parent is not parent:
        parent.nlink -= 1
        new_parent.nlink += 1
        src.dir.parent = new_parent.ino
    rstats.named(st, src, new_parent.ino, new_name)
    src.ctime_ns = now_ns
    _touch_dir(parent, now_ns)
    _touch_dir(new_parent, now_ns)
    return _ok()


def _exchange(
    st: State,
    d: DirData,
    name: bytes,
    parent: Inode,
    src: Inode,
    new_d: DirData,
    new_name: bytes,
    new_parent: Inode,
    dst: Inode,
    now_ns: int,
) -> None:
    d.remove(name)
    new_d.remove(new_name)
    d.insert(name, dst.ino)
    new_d.insert(new_name, src.ino)
    # Each inode moves whole (unnamed, then named) before the other does, so that the
    # recursive statistics of a directory never pass through a detached one (rstats.py).
    rstats.unnamed(st, src, parent.ino)
    if new_parent is not parent and src.dir is not None:
        # A directory that changes parent moves its ".." link with it.
        parent.nlink -= 1
        new_parent.nlink += 1
        src.dir.parent = new_parent.ino
    rstats.named(st, src, new_parent.ino, new_name)
    rstats.unnamed(st, dst, new_parent.ino)
    if new_parent is not parent and dst.dir is not None:
        new_parent.nlink -= 1
        parent.nlink += 1
        dst.dir.parent = parent.ino
    rstats.named(st, dst, parent.ino, name)
    src.ctime_ns = now_ns
    dst.ctime_ns = now_ns
    _touch_dir(parent, now_ns)
    _touch_dir(new_parent, now_ns)


# --- attributes -----------------------------------------------------------------------

_SETATTR = frozenset(
    {"ino", "mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "atime_now", "mtime_now"}
)


def set_attr(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _SETATTR)
    ino = arg_ino(a, "ino")
    mode = arg_opt_int(a, "mode", 0, MODE_MAX)
    uid = arg_opt_int(a, "uid", 0, UINT32_MAX)
    gid = arg_opt_int(a, "gid", 0, UINT32_MAX)
    size = arg_size(a, "size") if "size" in a else None
    atime_ns = arg_opt_int(a, "atime_ns", INT64_MIN, INT63_MAX)
    mtime_ns = arg_opt_int(a, "mtime_ns", INT64_MIN, INT63_MAX)
    # "now" wins over an explicit time: it is how utimensat(UTIME_NOW) arrives.
    if arg_bool(a, "atime_now", False):
        atime_ns = now_ns
    if arg_bool(a, "mtime_now", False):
        mtime_ns = now_ns
    inode = st.inode(ino)
    if size is not None:
        st.regular(ino)  # truncate(2): EISDIR on a directory, EINVAL on other types
    # --- checked: change the state ---
    _set_mode_owner(inode, mode, uid, gid)
    cut: dict[str, Any] | None = None
    if size is not None:
        cut_chunk = st.truncate(inode, size)
        inode.mtime_ns = now_ns  # truncate(2) always marks mtime and ctime
        if cut_chunk is not None:
            cut = {
                "chunk_id": cut_chunk.chunk_id,
                "version": cut_chunk.version,
                "length": cut_chunk.length,
                "replicas": list(cut_chunk.replicas),
            }
    if atime_ns is not None:
        inode.atime_ns = atime_ns
    if mtime_ns is not None:
        inode.mtime_ns = mtime_ns
    inode.ctime_ns = now_ns
    if cut is not None:
        # The leader pushes the new version to the replicas (they cut themselves to the
        # new length and refuse the old version from then on): docs/PROTOCOL.md fs.setattr.
        return {"ok": True, "attr": attr(inode), "cut": cut}
    return {"ok": True, "attr": attr(inode)}


_SETXATTR = frozenset({"ino", "name", "value", "flags"})


def setxattr(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _SETXATTR)
    ino = arg_ino(a, "ino")
    name = check_xattr_name(arg_bytes(a, "name"))
    value = arg_xattr_value(a, "value")
    flags = arg_int(a, "flags", 0, INT63_MAX) if "flags" in a else 0
    if flags not in (0, XATTR_CREATE, XATTR_REPLACE):
        raise Invalid("unknown setxattr flags", flags=flags)  # EINVAL, as setxattr(2)
    inode = st.inode(ino)
    xattrs = inode.xattrs
    old = xattrs.get(name) if xattrs is not None else None
    if flags == XATTR_CREATE and old is not None:
        raise Exists("xattr exists", name=name)
    if flags == XATTR_REPLACE and old is None:
        raise NoAttr("no such xattr", name=name)
    total = sum(len(n) + len(v) for n, v in xattrs.items()) if xattrs is not None else 0
    if old is None:
        total += len(name) + len(value)
    else:
        total += len(value) - len(old)
    if total > XATTR_BYTES_PER_INODE_MAX:  # ext4 gives ENOSPC when its xattr block is full
        raise TooBig(f"xattrs of an inode over {XATTR_BYTES_PER_INODE_MAX} bytes", ino=ino)
    if xattrs is None:
        xattrs = inode.xattrs = {}
    xattrs[name] = value
    inode.ctime_ns = now_ns
    return _ok()


_REMOVEXATTR = frozenset({"ino", "name"})


def removexattr(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _REMOVEXATTR)
    ino = arg_ino(a, "ino")
    name = check_xattr_name(arg_bytes(a, "name"))
    inode = st.inode(ino)
    xattrs = inode.xattrs
    if xattrs is None or name not in xattrs:
        raise NoAttr("no such xattr", name=name)  # ENODATA
    del xattrs[name]
    if not xattrs:
        inode.xattrs = None
    inode.ctime_ns = now_ns
    return _ok()


_SET_GOAL = frozenset({"ino", "goal"})


def set_goal(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _SET_GOAL)
    ino = arg_ino(a, "ino")
    goal = arg_int(a, "goal", GOAL_MIN, GOAL_MAX)
    inode = st.inode(ino)
    st.set_goal(inode, goal)
    inode.ctime_ns = now_ns
    return {"ok": True, "attr": attr(inode)}


# --- chunks ---------------------------------------------------------------------------

_WRITE_HANDLE = frozenset({"ino", "index", "replicas", "drop"})


def write_handle(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Allocate the chunk at ``index`` on ``replicas``, or bump the existing one's version.

    The leader chose ``replicas`` (placement is soft state, so it cannot happen here);
    the existing chunk keeps its replica set, whatever the command proposes, less the
    replicas in ``drop`` (optional): those on dead chunkservers and those a writer saw
    fail. They leave the set with the version bump, so they can never be served again
    (they stay at the old version) and a report of them later gets them deleted. The last
    replica is never dropped: a chunk with none left would lose its data for certain,
    while the last one may come back.
    """
    check_fields(a, _WRITE_HANDLE)
    ino = arg_ino(a, "ino")
    index = arg_int(a, "index", 0, INT63_MAX)
    replicas = arg_int_list(a, "replicas", REPLICAS_MAX)
    drop = arg_int_list(a, "drop", REPLICAS_MAX) if "drop" in a else []
    inode = st.regular(ino)
    if index > chunk_index_max(st.chunk_size_bytes):
        raise TooBig("chunk index past the largest file", index=index)  # EFBIG
    chunks = inode.chunks
    assert chunks is not None
    chunk_id = chunks.get(index)
    if chunk_id is None:
        if not replicas:
            raise NoSpace("no chunkserver to place the chunk on", ino=ino, index=index)
        if len(set(replicas)) != len(replicas):
            raise Invalid("replicas must be distinct chunkservers", replicas=replicas)
        for cs_id in replicas:
            if cs_id not in st.cs_table:
                raise Invalid("unknown chunkserver", cs_id=cs_id)
        chunk = st.allocate_chunk(inode, index, list(replicas))
        allocated = True
    else:
        chunk = st.chunk_table[chunk_id]
        if chunk.length and not chunk.replicas:
            # Its last member left the set (a report may yet adopt a copy at this version):
            # a bump now would make that copy stale, and the chunk's bytes lost for good.
            raise Unavailable("the chunk has no replica left", chunk_id=chunk_id)
        chunk.version += 1
        for cs_id in drop:
            if cs_id in chunk.replicas and len(chunk.replicas) > 1:
                chunk.replicas.remove(cs_id)
        st.writes[chunk.chunk_id] = chunk.version
        allocated = False
    return {
        "ok": True,
        "allocated": allocated,  # False: a bump, which the leader pushes to the replicas
        "chunk_id": chunk.chunk_id,
        "version": chunk.version,
        "length": chunk.length,
        "replicas": list(chunk.replicas),
    }


def _set_mode_owner(inode: Inode, mode: int | None, uid: int | None, gid: int | None) -> None:
    """Apply the permission bits (never the file type) and owner a setattr or commit
    carries; None leaves a field as it is."""
    if mode is not None:
        inode.mode = stat.S_IFMT(inode.mode) | (mode & PERMISSION_BITS)
    if uid is not None:
        inode.uid = uid
    if gid is not None:
        inode.gid = gid


_COMMIT = frozenset({"ino", "size", "mtime_ns", "chunks", "mode", "uid", "gid", "atime_ns"})


def commit(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Record written data: size and chunk lengths only grow, mtime is the writer's.

    Each chunk entry names the chunk id and version of the write handle its data was
    written under. The whole commit fails with ``Stale`` when, for any entry, the file no
    longer has that chunk at that index (a truncate dropped it, maybe a new one took its
    place) or the chunk's version moved on (another writer took a handle, or a truncate
    cut the chunk): either may have cut bytes this writer wrote and has not committed, so
    recording its lengths could make the file point at zeros or at someone else's data.
    The client reports the failure (EIO), as a local file system reports a failed write.

    Optional fields set attributes in the same command, as ``setattr`` would (the writer
    merges the ``chmod``/``chown``/``utimens`` it was asked for while the file was open
    into its next commit): ``mode`` (permission bits), ``uid``, ``gid``, ``atime_ns``.
    Without ``mtime_ns`` the file's mtime stays (a commit of attributes alone).
    """
    check_fields(a, _COMMIT)
    ino = arg_ino(a, "ino")
    size = arg_size(a, "size")
    mtime_ns = arg_opt_int(a, "mtime_ns", INT64_MIN, INT63_MAX)
    entries = arg_commit_chunks(a, "chunks", st.chunk_size_bytes)
    mode = arg_opt_int(a, "mode", 0, MODE_MAX)
    uid = arg_opt_int(a, "uid", 0, UINT32_MAX)
    gid = arg_opt_int(a, "gid", 0, UINT32_MAX)
    atime_ns = arg_opt_int(a, "atime_ns", INT64_MIN, INT63_MAX)
    inode = st.regular(ino)
    chunks = inode.chunks
    assert chunks is not None
    table = st.chunk_table
    for index, _, chunk_id, version in entries:
        if chunks.get(index) != chunk_id:
            raise Stale("the chunk was truncated away: data lost", ino=ino, index=index)
        if table[chunk_id].version != version:
            raise Stale(
                "the chunk changed version since this write: data may be lost",
                ino=ino,
                index=index,
                version=table[chunk_id].version,
            )
    # --- checked: change the state ---
    chunk_size = st.chunk_size_bytes
    for index, length, _, _ in entries:
        chunk = table[chunks[index]]
        if length > chunk.length:
            chunk.length = min(length, chunk_size)
    if size > inode.size:
        st.set_size(inode, size)
    if mtime_ns is not None:
        inode.mtime_ns = mtime_ns
    _set_mode_owner(inode, mode, uid, gid)
    if atime_ns is not None:
        inode.atime_ns = atime_ns
    inode.ctime_ns = now_ns
    return {"ok": True, "attr": attr(inode)}


# (chunkserver registration, draining and forgetting: cluster.py)


# --- replica sets (the leader's repair, metaserver/repair.py) ---------------------------


def _chunk_as_seen(st: State, a: dict[str, Any]) -> Chunk:
    """The chunk ``a`` names (``chunk_id``), provided it is still at the ``version`` and
    ``length`` the leader saw (``Stale`` otherwise: it changed since)."""
    chunk_id = arg_int(a, "chunk_id", 1, INT63_MAX)
    version = arg_int(a, "version", 1, INT63_MAX)
    length = arg_int(a, "length", 0, INT63_MAX)
    chunk = st.chunk_table.get(chunk_id)
    if chunk is None:
        raise NotFound("no such chunk", chunk_id=chunk_id)
    if chunk.version != version or chunk.length != length:
        raise Stale("the chunk changed", chunk_id=chunk_id, version=chunk.version,
                    length=chunk.length)  # fmt: skip
    return chunk


_REPLICA_ADD = frozenset({"chunk_id", "version", "length", "cs_id"})


def replica_add(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Add a copy the leader had made (``chunk.replicate``) to a chunk's replica set.

    The copy holds ``[0, length)`` at ``version``; it is only right if the chunk is still
    at that version and length (a commit in between grew it, and the copy misses bytes:
    ``Stale``; the leader deletes the copy and tries again later). The version is bumped
    with the addition and the leader pushes the new version to every replica, so that a
    writer still holding a handle of the old version, whose further bytes the copy would
    miss, is fenced off (its writes and its commit answer ``Stale``).
    """
    check_fields(a, _REPLICA_ADD)
    cs_id = arg_int(a, "cs_id", 1, INT63_MAX)
    chunk = _chunk_as_seen(st, a)
    if cs_id not in st.cs_table:
        raise Invalid("unknown chunkserver", cs_id=cs_id)
    if cs_id in chunk.replicas:
        raise Exists("already a replica", chunk_id=chunk.chunk_id, cs_id=cs_id)
    if len(chunk.replicas) >= REPLICAS_MAX:
        raise Invalid("replica set full", chunk_id=chunk.chunk_id)
    chunk.replicas.append(cs_id)
    chunk.version += 1
    return {"ok": True, **chunk_info(chunk)}


_VERSION_BUMP = frozenset({"chunk_id", "version", "length", "past"})


def version_bump(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """A new version of a chunk that no writer holds: the leader's fence before it copies
    the chunk (``metaserver/repair.py``). Once the replicas took it, a writer still holding
    a handle of the old version can no longer change bytes the copy may have read already
    (its writes and its commit answer ``Stale``); the copy is made at the new version and
    joins (``replica_add``) only if no writer has taken a handle since. ``Stale`` when the
    chunk is no longer at ``version`` and ``length``. ``past`` (optional): the new version
    is above it too (a member holds it: a group restored from an older backup).
    """
    check_fields(a, _VERSION_BUMP)
    chunk = _chunk_as_seen(st, a)
    past = arg_int(a, "past", 0, INT63_MAX) if "past" in a else 0
    if chunk.length and not chunk.replicas:
        # As in write_handle: a copy at this version may yet be adopted from a report.
        raise Unavailable("the chunk has no replica left", chunk_id=chunk.chunk_id)
    chunk.version = max(chunk.version, past) + 1
    return {"ok": True, **chunk_info(chunk)}


_LENGTH_RECOVER = frozenset({"chunk_id", "version", "length", "to"})


def length_recover(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Lower a chunk's length to ``to``, what its best surviving replica holds: the
    leader found every member of the set up and shorter than the table (a power loss of
    every replica took bytes a close had committed but no fsync had made durable;
    ``metaserver/repair.py``, LENGTH RECOVERY). The file's size stays: what lies past the
    chunk's new length reads as zeros, as a local file system's unsynced blocks may after
    a power loss. ``Stale`` when the chunk is no longer at ``version`` and ``length``
    (a writer committed or took a handle since); ``Invalid`` unless ``to`` is shorter.
    No version bump: the members that do not hold ``to`` bytes at the leader's chosen
    version leave the set next (``replica_drop``), and no writer holds bytes past ``to``
    that a replica acknowledged and still has.
    """
    check_fields(a, _LENGTH_RECOVER)
    chunk = _chunk_as_seen(st, a)
    to = arg_int(a, "to", 0, INT63_MAX)
    if to >= chunk.length:
        raise Invalid("a recovered length must be shorter", chunk_id=chunk.chunk_id,
                      length=chunk.length, to=to)  # fmt: skip
    chunk.length = to
    return {"ok": True, **chunk_info(chunk)}


_WRITE_MARKS = frozenset({"open", "settled"})
# Chunk entries in one write_marks command (the leader sends at most a step's worth).
WRITE_MARKS_MAX = 4096


def _chunk_versions(a: dict[str, Any], key: str) -> list[tuple[int, int]]:
    v = a.get(key, [])
    if type(v) is not list or len(v) > WRITE_MARKS_MAX:
        raise Invalid(f"field {key!r}: a list of at most {WRITE_MARKS_MAX} entries", field=key)
    for entry in v:
        if type(entry) is not list or len(entry) != 2 or any(type(x) is not int for x in entry):
            raise ProtocolError(f"field {key!r} must hold [chunk_id, version] ints")
    return [(c, version) for c, version in v]


def write_marks(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """The leader's record of which chunks may hold a writer's uploads not settled yet
    (``State.writes``; a write handle marks its chunk itself). ``open``: chunks a writer's
    keepalive names although no handle marked them (it writes again under a handle it
    kept), marked at their version. ``settled``: chunks whose writer committed and left,
    or that a WRITER RECOVERY made whole: unmarked unless a handle newer than the version
    given marked them since. Entries of chunks no longer in the table are ignored."""
    check_fields(a, _WRITE_MARKS)
    opened = _chunk_versions(a, "open")
    settled = _chunk_versions(a, "settled")
    table, writes = st.chunk_table, st.writes
    for chunk_id, version in opened:
        chunk = table.get(chunk_id)
        if chunk is not None:
            writes[chunk_id] = max(writes.get(chunk_id, 0), min(version, chunk.version))
    n = 0
    for chunk_id, version in settled:
        if chunk_id in writes and writes[chunk_id] <= version:
            del writes[chunk_id]
            n += 1
    return {"ok": True, "settled": n}


_REPLICA_DROP = frozenset({"chunk_id", "cs_id", "keep_one"})


def replica_drop(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Take a replica out of a chunk's set: one over the goal, a stale one, a bad one.

    No version bump: a dropped replica holds the chunk's bytes or is never served by its
    chunkserver (bad, or at an old version), and the leader deletes it next. ``keep_one``
    (default true) refuses to drop the last replica (``Invalid``); a replica that its
    chunkserver reported bad goes even when it is the last (``keep_one: false``): it is
    never served, so counting it would hide that the chunk is missing.
    """
    check_fields(a, _REPLICA_DROP)
    chunk_id = arg_int(a, "chunk_id", 1, INT63_MAX)
    cs_id = arg_int(a, "cs_id", 1, INT63_MAX)
    keep_one = arg_bool(a, "keep_one", True)
    chunk = st.chunk_table.get(chunk_id)
    if chunk is None:
        raise NotFound("no such chunk", chunk_id=chunk_id)
    if cs_id not in chunk.replicas:
        raise NotFound("not a replica", chunk_id=chunk_id, cs_id=cs_id)
    if keep_one and len(chunk.replicas) == 1:
        raise Invalid("the last replica", chunk_id=chunk_id, cs_id=cs_id)
    chunk.replicas.remove(cs_id)
    return {"ok": True, **chunk_info(chunk)}


_RELEASE_ORPHANS = frozenset({"inos"})
ORPHANS_BATCH_MAX = 4096


def release_orphans(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Free orphans no client holds any more (their chunks go to garbage). Inodes that are
    not orphans are skipped: a repeated batch changes nothing."""
    check_fields(a, _RELEASE_ORPHANS)
    inos = arg_int_list(a, "inos", ORPHANS_BATCH_MAX)
    released = 0
    for ino in inos:
        if ino in st.orphans:
            del st.orphans[ino]
            st.release(st.inodes[ino])
            released += 1
    return {"ok": True, "released": released}


_GC_DONE = frozenset({"chunk_ids"})
GC_BATCH_MAX = 4096


def gc_done(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    """Forget garbage chunks whose replicas the leader has deleted. Ids not in the garbage
    are skipped, so a repeated batch changes nothing."""
    check_fields(a, _GC_DONE)
    ids = arg_int_list(a, "chunk_ids", GC_BATCH_MAX)
    garbage = st.garbage
    forgotten = 0
    for chunk_id in ids:
        if garbage.pop(chunk_id, None) is not None:
            forgotten += 1
    return {"ok": True, "forgotten": forgotten}


OPS: dict[str, Handler] = {
    "mkdir": mkdir,
    "create": create,
    "mknod": mknod,
    "symlink": symlink,
    "link": link,
    "unlink": unlink,
    "rmdir": rmdir,
    "rename": rename,
    "setattr": set_attr,
    "setxattr": setxattr,
    "removexattr": removexattr,
    "set_goal": set_goal,
    "write_handle": write_handle,
    "commit": commit,
    "replica_add": replica_add,
    "version_bump": version_bump,
    "length_recover": length_recover,
    "replica_drop": replica_drop,
    "write_marks": write_marks,
    "gc_done": gc_done,
    "release_orphans": release_orphans,
    "reserve": pools.reserve,
}
