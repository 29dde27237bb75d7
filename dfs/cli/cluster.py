"""A local cluster in one directory: configs, secret, daemons and mounts started and
stopped by PID.

What it owns: the layout of a ``dfs up`` directory, the life cycle of its daemons, and of
the mount processes (``dfs mount --foreground`` run as daemons; the mount itself is
``dfs.fuse``). It
starts servers as separate processes (``python -m metaserver`` / ``python -m chunkserver``,
each in its own session so that they outlive a detached ``dfs up``) and never imports server
code (the client side never does, docs/ARCHITECTURE.md).

Layout of a cluster directory ``D`` (version 1)::

    D/cluster.toml            what dfs up decided: addresses, chunk size (see below)
    D/secret                  the cluster secret, mode 0600
    D/tls/                    with tls: the cluster CA (ca.pem, ca.key) and a credential
                              per process (meta<i>.pem, cs<i>.pem, client.pem; dfs/pki.py)
    D/meta<i>/meta.toml       metaserver i's config; D/meta<i>/raft/ its Raft log
    D/cs<i>/cs.toml           chunkserver i's config; D/cs<i>/data/ its chunks
    D/logs/<name>.log         each daemon's log (stderr)
    D/run/<name>.pid          each running daemon's PID
    D/logs/mount-<h>.log      a background mount's log (h: a hash of its mountpoint)
    D/run/mount-<h>.pid       a live mount's PID and mountpoint, one per line

``cluster.toml``::

    version = 1
    chunk_size = 67108864
    tls = true                # optional: the servers and clients speak TLS
    [metaservers]             # Raft node id -> "host:port"
    1 = "127.0.0.1:40001"
    [chunkservers]            # index -> "host:port" (the index names D/cs<i>; the id the
    1 = "127.0.0.1:40101"     # metaservers give it is in D/cs<i>/data/cs_id)
    [chunkserver_options]     # optional: config keys every chunkserver made here gets
    capacity_bytes = 1073741824

``add_chunkservers`` adds servers to an existing directory (the next indexes, the same
options); ``start_daemons(only=...)`` starts just those, and they stop with the rest.

Metaserver ids need not be contiguous: ``dfs admin metaserver add --local`` makes
``meta<N>`` (the next id never used in ``D``) and enters it in ``[metaservers]`` and the
chunkservers' configs once it is a member; ``remove`` takes one out of them once its
process is gone, leaving its directory (see "metaserver membership" below).

A second ``dfs up --dir D`` on an existing directory reuses everything (same ports, same
data): that is how a cluster is restarted. Stopping sends SIGTERM to each PID (checked to be
the daemon of this directory, not a recycled PID), waits, and SIGKILLs what is left. The
cluster's mounts are stopped first, the same way (a mount process unmounts itself on
SIGTERM; one that does not is killed and its mount detached with ``fusermount3 -u -z``):
a mount never outlives its cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfs import rpc
from dfs.credentials import Credential, Credentials, TlsCredential
from dfs.ports import free_loopback_ports
from dfs.secret import generate_secret, load_secret, write_secret
from dfs.wire.errors import DfsError
from dfs.wire.limits import CHUNK_SIZE_BYTES_DEFAULT
from dfs.wire.spec import ADMIN, CHUNKSERVER, CLIENT

LAYOUT_VERSION = 1
CHUNK_SIZE_DEFAULT = CHUNK_SIZE_BYTES_DEFAULT
STATUS_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 15.0
# Servers on hosts of their own (dfs init): their default ports, and their metrics'
# port, this far above the listen port.
META_PORT_DEFAULT = 9000
CS_PORT_DEFAULT = 9100
METRICS_PORT_OFFSET = 1000


class ClusterError(Exception):
    """Something about the cluster directory or its daemons that the user must fix."""


@dataclass
class Layout:
    dir: Path
    metaservers: dict[int, str]
    chunkservers: dict[int, str]
    chunk_size: int = CHUNK_SIZE_DEFAULT
    options: dict[str, Any] = field(default_factory=dict)
    cs_options: dict[str, Any] = field(default_factory=dict)
    tls: bool = False

    @property
    def secret_file(self) -> Path:
        return self.dir / "secret"

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    @property
    def client_file(self) -> Path:
        """The one file a client of this cluster needs (``dfs mount --secret``)."""
        return self.tls_dir / "client.pem" if self.tls else self.secret_file

    @property
    def admin_file(self) -> Path:
        """The one file the operator's CLI needs elsewhere (``--secret``): the admin
        credential, which the cluster's admin commands ask for."""
        return self.tls_dir / "admin.pem" if self.tls else self.secret_file

    @property
    def meta_addresses(self) -> list[str]:
        return [self.metaservers[i] for i in sorted(self.metaservers)]

    def daemons(self) -> list[tuple[str, list[str], Path]]:
        """(name, argv, config file) of every daemon, metaservers first."""
        out = []
        for i in sorted(self.metaservers):
            cfg = self.dir / f"meta{i}" / "meta.toml"
            out.append(
                (f"meta{i}", [sys.executable, "-m", "metaserver", "--config", str(cfg)], cfg)
            )
        for i in sorted(self.chunkservers):
            cfg = self.dir / f"cs{i}" / "cs.toml"
            out.append((f"cs{i}", [sys.executable, "-m", "chunkserver", "--config", str(cfg)], cfg))
        return out


