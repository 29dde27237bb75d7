"""Counts and total time per operation: what a profile of the mount starts from. Pure.

``OpStats`` is kept by the connection pool (every RPC this client sends, by op) and by the
FUSE adapter (every request the kernel sends, by type). Recording is one dict update, cheap
next to any round trip, so it is always on; the mount logs the table when it unmounts if
asked to (``DFS_MOUNT_STATS``, see ``dfs/fuse/mount.py``).
"""

from __future__ import annotations


class OpStats:
    """Per-op call counts and total seconds."""

    __slots__ = ("_ops",)

    def __init__(self) -> None:
        self._ops: dict[str, list[float]] = {}

    def record(self, op: str, seconds: float) -> None:
        item = self._ops.get(op)
        if item is None:
            self._ops[op] = [1, seconds]
        else:
            item[0] += 1
            item[1] += seconds

    def count(self, op: str) -> int:
        item = self._ops.get(op)
        return int(item[0]) if item is not None else 0

    def counts(self) -> dict[str, int]:
        return {op: int(item[0]) for op, item in self._ops.items()}

    def clear(self) -> None:
        self._ops.clear()

    def table(self) -> str:
        """One line per op, most total time first: ``op count total_ms mean_us``."""
        rows = sorted(self._ops.items(), key=lambda kv: -kv[1][1])
        return "\n".join(
            f"{op:<24} {int(n):>8} {total * 1e3:>10.1f} ms {total / n * 1e6:>9.0f} us"
            for op, (n, total) in rows
        )


__all__ = ["OpStats"]
