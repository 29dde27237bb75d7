"""The leader's fsck and goal survey of a subtree, one page of the walk at a time
(``dfs admin fsck``, ``dfs admin getgoal -r``; the ops are in ``metaserver/admin.py``).

What it owns: the judgement of each chunk of a file, from the chunk table (hard state)
and the leader's soft state (the registry's liveness, the chunk core's bad marks and
unanswered version pushes), and the shape of a page's answer. What it must not do: change
anything (it reads; repair and trimming are the chunk core's), or walk without a bound
(``metaserver/namespace/tree.py`` pages the walk).

A chunk with data (an empty chunk is always fine) is judged, worst first:
- ``missing``: no member of its replica set is alive (its data is lost unless a dead
  chunkserver comes back; a bad last replica left the set and waits in quarantine);
- ``no_good_replica``: live members, but each was reported bad or may be stale (a push of
  the chunk's version it did not answer), or none took the chunk's newest version (every
  push of it failed: ``Repair.is_unpushed``; a reader finds no replica at that version);
- ``under_goal``: fewer good live members than the file's goal (a draining server's
  replica counts: it serves reads until the copy elsewhere joined);
- ``corrupt``: a replica was reported bad (scrubber, read checksum, disk error) and the
  chunk is not back at goal without it: that replica is in its chunkserver's quarantine/
  until it is deleted (``quarantined_on``).
A chunk with more good live members than its goal is ``over_goal`` in the summary, not a
finding: trimming takes it down. A file is at risk when one of its chunks has a finding.

A file with several names is judged, and counted, under each. What the leader knows and
what it does not: bad marks and unanswered pushes are this
leader's soft state (``metaserver/chunks/core.py``). A new leader counts every known
chunkserver alive until it has heard from it (the registry's grace): while that lasts
the answer says ``settling`` and what it finds is provisional.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metaserver.chunks.core import ChunkCore
from metaserver.chunks.placement import Registry
from metaserver.namespace import Namespace
from metaserver.namespace.state import ROOT_INO, Inode
from metaserver.namespace.tree import Cursor, walk

# Worst first: a file's ``problems`` are listed in this order.
PROBLEMS = ("missing", "no_good_replica", "under_goal", "corrupt")
# Entries one page walks (it runs on the leader's event loop: about 14 ms for 5,000 files
# of one chunk each on a 2-core machine; 48 ms for 20,000), files one page names, chunks
# named per file (the rest counted).
WALK_PAGE = 5_000
FILES_PAGE_MAX = 500
CHUNKS_PER_FILE_MAX = 16


class Judge:
    """One page's judgement: the leader's view at one moment (``now``)."""

    def __init__(
        self,
        ns: Namespace,
        registry: Registry,
        core: ChunkCore,
        now: float,
        unpushed: Callable[[int], bool] = lambda _chunk_id: False,
    ) -> None:
        self.ns = ns
        self.core = core
        self._unpushed = unpushed
        self._alive: dict[int, bool] = {}
        self._registry = registry
        self._now = now
        self.files: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {
            "files": 0,
            "dirs": 0,
            "others": 0,
            "bytes": 0,
            "chunks": 0,
            "empty_chunks": 0,
            "over_goal": 0,
            "files_at_risk": 0,
            "problems": dict.fromkeys(PROBLEMS, 0),
            "replicas": {},  # good live replicas -> chunks with data that have so many
        }

    def alive(self, cs_id: int) -> bool:
        a = self._alive.get(cs_id)
        if a is None:
            a = self._alive[cs_id] = self._registry.is_alive(cs_id, self._now)
        return a

    def chunk(self, chunk_id: int, goal: int) -> dict[str, Any] | None:
        """The finding on one chunk with data (None: fine), counting it in the summary."""
        s = self.summary
        chunk = self.ns.chunk_table.get(chunk_id)
        s["chunks"] += 1
        if chunk is None or chunk.length == 0:
            s["empty_chunks"] += 1
            return None
        bad = self.core.bad_member(chunk_id, chunk.version)
        mark = self.core.bad.get(chunk_id)
        unsure = self.core.unanswered.get(chunk_id, {})
        live = [c for c in chunk.replicas if self.alive(c)]
        # Unpushed: no member holds the table's version.
        good = [] if self._unpushed(chunk_id) else [c for c in live if c != bad and c not in unsure]
        replicas = s["replicas"]
        replicas[str(len(good))] = replicas.get(str(len(good)), 0) + 1
        if not live:
            problem = "missing"
        elif not good:
            problem = "no_good_replica"
        elif len(good) < goal:
            problem = "under_goal"
        elif mark is not None:
            problem = "corrupt"
        else:
            if len(good) > goal:
                s["over_goal"] += 1
            return None
        s["problems"][problem] += 1
        finding = {
            "chunk_id": chunk_id,
            "index": chunk.index,
            "problem": problem,
            "replicas": list(chunk.replicas),
            "live": len(live),
            "good": len(good),
        }
        if mark is not None:
            finding["quarantined_on"] = mark[0]
        return finding

    def file(self, path: bytes, inode: Inode) -> bool:
        """Judge a file's chunks; True when the page holds as many findings as it may."""
        s = self.summary
        s["files"] += 1
        s["bytes"] += inode.size
        chunks = inode.chunks
        assert chunks is not None
        found = []
        for index in sorted(chunks):
            finding = self.chunk(chunks[index], inode.goal)
            if finding is not None:
                found.append(finding)
        if not found:
            return False
        s["files_at_risk"] += 1
        kinds = {f["problem"] for f in found}
        self.files.append(
            {
                "path": path,
                "ino": inode.ino,
                "goal": inode.goal,
                "size": inode.size,
                "problems": [p for p in PROBLEMS if p in kinds],
                "chunks_at_risk": len(found),
                "chunks": found[:CHUNKS_PER_FILE_MAX],
            }
        )
        return len(self.files) >= FILES_PAGE_MAX

    def visit(self, path: bytes, inode: Inode) -> bool:
        if inode.chunks is not None:
            return self.file(path, inode)
        self.summary["dirs" if inode.dir is not None else "others"] += 1
        return False


