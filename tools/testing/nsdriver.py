"""A namespace driven as the metaserver drives it, for the namespace's unit tests: one
session, a rising sequence number, a clock a second further on every command, the
invariants checked after each, one chunkserver registered (id 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dfs.wire.errors import error_from_wire
from metaserver.namespace import Namespace, encode_command

S = 1_000_000_000  # a second, in ns


class NamespaceDriver:
    def __init__(self, chunk_size_bytes: int, trash_s: int) -> None:
        self.ns = Namespace(chunk_size_bytes, trash_s_default=trash_s)
        self.chunk_size_bytes = chunk_size_bytes
        self.seq = 0
        self.now = 10 * S
        self.ok("cs_register", uuid="u", address="h:1")

    def apply(self, op: str, **args: Any) -> dict[str, Any]:
        """``op`` applied; its result, failed or not."""
        self.seq += 1
        self.now += S
        result = self.ns.apply(encode_command(op, 1, self.seq, self.now, args))
        self.ns.check_invariants()
        return result

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        """``op`` applied; its error raised if it failed."""
        result = self.apply(op, **args)
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    def write(self, ino: int, indexes: Iterable[int], size: int) -> None:
        """What a writer's close commits: a chunk at each of ``indexes`` (whole, or up
        to ``size``) and the size ``size``."""
        entries = []
        for index in indexes:
            h = self.ok("write_handle", ino=ino, index=index, replicas=[1])
            length = min(self.chunk_size_bytes, size - index * self.chunk_size_bytes)
            entries.append([index, length, h["chunk_id"], h["version"]])
        self.ok("commit", ino=ino, size=size, mtime_ns=1, chunks=entries)
