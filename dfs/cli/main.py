"""The ``dfs`` command: a click group. Each command parses arguments and calls into the
library (``dfs.cli.cluster`` for local clusters and mount processes, ``dfs.cli.files`` for
file commands, ``dfs.fuse`` for the mount); no file-system logic lives here. ``dfs.fuse``
is imported only by the mount commands, so the others start without loading libfuse.

Every client command finds its cluster the same way: ``--dir D`` (a ``dfs up`` directory;
default ``./dfs-data``, or ``$DFS_DIR``), or ``--meta HOST:PORT,... --secret FILE`` for a
cluster elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

import dfs
from dfs.cli import cluster as local
from dfs.cli.common import (
    MOUNT_DEFAULT,
    MOUNT_TIMEOUT_S,
    client_options,
    cluster_options,
    dir_option,
    find_cluster,
    human,
    run_client,
    size_bytes,
    sync_on_close_option,
)
from dfs.cli.deploy import credential_command, init_command, revoke_command
from dfs.credentials import Credentials
from dfs.wire.spec import CLIENT


@click.group()
@click.option("--log-level", default="WARNING", envvar="DFS_CLI_LOG_LEVEL", hidden=True)
def cli(log_level: str) -> None:
    """dfs: a chunked distributed file system."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


@cli.command()
def version() -> None:
    """Print the dfs version."""
    click.echo(f"dfs {dfs.__version__}")


# ---------------------------------------------------------------------- cluster life cycle


@cli.command()
@dir_option
@click.option("--metaservers", default=3, show_default=True, help="Metaserver count (new cluster).")
@click.option(
    "--chunkservers", default=3, show_default=True, help="Chunkserver count (new cluster)."
)
@click.option("--chunk-size", default="64M", show_default=True, help="Chunk size (new cluster).")
@click.option(
    "--detach", is_flag=True, help="Return once the cluster is ready; stop it with dfs down."
)
@click.option(
    "--timeout", "timeout_s", default=60.0, show_default=True, help="Seconds to wait for readiness."
)
@click.option(
    "--mount",
    "mountpoint",
    type=click.Path(path_type=Path),
    default=MOUNT_DEFAULT,
    show_default=True,
    help="Where to mount the cluster with FUSE (created if missing).",
)
@click.option("--no-mount", is_flag=True, help="Start the cluster without mounting it.")
@click.option(
    "--capacity",
    help="Capacity of each chunkserver this creates (a new cluster's, or the added ones), "
    "e.g. 1G [default: its file system's size].",
)
@click.option(
    "--add-chunkservers",
    "add",
    type=click.IntRange(min=1),
    help="Add and start N more chunkservers on the existing cluster in DIR, then return "
    "(no mount; dfs down stops them with the rest).",
)
@click.option(
    "--tls/--no-tls",
    default=False,
    show_default=True,
    help="A new cluster: make its CA and a credential per process (DIR/tls), and speak TLS "
    "on every connection.",
)
@sync_on_close_option
def up(
    directory: Path,
    metaservers: int,
    chunkservers: int,
    chunk_size: str,
    detach: bool,
    timeout_s: float,
    mountpoint: Path,
    no_mount: bool,
    capacity: str | None,
    add: int | None,
    tls: bool,
    sync_on_close: bool,
) -> None:
    """Start a local cluster in DIR (creating it the first time) on loopback, and mount
    it at MOUNT (unless --no-mount).

    Without --detach it runs in the foreground until Ctrl-C or SIGTERM, then unmounts and
    stops the cluster. Running it again on the same DIR restarts the same cluster with its
    data. With --add-chunkservers N it adds N chunkservers to the cluster in DIR and
    returns once they serve.
    """
    try:
        size = size_bytes(chunk_size)
    except ValueError:
        raise click.BadParameter(f"not a size: {chunk_size!r}", param_hint="--chunk-size") from None
    cs_options: dict[str, Any] = {}
    if capacity is not None:
        try:
            cs_options["capacity_bytes"] = size_bytes(capacity)
        except ValueError:
            raise click.BadParameter(f"not a size: {capacity!r}", param_hint="--capacity") from None
    exists = (directory.absolute() / "cluster.toml").exists()
    if capacity is not None and exists and add is None:
        raise click.UsageError("--capacity sizes the chunkservers of a new cluster, or added ones")
    try:
        only: list[str] | None = None
        ready: list[str] | None = None
        if add is not None:  # start the new ones only: a stopped server stays stopped
            layout = local.load_layout(directory.absolute())
            added = local.add_chunkservers(layout, add, cs_options)
            only = [f"cs{i}" for i in added]
            ready = [layout.chunkservers[i] for i in added]
            detach, no_mount = True, True
        else:
            layout = local.init_layout(
                directory,
                metaservers=metaservers,
                chunkservers=chunkservers,
                chunk_size=size,
                cs_options=cs_options,
                metrics=True,
                tls=tls,
            )
        pids = local.start_daemons(layout, only=only)
        status = asyncio.run(local.wait_ready(layout, timeout_s, ready))
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    if add is None:
        click.echo(f"dfs cluster up in {layout.dir}")
    else:
        click.echo(f"{add} chunkserver(s) added to the dfs cluster in {layout.dir}")
    click.echo(f"  leader      metaserver {status['leader']} at {status['leader_address']}")
    for i, address in sorted(layout.metaservers.items()):
        if f"meta{i}" in pids:
            click.echo(
                f"  metaserver  {i}  {address}  pid {pids[f'meta{i}']}{_metrics(layout, f'meta{i}')}"
            )
    # The ids the metaservers gave, as dfs status shows them (not the directories' order).
    ids = {c["address"]: c["id"] for c in status["chunkservers"]}
    for i, address in sorted(layout.chunkservers.items(), key=lambda e: ids.get(e[1], 1 << 62)):
        if f"cs{i}" not in pids:
            continue
        cs_id = ids.get(address, "?")
        metrics = _metrics(layout, f"cs{i}")
        click.echo(f"  chunkserver {cs_id}  {address}  pid {pids[f'cs{i}']}  (cs{i}){metrics}")
    tls_note = f"TLS, client credential {layout.client_file}" if layout.tls else "no TLS"
    click.echo(f"  chunk size  {human(layout.chunk_size)}; secret {layout.secret_file}; {tls_note}")
    if not no_mount:
        try:
            where = _mount_local(layout, mountpoint, sync_on_close=sync_on_close)
        except (local.ClusterError, click.ClickException) as e:
            message = e.message if isinstance(e, click.ClickException) else str(e)
            raise click.ClickException(
                f"the cluster is up, but mounting it failed: {message}\n"
                f"(dfs up --no-mount starts it without a mount; dfs down stops it)"
            ) from None
        click.echo(f"  mounted at  {where}")
    if detach:
        click.echo(f"stop it with: dfs down --dir {layout.dir}")
        return
    click.echo("running in the foreground; Ctrl-C stops the cluster")
    _wait_for_signal()
    _down(layout)


