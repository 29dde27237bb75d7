"""Running a mount: checks on the mountpoint, the trio loop, readahead, clean unmount.

What it owns: the life of one mount process, in this order —
1. check the mountpoint (exists, a directory, empty, not already a mount): a clear
   ``MountError`` instead of libfuse's bare "fuse_session_mount failed";
2. ``trio.run``: connect an ``FsClient`` to the cluster (anyio runs on trio here) and only
   then mount (``pyfuse3.init``), so an unreachable cluster never leaves a dead mount;
3. once the kernel's INIT is answered, raise the mount's readahead to 1 MiB (the kernel
   resets it when the connection starts, so not before; notes/fuse.md: with 128 KiB the
   kernel never asks for more than 128 KiB per read), then write the PID file, which is
   how ``dfs mount`` (in the background) knows the mount is live;
4. serve (``pyfuse3.main``) until the file system is unmounted (``fusermount3 -u``) or
   SIGTERM/SIGINT arrives; on a signal, stop taking requests, let running ones finish
   (bounded by ``SHUTDOWN_GRACE_S``), close the handles still open (committing their
   writes), unmount (lazily, as libfuse does for root: processes still inside the mount
   get errors rather than keeping it) and remove the PID file.

What it must not do: know file-system semantics (``operations.py``) or parse command lines
(``dfs.cli.main``).
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from dfs.client import ClientOptions, FsClient
from dfs.credentials import Credential
from dfs.fuse.mountinfo import FS_TYPE, mount_info, resolve
from dfs.fuse.operations import DfsOperations

log = logging.getLogger(__name__)

# Readahead of the mount's backing device, in KiB: 1 MiB read requests (notes/fuse.md).
READAHEAD_KB = 1024
# After SIGTERM, how long requests already running may take before they are cancelled:
# each is bounded by the client's timeout anyway; this bounds the sum at shutdown.
SHUTDOWN_GRACE_S = 10.0
# Set (to anything) in the mount's environment: log how many requests of each type the
# kernel sent and how many RPCs of each op they cost, with their time, at unmount.
STATS_ENV = "DFS_MOUNT_STATS"
# Set to 0 in the mount's environment: every removal waits for its own commit, as before
# directory leases (for A/B measurements and for ruling them out when chasing a bug).
DIR_LEASES_ENV = "DFS_DIR_LEASES"
# Bytes: chunk writes up to this size go to every replica at once (ClientOptions
# .fanout_write_bytes_max; 0: every write along the chain), for A/B measurements.
FANOUT_ENV = "DFS_FANOUT_BYTES"
# gc.set_threshold for the mount's process (see ``run``).
GC_THRESHOLDS = (50_000, 50, 1_000)


class MountError(Exception):
    """Something about the mountpoint or the mount that the user must fix."""


def check_mountpoint(path: str | Path) -> Path:
    """The mountpoint, absolute; ``MountError`` with what is wrong otherwise."""
    p = Path(resolve(path))
    info = mount_info(p)
    if info is not None:
        if info.fstype == FS_TYPE:
            raise MountError(f"{p} is already a dfs mount (dfs umount {p} first)")
        raise MountError(f"{p} is already a mount point ({info.fstype}): busy")
    try:
        p.stat()
    except FileNotFoundError:
        raise MountError(f"mountpoint {p} does not exist (mkdir it first)") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:  # a FUSE mount whose process died
            raise MountError(f"{p} is a dead mount: run fusermount3 -u {p}") from None
        raise MountError(f"mountpoint {p}: {e.strerror}") from None
    if not p.is_dir():
        raise MountError(f"mountpoint {p} is not a directory")
    try:
        if any(os.scandir(p)):
            raise MountError(f"mountpoint {p} is not empty (its files would be hidden)")
    except PermissionError:
        raise MountError(f"mountpoint {p}: permission denied") from None
    return p


def mount_options(*, allow_other: bool) -> set[str]:
    """Options for ``pyfuse3.init``: the kernel checks permissions (design.md §7), the
    mount shows as ``dfs`` of type ``fuse.dfs`` in mount(8) and df(1)."""
    options = {"default_permissions", "fsname=dfs", "subtype=dfs"}
    if allow_other:
        options.add("allow_other")
    return options


@dataclass
class MountConfig:
    meta_addresses: list[str]
    secret: Credential  # the cluster's (dfs/credentials.py)
    mountpoint: Path
    allow_other: bool = False
    timeout_s: float = 30.0
    attr_ttl_s: float | None = None  # None: ClientOptions' default
    sync_on_close: bool = False  # ClientOptions.sync_on_close: every close is an fsync
    local_reads: bool = True  # ClientOptions.local_reads: SHORT-CIRCUIT READS
    pid_file: Path | None = None
    readahead_kb: int = READAHEAD_KB
    # Filled in by run(): set once the kernel's INIT has been answered.
    live: trio.Event | None = field(default=None, repr=False)


def client_options(config: MountConfig) -> ClientOptions:
    options = ClientOptions(name="dfs-mount")
    # No single attempt, connect or chunk I/O may outlast the whole operation.
    options = dataclasses.replace(
        options,
        timeout_s=config.timeout_s,
        attempt_timeout_s=min(options.attempt_timeout_s, config.timeout_s),
        connect_timeout_s=min(options.connect_timeout_s, config.timeout_s),
        io_timeout_s=min(options.io_timeout_s, config.timeout_s),
    )
    if config.sync_on_close:
        options = dataclasses.replace(options, sync_on_close=True)
    if not config.local_reads:
        options = dataclasses.replace(options, local_reads=False)
    if config.attr_ttl_s is not None:
        options = dataclasses.replace(options, attr_ttl_s=config.attr_ttl_s)
    if os.environ.get(DIR_LEASES_ENV) == "0":
        options = dataclasses.replace(options, dir_leases=False)
    fanout = os.environ.get(FANOUT_ENV, "")
    if fanout.isdigit():
        options = dataclasses.replace(options, fanout_write_bytes_max=int(fanout))
    return options


def set_readahead(mountpoint: Path, kb: int) -> bool:
    """Write the mount's ``read_ahead_kb``; False (logged) where that is not allowed."""
    info = mount_info(mountpoint)
    if info is None:
        return False
    path = Path("/sys/class/bdi") / info.device / "read_ahead_kb"
    try:
        path.write_text(f"{kb}\n")
    except OSError as e:
        log.info("readahead of %s left as it is (%s: %s)", mountpoint, path, e.strerror)
        return False
    return True


