"""The MooseFS peer of ``scripts/bench fs --peer moosefs``: MooseFS 3 from Debian's packages,
one master and three chunkservers (goal 3) on this machine, loopback only.

What it owns: installing the packages when missing (``apt-get``), the network namespace the
daemons live in, their configs in the target's temp dir, the daemons and the mount, all
started and stopped by PID. What it must not know: the workloads or the report.

Why a network namespace: MooseFS's chunkserver refuses a master address in 127.0.0.0/8 (a
hard-coded check). So the daemons run in a namespace of our own, ``dfsbench-mfs-<pid>``,
whose only interface is ``lo``, with a second address on it from the benchmarking range
(``ADDRESS``, 198.18.0.0/15, RFC 2544): every MooseFS socket is inside it, nothing listens
outside. The client, ``mfsmount``, must talk to the master too, so it runs in that network
namespace as well; its FUSE mount must stay visible to the host, where the workloads run.
``ip netns exec`` would hide it: besides joining the network namespace, it unshares the
mount namespace and makes ``/`` a slave, so a mount made under it never propagates back.
``nsenter --net=/run/netns/NAME`` joins only the network namespace, so ``mfsmount`` mounts
in the host's mount namespace. Every MooseFS process is started that way, in the
foreground (``-f``), so that its PID is the one we started; ``mfssetgoal`` and friends,
which reach the master through the mount, run the same way.

Settings, as the comparison needs them (notes/fuse.md): goal 3, trash time 0 (``rm`` frees
space at once, as dfs's does), every process at nice 0 (MooseFS defaults to -19; the dfs
daemons run at 0), one small write after start (MooseFS's first write otherwise takes about
a second). Everything else is MooseFS's default, as Debian ships it.

Shutdown (``stop``, safe at any point): unmount (``umount``, then lazily), SIGTERM
``mfsmount``, the chunkservers and the master by PID (SIGKILL past a deadline), SIGKILL to
anything left in the namespace (only this run's processes can be there), delete the
namespace, and the target's temp dir goes with the benchmark's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dfs.cli.cluster import pid_alive
from dfs.fuse.mountinfo import mount_info
from tools.bench.fs.targets import Target, TargetUnavailable

PACKAGES = ("moosefs-master", "moosefs-chunkserver", "moosefs-client")
BINARIES = ("mfsmaster", "mfschunkserver", "mfsmount")
# The master's address inside the namespace: from the benchmarking range, not loopback's.
ADDRESS = "198.18.0.1"
MASTER_CLIENT_PORT = 9421  # MooseFS's default for mounts
CHUNKSERVER_PORT_BASE = 9422  # chunkserver i listens on BASE + i
CHUNKSERVERS = 3
GOAL = 3
EMPTY_METADATA = Path("/var/lib/mfs/metadata.mfs.empty")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WARMUP_BYTES = 1 << 20


class MooseFsUnavailable(TargetUnavailable):
    """MooseFS cannot be installed or started here; the message says why."""

    def __init__(self, why: str) -> None:
        super().__init__(f"MooseFS unavailable: {why}")


def ensure_installed() -> None:
    """Install Debian's MooseFS packages if a binary is missing (root, apt-get)."""
    if all(shutil.which(b) for b in BINARIES) and EMPTY_METADATA.exists():
        return
    if os.geteuid() != 0:
        raise MooseFsUnavailable("installing MooseFS needs root (apt-get)")
    if shutil.which("apt-get") is None:
        raise MooseFsUnavailable(f"no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0 or not all(shutil.which(b) for b in BINARIES):
        raise MooseFsUnavailable(
            f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stdout[-1500:]}"
            f"{proc.stderr[-1500:]}"
        )


def _cfg(path: Path, values: dict[str, object]) -> None:
    path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))


