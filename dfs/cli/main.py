"""The ``dfs`` command: a click group. Each command parses arguments and calls into the
library (``dfs.cli.cluster`` for local clusters, ``dfs.cli.files`` for file commands); no
file-system logic lives here.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import dfs
from dfs.cli import cluster as local
from dfs.secret import SecretFileError, load_secret

F = TypeVar("F", bound=Callable[..., Any])
DIR_DEFAULT = "dfs-data"


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


def dir_option(f: F) -> F:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(path_type=Path),
        default=DIR_DEFAULT,
        envvar="DFS_DIR",
        show_default=True,
        help="The cluster directory (written by dfs up).",
    )(f)


def cluster_options(f: F) -> F:
    f = dir_option(f)
    f = click.option("--meta", help="Metaserver addresses HOST:PORT,... (instead of --dir).")(f)
    f = click.option(
        "--secret",
        "secret_file",
        type=click.Path(path_type=Path),
        help="The cluster secret file (with --meta).",
    )(f)
    return f


def find_cluster(
    directory: Path, meta: str | None, secret_file: Path | None
) -> tuple[list[str], bytes]:
    """(metaserver addresses, secret) from the options; a clear error otherwise."""
    try:
        if meta:
            if secret_file is None:
                raise click.UsageError("--meta needs --secret FILE")
            addresses = [a.strip() for a in meta.split(",") if a.strip()]
            return addresses, load_secret(secret_file)
        layout = local.load_layout(directory.absolute())
        return layout.meta_addresses, load_secret(layout.secret_file)
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    except (OSError, SecretFileError) as e:
        raise click.ClickException(f"cannot read the cluster secret: {e}") from None


def _size_bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


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
def up(
    directory: Path,
    metaservers: int,
    chunkservers: int,
    chunk_size: str,
    detach: bool,
    timeout_s: float,
) -> None:
    """Start a local cluster in DIR (creating it the first time) on loopback.

    Without --detach it runs in the foreground until Ctrl-C or SIGTERM, then stops the
    cluster. Running it again on the same DIR restarts the same cluster with its data.
    """
    try:
        size = _size_bytes(chunk_size)
    except ValueError:
        raise click.BadParameter(f"not a size: {chunk_size!r}", param_hint="--chunk-size") from None
    try:
        layout = local.init_layout(
            directory, metaservers=metaservers, chunkservers=chunkservers, chunk_size=size
        )
        pids = local.start_daemons(layout)
        status = asyncio.run(local.wait_ready(layout, timeout_s))
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"dfs cluster up in {layout.dir}")
    click.echo(f"  leader      metaserver {status['leader']} at {status['leader_address']}")
    for i, address in sorted(layout.metaservers.items()):
        click.echo(f"  metaserver  {i}  {address}  pid {pids[f'meta{i}']}")
    for i, address in sorted(layout.chunkservers.items()):
        click.echo(f"  chunkserver {i}  {address}  pid {pids[f'cs{i}']}")
    click.echo(f"  chunk size  {_human(layout.chunk_size)}; secret {layout.secret_file}")
    if detach:
        click.echo(f"stop it with: dfs down --dir {layout.dir}")
        return
    click.echo("running in the foreground; Ctrl-C stops the cluster")
    _wait_for_signal()
    _down(layout)


def _wait_for_signal() -> None:
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not received:
        signal.pause()


def _down(layout: local.Layout) -> None:
    outcome = local.stop_daemons(layout)
    for name, how in sorted(outcome.items()):
        click.echo(f"  {name:6s} {how}")


@cli.command()
@dir_option
def down(directory: Path) -> None:
    """Stop the local cluster in DIR (SIGTERM, then SIGKILL after 15 s)."""
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


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


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
        state = "alive" if c["alive"] else "DEAD"
        lines.append(
            f"  {c['id']}  {c['address']:21s} {state:5s} {bar} {frac:4.0%}  "
            f"{_human(used)} / {_human(cap)}  {c['chunks']} chunks  pid {c['pid']}"
        )
    if not st["chunkservers"]:
        lines.append("  (none known: no leader, or none registered yet)")
    lines.append(
        f"files {st['files']}  dirs {st['dirs']}  chunks {st['chunks']}  data {_human(st['bytes'])}"
        f"  capacity {_human(st['used_bytes'])} used of {_human(st['capacity_bytes'])}"
    )
    return "\n".join(lines)


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


def main() -> None:
    """Console-script entry point (``dfs = dfs.cli.main:main``)."""
    cli()


if __name__ == "__main__":
    main()
