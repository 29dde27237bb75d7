"""Each thread's pool of large payload buffers, which the RPC drivers give their frame
decoders (``dfs/wire/codec.py`` ``PayloadPool``: why it exists and when a buffer is free).

What it owns: one ``PayloadPool`` per thread, because taking a free buffer (a check of its
reference count, then the hand-out) is not atomic; the pools' bounds. What it must not do:
decode anything (the codec does), or be shared between threads.
"""

from __future__ import annotations

import threading

from dfs.wire.codec import PayloadPool

# What each thread's pool keeps: eight of the 4 MiB pieces chunk reads and writes move
# (32 MiB at most, on top of the budgets of ``dfs/budget.py``, which count what is in use).
POOLED_PAYLOADS_MAX = 8
POOLED_PAYLOAD_BYTES_MAX = 4 * 1024 * 1024
_pools = threading.local()


def payload_pool() -> PayloadPool:
    """This thread's ``PayloadPool``."""
    pool: PayloadPool | None = getattr(_pools, "pool", None)
    if pool is None:
        pool = _pools.pool = PayloadPool(POOLED_PAYLOADS_MAX, POOLED_PAYLOAD_BYTES_MAX)
    return pool


def take_payload(size: int) -> bytearray:
    """A buffer of ``size`` bytes for a payload received in place, from this thread's pool
    (give it to ``FrameDecoder(alloc=...)``)."""
    return payload_pool().take(size)


__all__ = ["POOLED_PAYLOADS_MAX", "POOLED_PAYLOAD_BYTES_MAX", "payload_pool", "take_payload"]
