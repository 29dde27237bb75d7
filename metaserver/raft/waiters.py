"""What waits on a Raft node (``node.py``) for an entry to apply, or for a read to be allowed.

What it owns: the duck type of a waiter (``Waiter``: an ``asyncio.Future`` is one) and
``Answer``, the waiter that calls back instead of waking a task (``propose_nowait``). What it
must not do: decide when a waiter is answered, or with what (the node does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from dfs.types import Term
from dfs.wire.errors import DfsError

log = logging.getLogger("metaserver.raft.node")  # its lines are the node's

OnDone = Callable[[Any, DfsError | None], None]  # (result, None) or (None, error)


class Waiter(Protocol):
    """What waits in the node's ``_proposals`` and ``_deadlines``."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class Answer:
    """A proposal's waiter that calls ``on_done`` instead of waking a task. Being answered,
    it leaves ``deadlines`` and ``proposals`` (the node's tables), as the future of an
    awaited proposal does in its ``finally``."""

    __slots__ = ("_deadlines", "_done", "_index", "_on_done", "_proposals")

    def __init__(
        self,
        proposals: dict[int, tuple[Term, Waiter]],
        deadlines: dict[Waiter, tuple[float, str]],
        index: int,
        on_done: OnDone,
    ) -> None:
        self._proposals = proposals
        self._deadlines = deadlines
        self._index = index
        self._on_done = on_done
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        self._finish(result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        assert isinstance(exception, DfsError), exception  # the node fails waiters with these
        self._finish(None, exception)

    def _finish(self, result: Any, error: DfsError | None) -> None:
        if self._done:
            return
        self._done = True
        self._deadlines.pop(self, None)
        waiter = self._proposals.get(self._index)
        if waiter is not None and waiter[1] is self:
            del self._proposals[self._index]
        try:
            self._on_done(result, error)
        except Exception:  # the caller's bug must not stop the apply of the entries after
            log.exception("raft event=answer_failed index=%d", self._index)


__all__ = ["Answer", "OnDone", "Waiter"]
