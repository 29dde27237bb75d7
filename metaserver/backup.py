"""``admin.backup`` on the leader: an image of the namespace as of one Raft index, handed
out in bounded pieces (``dfs admin backup``; the file it writes: ``dfs/wire/backupfile.py``).

What it owns: taking the image (``RaftNode.image``: the state machine's snapshot at the
applied index, after a read index, so it holds every write acknowledged before the
request) and keeping it for the reads that follow. What it must not do: stop the loop for
more than the snapshot's encoding (the same cost as a periodic Raft snapshot; the sha256
runs on a thread), or keep images without bound (at most ``IMAGES_MAX``, each dropped
``IDLE_S`` after its last read).

The image is the namespace snapshot's bytes as they are, whatever their format version:
a restore hands them to ``Namespace.restore`` (``metaserver/restore.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dfs.wire.backupfile import PIECE_BYTES
from dfs.wire.errors import NotFound
from metaserver.raft.node import RaftNode

IMAGES_MAX = 2
IDLE_S = 60.0


@dataclass(slots=True)
class _Image:
    index: int
    term: int
    data: bytes
    used_s: float


class Backups:
    def __init__(
        self, node: RaftNode, chunk_size: int, read: Callable[[float], Awaitable[None]]
    ) -> None:
        self._node = node
        self._chunk_size = chunk_size
        self._read = read
        self._images: dict[int, _Image] = {}
        self._tokens = itertools.count(1)

    def ops(self) -> dict[str, Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]]:
        return {"admin.backup": self.backup}

    async def backup(self, h: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        now = time.monotonic()
        for old in [t for t, img in self._images.items() if now - img.used_s > IDLE_S]:
            del self._images[old]
        if h.get("token") is None:
            return await self._take(timeout_s)
        token: int = h["token"]
        img = self._images.get(token)
        if img is None:
            raise NotFound("no such backup image (expired, or taken by another leader)",
                           token=token)  # fmt: skip
        img.used_s = now
        offset: int = h.get("offset", 0)
        return {"data": img.data[offset : offset + PIECE_BYTES]}

    async def _take(self, timeout_s: float) -> dict[str, Any]:
        await self._read(timeout_s)
        index, term, data = self._node.image()  # one moment: no await in between
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
        while len(self._images) >= IMAGES_MAX:
            del self._images[min(self._images, key=lambda t: self._images[t].used_s)]
        token = next(self._tokens)
        self._images[token] = _Image(int(index), int(term), data, time.monotonic())
        return {"token": token, "index": int(index), "term": int(term),
                "chunk_size": self._chunk_size, "image_bytes": len(data),
                "sha256": digest}  # fmt: skip
