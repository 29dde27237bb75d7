"""Reserved identities: inode numbers and first chunks handed to a client ahead of its
creates. Pure.

What it owns: the ``reserve`` command, the pools it fills (``State.pools``), and the
rules by which a create may use an entry of them (``take``). The model is CephFS's
delegated inode numbers: a client that holds a directory's lease answers a create in it
at once, with an inode number and a first chunk it was given earlier, and ships the
create to the leader in its next ``fs.batch`` (docs/ARCHITECTURE.md, "Directory
leases"). The reservation goes through Raft, so every replica (and the next leader)
knows which numbers are taken and by whom.

Rules:
1. An entry is ``ino -> (chunk_id, replicas, until_ns)``: a fresh inode number and a
   fresh chunk id (both from the state's counters, never reused, invariant 4), the
   chunkservers the leader placed that chunk on, and the leader's time after which the
   entry is void.
2. A create, mkdir or symlink may use an entry of its own holder's pool only, once, before
   ``until_ns`` (the command's time, the leader's clock): the new inode gets that number;
   a file's chunk 0 that chunk id at version 1 on those replicas (a directory or a symlink
   leaves the chunk id unused, never to be reused).
3. Expired entries are swept by the next ``reserve`` (anybody's): the numbers are simply
   never used. A client's data written to a reserved chunk whose create never landed is
   on chunkservers only; once the entry is gone, their reports get it deleted
   (``metaserver/repair.py``: a chunk id below the counter that nothing knows). Until
   then the report leaves it alone (``reserved``).
4. Bounded: at most ``RESERVE_ENTRIES_MAX`` per command and ``POOL_ENTRIES_MAX`` per
   holder; a holder's pool past that is refused (``NoSpace``).
"""

from __future__ import annotations

from typing import Any

from dfs.wire.errors import Invalid, NoSpace, Stale
from dfs.wire.limits import INT63_MAX, RESERVE_ENTRIES_MAX
from metaserver.namespace.commands import REPLICAS_MAX, arg_int, arg_int_list, check_fields
from metaserver.namespace.state import State

# One reserve command hands out at most this many entries; a holder keeps at most this
# many (a client asks for more when it runs low, so two batches' worth is plenty).
POOL_ENTRIES_MAX = 1024
# An entry's life, in the leader's time. A client uses an entry only within minutes of
# getting it (while its write handle's token is young: dfs/client/inopool.py), and the
# create that used it is sent again until answered while the client lives: the entry
# must outlast any outage the cluster comes back from, or an acknowledged file would be
# refused when it finally lands. A day: what a dead client leaves reserved (numbers, and
# the data of creates that never landed) is freed after that.
POOL_TTL_NS = 24 * 3600 * 1_000_000_000

_RESERVE = frozenset({"holder", "replicas"})


def reserve(st: State, now_ns: int, a: dict[str, Any]) -> dict[str, Any]:
    """``reserve``: ``replicas`` is a list of replica sets (one per entry, placed by the
    leader); answers ``entries`` ``[[ino, chunk_id, replicas], ...]`` and ``until_ns``."""
    check_fields(a, _RESERVE)
    holder = arg_int(a, "holder", 1, INT63_MAX)
    sets = a.get("replicas")
    if type(sets) is not list or not 1 <= len(sets) <= RESERVE_ENTRIES_MAX:
        raise Invalid(f"replicas: 1..{RESERVE_ENTRIES_MAX} replica sets")
    checked = [arg_int_list({"r": s}, "r", REPLICAS_MAX) for s in sets]
    for replicas in checked:
        if not replicas or len(set(replicas)) != len(replicas):
            raise Invalid("each replica set: distinct chunkservers, at least one")
        for cs_id in replicas:
            if cs_id not in st.cs_table:
                raise Invalid("unknown chunkserver", cs_id=cs_id)
    held = sum(1 for _, _, until in st.pools.get(holder, {}).values() if until > now_ns)
    if held + len(checked) > POOL_ENTRIES_MAX:
        raise NoSpace("this client holds enough reserved inodes", held=held)
    # --- checked: change the state ---
    sweep(st, now_ns)
    pool = st.pools.setdefault(holder, {})
    until_ns = now_ns + POOL_TTL_NS
    entries: list[list[Any]] = []
    for replicas in checked:
        ino, chunk_id = st.next_ino, st.next_chunk_id
        st.next_ino, st.next_chunk_id = ino + 1, chunk_id + 1
        pool[ino] = (chunk_id, replicas, until_ns)
        st.reserved_chunks[chunk_id] = holder
        entries.append([ino, chunk_id, list(replicas)])
    return {"ok": True, "entries": entries, "until_ns": until_ns}


def check_take(st: State, holder: int, ino: int, now_ns: int) -> tuple[int, list[int]]:
    """The (chunk id, replicas) of ``holder``'s entry ``ino``, if it may be used now
    (rule 2); ``Stale`` if not. Changes nothing (``ops.py`` rule 1: ``take`` after)."""
    entry = st.pools.get(holder, {}).get(ino)
    if entry is None:
        raise Stale("inode number not reserved by this client", ino=ino)
    chunk_id, replicas, until_ns = entry
    if now_ns >= until_ns:
        raise Stale("reserved inode number expired", ino=ino)
    return chunk_id, replicas


def take(st: State, holder: int, ino: int) -> None:
    """Use up entry ``ino`` (after ``check_take``)."""
    pool = st.pools[holder]
    chunk_id, _, _ = pool.pop(ino)
    del st.reserved_chunks[chunk_id]
    if not pool:
        del st.pools[holder]


def sweep(st: State, now_ns: int) -> None:
    """Drop every expired entry (rule 3)."""
    for holder in list(st.pools):
        pool = st.pools[holder]
        for ino in [i for i, (_, _, until) in pool.items() if until <= now_ns]:
            chunk_id, _, _ = pool.pop(ino)
            del st.reserved_chunks[chunk_id]
        if not pool:
            del st.pools[holder]


__all__ = ["POOL_ENTRIES_MAX", "POOL_TTL_NS", "RESERVE_ENTRIES_MAX", "check_take", "reserve",
           "sweep", "take"]  # fmt: skip