def _metrics(layout: local.Layout, name: str) -> str:
    address = local.metrics_address(layout, name)
    return f"  metrics http://{address}/metrics" if address else ""


def _mount_local(layout: local.Layout, mountpoint: Path, *, sync_on_close: bool) -> Path:
    """Mount the cluster of ``layout`` at ``mountpoint`` in the background (creating the
    directory); nothing to do if this cluster's mount is already live there."""
    from dfs.fuse.mountinfo import resolve

    where = Path(resolve(mountpoint))
    pid_file = local.mount_pid_file(layout.dir / "run", where)
    if local.running_mount(pid_file) is not None:
        return where
    where.mkdir(parents=True, exist_ok=True)
    _check_mountpoint(where)
    local.start_mount(
        ["--dir", str(layout.dir), *(["--sync-on-close"] if sync_on_close else [])],
        where,
        pid_file,
        layout.dir / "logs" / f"{pid_file.stem}.log",
        MOUNT_TIMEOUT_S,
    )
    return where


def _check_mountpoint(mountpoint: Path) -> None:
    from dfs.fuse.mount import MountError, check_mountpoint

    try:
        check_mountpoint(mountpoint)
    except MountError as e:
        raise click.ClickException(str(e)) from None


def _wait_for_signal() -> None:
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not received:
        signal.pause()


def _down(layout: local.Layout) -> None:
    for mountpoint, how in local.stop_mounts(layout):
        click.echo(f"  mount  {mountpoint} {how}")
    outcome = local.stop_daemons(layout)
    for name, how in sorted(outcome.items()):
        click.echo(f"  {name:6s} {how}")


@cli.command()
@dir_option
def down(directory: Path) -> None:
    """Unmount the cluster's mounts, then stop its daemons (SIGTERM, then SIGKILL after
    15 s)."""
    try:
        layout = local.load_layout(directory.absolute())
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    _down(layout)