def issue_credential(
    layout: Layout, role: str, name: str, address: str = "", where: Path | None = None
) -> Path | None:
    """Issue process ``name`` (reached at ``address``, if a server) its TLS credential from
    the cluster's CA (``dfs/pki.py``) into ``D/tls``; returns the path its config names:
    ``where/NAME.pem`` on its own host, else the file written. None without TLS."""
    if not layout.tls:
        return None
    from dfs import pki  # the cryptography package: only when credentials are made

    path = layout.tls_dir / f"{name}.pem"
    hosts = (address.rpartition(":")[0].strip("[]"),) if address else ()
    pki.write_credential(path, make_credential(layout, role, name, hosts))
    return where / path.name if where is not None else path


def make_credential(
    layout: Layout,
    role: str,
    name: str,
    hosts: tuple[str, ...] = (),
    *,
    uid: int | None = None,
    gids: tuple[int, ...] = (),
) -> bytes:
    """A credential from the CA of TLS cluster ``layout`` (``dfs.pki.issue``). A
    chunkserver's carries the public key that checks chunk tokens, so that it holds no
    secret (dfs/wire/token.py). ``OSError``/``ValueError`` when the CA cannot be read."""
    from dfs import pki
    from dfs.wire.token import verify_key

    key = verify_key(load_secret(layout.secret_file)) if role == CHUNKSERVER else None
    authority = pki.load_authority(layout.tls_dir)
    return pki.issue(authority, role, name, hosts, uid=uid, gids=gids, verify_key=key)


def client_credentials(layout: Layout, role: str = ADMIN) -> Credentials:
    """What the operator's CLI (``admin``) or a local mount (``client``) connects with:
    that role's credential (TLS) and the secret, which an operator of the cluster
    directory holds anyway (backups name the cluster by it)."""
    tls = None
    if layout.tls:
        tls = TlsCredential.load(layout.admin_file if role == ADMIN else layout.client_file)
    return Credentials(load_secret(layout.secret_file), tls, role=role)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v)
        if any(c in s for c in '"\\\n'):
            raise ClusterError(f"unsupported character in {s!r}")
        return f'"{s}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def _write_toml(path: Path, top: dict[str, Any], tables: dict[str, dict[Any, Any]]) -> None:
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def load_layout(directory: Path) -> Layout:
    path = directory / "cluster.toml"
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ClusterError(f"no cluster in {directory} (no cluster.toml): run dfs up") from None
    except tomllib.TOMLDecodeError as e:
        raise ClusterError(f"{path}: {e}") from None
    if raw.get("version") != LAYOUT_VERSION:
        raise ClusterError(f"{path}: unknown layout version {raw.get('version')!r}")
    return Layout(
        dir=directory,
        metaservers={int(k): str(v) for k, v in raw["metaservers"].items()},
        chunkservers={int(k): str(v) for k, v in raw["chunkservers"].items()},
        chunk_size=int(raw["chunk_size"]),
        options=dict(raw.get("options", {})),
        cs_options=dict(raw.get("chunkserver_options", {})),
        tls=raw.get("tls") is True,
    )


