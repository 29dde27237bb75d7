"""A replicated key-value state machine: the Raft library's test and demo application.

It has no file-system knowledge; it exists so the simulator and the real-process tests
can check the library end to end (linearizable puts, appends and reads, exactly-once
retries, snapshots). Values are strings. Commands are msgpack lists, version 1:

    [client_id, seq, op, key, value]      op in {"put", "append"}

``apply`` returns the key's value after the command (so a client can see what its own
write produced). Reads are not commands: a caller gets a ReadIndex from Raft, waits until
the state machine has applied that index, then calls ``get``.
"""

from __future__ import annotations

from typing import Any

import msgpack

from metaserver.raft.sessions import SessionTable, StaleSequence

KV_FORMAT_VERSION = 1
KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1 << 20


def encode_command(client_id: int, seq: int, op: str, key: str, value: str) -> bytes:
    return bytes(msgpack.packb([client_id, seq, op, key, value]))


def decode_command(data: bytes) -> tuple[int, int, str, str, str]:
    try:
        c = msgpack.unpackb(data, raw=False)
    except Exception as e:  # any malformed bytes: the command is rejected, not applied
        raise ValueError(f"malformed kv command: {e}") from e
    if not (isinstance(c, list) and len(c) == 5):
        raise ValueError("malformed kv command")
    client_id, seq, op, key, value = c
    if (
        type(client_id) is not int
        or type(seq) is not int
        or op not in ("put", "append")
        or not isinstance(key, str)
        or not isinstance(value, str)
        or len(key) > KEY_BYTES_MAX
        or len(value) > VALUE_BYTES_MAX
    ):
        raise ValueError("malformed kv command")
    return client_id, seq, op, key, value


class KvStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions = SessionTable()
        self.applied_commands = 0

    def apply(self, data: bytes) -> Any:
        """Apply one committed command; returns the value after it, or an error string."""
        try:
            client_id, seq, op, key, value = decode_command(data)
        except ValueError as e:
            return {"error": str(e)}

        def run() -> str:
            self.applied_commands += 1
            if op == "put":
                self.data[key] = value
            else:
                self.data[key] = self.data.get(key, "") + value
            return self.data[key]

        try:
            return self.sessions.apply(client_id, seq, run)
        except StaleSequence as e:
            return {"error": str(e)}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        blob = [KV_FORMAT_VERSION, self.data, self.sessions.to_wire(), self.applied_commands]
        return bytes(msgpack.packb(blob))

    def restore(self, blob: bytes) -> None:
        if not blob:
            self.__init__()  # type: ignore[misc]  # the empty snapshot of a new cluster
            return
        version, data, sessions, applied = msgpack.unpackb(blob, raw=False)
        if version != KV_FORMAT_VERSION:
            raise ValueError(f"unknown kv snapshot version {version}")
        self.data = dict(data)
        self.sessions = SessionTable.from_wire(sessions)
        self.applied_commands = applied
