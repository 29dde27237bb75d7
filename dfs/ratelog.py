"""Rate-limited logging: one line per kind of event per interval, not one per occurrence.

What it owns: the rule for messages that repeat while a condition lasts (a full fd table
refusing every accept, a peer that never answers, a heartbeat that fails every second).
Each such message has a key (the event, and whatever distinguishes its cases: a peer's
host); the first occurrence of a key is logged at once, then at most one line per
``interval_s``, which says how many were left out since the last (``suppressed=N``).
A fault that floods cannot fill the disk or bury the one line that explains it.

What it must not do: decide levels or wording (the caller does), or keep keys without
bound: at most ``KEYS_MAX`` are remembered, all forgotten at once past it (the next line
of each is then logged at once).

``loop_exception_handler`` gives the event loop's own reports (asyncio's "socket.accept() out of
system resource", callbacks that raised) the same treatment: ``daemon.run`` installs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

# One line per key per this many seconds.
INTERVAL_S = 10.0
KEYS_MAX = 4096
_instances: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


class RateLimitedLog:
    """``log(level, key, msg, *args)``: like ``logger.log`` at most once per key per
    ``interval_s``; the line after a quiet stretch names how many were suppressed."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        # key -> (time of the last line logged, occurrences suppressed since)
        self._keys: dict[Hashable, tuple[float, int]] = {}
        _instances.add(self)

    def log(self, level: int, key: Hashable, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Log unless ``key`` was logged less than ``interval_s`` ago; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        last = self._keys.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._keys[key] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._keys) >= KEYS_MAX:
            self._keys.clear()
        self._keys[key] = (now, 0)
        if last is not None and last[1]:
            msg = f"{msg} suppressed=%d"
            args = (*args, last[1])
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


def forget_all() -> None:
    """Forget every key of every instance: the next line of each is logged at once (for
    tests, each of which expects its own lines)."""
    for instance in list(_instances):
        instance._keys.clear()


_loop_log = RateLimitedLog(logging.getLogger("asyncio"))


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop exception handler that logs each kind of report (its message and the
    exception's type) at most once per interval, with the traceback only on that line."""
    message = str(context.get("message", "unhandled exception in event loop"))
    exception = context.get("exception")
    key = (message, type(exception).__name__)
    detail = f" error={exception!r}" if exception is not None else ""
    _loop_log.log(
        logging.ERROR,
        key,
        "event loop: %s%s",
        message,
        detail,
        exc_info=exception if isinstance(exception, BaseException) else None,
    )


__all__ = ["INTERVAL_S", "RateLimitedLog", "forget_all", "loop_exception_handler"]