def init_layout(
    directory: Path,
    *,
    metaservers: int = 3,
    chunkservers: int = 3,
    chunk_size: int = CHUNK_SIZE_DEFAULT,
    meta_options: dict[str, Any] | None = None,
    cs_options: dict[str, Any] | None = None,
    addresses: tuple[list[str], list[str]] | None = None,
    metrics: bool = False,
    data_root: Path | None = None,
    secret_path: Path | None = None,
    tls: bool = False,
    credential_dir: Path | None = None,
) -> Layout:
    """Write a new cluster directory (secret, configs) or return the existing one.

    The servers listen on free loopback ports, or on ``addresses`` (metaservers',
    chunkservers' "host:port", one per server) when given: a cluster whose servers are
    on hosts of their own (``tools.testing.netns``, ``dfs init``). With ``metrics`` each
    server also serves Prometheus metrics (``metrics_port``): on a free loopback port, or,
    with ``addresses``, on its listen port + ``METRICS_PORT_OFFSET``. ``data_root`` and
    ``secret_path`` are the paths the configs name on the servers' own hosts (default:
    inside ``directory``, for servers on this machine); the secret itself is written to
    ``directory/secret`` either way. ``tls``: make the cluster's CA and a credential for
    every server and for clients (``D/tls``), and have every connection use TLS; the
    configs name each server's as ``credential_dir/NAME.pem`` (default: in ``D/tls``)."""
    directory = directory.absolute()
    if (directory / "cluster.toml").exists():
        return load_layout(directory)
    if addresses is not None:
        metaservers, chunkservers = len(addresses[0]), len(addresses[1])
    if metaservers < 1 or chunkservers < 1:
        raise ClusterError("a cluster needs at least one metaserver and one chunkserver")
    directory.mkdir(parents=True, exist_ok=True)
    servers = metaservers + chunkservers
    if addresses is None:
        wanted = servers * (2 if metrics else 1)
        ports = free_loopback_ports(wanted)  # one call: no port handed out twice
        local_addresses = [f"127.0.0.1:{port}" for port in ports[:servers]]
        addresses = (local_addresses[:metaservers], local_addresses[metaservers:])
        metrics_ports = iter(ports[servers:])
    else:
        metrics_ports = iter(
            int(a.rpartition(":")[2]) + METRICS_PORT_OFFSET for a in addresses[0] + addresses[1]
        )
    if not metrics:
        metrics_ports = iter(())
    layout = Layout(
        dir=directory,
        metaservers={i + 1: a for i, a in enumerate(addresses[0])},
        chunkservers={i + 1: a for i, a in enumerate(addresses[1])},
        chunk_size=chunk_size,
        tls=tls,
    )
    if not layout.secret_file.exists():
        write_secret(layout.secret_file, generate_secret())
    if tls:
        from dfs import pki

        pki.write_authority(layout.tls_dir, pki.make_authority(directory.name))
        issue_credential(layout, CLIENT, "client")
        issue_credential(layout, ADMIN, "admin")
    for sub in ("logs", "run"):
        (directory / sub).mkdir(exist_ok=True)
    for i, address in layout.metaservers.items():
        d = directory / f"meta{i}"
        d.mkdir(exist_ok=True)
        top = {
            "id": i,
            "listen": address,
            "data_dir": data_root / f"meta{i}" if data_root is not None else d / "raft",
            "secret_file": secret_path or layout.secret_file,
            "chunk_size": chunk_size,
            **(meta_options or {}),
        }
        credential = issue_credential(layout, "metaserver", f"meta{i}", address, credential_dir)
        if credential is not None:
            top["credential_file"] = credential
        if metrics:
            top["metrics_port"] = next(metrics_ports)
        _write_toml(
            d / "meta.toml", top, {"peers": {str(k): v for k, v in layout.metaservers.items()}}
        )
    layout.cs_options = dict(cs_options or {})
    for i, address in layout.chunkservers.items():
        _write_cs_config(
            layout, i, address, next(metrics_ports, None),
            data_dir=data_root / f"cs{i}" if data_root is not None else None,
            secret_file=secret_path, credential_dir=credential_dir,
        )  # fmt: skip
    _save_layout(layout)
    return layout


def _write_cs_config(
    layout: Layout,
    i: int,
    address: str,
    metrics_port: int | None,
    *,
    data_dir: Path | None = None,
    secret_file: Path | None = None,
    credential_dir: Path | None = None,
) -> None:
    d = layout.dir / f"cs{i}"
    d.mkdir(exist_ok=True)
    top: dict[str, Any] = {
        "listen": address,
        "data_dir": data_dir or d / "data",
        "metaservers": layout.meta_addresses,
        **layout.cs_options,
    }
    credential = issue_credential(layout, CHUNKSERVER, f"cs{i}", address, credential_dir)
    if credential is not None:
        top["credential_file"] = credential  # holds the token key: no secret here
    else:
        top["secret_file"] = secret_file or layout.secret_file
    if metrics_port is not None:
        top["metrics_port"] = metrics_port
    _write_toml(d / "cs.toml", top, {})