async def _serve(config: MountConfig, fs: FsClient) -> None:
    live = trio.Event()
    config.live = live
    ops = DfsOperations(fs, on_init=live.set)
    mountpoint = str(config.mountpoint)
    try:
        pyfuse3.init(ops, mountpoint, mount_options(allow_other=config.allow_other))
    except RuntimeError as e:
        raise MountError(f"cannot mount {mountpoint}: {e} (see the messages above)") from None
    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            main_scope = trio.CancelScope()

            async def run_main() -> None:
                with main_scope:
                    await pyfuse3.main()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_main)
            nursery.start_soon(_on_signals, main_scope)
            nursery.start_soon(_when_live, config, live)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(config.timeout_s + 5):
            await ops.close_all()
        if os.environ.get(STATS_ENV):
            log.info("FUSE requests:\n%s", ops.stats.table())
            log.info("RPCs:\n%s", fs.stats.table())
        try:
            pyfuse3.close(unmount=True)
            unmounted = True
        finally:
            if config.pid_file is not None:
                config.pid_file.unlink(missing_ok=True)
            log.info("%s %s", "unmounted" if unmounted else "mount ended", mountpoint)


async def _on_signals(main_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            main_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
            return


async def _when_live(config: MountConfig, live: trio.Event) -> None:
    await live.wait()
    if config.readahead_kb > 0:
        set_readahead(config.mountpoint, config.readahead_kb)
    if config.pid_file is not None:
        write_pid_file(config.pid_file, config.mountpoint)
    log.info("mounted at %s (pid %d)", config.mountpoint, os.getpid())


def write_pid_file(path: Path, mountpoint: Path) -> None:
    """``PID\\nMOUNTPOINT\\n``, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n{mountpoint}\n")
    os.replace(tmp, path)


async def _main(config: MountConfig) -> None:
    async with FsClient.open_cluster(
        config.meta_addresses, config.secret, options=client_options(config)
    ) as fs:
        await _serve(config, fs)


def run(config: MountConfig) -> None:
    """Mount and serve until unmounted or signalled (blocks). Raises ``MountError`` for
    a bad mountpoint, ``DfsError`` when the cluster cannot be reached in time."""
    config.mountpoint = check_mountpoint(config.mountpoint)
    # What was imported stays out of every collection (gc.freeze), and the youngest
    # generation is collected every 50,000 allocations instead of 700: collections ran
    # in the middle of requests (py-spy put a third of a leased create's samples on one
    # allocation line), and what a request allocates mostly dies young. Mount CPU a
    # small file 1,533-1,666 µs against 1,633-2,233 µs, the create's mean latency
    # 575-680 µs against 722-2,334 µs (three alternated pairs on one cluster).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(_main, config)


__all__ = [
    "MountConfig",
    "MountError",
    "check_mountpoint",
    "client_options",
    "mount_options",
    "run",
    "set_readahead",
]