def fsck_page(
    ns: Namespace,
    registry: Registry,
    core: ChunkCore,
    now: float,
    root: Inode,
    cursor: Cursor | None,
    limit: int = WALK_PAGE,
    unpushed: Callable[[int], bool] = lambda _chunk_id: False,
) -> dict[str, Any]:
    """One page of ``admin.fsck`` (docs/PROTOCOL.md): ``{files, summary, cursor, total,
    settling}``. ``total``: the entries of the whole namespace when ``root`` is its root
    (a progress bar's end), else None."""
    judge = Judge(ns, registry, core, now, unpushed)
    next_cursor = walk(ns, root.ino, cursor, limit, judge.visit)
    return {
        "files": judge.files,
        "summary": judge.summary,
        "cursor": next_cursor,
        "total": _total(ns, root),
        "settling": not core.quiet(-1, now),
    }


def goals_page(
    ns: Namespace, root: Inode, cursor: Cursor | None, limit: int = WALK_PAGE
) -> dict[str, Any]:
    """One page of ``admin.goals``: how many files, directories and other inodes (symlinks,
    devices) have each goal (``{"files": {"2": n}, ...}``), and the cursor."""
    counts: dict[str, dict[str, int]] = {"files": {}, "dirs": {}, "others": {}}

    def visit(_path: bytes, inode: Inode) -> bool:
        kind = "files" if inode.chunks is not None else "dirs" if inode.dir else "others"
        by_goal = counts[kind]
        by_goal[str(inode.goal)] = by_goal.get(str(inode.goal), 0) + 1
        return False

    next_cursor = walk(ns, root.ino, cursor, limit, visit)
    return {**counts, "cursor": next_cursor, "total": _total(ns, root)}


def _total(ns: Namespace, root: Inode) -> int | None:
    return len(ns.inodes) if root.ino == ROOT_INO else None
