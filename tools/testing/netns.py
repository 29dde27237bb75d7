"""A real dfs cluster with every server on a network host of its own (a Linux network
namespace), and the faults a network and its hosts can have, on cue.

    with NetCluster(tmp_path / "cluster") as net:        # 3 metaservers, 3 chunkservers
        net.dfs("client1", "put", "/etc/hostname", "/h")  # the CLI, on the client's host
        old = net.leader()
        net.partition(old, [h for h in net.metaservers if h != old])
        ...
        net.heal()

    python -m tools.testing.netns up --dir D        (scripts/netcluster: the same, bootstrapped)

What it owns: the namespaces, links and firewall rules of one run, the server processes in
them (started and stopped by PID, like ``dfs.cli.cluster`` does on loopback, whose
directory layout and config writing it reuses), the proxies it puts on paths, and a state
file (``D/netcluster.json``) from which a later process (the CLI's next command) takes the
cluster over. What it must not do: send a packet outside the namespaces it made (the
hosts have no route but their own subnet, and this process talks to them only from a
thread that has joined the switch's namespace: see ``_ControlLoop``), or touch
namespaces, links and processes of other runs (every name carries the run's id; only
``cleanup_stale`` removes other runs, and only those whose owner is gone).

The network (version 1), one per run, created without touching the root namespace::

    switch  namespace NAME-switch: bridge br0, 10.77.0.1/24 (the control address),
            one veth end "v<host>" per host, enslaved to br0
    hosts   namespace NAME-<host>: lo, and eth0 (the other veth end) with its address:
            metaserver i 10.77.0.(10+i):9000, chunkserver i 10.77.0.(100+i):9100,
            client i 10.77.0.(200+i); no default route
    NAME    dfsnet-<owner pid>-<6 hex>; owner 0: a detached cluster (the CLI's ``up``)

Each run has its own switch, so runs never share a link and may all use the same subnet.
Host names are the daemons' names in the cluster directory (``meta1``, ``cs1``) and
``client1`` ...

Faults (iptables rules in the hosts' namespaces, tracked so that ``heal`` undoes them):
- ``partition(a, b)``: a and b (hosts or lists of hosts) drop each other's packets;
  ``partition_oneway(src, dst)``: packets from src to dst are dropped (TCP then fails both
  ways, as a real one-way loss does; the point is which side notices what);
- ``isolate(h)``: h drops everything on its link but the control address (so ``status``
  still sees an isolated server's own view); ``drop(h, p, peer=None)``: h loses each
  packet to and from ``peer`` (default: everyone but the control address) with
  probability ``p``, each way (``-m statistic``);
- ``link_down(h)`` / ``link_up(h)``: h's eth0 down (nothing passes, control included);
- ``heal()`` removes every rule and brings every link up; ``heal(h)``: those involving h;
- ``pause(h)`` / ``resume(h)``: SIGSTOP / SIGCONT of h's daemon; ``kill(h)``: SIGKILL;
  ``start(h)``: start it again on the same data directory;
- ``delay(src, dst, ms, jitter_ms)``: a ``tools.testing.proxy`` in src's namespace, and a
  REDIRECT rule there sending src's new TCP connections to dst's daemon through it (the
  kernel has no netem); its control also stalls, cuts and resets them. Connections made
  before it keep their direct path (NAT is decided at a connection's first packet).

Processes: daemons run as ``ip netns exec NS python -m metaserver|chunkserver --config
F`` in sessions of their own, logs in ``D/logs``, PIDs in ``D/run`` (the layout of
``dfs.cli.cluster``). A cluster owned by a process (the context manager) also starts them
under ``setpriv --pdeathsig KILL``, so they die with the thread that started them if the
owner is killed; ``cleanup_stale`` removes the namespaces such a run leaves. Shutdown:
SIGCONT + SIGTERM to every daemon by PID, SIGKILL after a deadline, SIGKILL to anything
else still in the namespaces, then the namespaces are deleted (their links go with them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dfs import rpc
from dfs.cli import cluster as local
from tools import pythonpath_env
from tools.testing.proxy import ProxyControl

T = TypeVar("T")

STATE_VERSION = 1
STATE_FILE = "netcluster.json"
NETNS_PREFIX = "dfsnet"
NETNS_DIR = Path("/run/netns")  # where ``ip netns add`` mounts the named namespaces
SUBNET = "10.77.0"  # /24; every run has its own switch, so runs never collide on it
PREFIX_LEN = 24
CONTROL_ADDRESS = f"{SUBNET}.1"
META_PORT = 9000
CS_PORT = 9100
PROXY_PORT_BASE = 19000
# The firewall mark of a proxy's own upstream connections, exempt from its REDIRECT rule.
PROXY_MARK = 0x6466
HOSTS_PER_ROLE_MAX = 50
# A daemon's SIGTERM shutdown lets requests in flight finish (the chunkserver's drain is a
# few seconds); past this it is killed.
STOP_TIMEOUT_S = 15.0
# One ``ip``/``iptables`` command; they take milliseconds, even on a loaded machine.
COMMAND_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 5.0
PROXY_START_TIMEOUT_S = 20.0
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(rf"^{NETNS_PREFIX}-(\d+)-([0-9a-f]{{6}})-([a-z0-9]+)$")


class NetError(Exception):
    """A namespace, link, rule or process of the cluster could not be set up or changed."""


@dataclass
class Host:
    """One network host: a namespace with one address, and at most one daemon."""

    name: str
    role: str  # metaserver | chunkserver | client
    index: int
    netns: str
    address: str
    port: int | None = None  # the daemon's port; None on a client host
    pid: int | None = None  # the daemon's PID while it runs
    paused: bool = False
    link_up: bool = True

    @property
    def endpoint(self) -> str:
        """The daemon's "host:port"."""
        if self.port is None:
            raise NetError(f"{self.name} runs no server")
        return f"{self.address}:{self.port}"


