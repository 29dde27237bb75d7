"""``daemon.run(fast_loop=True)`` makes the cyclic collector lazier; other daemons keep
Python's default."""

from __future__ import annotations

import gc

from dfs import daemon


async def _threshold() -> int:
    return gc.get_threshold()[0]


def test_fast_loop_raises_the_young_threshold_and_only_it() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert daemon.run(_threshold(), fast_loop=False) == 700
        assert daemon.run(_threshold(), fast_loop=True) == daemon.GC_YOUNG_THRESHOLD_FAST
        assert gc.get_threshold()[1:] == (10, 10)
    finally:
        gc.set_threshold(*saved)
