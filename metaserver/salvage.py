"""``admin.salvage`` on the leader (``dfs admin fsck --salvage PATH``): for each chunk of a
file that no good live replica holds, the best quarantined copy on any live chunkserver is
made a live replica again, then re-replication restores the goal.

What it owns: finding the chunks to salvage (``fsck.Judge``'s ``missing`` and
``no_good_replica``), asking the live chunkservers for their quarantined copies
(``chunk.quarantined``), choosing the best (the most blocks that verify against the copy's
own checksums; ties: the newest version, then the longest), having its chunkserver make
it the replica at the chunk table's version and length (``chunk.salvage``), and the
replica set taking it back (``Repair.adopt``: ``replica_add``, a version bump, the push).
What it must not do: touch a chunk that still has a good live replica (a quarantined copy
is never better than one), or decide what a lost block reads as: the operator's ``zero``
(``chunkserver/salvage.py``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dfs.wire.errors import DfsError, Invalid, IsDir
from metaserver.fsck import Judge
from metaserver.namespace.tree import resolve

if TYPE_CHECKING:
    from metaserver.server import MetaServer

QUERY_TIMEOUT_S = 10.0
SALVAGE_TIMEOUT_S = 60.0
LOST = ("missing", "no_good_replica")


class Salvager:
    def __init__(self, server: MetaServer) -> None:
        self._s = server

    def ops(self) -> dict[str, Any]:
        return {"admin.salvage": self.salvage}

    async def salvage(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        s = self._s
        await s._read(timeout_s)
        s.know_all_chunkservers()
        inode = resolve(s.ns, h["path"])
        if inode.chunks is None:
            if inode.dir is not None:
                raise IsDir("salvage takes a file", path=h["path"])
            raise Invalid("salvage takes a regular file", path=h["path"])
        judge = Judge(s.ns, s.registry, s.repair.core, s.repair.clock(), s.repair.is_unpushed)
        out = []
        for index in sorted(inode.chunks):
            chunk_id = inode.chunks[index]
            finding = judge.chunk(chunk_id, inode.goal)
            if finding is None or finding["problem"] not in LOST:
                continue
            out.append({"chunk_id": chunk_id, "index": index, **await self._one(chunk_id, h)})
        return {"chunks": out}

    async def _one(self, chunk_id: int, h: dict[str, Any]) -> dict[str, Any]:
        s = self._s
        now = s.repair.clock()
        live = [c for c in s.ns.chunkservers() if s.registry.is_alive(c, now)]

        async def copies(cs_id: int) -> list[dict[str, Any]]:
            try:
                answer = await s.cs_call(cs_id, "chunk.quarantined", QUERY_TIMEOUT_S,
                                         chunk_id=chunk_id)  # fmt: skip
            except (DfsError, OSError, TimeoutError):
                return []
            return [{**c, "cs_id": cs_id} for c in answer.get("copies", [])]

        found = [c for cs in await asyncio.gather(*(copies(c) for c in live)) for c in cs]
        if not found:
            return {"salvaged": False, "why": "no quarantined copy on a live chunkserver"}
        best = max(found, key=lambda c: (c["good_blocks"], c["version"], c["length"]))
        chunk = s.ns.chunk_table.get(chunk_id)
        if chunk is None:
            return {"salvaged": False, "why": "the chunk is gone"}
        try:
            answer = await s.cs_call(
                best["cs_id"], "chunk.salvage", SALVAGE_TIMEOUT_S, chunk_id=chunk_id,
                version=chunk.version, length=chunk.length, copy=best["name"],
                zero=bool(h.get("zero", False)),
            )  # fmt: skip
        except (DfsError, OSError, TimeoutError) as e:
            return {"salvaged": False, "why": f"chunk.salvage on {best['cs_id']}: {e}"}
        await s.repair.adopt(best["cs_id"], chunk_id)
        chunk = s.ns.chunk_table.get(chunk_id)
        joined = chunk is not None and best["cs_id"] in chunk.replicas
        return {
            "salvaged": joined,
            "why": "" if joined else "the replica set did not take it back (see the leader's log)",
            "cs_id": best["cs_id"], "copy": best["name"], "blocks": best["blocks"],
            "good_blocks": best["good_blocks"], "lost_blocks": answer["lost_blocks"],
            "copies": len(found),
        }  # fmt: skip
