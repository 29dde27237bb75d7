"""Polling with a deadline, for tests and test tools (never a bare sleep to wait)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.1
) -> T:
    """Call ``predicate`` until it returns something true, and return that; after
    ``timeout_s`` an ``AssertionError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)  # polling the cluster or a process, with a deadline
