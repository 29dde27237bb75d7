"""What every dfs daemon does the same way: log format, and running until told to stop.

What it owns: the process-level conventions shared by the metaserver, the chunkserver and
the Raft key-value test server, so that they behave alike under ``dfs up``, systemd or a
test: one log line format (``time LEVEL logger: message`` with ``key=value`` fields in the
message), the log level from ``--log-level`` or ``DFS_LOG_LEVEL``, and a clean stop on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_log_level() -> str:
    """``DFS_LOG_LEVEL`` (set by ``dfs up`` for its daemons), else INFO."""
    return os.environ.get("DFS_LOG_LEVEL", "INFO")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


async def wait_for_stop(failed: asyncio.Event | None = None) -> bool:
    """Return when SIGTERM or SIGINT arrives (False) or ``failed`` is set (True)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(stop.wait())]
    if failed is not None:
        waits.append(asyncio.create_task(failed.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return failed is not None and failed.is_set()
