"""Helpers of the netns tests (imported by them and by ``conftest.py``).

``netns_unavailable`` says why these tests cannot run here; ``wait_for`` polls with a
deadline; ``dump_logs`` prints the servers' logs that hold a traceback or an error;
``ClientOps`` runs ``client_ops.py`` (``FsClient`` with a test's timeouts) on a client
host; ``Lines`` collects a background process's output lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

from tools.testing.netns import NetCluster
from tools.testing.poll import wait_for  # noqa: F401  (re-exported)

T = TypeVar("T")
CLIENT_OPS = str(Path(__file__).with_name("client_ops.py"))


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH (scripts/bootstrap installs it)"
    if not Path("/proc/thread-self/ns/net").exists():
        return "needs network namespaces (/proc/thread-self/ns/net)"
    return None


def dump_logs(directory: Path) -> None:
    for log in sorted((directory / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text or " ERROR " in text:
            print(f"----- {log.name}\n{text[-6000:]}")


class Lines:
    """A background process's stdout, line by line (with the monotonic time each line
    arrived), read on a thread of its own."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def snapshot(self) -> list[str]:
        with self._lock:
            return [line for _, line in self.lines]

    def starting(self, word: str, since: float = 0.0, until: float = float("inf")) -> list[str]:
        """The second word of each line whose first is ``word`` (e.g. the names of
        "ok NAME" lines), of the lines that arrived between ``since`` and ``until``."""
        with self._lock:
            lines = [line.split() for t, line in self.lines if since <= t <= until]
        return [words[1] for words in lines if words[:1] == [word]]

    def finish(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout_s)
        self._thread.join(timeout_s)
        return code


class ClientOps:
    """``client_ops.py`` (FsClient with the given timeouts) run on a client host."""

    def __init__(self, net: NetCluster, host: str = "client1", **options: float) -> None:
        self.net = net
        self.host = host
        self.options = options

    def argv(self, *args: str, **options: Any) -> list[str]:
        argv = [sys.executable, CLIENT_OPS, "--meta", ",".join(self.net.meta_addresses)]
        argv += ["--secret", str(self.net.secret_file)]
        for key, value in {**self.options, **options}.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return [*argv, *args]

    def run(self, *args: str, timeout_s: float = 90.0, **options: Any) -> tuple[int, list[str]]:
        """(exit status, output lines); stderr is printed (pytest shows it on failure)."""
        proc = self.net.run(self.host, self.argv(*args, **options), timeout_s=timeout_s)
        if proc.stderr:
            print(proc.stderr.decode(errors="replace")[-4000:], file=sys.stderr)
        return proc.returncode, proc.stdout.decode().splitlines()

    def spawn(self, *args: str, **options: Any) -> Lines:
        proc = self.net.spawn(
            self.host, self.argv(*args, **options), stdout=subprocess.PIPE, text=True
        )
        return Lines(proc)
