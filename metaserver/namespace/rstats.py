"""Recursive statistics of directories: a subtree's usage without a walk. Pure.

What it owns: the four sums every directory keeps of its subtree (``DirData.r_bytes``,
``r_phys``, ``r_files``, ``r_dirs``), each inode's primary directory (``Inode.parent``,
``State.links``), and the steps that keep them right as names come and go and files
change size or goal. CephFS's rstats are the model: a change adds its delta to the
directory it happens in and to each directory above it, O(depth), in the same apply.
What it must not do: decide anything (ops.py does; it calls ``named`` / ``unnamed`` next
to every entry inserted or removed, ``State.set_size`` / ``State.set_goal`` on changes).

The sums (``usage``): ``bytes`` the sizes of the regular files below (``du
--apparent-size`` without the directories' and symlinks' own sizes); ``physical_bytes``
each file's allocated bytes times its goal (the replicas the cluster keeps at goal, not a
count of the replicas that exist at this moment: those move with repair, and the chunk
table would have to be walked); ``files`` the regular files; ``dirs`` the directories,
the subtree's root included (``find -type d``). Symlinks, devices and fifos count in none.
A file's allocated bytes are its size less the bytes of its punched chunks (sparse.py):
a punched chunk's replicas are collected, so the cluster keeps none of them, and ``du``
on the mount (``st_blocks``, made from the same figure) drops by as much. ``bytes``
stays the size: a punch does not change it. ``State.set_holes`` keeps the sums right as
holes are punched and filled.

HARD LINKS: a file counts once, under its PRIMARY name's directory (as CephFS's primary
link): the directory of its oldest name. ``State.links`` lists, for a file with several
names, the directory of each, oldest first; when the primary name goes, the next one
becomes primary and the file's figures move there. So the root's sums count every named
file exactly once, as ``du`` does. Removed files (the trash, orphans) have no primary
directory (``parent`` 0) and count in no directory: the trash's bytes are the state's
``trash_bytes``.

Checked by ``check`` (the state's invariants call it): every sum recomputed from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metaserver.namespace import sparse

if TYPE_CHECKING:  # state.py calls this module: it imports it
    from metaserver.namespace.state import Inode, State


def contribution(inode: Inode) -> tuple[int, int, int, int]:
    """What an inode adds to its directory's sums."""
    d = inode.dir
    if d is not None:
        return d.r_bytes, d.r_phys, d.r_files, d.r_dirs
    if inode.chunks is not None:
        return inode.size, sparse.allocated_bytes(inode) * inode.goal, 1, 0
    return 0, 0, 0, 0


def add_up(st: State, ino: int, db: int, dp: int, df: int, dd: int) -> None:
    """Add a delta to directory ``ino`` and each directory above it. O(depth)."""
    inodes = st.inodes
    while True:
        d = inodes[ino].dir
        assert d is not None
        d.r_bytes += db
        d.r_phys += dp
        d.r_files += df
        d.r_dirs += dd
        parent = d.parent
        if parent == ino:  # the root
            return
        ino = parent


def named(st: State, inode: Inode, parent_ino: int, name: bytes) -> None:
    """``inode`` got the name ``name`` in directory ``parent_ino`` (after the insert; a
    directory's ``dir.parent`` already says ``parent_ino``)."""
    d = inode.dir
    if d is None:
        if inode.parent:  # another name: the primary one stays
            links = st.links.get(inode.ino)
            if links is None:
                links = st.links[inode.ino] = [inode.parent]
            links.append(parent_ino)
            return
        inode.parent = parent_ino
        if inode.chunks is None:
            return
    else:
        d.name = name
    b, p, f, n = contribution(inode)
    add_up(st, parent_ino, b, p, f, n)


def unnamed(st: State, inode: Inode, parent_ino: int) -> None:
    """A name of ``inode`` in directory ``parent_ino`` is gone (after the removal, before
    a directory's ``dir.parent`` changes)."""
    if inode.dir is None:
        links = st.links.get(inode.ino)
        if links is not None:
            old = links[0]
            links.remove(parent_ino)  # the oldest name in that directory
            new = links[0]
            if len(links) == 1:
                del st.links[inode.ino]
            if new != old:
                inode.parent = new
                if inode.chunks is not None:
                    b, p, f, n = contribution(inode)
                    add_up(st, old, -b, -p, -f, -n)
                    add_up(st, new, b, p, f, n)
            return
        inode.parent = 0
        if inode.chunks is None:
            return
    b, p, f, n = contribution(inode)
    add_up(st, parent_ino, -b, -p, -f, -n)


