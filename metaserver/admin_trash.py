"""The operator's trash and usage ops on the leader: listing, restoring and purging the
trash, trash times of a subtree, a subtree's usage; and the leader's expiry of the trash.

What it owns: choosing the trash entries a request names (by path or inode number) and
turning them into namespace commands (``metaserver/namespace/trash.py``: every change
goes through Raft), a bounded batch a request. What it must not do: change the state
itself, or block the event loop without a bound (a selection is one pass over the trash's
entries: O(trash) per request, a pass of a dict in memory).

Ops (docs/PROTOCOL.md; leader only)::

    admin.trash_time     {path, recursive?, cursor?} -> {trash_s, kind} | page of counts
    admin.set_trash_time {path, trash_s, recursive?, cursor?} -> {changed, unchanged, cursor}
    admin.trash_list     {path?, ino?, cursor?} -> {entries, cursor, files, bytes}
    admin.trash_restore  {path?, ino?, to?} -> {restored, failed, more}
    admin.trash_purge    {path?, ino?, older_than_s?} -> {purged, more}
    admin.usage          {path? | ino?} -> the namespace's ``usage``

A restore takes, of several entries with one path (a file removed, made again and
removed again), the newest: the others wait for another restore (with ``to``) or expire.
EXPIRY: once a second the leader proposes one ``trash_expire`` of at most
``TRASH_BATCH_MAX`` entries when the earliest expiry has passed (``expire``); the files
leave the trash as orphans, which the orphan sweep frees when no client holds them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from dfs.wire.errors import Invalid
from metaserver.namespace import Namespace
from metaserver.namespace.commands import TRASH_BATCH_MAX
from metaserver.namespace.state import Inode
from metaserver.namespace.trash import next_expiry_ns
from metaserver.namespace.tree import WALK_LIMIT_MAX, resolve, walk

Handler = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]
Propose = Callable[[str, dict[str, Any], dict[str, Any], float], Awaitable[dict[str, Any]]]

LIST_PAGE = 1000
# Entries one set_trash_tree command changes at most, and one page of the survey.
SET_PAGE = 4096
SURVEY_PAGE = 5000


def _kind(inode: Inode) -> str:
    return "files" if inode.chunks is not None else "dirs" if inode.dir else "others"


class TrashAdmin:
    def __init__(
        self, ns: Namespace, *, propose: Propose, read: Callable[[float], Awaitable[None]]
    ) -> None:
        self.ns = ns
        self._propose = propose
        self._read = read

    def ops(self) -> dict[str, Handler]:
        return {
            "admin.trash_time": self.trash_time,
            "admin.set_trash_time": self.set_trash_time,
            "admin.trash_list": self.trash_list,
            "admin.trash_restore": self.trash_restore,
            "admin.trash_purge": self.trash_purge,
            "admin.usage": self.usage,
        }

    # --------------------------------------------------------------- trash times

    async def trash_time(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        root = resolve(self.ns, h["path"])
        if not h.get("recursive", False):
            kind = {"files": "file", "dirs": "dir", "others": "other"}[_kind(root)]
            return {"trash_s": root.trash_s, "kind": kind}
        counts: dict[str, dict[str, int]] = {"files": {}, "dirs": {}, "others": {}}

        def visit(_path: bytes, inode: Inode) -> bool:
            by = counts[_kind(inode)]
            by[str(inode.trash_s)] = by.get(str(inode.trash_s), 0) + 1
            return False

        cursor = walk(self.ns, root.ino, h.get("cursor"), SURVEY_PAGE, visit)
        total = len(self.ns.inodes) if root.ino == 1 else None
        return {**counts, "cursor": cursor, "total": total}

    async def set_trash_time(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        root = resolve(self.ns, h["path"])
        args: dict[str, Any] = {"ino": root.ino, "trash_s": h["trash_s"],
                                "recursive": h.get("recursive", False),
                                "limit": min(SET_PAGE, WALK_LIMIT_MAX)}  # fmt: skip
        if h.get("cursor") is not None:
            args["cursor"] = h["cursor"]
        result = await self._propose("set_trash_tree", args, h, timeout_s)
        return {k: result[k] for k in ("changed", "unchanged", "cursor")}

    # --------------------------------------------------------------- the trash

    def _select(self, h: dict[str, Any]) -> list[int]:
        """The trash entries ``path`` / ``ino`` name, in the order removed."""
        trash = self.ns.trash
        ino = h.get("ino")
        if ino is not None:
            return [ino] if ino in trash else []
        path: bytes = h.get("path") or b"/"
        if not path.startswith(b"/"):
            raise Invalid("path: absolute")
        path = path.rstrip(b"/")
        if not path:
            return list(trash)
        under = path + b"/"
        return [i for i, e in trash.items() if e[2] == path or e[2].startswith(under)]

    async def trash_list(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        chosen = self._select(h)
        start = h.get("cursor") or 0
        page = chosen[start : start + LIST_PAGE]
        trash, inodes = self.ns.trash, self.ns.inodes
        entries = [
            {"ino": i, "path": trash[i][2], "size": inodes[i].size,
             "removed_ns": trash[i][0], "expires_ns": trash[i][1]}
            for i in page
        ]  # fmt: skip
        more = start + LIST_PAGE < len(chosen)
        return {"entries": entries, "cursor": start + LIST_PAGE if more else None,
                "files": len(trash), "bytes": self.ns.trash_bytes}  # fmt: skip

    async def trash_restore(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        trash = self.ns.trash
        newest: dict[bytes, int] = {}
        for i in self._select(h):
            path = trash[i][2]
            if path not in newest or trash[i][0] >= trash[newest[path]][0]:
                newest[path] = i
        chosen = list(newest.values())
        to = h.get("to")
        if to is not None and len(chosen) > 1:
            raise Invalid("to: names one entry only", entries=len(chosen))
        if not chosen:
            return {"restored": 0, "failed": [], "more": False}
        args: dict[str, Any] = {"inos": chosen[:TRASH_BATCH_MAX]}
        if to is not None:
            args["to"] = to
        result = await self._propose("trash_restore", args, h, timeout_s)
        failed = [{"ino": i, "path": trash[i][2] if i in trash else b"", **err}
                  for i, err in result["failed"]]  # fmt: skip
        return {"restored": len(result["restored"]), "failed": failed,
                "more": len(chosen) > TRASH_BATCH_MAX}  # fmt: skip

    async def trash_purge(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        chosen = self._select(h)
        older_than_s = h.get("older_than_s")
        if older_than_s is not None:
            before_ns = time.time_ns() - older_than_s * 1_000_000_000
            trash = self.ns.trash
            chosen = [i for i in chosen if trash[i][0] <= before_ns]
        if not chosen:
            return {"purged": 0, "more": False}
        result = await self._propose(
            "trash_purge", {"inos": chosen[:TRASH_BATCH_MAX]}, h, timeout_s
        )
        return {"purged": result["purged"], "more": len(chosen) > TRASH_BATCH_MAX}

    async def usage(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        ino = h.get("ino")
        if ino is None:
            ino = resolve(self.ns, h.get("path") or b"/").ino
        return self.ns.usage(ino)

    # --------------------------------------------------------------- expiry

    async def expire(self, timeout_s: float) -> int:
        """One bounded step of the trash's expiry (leader only): files expired."""
        due = next_expiry_ns(self.ns)
        if due is None or due > time.time_ns():
            return 0
        result = await self._propose("trash_expire", {"limit": TRASH_BATCH_MAX}, {}, timeout_s)
        return int(result.get("expired", 0))
