"""The file systems ``scripts/bench fs`` measures, each started and stopped by PID.

What it owns: the life of each target — ``local`` (a plain directory on the disk of the
benchmark's temp dir), ``dfs`` (a local cluster of 3 metaservers and 3 chunkservers, goal
3, fsync as configured by default, mounted with the project's own mount, all started and
stopped as ``dfs up`` / ``dfs down`` do, by ``dfs.cli.cluster``) and ``passthrough``
(``scripts/passthrough.py`` over a directory of the same disk, with the dfs mount's options,
attribute lifetime and readahead) — and the peak RSS of each FUSE process. The MooseFS peer
is in ``moosefs.py``. What it must not know: the workloads or the report.

Every target's ``stop`` is safe to call at any point after ``__init__``, started or not,
more than once: the runner calls it from ``finally`` on error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio

from dfs.cli import cluster as local
from dfs.client import ClientOptions
from dfs.fuse.mount import READAHEAD_KB, STATS_ENV, mount_options
from dfs.fuse.mountinfo import mount_info
from tools import ROOT

PASSTHROUGH = ROOT / "scripts" / "passthrough.py"
# How long a cluster may take to elect a leader and register its chunkservers, and a
# mount (or the pass-through) to become live.
READY_TIMEOUT_S = 60.0
MOUNT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def rss_peak_mib(pid: int | None) -> float | None:
    """The peak resident set size of process ``pid`` (VmHWM), in MiB; None if gone."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    return None


class TargetUnavailable(Exception):
    """A target cannot be installed or started here; the message says why."""


class Target:
    """A directory to run workloads in, on one file system."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root  # this target's own part of the benchmark's temp dir
        self.directory = root  # where the workloads run (set by start)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        pass

    def fuse_pid(self) -> int | None:
        """The FUSE daemon serving ``directory`` (None: not a FUSE file system)."""
        return None

    def segment_end(self) -> str | None:
        """Called between workloads when asked to profile: the target's own counters
        since the last call, as text (None: it keeps none)."""
        return None


class LocalTarget(Target):
    name = "local"

    def start(self) -> None:
        super().start()
        self.directory = self.root / "dir"
        self.directory.mkdir(exist_ok=True)


class DfsTarget(Target):
    """A local cluster, mounted with ``dfs mount`` as ``dfs up`` mounts it."""

    name = "dfs"

    def __init__(
        self,
        root: Path,
        *,
        mount_stats: bool = False,
        mount_args: list[str] | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(root)
        self.tls = tls
        self.mount_args = mount_args or []  # more options for dfs mount
        self.layout: local.Layout | None = None
        self.mountpoint = root / "mnt"
        self.mount_stats = mount_stats
        self.pid: int | None = None
        self._pid_file: Path | None = None
        self._log_offset = 0

    @property
    def log_file(self) -> Path:
        return self.root / "cluster" / "logs" / "bench-mount.log"

    def start(self) -> None:
        super().start()
        self.layout = local.init_layout(self.root / "cluster", tls=self.tls)
        local.start_daemons(self.layout)
        anyio.run(local.wait_ready, self.layout, READY_TIMEOUT_S)
        # As the MooseFS peer (trash time 0): a removed file is freed at once, not kept.
        subprocess.run(
            [sys.executable, "-m", "dfs.cli.main", "admin", "settrashtime", "0", "/",
             "--dir", str(self.layout.dir)],
            check=True, stdout=subprocess.DEVNULL, timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        self.mountpoint.mkdir(exist_ok=True)
        self._mount()
        self.directory = self.mountpoint

    def _mount(self) -> None:
        assert self.layout is not None
        self._pid_file = local.mount_pid_file(self.layout.dir / "run", self.mountpoint)
        # The mount process takes this process's environment (start_mount copies it).
        saved = os.environ.get(STATS_ENV)
        if self.mount_stats:
            os.environ[STATS_ENV] = "1"
        try:
            self.pid = local.start_mount(
                ["--dir", str(self.layout.dir), *self.mount_args],
                self.mountpoint,
                self._pid_file,
                self.log_file,
                MOUNT_TIMEOUT_S,
            )
        finally:
            if saved is None:
                os.environ.pop(STATS_ENV, None)
            else:
                os.environ[STATS_ENV] = saved

    def fuse_pid(self) -> int | None:
        return self.pid

    def segment_end(self) -> str | None:
        """Remount (the mount logs its counters as it unmounts) and return what it logged:
        the kernel's requests by type, then the RPCs by op, each with count and time."""
        if not self.mount_stats or self._pid_file is None:
            return None
        local.stop_mount(self._pid_file)
        text = self.log_file.read_text(errors="replace")[self._log_offset :]
        self._log_offset = self.log_file.stat().st_size
        self._mount()
        return _stats_block(text)

    def stop(self) -> None:
        if self.layout is not None:
            local.stop_daemons(self.layout)  # unmounts first, by PID
            self.layout = None


def _stats_block(log_text: str) -> str:
    """The tables the mount logs at unmount (``FUSE requests:`` then ``RPCs:``), from the
    last such block in ``log_text``, without the log records' prefixes."""
    start = log_text.rfind("FUSE requests:")
    if start < 0:
        return "(the mount logged no counters)"
    out = []
    for line in log_text[start:].splitlines():
        if line.endswith(("FUSE requests:", "RPCs:")):
            out.append(line.rsplit(": ", 1)[-1] if ": " in line else line)
        elif line[:4].isdigit():  # the next log record: the tables have ended
            break
        else:
            out.append(line)
    return "\n".join(out)


class PassthroughTarget(Target):
    """``scripts/passthrough.py`` over ``root/backing``, mounted at ``root/mnt``."""

    name = "passthrough"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.backing = root / "backing"
        self.mountpoint = root / "mnt"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        super().start()
        self.backing.mkdir(exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        pid_file = self.root / "passthrough.pid"
        pid_file.unlink(missing_ok=True)
        # The dfs mount's options but its name; its attribute lifetime and readahead.
        options = {o for o in mount_options(allow_other=False) if "=" not in o}
        argv = [
            sys.executable, str(PASSTHROUGH), str(self.backing), str(self.mountpoint),
            "-o", ",".join(sorted(options)),
            "--attr-timeout", str(ClientOptions().attr_ttl_s),
            "--readahead-kb", str(READAHEAD_KB),
            "--pid-file", str(pid_file),
        ]  # fmt: skip
        with open(self.root / "passthrough.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not pid_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_text = (self.root / "passthrough.log").read_text(errors="replace")
                raise TargetUnavailable(f"the pass-through did not mount:\n{log_text[-2000:]}")
            time.sleep(0.05)  # polling the process's own report, with a deadline
        self.directory = self.mountpoint

    def fuse_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)  # it unmounts itself
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
        if mount_info(self.mountpoint) is not None:
            local.force_unmount(self.mountpoint)