def usage(st: State, inode: Inode) -> dict[str, int]:
    """The sums of ``inode``'s subtree (a file: its own figures)."""
    b, p, f, n = contribution(inode)
    return {"bytes": b, "physical_bytes": p, "files": f, "dirs": n}


# --- restore and checks ---------------------------------------------------------------


def _names(st: State) -> dict[int, list[int]]:
    """ino -> the directory of each of its names, in directory-table then cookie order."""
    out: dict[int, list[int]] = {}
    for ino, inode in st.inodes.items():
        d = inode.dir
        if d is not None:
            for child, _ in d.entries.values():
                out.setdefault(child, []).append(ino)
    return out


def _sums(st: State, parents: dict[int, int]) -> dict[int, list[int]]:
    """Each directory's sums, computed from scratch: files into their primary
    directory, then directories into their parents, deepest first."""
    inodes = st.inodes
    sums: dict[int, list[int]] = {}
    for ino, inode in inodes.items():
        if inode.dir is not None:
            sums[ino] = [0, 0, 0, 1]
    for ino, parent in parents.items():
        inode = inodes[ino]
        if inode.chunks is not None:
            s = sums[parent]
            s[0] += inode.size
            s[1] += sparse.allocated_bytes(inode) * inode.goal
            s[2] += 1
    depth: dict[int, int] = {}
    for ino in sums:
        chain = []
        at = ino
        while at not in depth:
            d = inodes[at].dir
            assert d is not None
            if d.parent == at:
                depth[at] = 0
                break
            chain.append(at)
            at = d.parent
        base = depth[at]
        for k, c in enumerate(reversed(chain), 1):
            depth[c] = base + k
    for ino in sorted(sums, key=lambda i: -depth[i]):
        d = inodes[ino].dir
        assert d is not None
        if d.parent != ino:
            up, mine = sums[d.parent], sums[ino]
            for k in range(4):
                up[k] += mine[k]
    return sums


def rebuild(st: State, links: list[Any] | None) -> None:
    """After a snapshot is loaded: names of directories, primary directories, ``links``
    (from the snapshot's list, or, for an older snapshot, in directory-table order) and
    every directory's sums."""
    inodes = st.inodes
    names = _names(st)
    for inode in inodes.values():
        d = inode.dir
        if d is not None:
            for name, (child, _) in d.entries.items():
                c = inodes[child].dir
                if c is not None:
                    c.name = name
    # The snapshot's order first: a restored state snapshots as the original did.
    st.links = {int(ino): [int(p) for p in parents] for ino, parents in links or []}
    parents: dict[int, int] = {}
    for ino, dirs in names.items():
        if inodes[ino].dir is not None:
            continue
        if len(dirs) > 1:
            order = st.links.setdefault(ino, dirs)
            assert sorted(order) == sorted(dirs), f"links of {ino} do not match its names"
            dirs = order
        parents[ino] = dirs[0]
        inodes[ino].parent = dirs[0]
    assert all(len(names.get(ino, ())) > 1 for ino in st.links), "links of a single name"
    for ino, inode in inodes.items():
        if inode.dir is None and ino not in parents:
            inode.parent = 0
    for ino, (b, p, f, n) in _sums(st, parents).items():
        d = inodes[ino].dir
        assert d is not None
        d.r_bytes, d.r_phys, d.r_files, d.r_dirs = b, p, f, n


def check(st: State) -> None:
    """Assert every primary directory, name list and sum (O(size of the state))."""
    inodes = st.inodes
    names = _names(st)
    parents: dict[int, int] = {}
    for ino, inode in inodes.items():
        if inode.dir is not None:
            if ino in names:
                parent = inodes[names[ino][0]].dir
                assert parent is not None
                entry = parent.entries.get(inode.dir.name)
                assert entry is not None and entry[0] == ino, f"dir {ino} name"
            continue
        dirs = names.get(ino, [])
        if not dirs:
            assert inode.parent == 0 and ino not in st.links, ino
            continue
        if len(dirs) > 1:
            assert sorted(st.links[ino]) == sorted(dirs), ino
            assert inode.parent == st.links[ino][0], ino
        else:
            assert ino not in st.links and inode.parent == dirs[0], ino
        parents[ino] = inode.parent
    for ino, s in _sums(st, parents).items():
        d = inodes[ino].dir
        assert d is not None
        assert [d.r_bytes, d.r_phys, d.r_files, d.r_dirs] == s, f"rstats of {ino}: {s}"