@cli.command()
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(directory: Path, meta: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Leader, term, every server's address, state and PID, capacity and usage."""
    addresses, secret = find_cluster(directory, meta, secret_file)
    st = asyncio.run(local.cluster_status(addresses, secret))
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
    else:
        click.echo(render_status(st))
    if st["leader"] is None:
        sys.exit(1)


BAR_WIDTH = 20
# A chunkserver's state as dfs status prints it: what needs a look stands out.
_STATE_TEXT = {"alive": "alive", "dead": "DEAD", "draining": "draining", "drained": "drained"}


def render_status(st: dict[str, Any]) -> str:
    lines = []
    if st["leader"] is None:
        lines.append("no leader (election in progress, or a majority of metaservers down)")
    else:
        lines.append(
            f"leader metaserver {st['leader']} at {st['leader_address']}, term {st['term']}"
        )
    lines.append("metaservers")
    for m in st["metaservers"]:
        if m["state"] == "down":
            lines.append(f"  ?  {m['address']:21s} DOWN")
        else:
            lines.append(
                f"  {m['id']}  {m['address']:21s} {m['role']:9s} pid {m['pid']:<7d} "
                f"commit {m['commit']} applied {m['applied']}"
            )
    lines.append("chunkservers")
    for c in st["chunkservers"]:
        cap, used = c["capacity_bytes"], c["used_bytes"]
        frac = used / cap if cap else 0.0
        filled = round(frac * BAR_WIDTH)
        bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
        state = c.get("state", "alive" if c["alive"] else "dead")
        host = c.get("host") or c["address"].rpartition(":")[0]
        where = f"{host}/{c['rack']}" if c.get("rack") else host
        lines.append(
            f"  {c['id']}  {c['address']:21s} {_STATE_TEXT.get(state, state):8s} {bar} "
            f"{frac:4.0%}  {human(used)} / {human(cap)}  {c['chunks']} chunks  "
            f"host {where}  pid {c['pid']}"
        )
    if not st["chunkservers"]:
        lines.append("  (none known: no leader, or none registered yet)")
    lines.append(
        f"files {st['files']}  dirs {st['dirs']}  chunks {st['chunks']}  data {human(st['bytes'])}"
        + (
            f"  trash {st['trash_files']} files {human(st['trash_bytes'])}"
            if st.get("trash_files") is not None
            else ""
        )
        + f"  capacity {human(st['used_bytes'])} used of {human(st['capacity_bytes'])}"
    )
    rebalance = st.get("rebalance")
    if rebalance and rebalance.get("running"):
        from dfs.cli.admin import progress_text

        lines.append(
            f"rebalance to within {rebalance['threshold_pct']:.1f} points: "
            + progress_text(rebalance)
        )
    health = st.get("health")
    if health:
        problems = [
            f"{health[k]} {label}"
            for k, label in (
                ("missing", "MISSING"), ("one_copy", "one copy left"),
                ("under_goal", "under goal"), ("over_goal", "over goal"),
                ("corrupt", "corrupt"),
            )
            if health.get(k)
        ]  # fmt: skip
        busy = [
            f"{health[k]} {label}"
            for k, label in (("replicating", "copying"), ("garbage", "to collect"))
            if health.get(k)
        ]
        lines.append(
            f"chunks {'healthy' if not problems else ', '.join(problems)}"
            + (f"  ({', '.join(busy)})" if busy else "")
            + ("\n  the files: dfs admin fsck" if problems else "")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- file commands

PROGRESS_MIN_BYTES = 8 << 20  # smaller copies finish before a bar would tell anything


def _bar(total: int, label: str) -> Any:
    """A progress bar on stderr for copies worth one (a no-op context otherwise)."""
    import contextlib

    if total < PROGRESS_MIN_BYTES:
        return contextlib.nullcontext(None)
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False)


@cli.command()
@client_options
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing (mode, links, owner, size, mtime).")
def ls(directory: Path, meta: str | None, secret_file: Path | None, path: str, long: bool) -> None:
    """List a directory of the cluster."""
    from dfs.cli import files

    lines = run_client(
        directory, meta, secret_file, lambda fs: files.ls(fs, files.remote(path), long)
    )
    for line in lines:
        click.echo(line)


@cli.command()
@client_options
@click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("path")
def put(
    directory: Path, meta: str | None, secret_file: Path | None, local: Path, path: str
) -> None:
    """Copy a local file into the cluster (into PATH if it is a directory)."""
    from dfs.cli import files

    total = local.stat().st_size

    async def work(fs: Any) -> int:
        with _bar(total, f"put {local.name}") as bar:
            return await files.put(fs, local, files.remote(path), bar.update if bar else None)

    run_client(directory, meta, secret_file, work)


@cli.command()
@client_options
@click.argument("path")
@click.argument("local", type=click.Path(dir_okay=True, path_type=Path))
def get(
    directory: Path, meta: str | None, secret_file: Path | None, path: str, local: Path
) -> None:
    """Copy a cluster file to a local file (into LOCAL if it is a directory; - for stdout)."""
    from dfs.cli import files

    rpath = files.remote(path)
    if str(local) != "-" and local.is_dir():
        local = local / os.fsdecode(rpath.rstrip(b"/").rpartition(b"/")[2])

    async def work(fs: Any) -> int:
        total = await files.size_of(fs, rpath)
        if str(local) == "-":
            return await files.get(fs, rpath, files.stdout_binary())
        tmp = local.with_name(f".{local.name}.dfs-partial")
        try:
            with open(tmp, "wb") as out, _bar(total, f"get {local.name}") as bar:
                n = await files.get(fs, rpath, out, bar.update if bar else None)
            os.replace(tmp, local)  # a failed copy never leaves a truncated LOCAL behind
        finally:
            tmp.unlink(missing_ok=True)
        return n

    run_client(directory, meta, secret_file, work)


@cli.command()
@client_options
@click.argument("paths", nargs=-1, required=True)
def cat(
    directory: Path, meta: str | None, secret_file: Path | None, paths: tuple[str, ...]
) -> None:
    """Print cluster files to stdout."""
    from dfs.cli import files

    async def work(fs: Any) -> None:
        for p in paths:
            await files.get(fs, files.remote(p), files.stdout_binary())

    run_client(directory, meta, secret_file, work)


@cli.command()
@client_options
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "recursive", is_flag=True, help="Remove directories and their contents.")
def rm(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    paths: tuple[str, ...],
    recursive: bool,
) -> None:
    """Remove files (and directories, with -r)."""
    from dfs.cli import files

    async def work(fs: Any) -> None:
        for p in paths:
            await files.rm(fs, files.remote(p), recursive)

    run_client(directory, meta, secret_file, work)


