"""Free TCP ports on loopback, for tests and benchmarks that start servers."""

from __future__ import annotations

import socket


def free_loopback_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago.

    All sockets are held open until every port is chosen, so the ports are distinct; a
    port can still be taken by another process before the caller binds it (rare on
    loopback, and the caller's start-up fails loudly if it happens).
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