def parse_hosts(text: str, default_port: int) -> list[str]:
    """``HOST[:PORT],...`` as "host:port" addresses (``ClusterError`` for a bad or repeated
    one)."""
    out: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        if not sep:
            host, port = item, str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
            raise ClusterError(f"not HOST[:PORT]: {item!r}")
        address = f"{host}:{int(port)}"
        if address in out:
            raise ClusterError(f"{address} given twice")
        out.append(address)
    if not out:
        raise ClusterError("no hosts given")
    return out


def metrics_address(layout: Layout, name: str) -> str | None:
    """``host:port`` of server ``name``'s metrics ("meta1", "cs2"), None when it has none."""
    config = layout.dir / name / ("meta.toml" if name.startswith("meta") else "cs.toml")
    try:
        with open(config, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    port = raw.get("metrics_port")
    if type(port) is not int or port == 0:
        return None
    host = str(raw.get("listen", "127.0.0.1")).rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{port}"


def _save_layout(layout: Layout) -> None:
    tables: dict[str, dict[Any, Any]] = {
        "metaservers": {str(k): v for k, v in layout.metaservers.items()},
        "chunkservers": {str(k): v for k, v in layout.chunkservers.items()},
    }
    if layout.cs_options:
        tables["chunkserver_options"] = dict(layout.cs_options)
    top: dict[str, Any] = {"version": LAYOUT_VERSION, "chunk_size": layout.chunk_size}
    if layout.tls:
        top["tls"] = True
    _write_toml(layout.dir / "cluster.toml", top, tables)


def add_chunkservers(
    layout: Layout, count: int, cs_options: dict[str, Any] | None = None
) -> list[int]:
    """Add ``count`` chunkservers to an existing cluster directory (free loopback ports, the
    next indexes, the layout's chunkserver options updated by ``cs_options``); returns
    their indexes. ``start_daemons`` starts them, ``stop_daemons`` stops them."""
    if count < 1:
        raise ClusterError("add at least one chunkserver")
    options = {**layout.cs_options, **(cs_options or {})}
    first = max(layout.chunkservers, default=0) + 1
    added = list(range(first, first + count))
    with_metrics = any(metrics_address(layout, f"cs{i}") for i in layout.chunkservers)
    ports = free_loopback_ports(count * (2 if with_metrics else 1))
    metrics_ports = iter(ports[count:])
    ports = ports[:count]
    saved = layout.cs_options
    layout.cs_options = options
    try:
        for i, port in zip(added, ports, strict=True):
            layout.chunkservers[i] = f"127.0.0.1:{port}"
            _write_cs_config(layout, i, layout.chunkservers[i], next(metrics_ports, None))
    finally:
        layout.cs_options = saved
    _save_layout(layout)
    return added


# ---------------------------------------------------------------------- processes


def _pid_file(layout: Layout, name: str) -> Path:
    return layout.dir / "run" / f"{name}.pid"


def _running_pid(layout: Layout, name: str, config: Path) -> int | None:
    """The PID of daemon ``name`` if it runs (its command line names its config)."""
    try:
        pid = int(_pid_file(layout, name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if str(config).encode() in cmdline.split(b"\0") else None


def start_daemons(
    layout: Layout, *, log_level: str = "INFO", only: Collection[str] | None = None
) -> dict[str, int]:
    """Start every daemon that is not running (of ``only``'s names, when given); returns
    name -> PID of all of them (of those)."""
    pids: dict[str, int] = {}
    env = {**os.environ, "DFS_LOG_LEVEL": log_level}
    # The daemons import this project: make sure they find it even when it is not installed
    # (a checkout run with PYTHONPATH) by putting its root first on their path.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    (layout.dir / "logs").mkdir(exist_ok=True)
    (layout.dir / "run").mkdir(exist_ok=True)
    for name, argv, config in layout.daemons():
        if only is not None and name not in only:
            continue
        pid = _running_pid(layout, name, config)
        if pid is None:
            with open(layout.dir / "logs" / f"{name}.log", "ab") as log_file:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env=env,
                    start_new_session=True,
                )
            pid = proc.pid
            _pid_file(layout, name).write_text(f"{pid}\n")
        pids[name] = pid
    return pids


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it has exited, unreaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) counts as gone.
    with contextlib.suppress(FileNotFoundError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def stop_daemons(layout: Layout, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, str]:
    """SIGTERM every running daemon (chunkservers first), wait, SIGKILL the stragglers.
    Returns name -> how it ended ("stopped", "killed", "not running"). The cluster's
    mounts are unmounted first (``stop_mounts``): a mount must never outlive its cluster,
    whoever stops it."""
    stop_mounts(layout)
    outcome: dict[str, str] = {}
    running: dict[str, int] = {}
    for name, _argv, config in reversed(layout.daemons()):
        pid = _running_pid(layout, name, config)
        if pid is None:
            outcome[name] = "not running"
            _pid_file(layout, name).unlink(missing_ok=True)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        running[name] = pid
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        for name, pid in list(running.items()):
            if not pid_alive(pid):
                outcome[name] = "stopped"
                del running[name]
        if running:
            time.sleep(0.05)  # polling process exit; there is no portable wait for non-children
    for name, pid in running.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        outcome[name] = "killed"
    for name in outcome:
        _pid_file(layout, name).unlink(missing_ok=True)
    return outcome


# ---------------------------------------------------------------------- status


async def _status_of(address: str, secret: Credential) -> dict[str, Any] | None:
    host, _, port = address.rpartition(":")
    try:
        conn = await rpc.connect(
            host, int(port), secret, name="dfs-cli", timeout_s=STATUS_TIMEOUT_S, role="client"
        )
    except (DfsError, OSError, TimeoutError):
        return None
    try:
        header, _ = await conn.call("status", timeout_s=STATUS_TIMEOUT_S)
        return header
    except (DfsError, OSError, TimeoutError):
        return None
    finally:
        conn.close()


async def cluster_status(meta_addresses: list[str], secret: Credential) -> dict[str, Any]:
    """Every metaserver's own view, and the leader's view of the chunkservers.

    ``{"leader": id | None, "leader_address", "term", "metaservers": [{id, address, state,
    role, pid, term, commit, applied}], "chunkservers": [...], "files", "dirs", "chunks",
    "bytes", "capacity_bytes", "used_bytes", "health", "rebalance"}``; a metaserver that does
    not answer has state ``"down"``; members the answers name but ``meta_addresses`` does
    not (added since that list was written) are asked too; a chunkserver's ``state`` is the
    leader's (alive, dead, draining, drained)."""
    meta_addresses = list(meta_addresses)
    views = list(await asyncio.gather(*(_status_of(a, secret) for a in meta_addresses)))
    # Members the given list does not name (added since it was written): ask them too.
    added: list[str] = []
    for view in views:
        for row in (view or {}).get("metaservers", []):
            address = row.get("address")
            if isinstance(address, str) and address not in meta_addresses + added:
                added.append(address)
    if added:
        views += await asyncio.gather(*(_status_of(a, secret) for a in added))
        meta_addresses += added
    metaservers = []
    leader_view: dict[str, Any] | None = None
    for address, view in zip(meta_addresses, views, strict=True):
        if view is None:
            metaservers.append({"address": address, "state": "down"})
            continue
        metaservers.append(
            {
                "id": view["node_id"],
                "address": address,
                "state": "up",
                "role": view["role"],
                "pid": view["pid"],
                "term": view["term"],
                "commit": view["commit"],
                "applied": view["applied"],
            }
        )
        if view["role"] == "leader" and (leader_view is None or view["term"] > leader_view["term"]):
            leader_view = view
    chunkservers = [
        {"state": "alive" if c["alive"] else "dead", **c, "role": "chunkserver"}
        for c in (leader_view["chunkservers"] if leader_view else [])
    ]
    alive = [c for c in chunkservers if c["alive"]]
    return {
        "leader": leader_view["node_id"] if leader_view else None,
        "leader_address": leader_view["leader_address"] if leader_view else None,
        "term": leader_view["term"] if leader_view else None,
        "metaservers": metaservers,
        "chunkservers": chunkservers,
        "files": leader_view["files"] if leader_view else None,
        "dirs": leader_view["dirs"] if leader_view else None,
        "chunks": leader_view["chunks"] if leader_view else None,
        "bytes": leader_view["bytes"] if leader_view else None,
        "trash_files": leader_view.get("trash_files") if leader_view else None,
        "trash_bytes": leader_view.get("trash_bytes") if leader_view else None,
        "chunk_size": leader_view["chunk_size"] if leader_view else None,
        "health": leader_view.get("health") if leader_view else None,
        "rebalance": leader_view.get("rebalance") if leader_view else None,
        "capacity_bytes": sum(c["capacity_bytes"] for c in alive),
        "used_bytes": sum(c["used_bytes"] for c in alive),
    }


async def wait_ready(
    layout: Layout, timeout_s: float = 60.0, chunkservers: Collection[str] | None = None
) -> dict[str, Any]:
    """Poll until a leader is elected and every chunkserver (of the addresses
    ``chunkservers``, when given) is registered and alive."""
    secret = client_credentials(layout)
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await cluster_status(layout.meta_addresses, secret)
        alive = [
            c
            for c in status["chunkservers"]
            if c["alive"] and c["last_heartbeat_ms_ago"] is not None
        ]
        if chunkservers is not None:
            ready = set(chunkservers) <= {c["address"] for c in alive}
        else:
            ready = len(alive) >= len(layout.chunkservers)
        if status["leader"] is not None and ready:
            return status
        await asyncio.sleep(0.1)  # polling the cluster's own report, with a deadline
    down = [m["address"] for m in status.get("metaservers", []) if m.get("state") == "down"]
    raise ClusterError(
        f"cluster not ready after {timeout_s:.0f} s: leader={status.get('leader')}, "
        f"chunkservers alive={sum(1 for c in status.get('chunkservers', []) if c['alive'])}"
        f"/{len(layout.chunkservers)}, metaservers down={down}; see {layout.dir / 'logs'}"
    )


# ---------------------------------------------------------------------- mounts

# How long a background mount may take to become live beyond the client's own timeout
# (process start, imports, the kernel's INIT).
MOUNT_START_EXTRA_S = 15.0
# How long a mount process may take to exit after SIGTERM: it lets running requests finish
# (10 s), then commits files still open (each bounded by the client's timeout).
MOUNT_STOP_TIMEOUT_S = 60.0


def mount_pid_file(run_dir: Path, mountpoint: Path) -> Path:
    """Where the mount process serving ``mountpoint`` records ``PID\\nMOUNTPOINT\\n``:
    one file per mountpoint, so several mounts of one cluster can coexist."""
    digest = hashlib.sha256(str(mountpoint).encode()).hexdigest()[:12]
    return run_dir / f"mount-{digest}.pid"


def mount_run_dir(directory: Path | None) -> Path:
    """The directory for a mount's PID and log files: the cluster's ``run/`` with
    ``--dir``, else a per-user directory under the system's temporary directory."""
    if directory is not None:
        return directory / "run"
    return Path(tempfile.gettempdir()) / f"dfs-mounts-{os.getuid()}"


def _mount_pid(pid_file: Path) -> tuple[int, Path] | None:
    try:
        pid_text, mountpoint, *_ = pid_file.read_text().splitlines()
        return int(pid_text), Path(mountpoint)
    except (FileNotFoundError, ValueError):
        return None


def _is_mount_process(pid: int, mountpoint: Path) -> bool:
    """Whether ``pid`` runs ``dfs mount`` for ``mountpoint`` (not a recycled PID)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"mount" in argv and str(mountpoint).encode() in argv and pid_alive(pid)


def running_mount(pid_file: Path) -> int | None:
    """The PID of the live mount process recorded in ``pid_file``, if any."""
    recorded = _mount_pid(pid_file)
    if recorded is None:
        return None
    pid, mountpoint = recorded
    return pid if _is_mount_process(pid, mountpoint) else None


def start_mount(
    args: list[str], mountpoint: Path, pid_file: Path, log_file: Path, timeout_s: float
) -> int:
    """Run ``dfs mount --foreground ARGS --pid-file F MOUNTPOINT`` as a daemon (its own
    session, output to ``log_file``) and wait until it is live: it wrote ``pid_file`` and
    the kernel lists the mount. Returns its PID; ``ClusterError`` with the end of its log
    if it exits first or is not live within ``timeout_s`` + ``MOUNT_START_EXTRA_S``."""
    from dfs.fuse.mountinfo import FS_TYPE, mount_info

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "dfs.cli.main", "mount", "--foreground", *args]
    argv += ["--pid-file", str(pid_file), str(mountpoint)]
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.unlink(missing_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s + MOUNT_START_EXTRA_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"mount failed:\n{_tail(log_file)}")
        recorded = _mount_pid(pid_file)
        info = mount_info(mountpoint)
        if recorded and recorded[0] == proc.pid and info and info.fstype == FS_TYPE:
            return proc.pid
        time.sleep(0.05)  # polling the mount process's own report, with a deadline
    proc.terminate()
    raise ClusterError(
        f"mount not live after {timeout_s + MOUNT_START_EXTRA_S:.0f} s; see {log_file}"
    )


def _tail(log_file: Path, lines: int = 12) -> str:
    try:
        text = log_file.read_text(errors="replace").rstrip().splitlines()
    except FileNotFoundError:
        return f"(no log at {log_file})"
    return "\n".join("  " + line for line in text[-lines:])


def force_unmount(mountpoint: Path) -> bool:
    """Detach a mount whose process is gone or stuck (``fusermount3 -u -z``)."""
    proc = subprocess.run(
        ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True, timeout=30
    )
    return proc.returncode == 0


def stop_mount(pid_file: Path, timeout_s: float = MOUNT_STOP_TIMEOUT_S) -> tuple[Path, str] | None:
    """Unmount the mount recorded in ``pid_file``: SIGTERM its process (which commits open
    files and unmounts), SIGKILL it past ``timeout_s``, and detach a mount left behind.
    Returns (mountpoint, how it ended), or None if the file records nothing."""
    from dfs.fuse.mountinfo import FS_TYPE, mount_info

    recorded = _mount_pid(pid_file)
    if recorded is None:
        pid_file.unlink(missing_ok=True)
        return None
    pid, mountpoint = recorded
    how = "not running"
    if _is_mount_process(pid, mountpoint):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling process exit; there is no portable wait for non-children
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            how = "killed"
        else:
            how = "unmounted"
    info = mount_info(mountpoint)
    if info is not None and info.fstype == FS_TYPE and force_unmount(mountpoint):
        how = "detached" if how == "not running" else how
    pid_file.unlink(missing_ok=True)
    return mountpoint, how


def stop_mounts(layout: Layout) -> list[tuple[Path, str]]:
    """Unmount every mount of this cluster that ``dfs mount --dir`` / ``dfs up`` recorded."""
    out = []
    for pid_file in sorted((layout.dir / "run").glob("mount-*.pid")):
        stopped = stop_mount(pid_file)
        if stopped is not None:
            out.append(stopped)
    return out


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait until process ``pid`` has exited; False if it still runs after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # polling process exit; there is no portable wait for non-children
    return True


# ---------------------------------------------------------------------- metaserver membership


def new_metaserver(layout: Layout, node_id: int | None = None) -> tuple[int, str]:
    """Write the config of a new metaserver into the cluster directory (``meta<N>/``). It
    joins (``join = true``): it starts empty and waits to be added (``dfs admin metaserver
    add``). Its other settings are those of the existing metaservers. Returns (its id, its
    address). The layout is not changed: ``start_metaserver`` starts it, and it enters the
    layout (``set_metaservers``) once it is a member, so that ``dfs up``, ``dfs down`` and
    the chunkservers never list a node that is not one.

    The id is ``node_id``, or one past every id this directory has used: a metaserver's id
    and directory are not reused, whether it was removed or never added."""
    used = set(layout.metaservers) | {
        int(d.name[4:]) for d in layout.dir.glob("meta*") if d.name[4:].isdigit()
    }
    if node_id is None:
        node_id = max(used, default=0) + 1
    elif node_id < 1 or node_id in used:
        raise ClusterError(f"metaserver id {node_id} is taken in {layout.dir}")
    template = _read_toml(layout.dir / f"meta{min(layout.metaservers)}" / "meta.toml")
    port, metrics_port = free_loopback_ports(2)  # one call: never the same port twice
    address = f"127.0.0.1:{port}"
    d = layout.dir / f"meta{node_id}"
    d.mkdir()
    top = {k: v for k, v in template.items() if not isinstance(v, dict)}
    top.update(id=node_id, listen=address, data_dir=d / "raft", join=True)
    if "metrics_port" in top:  # its own, not the template's (taken by that server)
        top["metrics_port"] = metrics_port
    credential = issue_credential(layout, "metaserver", f"meta{node_id}", address)
    if credential is not None:
        top["credential_file"] = credential
    peers = {str(k): v for k, v in {**layout.metaservers, node_id: address}.items()}
    _write_toml(d / "meta.toml", top, {"peers": peers})
    return node_id, address


def _one_metaserver(layout: Layout, node_id: int, address: str) -> Layout:
    """A layout of just metaserver ``node_id`` (listed in ``layout`` or not yet)."""
    return Layout(dir=layout.dir, metaservers={node_id: address}, chunkservers={})


def start_metaserver(layout: Layout, node_id: int, address: str) -> int:
    """Start metaserver ``node_id`` of this directory (``new_metaserver``'s, not yet in the
    layout) unless it runs; returns its PID."""
    name = f"meta{node_id}"
    return start_daemons(_one_metaserver(layout, node_id, address), only={name})[name]


def stop_metaserver(
    layout: Layout, node_id: int, timeout_s: float = STOP_TIMEOUT_S, *, pid: int | None = None
) -> str:
    """Stop metaserver ``node_id`` of this directory, in the layout or not (SIGTERM, SIGKILL
    past ``timeout_s``). Returns how it ended ("stopped", "killed", "not running", or
    "still running"). ``pid``: the one ``start_metaserver`` returned in this process (its
    child: the PID is not reused before we reap it), for a stop right after the start,
    when its command line may not show yet."""
    name = f"meta{node_id}"
    if pid is None or not pid_alive(pid):
        pid = _running_pid(layout, name, layout.dir / name / "meta.toml")
    how = "not running"
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        how = "stopped"
        if not wait_exit(pid, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not wait_exit(pid, timeout_s):
                return "still running"  # its PID file stays
            how = "killed"
    _pid_file(layout, name).unlink(missing_ok=True)
    return how


async def wait_answers(address: str, secret: Credential, timeout_s: float = 30.0) -> None:
    """Poll until the daemon at ``address`` answers ``status`` (a new metaserver started)."""
    deadline = time.monotonic() + timeout_s
    while await _status_of(address, secret) is None:
        if time.monotonic() >= deadline:
            raise ClusterError(f"no metaserver answers at {address} after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)  # polling the daemon's own answer, with a deadline


def forget_metaserver(layout: Layout, node_id: int, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """After metaserver ``node_id`` was removed from the cluster: wait for its process to
    exit (a removed metaserver exits by itself), SIGTERM it past ``timeout_s``, and take it
    out of the layout. Its directory stays (its log, and the REMOVED marker that keeps it
    from starting again). Returns how it ended: "exited", "stopped" or "not running"; or
    "still running", and then its PID file and its place in the layout stay, so that
    ``dfs down`` still stops it (and this, run again, forgets it once it is gone)."""
    name = f"meta{node_id}"
    config = layout.dir / name / "meta.toml"
    pid = _running_pid(layout, name, config)
    how = "not running"
    if pid is not None:
        how = "exited"
        if not wait_exit(pid, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_exit(pid, timeout_s):
                return "still running"
            how = "stopped"
    _pid_file(layout, name).unlink(missing_ok=True)
    set_metaservers(layout, {k: v for k, v in layout.metaservers.items() if k != node_id})
    return how


def set_metaservers(layout: Layout, metaservers: dict[int, str]) -> None:
    """Record the metaservers of the cluster in ``cluster.toml`` (what ``dfs status`` and
    the clients started with ``--dir`` read) and in each chunkserver's config (where it
    looks for the leader when it starts). ``layout`` is updated too."""
    layout.metaservers = dict(sorted(metaservers.items()))
    raw = _read_toml(layout.dir / "cluster.toml")
    raw["metaservers"] = {str(k): v for k, v in layout.metaservers.items()}
    _write_toml_raw(layout.dir / "cluster.toml", raw)
    for i in layout.chunkservers:
        path = layout.dir / f"cs{i}" / "cs.toml"
        with contextlib.suppress(FileNotFoundError):
            cs = _read_toml(path)
            cs["metaservers"] = layout.meta_addresses
            _write_toml_raw(path, cs)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ClusterError(f"{path}: {e}") from None


def _write_toml_raw(path: Path, raw: dict[str, Any]) -> None:
    """``raw`` as read by tomllib, written back: plain keys first, then its tables."""
    top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in raw.items() if isinstance(v, dict)}
    _write_toml(path, top, tables)