@cli.command()
@client_options
@click.argument("paths", nargs=-1, required=True)
@click.option("-p", "parents", is_flag=True, help="Make parents as needed; no error if it exists.")
def mkdir(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    paths: tuple[str, ...],
    parents: bool,
) -> None:
    """Make directories."""
    from dfs.cli import files

    async def work(fs: Any) -> None:
        for p in paths:
            await files.mkdir(fs, files.remote(p), parents)

    run_client(directory, meta, secret_file, work)


@cli.command()
@client_options
@click.argument("src")
@click.argument("dst")
def mv(directory: Path, meta: str | None, secret_file: Path | None, src: str, dst: str) -> None:
    """Rename or move (atomically; into DST if it is a directory)."""
    from dfs.cli import files

    run_client(
        directory, meta, secret_file, lambda fs: files.mv(fs, files.remote(src), files.remote(dst))
    )


@cli.command("stat")
@client_options
@click.argument("path")
def stat_(directory: Path, meta: str | None, secret_file: Path | None, path: str) -> None:
    """Show a path's attributes (as stat(1))."""
    from dfs.cli import files

    click.echo(
        run_client(directory, meta, secret_file, lambda fs: files.stat_text(fs, files.remote(path)))
    )


# ---------------------------------------------------------------------- mounts


@cli.command()
@cluster_options
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=MOUNT_TIMEOUT_S,
    show_default=True,
    help="Seconds before an operation the cluster does not answer fails (EIO/ETIMEDOUT).",
)
@sync_on_close_option
@click.option(
    "--local-reads/--no-local-reads",
    default=True,
    show_default=True,
    help="Read replicas kept on this machine from their files, when this process may "
    "(short-circuit reads), instead of through their chunkservers.",
)
@click.option("--pid-file", type=click.Path(path_type=Path), hidden=True)
def mount(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    mountpoint: Path,
    foreground: bool,
    allow_other: bool,
    timeout_s: float,
    sync_on_close: bool,
    local_reads: bool,
    pid_file: Path | None,
) -> None:
    """Mount the cluster at MOUNTPOINT with FUSE.

    In the background by default: returns once the mount is live, and the mount process
    runs until dfs umount (its log and PID go to DIR/logs and DIR/run with --dir).
    """
    from dfs.fuse.mountinfo import resolve

    addresses, secret = find_cluster(directory, meta, secret_file, CLIENT)
    where = Path(resolve(mountpoint))
    run_dir = local.mount_run_dir(None if meta else directory.absolute())
    if pid_file is None:
        pid_file = local.mount_pid_file(run_dir, where)
    if foreground:
        _mount_foreground(
            addresses, secret, where, allow_other, timeout_s, sync_on_close, local_reads, pid_file
        )
        return
    _check_mountpoint(where)
    args = (
        ["--meta", ",".join(addresses), "--secret", str(Path(str(secret_file)).absolute())]
        if meta
        else []
    )
    if not meta:
        args = ["--dir", str(directory.absolute())]
    if allow_other:
        args.append("--allow-other")
    args += ["--timeout", str(timeout_s)]
    if sync_on_close:
        args.append("--sync-on-close")
    if not local_reads:
        args.append("--no-local-reads")
    log_dir = run_dir.parent / "logs" if not meta else run_dir
    try:
        pid = local.start_mount(args, where, pid_file, log_dir / f"{pid_file.stem}.log", timeout_s)
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"mounted at {where} (pid {pid}); unmount with: dfs umount {where}")


