"""Client sessions: apply each (client id, sequence number) at most once.

A client that times out or meets a leader change retries its command with the same
sequence number; the retry may reach the log twice. The state machine wraps its apply in
``SessionTable.apply`` so that the second copy returns the first copy's result instead of
running again (Raft thesis §6.3). The table is part of the replicated state: it is applied
from the log on every node and saved in every snapshot, together with the state it guards.

Rules: pure and deterministic (eviction depends only on the applied commands, never on a
clock). A client keeps at most one command in flight per session, so remembering the last
sequence number and its result per client is enough.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

SESSIONS_MAX = 100_000  # least recently used sessions beyond this are forgotten


class StaleSequence(Exception):
    """A command older than the client's last applied one: its answer is gone."""


class SessionTable:
    def __init__(self, sessions_max: int = SESSIONS_MAX) -> None:
        self.sessions_max = sessions_max
        self._last: OrderedDict[int, tuple[int, Any]] = OrderedDict()

    def apply(self, client_id: int, seq: int, run: Callable[[], Any]) -> Any:
        """Run ``run`` unless (client_id, seq) was applied already; return its result.

        ``client_id`` 0 means "no session" (the command is applied every time).
        """
        if client_id == 0:
            return run()
        last = self._last.get(client_id)
        if last is not None:
            last_seq, last_result = last
            if seq == last_seq:
                self._last.move_to_end(client_id)
                return last_result
            if seq < last_seq:
                raise StaleSequence(f"client {client_id} seq {seq} < {last_seq}")
        result = run()
        self._last[client_id] = (seq, result)
        self._last.move_to_end(client_id)
        while len(self._last) > self.sessions_max:
            self._last.popitem(last=False)
        return result

    def to_wire(self) -> list[Any]:
        return [[c, s, r] for c, (s, r) in self._last.items()]

    @classmethod
    def from_wire(cls, v: Any, sessions_max: int = SESSIONS_MAX) -> SessionTable:
        t = cls(sessions_max)
        for c, s, r in v:
            t._last[int(c)] = (int(s), r)
        return t

    def __len__(self) -> int:
        return len(self._last)