@dataclass
class Rule:
    """One iptables rule in a host's namespace, and the hosts whose faults it is part of."""

    host: str
    table: str
    chain: str
    args: list[str]
    involves: list[str]


@dataclass
class ProxyInfo:
    src: str
    dst: str
    pid: int
    port: int
    control: str
    rule: Rule


@dataclass
class _State:
    run_id: str
    owner_pid: int
    switch: str
    hosts: dict[str, Host]
    rules: list[Rule] = field(default_factory=list)
    proxies: list[ProxyInfo] = field(default_factory=list)
    version: int = STATE_VERSION
    subnet: str = f"{SUBNET}.0/{PREFIX_LEN}"
    control_address: str = CONTROL_ADDRESS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> _State:
        if raw.get("version") != STATE_VERSION:
            raise NetError(f"unknown netcluster state version {raw.get('version')!r}")
        return cls(
            run_id=raw["run_id"],
            owner_pid=int(raw["owner_pid"]),
            switch=raw["switch"],
            hosts={k: Host(**v) for k, v in raw["hosts"].items()},
            rules=[Rule(**r) for r in raw["rules"]],
            proxies=[ProxyInfo(**{**p, "rule": Rule(**p["rule"])}) for p in raw["proxies"]],
        )


# ---------------------------------------------------------------------- commands