def _mount_foreground(
    addresses: list[str],
    secret: Credentials,
    where: Path,
    allow_other: bool,
    timeout_s: float,
    sync_on_close: bool,
    local_reads: bool,
    pid_file: Path,
) -> None:
    import logging

    from dfs.fuse import mount as fuse_mount
    from dfs.wire.errors import DfsError

    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    config = fuse_mount.MountConfig(
        meta_addresses=addresses,
        secret=secret,
        mountpoint=where,
        allow_other=allow_other,
        timeout_s=timeout_s,
        sync_on_close=sync_on_close,
        local_reads=local_reads,
        pid_file=pid_file,
    )
    try:
        fuse_mount.run(config)
    except fuse_mount.MountError as e:
        raise click.ClickException(str(e)) from None
    except DfsError as e:
        raise click.ClickException(f"cannot reach the cluster: {e}") from None


@cli.command()
@dir_option
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount(directory: Path, mountpoint: Path) -> None:
    """Unmount a dfs mount (fails if files on it are in use)."""
    import subprocess

    from dfs.fuse.mountinfo import FS_TYPE, mount_info, resolve

    where = Path(resolve(mountpoint))
    info = mount_info(where)
    if info is None:
        raise click.ClickException(f"{where} is not mounted")
    if info.fstype != FS_TYPE:
        raise click.ClickException(f"{where} is not a dfs mount ({info.fstype})")
    proc = subprocess.run(
        ["fusermount3", "-u", str(where)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        if "busy" in proc.stderr.lower():
            raise click.ClickException(
                f"{where} is busy: files or directories on it are in use (fuser -vm {where})"
            )
        raise click.ClickException(f"cannot unmount {where}: {proc.stderr.strip()}")
    # The mount process exits by itself once unmounted; wait for it when it is known.
    for run_dir in (directory.absolute() / "run", local.mount_run_dir(None)):
        pid_file = local.mount_pid_file(run_dir, where)
        pid = local.running_mount(pid_file)
        if pid is not None:
            local.wait_exit(pid, local.MOUNT_STOP_TIMEOUT_S)
        pid_file.unlink(missing_ok=True)
    click.echo(f"unmounted {where}")


# ---------------------------------------------------------------------- daemons


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", required=True, type=click.Path(exists=True, path_type=Path))
def metaserver(config: Path) -> None:
    """Run a metaserver daemon (same as python -m metaserver)."""
    os.execv(sys.executable, [sys.executable, "-m", "metaserver", "--config", str(config)])


@cli.command()
@click.option("--config", required=True, type=click.Path(exists=True, path_type=Path))
def chunkserver(config: Path) -> None:
    """Run a chunkserver daemon (same as python -m chunkserver)."""
    os.execv(sys.executable, [sys.executable, "-m", "chunkserver", "--config", str(config)])


from dfs.cli.admin import admin  # noqa: E402 (registered once cli exists)
from dfs.cli.admin_backup import backup, restore  # noqa: E402
from dfs.cli.admin_fsck import fsck, getgoal, setgoal  # noqa: E402
from dfs.cli.admin_trash import gettrashtime, settrashtime, trash, usage  # noqa: E402

for _command in (fsck, setgoal, getgoal, backup, restore, trash, settrashtime, gettrashtime, usage):
    admin.add_command(_command)
cli.add_command(admin)
cli.add_command(init_command)
cli.add_command(credential_command)
cli.add_command(revoke_command)


def main() -> None:
    """Console-script entry point (``dfs = dfs.cli.main:main``)."""
    cli()


if __name__ == "__main__":
    main()
