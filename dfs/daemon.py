"""What every dfs daemon does the same way: log format, and running until told to stop.

What it owns: the process-level conventions shared by the metaserver, the chunkserver and
the Raft key-value test server, so that they behave alike under ``dfs up``, systemd or a
test: one log line format (``time LEVEL logger: message`` with ``key=value`` fields in the
message), the log level from ``--log-level`` or ``DFS_LOG_LEVEL``, a clean stop on
SIGTERM or SIGINT, the fd limit raised to the hard limit at start, and the event loop's
own error reports rate-limited (``dfs/ratelog.py``: a full fd table made asyncio log a
traceback per refused accept).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dfs import ratelog
from dfs.budget import raise_fd_limit
from dfs.credentials import CredentialFileError, Credentials, TlsCredential
from dfs.secret import SecretFileError, load_secret
from dfs.wire.errors import AuthError


class _Config(Protocol):
    @property
    def secret_file(self) -> Path | None: ...
    @property
    def credential_file(self) -> Path | None: ...


C = TypeVar("C", bound=_Config)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The cyclic garbage collector's first threshold for daemons run with ``fast_loop`` (the
# metaserver and the Raft key-value server): a young-generation pass after this many more
# container objects were allocated than freed (Python's default: 700). A Raft leader's
# log and a namespace grow steadily and are long-lived, so at the default the collector
# ran some 60 passes a second on the leader at 64 clients, each walking young objects that
# then survive, and took 7-10% of its CPU (gc.callbacks, ``scripts/bench raft``'s load);
# at 50,000 it did not run once in the 8 s measured. What is freed by reference counting
# (nearly everything per request) never waits for it; cyclic garbage lives a little longer.
GC_YOUNG_THRESHOLD_FAST = 50_000


def default_log_level() -> str:
    """``DFS_LOG_LEVEL`` (set by ``dfs up`` for its daemons), else INFO."""
    return os.environ.get("DFS_LOG_LEVEL", "INFO")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


async def wait_for_stop(
    failed: asyncio.Event | None = None, *, also: asyncio.Event | None = None
) -> bool:
    """Return when SIGTERM or SIGINT arrives or ``also`` is set (False), or ``failed`` is
    set (True)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(stop.wait())]
    if also is not None:
        waits.append(asyncio.create_task(also.wait()))
    if failed is not None:
        waits.append(asyncio.create_task(failed.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return failed is not None and failed.is_set()


def main(
    prog: str,
    argv: list[str] | None,
    load_config: Callable[[Path], C],
    serve: Callable[[C, Credentials], Coroutine[Any, Any, int]],
    *,
    fast_loop: bool = False,
    check: Callable[[Credentials], object] | None = None,
) -> int:
    """The whole ``main`` of a daemon: ``--config F [--log-level L]``, logging, the config
    and the secret and credential it names, which ``check`` may refuse with ``AuthError``
    (a bad one: a one-line message and exit 2), then ``serve`` (on uvloop with
    ``fast_loop``: see ``run``)."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--log-level", default=default_log_level())
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config)
        tls = config.credential_file
        secret = load_secret(config.secret_file) if config.secret_file is not None else None
        credentials = Credentials(secret, TlsCredential.load(tls) if tls else None)
        if check is not None:
            check(credentials)
    except (OSError, ValueError, SecretFileError, CredentialFileError, AuthError) as e:
        print(f"{prog.rsplit('.', 1)[-1]}: bad config: {e}", file=sys.stderr)
        return 2
    return run(serve(config, credentials), fast_loop=fast_loop)


def run(main: Coroutine[Any, Any, int], *, fast_loop: bool) -> int:
    """Run a daemon's main coroutine: on uvloop when ``fast_loop`` and uvloop is installed
    (``DFS_EVENT_LOOP=asyncio`` forces asyncio's own loop, for comparison and diagnosis),
    else on asyncio's loop. See docs/ARCHITECTURE.md, "Deviations and library choices".
    ``fast_loop`` also makes the garbage collector run less often (GC_YOUNG_THRESHOLD_FAST).
    Raises the fd limit first; the loop's exception handler is ``ratelog``'s."""
    raise_fd_limit()
    main = _rate_limited_loop_errors(main)
    if fast_loop:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD_FAST, older, oldest)
    if fast_loop and os.environ.get("DFS_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass  # not available on this platform: asyncio's loop does the same work
        else:
            result: int = uvloop.run(main)
            return result
    return asyncio.run(main)


async def _rate_limited_loop_errors(main: Coroutine[Any, Any, int]) -> int:
    asyncio.get_running_loop().set_exception_handler(ratelog.loop_exception_handler)
    return await main