class MooseFsTarget(Target):
    """A master and three chunkservers in a network namespace, mounted on the host."""

    name = "moosefs"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.netns = f"dfsbench-mfs-{os.getpid()}"
        self.mountpoint = root / "mnt"
        self._netns_made = False
        self._daemons: list[subprocess.Popen[bytes]] = []  # master first
        self._mount_proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- processes

    def _in_netns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                self._in_netns(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _tool(self, *argv: str) -> str:
        """Run a MooseFS client tool (it reaches the master) in the namespace."""
        proc = subprocess.run(
            self._in_netns(list(argv)), capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise MooseFsUnavailable(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _log_tail(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-1500:]
        except FileNotFoundError:
            return "(no log)"

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        super().start()
        ensure_installed()
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        self._netns_made = True
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, timeout=30)
        subprocess.run(["ip", "-n", self.netns, "addr", "add", f"{ADDRESS}/32", "dev", "lo"],
                       check=True, timeout=30)  # fmt: skip
        self._start_master()
        for i in range(1, CHUNKSERVERS + 1):
            self._start_chunkserver(i)
        self._mount()
        self._tool("mfssetgoal", "-r", str(GOAL), str(self.mountpoint))
        self._tool("mfssettrashtime", "-r", "0", str(self.mountpoint))
        self._wait_all_chunkservers()
        self.directory = self.mountpoint

    def _start_master(self) -> None:
        data = self.root / "master"
        data.mkdir()
        shutil.copy(EMPTY_METADATA, data / "metadata.mfs")
        (self.root / "mfsexports.cfg").write_text("*\t/\trw,alldirs,maproot=0:0\n")
        (self.root / "mfstopology.cfg").write_text("")
        cfg = self.root / "mfsmaster.cfg"
        _cfg(cfg, {
            "WORKING_USER": "root", "WORKING_GROUP": "root", "SYSLOG_IDENT": "mfsmaster-bench",
            "NICE_LEVEL": 0, "LOCK_MEMORY": 0, "DATA_PATH": data,
            "EXPORTS_FILENAME": self.root / "mfsexports.cfg",
            "TOPOLOGY_FILENAME": self.root / "mfstopology.cfg",
            "MATOML_LISTEN_HOST": ADDRESS, "MATOCS_LISTEN_HOST": ADDRESS,
            "MATOCL_LISTEN_HOST": ADDRESS,
        })  # fmt: skip
        self._daemons.append(self._spawn("master", ["mfsmaster", "-f", "-c", str(cfg), "start"]))

    def _start_chunkserver(self, i: int) -> None:
        data = self.root / f"cs{i}"
        (data / "hdd").mkdir(parents=True)
        (data / "mfshdd.cfg").write_text(f"{data / 'hdd'}\n")
        cfg = data / "mfschunkserver.cfg"
        _cfg(cfg, {
            "WORKING_USER": "root", "WORKING_GROUP": "root", "SYSLOG_IDENT": f"mfscs{i}-bench",
            "NICE_LEVEL": 0, "LOCK_MEMORY": 0, "DATA_PATH": data,
            "HDD_CONF_FILENAME": data / "mfshdd.cfg", "MASTER_HOST": ADDRESS,
            "BIND_HOST": ADDRESS, "CSSERV_LISTEN_HOST": ADDRESS,
            "CSSERV_LISTEN_PORT": CHUNKSERVER_PORT_BASE + i,
        })  # fmt: skip
        self._daemons.append(
            self._spawn(f"cs{i}", ["mfschunkserver", "-f", "-c", str(cfg), "start"])
        )

    def _mount(self) -> None:
        """Start ``mfsmount`` until it is live (it gives up at once while the master is
        still starting, so it is retried until the deadline)."""
        self.mountpoint.mkdir(exist_ok=True)
        argv = ["mfsmount", "-f", str(self.mountpoint), "-H", ADDRESS,
                "-P", str(MASTER_CLIENT_PORT), "-o", "mfsnice=0"]  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_daemons()
            proc = self._spawn("mount", argv)
            while proc.poll() is None and time.monotonic() < deadline:
                info = mount_info(self.mountpoint)
                if info is not None and info.fstype.startswith("fuse"):  # "fuse", source mfs#…
                    self._mount_proc = proc
                    return
                time.sleep(0.05)  # polling mountinfo for the new mount, with a deadline
            if proc.poll() is None:
                self._end(proc)
            time.sleep(0.2)  # the master may still be starting; mfsmount gave up at once
        raise MooseFsUnavailable(f"mfsmount did not mount:\n{self._log_tail('mount')}")

    def _check_daemons(self) -> None:
        names = ["master"] + [f"cs{i}" for i in range(1, CHUNKSERVERS + 1)]
        for proc, name in zip(self._daemons, names, strict=False):
            if proc.poll() is not None:
                raise MooseFsUnavailable(f"MooseFS {name} exited:\n{self._log_tail(name)}")

    def _wait_all_chunkservers(self) -> None:
        """Write a small file until it lands on all three chunkservers: then every one is
        registered, and MooseFS's slow first write is behind us."""
        probe = self.mountpoint / ".bench-warmup"
        deadline = time.monotonic() + READY_TIMEOUT_S
        copies = 0
        while time.monotonic() < deadline:
            self._check_daemons()
            with open(probe, "wb") as f:
                f.write(os.urandom(WARMUP_BYTES))
                f.flush()
                os.fsync(f.fileno())
            info = self._tool("mfsfileinfo", str(probe))
            copies = sum(1 for line in info.splitlines() if line.strip().startswith("copy "))
            probe.unlink()
            if copies >= GOAL:
                return
            time.sleep(0.2)  # chunkservers still registering with the master
        raise MooseFsUnavailable(
            f"a write reached {copies} of {GOAL} chunkservers within {READY_TIMEOUT_S:.0f} s"
        )

    def fuse_pid(self) -> int | None:
        proc = self._mount_proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ---------------------------------------------------------------- stop

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if mount_info(self.mountpoint) is not None:
            umount = subprocess.run(["umount", str(self.mountpoint)], capture_output=True,
                                    timeout=STOP_TIMEOUT_S)  # fmt: skip
            if umount.returncode != 0:
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True,
                               timeout=STOP_TIMEOUT_S)  # fmt: skip
        if self._mount_proc is not None:
            self._end(self._mount_proc)
            self._mount_proc = None
        # Chunkservers first, then the master (it saves its metadata as it stops).
        for proc in reversed(self._daemons):
            self._end(proc)
        self._daemons = []
        if self._netns_made:
            self._kill_leftovers()
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
            self._netns_made = False

    def _kill_leftovers(self) -> None:
        """SIGKILL whatever still runs in this run's namespace (only ours can be there)."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                             text=True, timeout=30).stdout  # fmt: skip
        pids = [int(p) for p in out.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling process exit; there is no wait for non-children