def _command(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run an ``ip``/``iptables`` command; ``NetError`` with its output if it fails."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetError(f"{' '.join(argv)}: {e}") from None
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _list_netns() -> list[str]:
    out = _command(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(netns: str) -> list[int]:
    out = _command(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_netns(names: Iterable[str]) -> None:
    """SIGKILL whatever still runs in the namespaces, then delete them."""
    names = list(names)
    existing = set(_list_netns())
    for ns in names:
        if ns not in existing:
            continue
        for pid in _netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for ns in names:
        if ns in existing:
            _wait(_emptied(ns), 10.0)
            _command(["ip", "netns", "del", ns], check=False)


def _emptied(netns: str) -> Callable[[], bool]:
    return lambda: not _netns_pids(netns)


def _wait(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)  # polling a process or the kernel, with a deadline
    return True


def _is_daemon(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs and its command line contains ``marker`` (not a recycled PID)."""
    if pid is None or not local.pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return marker.encode() in argv


def cleanup_stale(*, include_detached: bool = False) -> list[str]:
    """Delete the namespaces (and kill their processes) of runs whose owner process is
    gone: leftovers of a killed test run. ``include_detached`` also removes clusters the
    CLI started (owner 0), running or not. Returns the namespaces deleted."""
    runs: dict[str, list[str]] = {}
    for ns in _list_netns():
        m = _NAME_RE.match(ns)
        if m is None:
            continue
        owner = int(m.group(1))
        stale = (owner == 0 and include_detached) or (owner != 0 and not local.pid_alive(owner))
        if stale:
            runs.setdefault(f"{NETNS_PREFIX}-{m.group(1)}-{m.group(2)}", []).append(ns)
    deleted = []
    for run_id, names in runs.items():
        # Hosts first, the switch (which holds no process) last.
        names.sort(key=lambda n: n.endswith("-switch"))
        _kill_netns(names)
        shutil.rmtree(Path(tempfile.gettempdir()) / run_id, ignore_errors=True)
        deleted += names
    return deleted


# ---------------------------------------------------------------------- control thread


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only it: namespaces are per thread) into ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        # Never talk to the cluster's addresses from anywhere else: check where we are.
        if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(fd).st_ino:
            raise OSError(f"setns({netns}) did not take effect")
    finally:
        os.close(fd)


class _ControlLoop:
    """An asyncio loop on a thread that has joined the switch's namespace: the sockets it
    opens (status, direct calls to a server) reach the hosts from the control address,
    and nothing else. The rest of the process stays where it was."""

    def __init__(self, netns: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._error: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(netns, ready), name=f"netns-control-{netns}", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._error is not None or not ready.is_set():
            self._loop.close()
            raise NetError(f"cannot enter namespace {netns}: {self._error}")

    def _run(self, netns: str, ready: threading.Event) -> None:
        try:
            _enter_netns(netns)
        except OSError as e:
            self._error = e
            ready.set()
            return
        asyncio.set_event_loop(self._loop)
        ready.set()
        self._loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"control call took over {timeout_s} s") from None

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()


# ---------------------------------------------------------------------- the cluster


class NetCluster:
    """A dfs cluster across network namespaces; see the module docstring.

    ``NetCluster(directory, metaservers=3, chunkservers=3, clients=1, ...)`` describes a
    new cluster; entering it (or ``up()``) creates the network, writes the cluster
    directory, starts the daemons and waits until a leader is elected and every
    chunkserver is alive; leaving it (or ``down()``) removes everything, errors or not.
    ``NetCluster.attach(directory)`` takes over a running cluster from its state file.
    """

    def __init__(
        self,
        directory: Path,
        *,
        metaservers: int = 3,
        chunkservers: int = 3,
        clients: int = 1,
        chunk_size: int = local.CHUNK_SIZE_DEFAULT,
        meta_options: dict[str, Any] | None = None,
        cs_options: dict[str, Any] | None = None,
        detached: bool = False,
        log_level: str = "INFO",
        ready_timeout_s: float = 60.0,
    ) -> None:
        for n in (metaservers, chunkservers):
            if not 1 <= n <= HOSTS_PER_ROLE_MAX:
                raise NetError(f"between 1 and {HOSTS_PER_ROLE_MAX} servers of each kind")
        if not 0 <= clients <= HOSTS_PER_ROLE_MAX:
            raise NetError(f"between 0 and {HOSTS_PER_ROLE_MAX} client hosts")
        self.dir = Path(directory).absolute()
        self.chunk_size = chunk_size
        self.meta_options = meta_options
        self.cs_options = cs_options
        self.log_level = log_level
        self.ready_timeout_s = ready_timeout_s
        owner = 0 if detached else os.getpid()
        run_id = f"{NETNS_PREFIX}-{owner}-{secrets.token_hex(3)}"
        hosts: dict[str, Host] = {}
        for role, prefix, count, base, port in (
            ("metaserver", "meta", metaservers, 10, META_PORT),
            ("chunkserver", "cs", chunkservers, 100, CS_PORT),
            ("client", "client", clients, 200, None),
        ):
            for i in range(1, count + 1):
                name = f"{prefix}{i}"
                hosts[name] = Host(
                    name=name,
                    role=role,
                    index=i,
                    netns=f"{run_id}-{name}",
                    address=f"{SUBNET}.{base + i}",
                    port=port,
                )
        self._state = _State(run_id=run_id, owner_pid=owner, switch=f"{run_id}-switch", hosts=hosts)
        self._control: _ControlLoop | None = None
        self._layout: local.Layout | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []  # namespaces this object made, for down()

    # ------------------------------------------------------------------ properties

    @property
    def run_id(self) -> str:
        return self._state.run_id

    @property
    def hosts(self) -> dict[str, Host]:
        return self._state.hosts

    @property
    def metaservers(self) -> list[str]:
        return [h.name for h in self.hosts.values() if h.role == "metaserver"]

    @property
    def chunkservers(self) -> list[str]:
        return [h.name for h in self.hosts.values() if h.role == "chunkserver"]

    @property
    def clients(self) -> list[str]:
        return [h.name for h in self.hosts.values() if h.role == "client"]

    @property
    def layout(self) -> local.Layout:
        if self._layout is None:
            self._layout = local.load_layout(self.dir)
        return self._layout

    @property
    def secret_file(self) -> Path:
        """What a client host is given: the client credential (TLS) or the secret."""
        return self.layout.client_file

    @property
    def meta_addresses(self) -> list[str]:
        return [self.hosts[h].endpoint for h in self.metaservers]

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def tmp_dir(self) -> Path:
        """Short paths for UNIX sockets (a cluster directory may be too deep for one)."""
        return Path(tempfile.gettempdir()) / self.run_id

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise NetError(f"no host {name!r} (hosts: {', '.join(self.hosts)})") from None

    def host_of(self, address: str) -> str | None:
        """The host with ``address`` (an IP, or an "ip:port")."""
        ip = address.rpartition(":")[0] or address
        return next((h.name for h in self.hosts.values() if h.address == ip), None)

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> NetCluster:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def up(self) -> NetCluster:
        """Create the network and the cluster directory, start the daemons, wait until
        the cluster is ready. On any failure everything made so far is removed. A
        directory a cluster of the same shape ran in before is started again with its
        data (the addresses are the same)."""
        if self.state_file.exists():
            raise NetError(f"{self.state_file} exists: a cluster runs there (or down it)")
        addresses = (
            [self.hosts[h].endpoint for h in self.metaservers],
            [self.hosts[h].endpoint for h in self.chunkservers],
        )
        if (self.dir / "cluster.toml").exists():
            existing = local.load_layout(self.dir)
            chunkservers = [existing.chunkservers[i] for i in sorted(existing.chunkservers)]
            if (existing.meta_addresses, chunkservers) != addresses:
                raise NetError(f"{self.dir} holds another cluster (other servers/addresses)")
        try:
            self._create_network()
            self._layout = local.init_layout(
                self.dir,
                chunk_size=self.chunk_size,
                meta_options=self.meta_options,
                cs_options=self.cs_options,
                addresses=addresses,
            )
            self._save()
            for name in self.metaservers + self.chunkservers:
                self.start(name)
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    @classmethod
    def attach(cls, directory: Path) -> NetCluster:
        """The cluster running in ``directory`` (started by another process)."""
        directory = Path(directory).absolute()
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise NetError(f"no netcluster in {directory} ({STATE_FILE} missing)") from None
        self = cls.__new__(cls)
        self.dir = directory
        self.log_level = "INFO"
        self.ready_timeout_s = 60.0
        self._state = _State.from_json(raw)
        self._control = None
        self._layout = None
        self._procs = []
        self._created = [h.netns for h in self._state.hosts.values()] + [self._state.switch]
        return self

    def down(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every daemon and proxy (SIGTERM, then SIGKILL), kill anything else left in
        the namespaces, delete them. Safe to call on a half-made or stopped cluster."""
        try:
            for proxy in list(self._state.proxies):
                self._stop_proxy(proxy)
            self._stop_daemons(timeout_s)
            for proc in self._procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        finally:
            if self._control is not None:
                self._control.close()
                self._control = None
            hosts_first = [n for n in self._created if n != self._state.switch]
            _kill_netns([*hosts_first, self._state.switch])
            self._created = []
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """What of this run still exists (namespaces, processes, interfaces in the root
        namespace, temporary files): empty after ``down()``."""
        found = [f"netns {ns}" for ns in _list_netns() if ns.startswith(self.run_id + "-")]
        for h in self.hosts.values():
            if h.pid is not None and local.pid_alive(h.pid):
                found.append(f"process {h.pid} ({h.name})")
        found += [f"process {p.pid}" for p in self._procs if local.pid_alive(p.pid)]
        veths = {f"v{h}" for h in self.hosts}
        for line in _command(["ip", "-o", "link"]).splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name in veths or name.startswith(self.run_id):
                found.append(f"link {name} in the root namespace")
        if self.tmp_dir.exists():
            found.append(f"directory {self.tmp_dir}")
        return found

    def _create_network(self) -> None:
        st = self._state
        _command(["ip", "netns", "add", st.switch])
        self._created.append(st.switch)
        for h in self.hosts.values():
            _command(["ip", "netns", "add", h.netns])
            self._created.append(h.netns)
        switch = [
            "link add br0 type bridge",
            "link set br0 up",
            f"addr add {CONTROL_ADDRESS}/{PREFIX_LEN} dev br0",
            "link set lo up",
        ]
        for h in self.hosts.values():
            switch += [
                f"link add v{h.name} type veth peer name eth0 netns {h.netns}",
                f"link set v{h.name} master br0",
                f"link set v{h.name} up",
            ]
        _command(["ip", "-n", st.switch, "-batch", "-"], input_text="\n".join(switch) + "\n")
        for h in self.hosts.values():
            lines = ["link set lo up", f"addr add {h.address}/{PREFIX_LEN} dev eth0"]
            lines.append("link set eth0 up")
            _command(["ip", "-n", h.netns, "-batch", "-"], input_text="\n".join(lines) + "\n")

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state.to_json(), indent=2) + "\n")  # hosts in order
        os.replace(tmp, self.state_file)

    # ------------------------------------------------------------------ processes

    def _env(self) -> dict[str, str]:
        # The daemons find the project, and the proxy and chaos workload find ``tools``.
        return pythonpath_env({**os.environ, "DFS_LOG_LEVEL": self.log_level})

    def wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command run on ``host``."""
        cmd = ["ip", "netns", "exec", self.host(host).netns, *argv]
        if self._state.owner_pid and shutil.which("setpriv"):
            # Die with the thread that started us if the owner is killed (the namespaces
            # are then left for cleanup_stale, empty).
            cmd = ["setpriv", "--pdeathsig", "KILL", *cmd]
        return cmd

    def _daemon_spec(self, host: Host) -> tuple[list[str], Path]:
        for name, argv, config in self.layout.daemons():
            if name == host.name:
                return argv, config
        raise NetError(f"{host.name} runs no daemon")

    def _daemon_pid(self, host: Host) -> int | None:
        if host.pid is None:
            return None
        _, config = self._daemon_spec(host)
        return host.pid if _is_daemon(host.pid, str(config)) else None

    def start(self, host: str) -> int:
        """Start ``host``'s daemon (again, on the same data directory) unless it runs;
        returns its PID. Does not wait for it to serve."""
        h = self.host(host)
        pid = self._daemon_pid(h)
        if pid is not None:
            return pid
        argv, _ = self._daemon_spec(h)
        (self.dir / "logs").mkdir(exist_ok=True)
        (self.dir / "run").mkdir(exist_ok=True)
        with open(self.dir / "logs" / f"{h.name}.log", "ab") as log_file:
            proc = subprocess.Popen(
                self.wrap(host, argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=self._env(),
                start_new_session=True,
            )
        self._procs.append(proc)
        h.pid, h.paused = proc.pid, False
        (self.dir / "run" / f"{h.name}.pid").write_text(f"{proc.pid}\n")
        self._save()
        return proc.pid

    def _signal(self, host: str, sig: signal.Signals) -> int:
        h = self.host(host)
        pid = self._daemon_pid(h)
        if pid is None:
            raise NetError(f"{host}'s daemon is not running")
        os.kill(pid, sig)
        return pid

    def pause(self, host: str) -> None:
        """SIGSTOP ``host``'s daemon: its sockets stay open, nothing answers (a long GC
        pause or a stalled disk)."""
        self._signal(host, signal.SIGSTOP)
        self.host(host).paused = True
        self._save()

    def resume(self, host: str) -> None:
        self._signal(host, signal.SIGCONT)
        self.host(host).paused = False
        self._save()

    def kill(self, host: str, timeout_s: float = 10.0) -> None:
        """SIGKILL ``host``'s daemon (a crash) and wait until it is gone."""
        pid = self._signal(host, signal.SIGKILL)
        if not local.wait_exit(pid, timeout_s):
            raise NetError(f"{host}'s daemon (pid {pid}) survived SIGKILL for {timeout_s} s")
        h = self.host(host)
        h.pid, h.paused = None, False
        (self.dir / "run" / f"{h.name}.pid").unlink(missing_ok=True)
        self._save()

    def _stop_daemons(self, timeout_s: float) -> None:
        running: dict[str, int] = {}
        if not (self.dir / "cluster.toml").exists():
            return  # down() of a cluster that failed before its directory was written
        for h in reversed(list(self.hosts.values())):  # chunkservers first
            if h.role == "client":
                continue
            pid = self._daemon_pid(h)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped process would never see SIGTERM
                os.kill(pid, signal.SIGTERM)
            running[h.name] = pid
        _wait(lambda: not any(local.pid_alive(p) for p in running.values()), timeout_s)
        for name, pid in running.items():
            if local.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            h = self.hosts[name]
            h.pid, h.paused = None, False
            with contextlib.suppress(OSError):
                (self.dir / "run" / f"{name}.pid").unlink(missing_ok=True)

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout_s: float = 120.0,
        input_bytes: bytes | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` on ``host`` and wait for it; stdout and stderr are captured."""
        proc = subprocess.run(
            self.wrap(host, argv),
            input=input_bytes,
            capture_output=True,
            timeout=timeout_s,
            env=self._env(),
        )
        if check and proc.returncode != 0:
            raise NetError(
                f"{' '.join(argv)} on {host} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def spawn(self, host: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``host`` in the background (``subprocess.Popen`` keywords
        pass through); killed by ``down()`` if still running."""
        popen.setdefault("env", self._env())
        proc = subprocess.Popen(self.wrap(host, argv), **popen)
        self._procs.append(proc)
        return proc

    def dfs_argv(self, command: str, *args: str) -> list[str]:
        """The client CLI's ``dfs COMMAND --meta ... --secret ... ARGS`` for this cluster."""
        return [
            sys.executable,
            "-m",
            "dfs.cli.main",
            command,
            "--meta",
            ",".join(self.meta_addresses),
            "--secret",
            str(self.secret_file),
            *args,
        ]

    def dfs(
        self, host: str, command: str, *args: str, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the client CLI on ``host`` (``dfs put/get/ls/...``)."""
        return self.run(host, self.dfs_argv(command, *args), timeout_s=timeout_s)

    # ------------------------------------------------------------------ observing

    def _loop(self) -> _ControlLoop:
        if self._control is None:
            self._control = _ControlLoop(self._state.switch)
        return self._control

    def status(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """``dfs status``'s report (``dfs.cli.cluster.cluster_status``) asked from the
        control address, with each metaserver's and chunkserver's host name added."""
        secret = local.client_credentials(self.layout)
        st = self._loop().run(local.cluster_status(self.meta_addresses, secret), timeout_s)
        for entry in st["metaservers"] + st["chunkservers"]:
            entry["host"] = self.host_of(entry["address"])
        return st

    def leader(self) -> str | None:
        """The host of the metaserver that leads in the highest term any of them reports
        (None: no leader answers)."""
        st = self.status()
        if st["leader"] is None:
            return None
        return self.host_of(st["leader_address"]) or f"meta{st['leader']}"

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Until a leader is elected and every chunkserver is alive (``ClusterError``
        past ``timeout_s``)."""
        return self._loop().run(local.wait_ready(self.layout, timeout_s), timeout_s + 10)

    def call(
        self, host: str, op: str, *, timeout_s: float = CALL_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """One RPC to ``host``'s daemon from the control address (no redirects followed):
        its answer header, or the ``DfsError`` it answered (``Timeout``/``Unavailable``
        when it does not)."""
        address, _, port = self.host(host).endpoint.rpartition(":")
        secret = local.client_credentials(self.layout)

        async def one() -> dict[str, Any]:
            conn = await rpc.connect(
                address, int(port), secret, name="netcluster", timeout_s=timeout_s, role="client"
            )
            try:
                header, _ = await conn.call(op, timeout_s=timeout_s, **fields)
                return header
            finally:
                conn.close()

        return self._loop().run(one(), 2 * timeout_s + 5)

    # ------------------------------------------------------------------ network faults

    def _iptables(self, rule: Rule, action: str) -> None:
        ns = self.host(rule.host).netns
        argv = ["ip", "netns", "exec", ns, "iptables", "-w", "10", "-t", rule.table]
        _command([*argv, action, rule.chain, *rule.args])

    def _add_rules(self, rules: list[Rule]) -> None:
        try:
            for rule in rules:
                self._iptables(rule, "-A")
                self._state.rules.append(rule)
        finally:
            self._save()

    @staticmethod
    def _names(side: str | Iterable[str]) -> list[str]:
        return [side] if isinstance(side, str) else list(side)

    def partition(self, a: str | Iterable[str], b: str | Iterable[str]) -> None:
        """Hosts of ``a`` and of ``b`` drop each other's packets, both ways."""
        rules = []
        for x in self._names(a):
            for y in self._names(b):
                rules += self._oneway_rules(x, y) + self._oneway_rules(y, x)
        self._add_rules(rules)

    def partition_oneway(self, src: str | Iterable[str], dst: str | Iterable[str]) -> None:
        """Packets from ``src`` to ``dst`` are dropped; ``dst`` to ``src`` still pass."""
        rules = []
        for x in self._names(src):
            for y in self._names(dst):
                rules += self._oneway_rules(x, y)
        self._add_rules(rules)

    def _oneway_rules(self, src: str, dst: str) -> list[Rule]:
        s, d = self.host(src), self.host(dst)
        # Dropped on both ends, so that the fault holds even if one host's rules are
        # flushed by hand; either rule alone would do.
        return [
            Rule(src, "filter", "OUTPUT", ["-d", d.address, "-j", "DROP"], [src, dst]),
            Rule(dst, "filter", "INPUT", ["-s", s.address, "-j", "DROP"], [src, dst]),
        ]

    def isolate(self, host: str) -> None:
        """``host`` drops every packet on its link but the control address's."""
        self.host(host)
        ctl = CONTROL_ADDRESS
        self._add_rules(
            [
                Rule(host, "filter", "OUTPUT", ["-o", "eth0", "!", "-d", ctl, "-j", "DROP"],
                     [host]),
                Rule(host, "filter", "INPUT", ["-i", "eth0", "!", "-s", ctl, "-j", "DROP"],
                     [host]),
            ]
        )  # fmt: skip

    def drop(self, host: str, probability: float, peer: str | None = None) -> None:
        """``host`` loses each packet to and from ``peer`` (default: every host) with
        ``probability``, independently (iptables ``statistic`` match)."""
        if not 0 < probability <= 1:
            raise NetError("probability must be in (0, 1]")
        self.host(host)
        stat = ["-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}"]
        if peer is not None:
            out, into, involves = ["-d", self.host(peer).address], ["-s", self.host(peer).address], [host, peer]  # fmt: skip
        else:
            out, into, involves = ["!", "-d", CONTROL_ADDRESS], ["!", "-s", CONTROL_ADDRESS], [host]  # fmt: skip
        self._add_rules(
            [
                Rule(host, "filter", "OUTPUT", ["-o", "eth0", *out, *stat, "-j", "DROP"], involves),
                Rule(host, "filter", "INPUT", ["-i", "eth0", *into, *stat, "-j", "DROP"], involves),
            ]
        )

    def link_down(self, host: str) -> None:
        """``host``'s eth0 down: nothing passes (control included) until ``link_up``."""
        _command(["ip", "-n", self.host(host).netns, "link", "set", "eth0", "down"])
        self.host(host).link_up = False
        self._save()

    def link_up(self, host: str) -> None:
        h = self.host(host)
        _command(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        h.link_up = True
        self._save()

    def heal(self, host: str | None = None) -> None:
        """Remove the faults (rules, links down) involving ``host``, or all of them.
        Proxies (``delay``) and paused processes are left as they are."""
        try:
            if host is None:
                for h in self.hosts.values():
                    ns = h.netns
                    _command(["ip", "netns", "exec", ns, "iptables", "-w", "10", "-F", "INPUT"])
                    _command(["ip", "netns", "exec", ns, "iptables", "-w", "10", "-F", "OUTPUT"])
                self._state.rules = []
            else:
                self.host(host)
                keep = []
                for rule in self._state.rules:
                    if host in rule.involves:
                        self._iptables(rule, "-D")
                    else:
                        keep.append(rule)
                self._state.rules = keep
            for h in self.hosts.values():
                if not h.link_up and host in (None, h.name):
                    self.link_up(h.name)
        finally:
            self._save()

    # ------------------------------------------------------------------ proxies

    def delay(
        self, src: str, dst: str, delay_ms: float, jitter_ms: float = 0.0, seed: int = 0
    ) -> ProxyControl:
        """Put a proxy (``tools.testing.proxy``) on ``src``'s new TCP connections to
        ``dst``'s daemon, delaying each piece by ``delay_ms`` ± ``jitter_ms``; returns its
        control (``set_delay``, ``stall``, ``unstall``, ``cut``, ``reset``, ``stats``)."""
        d = self.host(dst)
        if any(p.src == src and p.dst == dst for p in self._state.proxies):
            raise NetError(f"{src} -> {dst} already has a proxy")
        port = PROXY_PORT_BASE + len(self._state.proxies)
        while any(p.port == port for p in self._state.proxies):
            port += 1
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        control = self.tmp_dir / f"proxy-{src}-{dst}.sock"
        control.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "tools.testing.proxy",
            "--listen", f"127.0.0.1:{port}", "--upstream", d.endpoint,
            "--control", str(control), "--delay-ms", str(delay_ms),
            "--jitter-ms", str(jitter_ms), "--seed", str(seed), "--mark", hex(PROXY_MARK),
        ]  # fmt: skip
        with open(self.dir / "logs" / f"proxy-{src}-{dst}.log", "ab") as log_file:
            proc = self.spawn(
                src,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        rule = Rule(
            src,
            "nat",
            "OUTPUT",
            ["-p", "tcp", "-d", d.address, "--dport", str(d.port), "-m", "mark", "!", "--mark",
             hex(PROXY_MARK), "-j", "REDIRECT", "--to-ports", str(port)],
            [src, dst],
        )  # fmt: skip
        info = ProxyInfo(src=src, dst=dst, pid=proc.pid, port=port, control=str(control), rule=rule)
        self._state.proxies.append(info)
        self._save()
        ctl = ProxyControl(control)

        def answers() -> bool:
            if proc.poll() is not None:
                raise NetError(f"proxy {src} -> {dst} exited; see logs/proxy-{src}-{dst}.log")
            try:
                ctl.stats()
                return True
            except OSError:
                return False

        try:
            if not _wait(answers, PROXY_START_TIMEOUT_S):
                raise NetError(f"proxy {src} -> {dst} did not start in {PROXY_START_TIMEOUT_S} s")
            self._iptables(rule, "-A")
        except BaseException:
            self._stop_proxy(info)
            raise
        return ctl

    def proxy(self, src: str, dst: str) -> ProxyControl:
        """The control of the proxy ``delay(src, dst, ...)`` started."""
        for p in self._state.proxies:
            if p.src == src and p.dst == dst:
                return ProxyControl(Path(p.control))
        raise NetError(f"no proxy on {src} -> {dst}")

    def undelay(self, src: str, dst: str) -> None:
        """Remove the proxy on ``src`` -> ``dst`` (its connections close)."""
        for p in list(self._state.proxies):
            if p.src == src and p.dst == dst:
                self._stop_proxy(p)
                return
        raise NetError(f"no proxy on {src} -> {dst}")

    def _stop_proxy(self, info: ProxyInfo) -> None:
        with contextlib.suppress(NetError):
            self._iptables(info.rule, "-D")
        if _is_daemon(info.pid, "tools.testing.proxy"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGTERM)
            if not local.wait_exit(info.pid, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGKILL)
        Path(info.control).unlink(missing_ok=True)
        self._state.proxies.remove(info)
        self._save()

    # ------------------------------------------------------------------ description

    def describe(self) -> str:
        lines = [f"netcluster {self.run_id} in {self.dir}"]
        for h in self.hosts.values():
            where = h.endpoint if h.port else h.address
            if h.role == "client":
                state = ""
            elif self._daemon_pid(h) is None:
                state = "stopped"
            else:
                state = f"pid {h.pid}" + (" PAUSED" if h.paused else "")
            link = "" if h.link_up else " LINK DOWN"
            lines.append(f"  {h.name:8s} {h.role:11s} {where:17s} {state}{link}")
        for r in self._state.rules:
            lines.append(f"  fault on {r.host}: {r.table} {r.chain} {' '.join(r.args)}")
        for p in self._state.proxies:
            lines.append(f"  proxy {p.src} -> {p.dst} on {p.src}:127.0.0.1:{p.port} pid {p.pid}")
        lines.append(f"  client options: --meta {','.join(self.meta_addresses)} "
                     f"--secret {self.secret_file}")  # fmt: skip
        return "\n".join(lines)


# ---------------------------------------------------------------------- command line


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netcluster", description="A dfs cluster across network namespaces, with faults."
    )
    dir_help = "the cluster directory (default: $DFS_NET_DIR, else ./dfs-net)"
    default_dir = Path(os.environ.get("DFS_NET_DIR", "dfs-net"))
    parser.add_argument("--dir", type=Path, default=default_dir, help=dir_help)
    # --dir is taken after the command too (netcluster up --dir D).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=dir_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, *positional: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        for arg in positional:
            p.add_argument(arg)
        return p

    up = command("up", "create the hosts and start the cluster (it runs until 'down')")
    up.add_argument("--metaservers", type=int, default=3)
    up.add_argument("--chunkservers", type=int, default=3)
    up.add_argument("--clients", type=int, default=1)
    up.add_argument("--chunk-size", default="64M")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    command("status", "hosts, faults, and each metaserver's view").add_argument(
        "--json", action="store_true"
    )
    command("partition", "A and B drop each other's packets", "a", "b").add_argument(
        "--oneway", action="store_true", help="only packets from A to B"
    )
    command("isolate", "HOST drops all packets but the control address's", "host")
    command("heal", "remove the faults of HOST, or all").add_argument("host", nargs="?")
    drop = command("drop", "HOST loses packets with probability P", "host")
    drop.add_argument("probability", type=float)
    drop.add_argument("--peer", help="only packets to and from PEER")
    command("link-down", "take HOST's link down", "host")
    command("link-up", "bring HOST's link up", "host")
    command("pause", "SIGSTOP HOST's daemon", "host")
    command("resume", "SIGCONT HOST's daemon", "host")
    command("kill", "SIGKILL HOST's daemon", "host")
    command("start", "start HOST's daemon again (same data)", "host")
    delay = command("delay", "proxy SRC's new connections to DST, delayed", "src", "dst")
    delay.add_argument("delay_ms", type=float)
    delay.add_argument("--jitter-ms", type=float, default=0.0)
    delay.add_argument("--seed", type=int, default=0)
    command("undelay", "remove the proxy on SRC -> DST", "src", "dst")
    command("exec", "run CMD on HOST", "host").add_argument("cmd", nargs=argparse.REMAINDER)
    command("dfs", "run the dfs CLI on HOST against this cluster", "host").add_argument(
        "args", nargs=argparse.REMAINDER
    )
    command("down", "stop everything and delete the hosts")
    command("cleanup", "delete leftovers of killed runs").add_argument(
        "--all", action="store_true", help="also clusters started by 'up', running or not"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    net: NetCluster | None = None
    try:
        if args.command == "up":
            net = NetCluster(
                args.dir,
                metaservers=args.metaservers,
                chunkservers=args.chunkservers,
                clients=args.clients,
                chunk_size=_size(args.chunk_size),
                detached=True,
                ready_timeout_s=args.timeout,
            )
            net.up()
            print(net.describe())
            print(f"leader: {net.leader()}; stop it with: netcluster --dir {net.dir} down")
            return 0
        if args.command == "cleanup":
            for ns in cleanup_stale(include_detached=args.all):
                print(f"deleted {ns}")
            return 0
        net = NetCluster.attach(args.dir)
        if args.command == "down":
            net.down()
            print(f"netcluster {net.run_id} down")
            return 0
        if args.command in ("exec", "dfs"):
            cmd = args.cmd if args.command == "exec" else None
            if args.command == "dfs":
                if not args.args:
                    parser.error("dfs HOST COMMAND [ARGS]")
                cmd = net.dfs_argv(args.args[0], *args.args[1:])
            if not cmd:
                parser.error("exec HOST CMD [ARGS]")
            full = net.wrap(args.host, cmd)
            os.execvpe(full[0], full, net._env())
        if args.command == "status":
            st = net.status()
            if args.json:
                print(json.dumps({"hosts": net._state.to_json()["hosts"], **st}, indent=2))
            else:
                print(net.describe())
                print(f"leader: {st['leader']} ({net.leader() or 'none'}), term {st['term']}")
                for m in st["metaservers"]:
                    extra = "" if m["state"] == "down" else (
                        f" {m['role']} term {m['term']} commit {m['commit']} applied {m['applied']}"
                    )  # fmt: skip
                    print(f"  {m['host']!s:8s} {m['state']}{extra}")
                for c in st["chunkservers"]:
                    print(f"  {c['host']!s:8s} {'alive' if c['alive'] else 'DEAD'}")
            return 0
        verbs: dict[str, Any] = {
            "isolate": lambda: net.isolate(args.host),
            "heal": lambda: net.heal(args.host),
            "drop": lambda: net.drop(args.host, args.probability, args.peer),
            "link-down": lambda: net.link_down(args.host),
            "link-up": lambda: net.link_up(args.host),
            "pause": lambda: net.pause(args.host),
            "resume": lambda: net.resume(args.host),
            "kill": lambda: net.kill(args.host),
            "start": lambda: net.start(args.host),
            "partition": lambda: (net.partition_oneway if args.oneway else net.partition)(
                args.a, args.b
            ),
            "delay": lambda: net.delay(
                args.src, args.dst, args.delay_ms, args.jitter_ms, args.seed
            ),
            "undelay": lambda: net.undelay(args.src, args.dst),
        }
        verbs[args.command]()
        print(f"{args.command} done")
        return 0
    except (NetError, local.ClusterError) as e:
        print(f"netcluster: {e}", file=sys.stderr)
        return 1
    finally:
        if net is not None and net._control is not None:
            net._control.close()


if __name__ == "__main__":
    sys.exit(main())
