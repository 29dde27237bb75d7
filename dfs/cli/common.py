"""What every ``dfs`` command shares: how it finds its cluster (``--dir`` or ``--meta`` with
``--secret``), how long it waits for it (``--timeout``), how it runs a client and turns a
``DfsError`` into a one-line error, and how sizes read and print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dfs.cli import cluster as local
from dfs.credentials import CredentialFileError, Credentials, load_client_credentials
from dfs.secret import SecretFileError
from dfs.wire.spec import ADMIN

F = TypeVar("F", bound=Callable[..., Any])
# How long a file command (ls, put, get, ...) waits for the cluster by default (--timeout).
CLIENT_TIMEOUT_S = 30.0
DIR_DEFAULT = "dfs-data"
MOUNT_DEFAULT = "dfs-mnt"
# The mount's client timeout: past it an operation fails (EIO/ETIMEDOUT) instead of
# hanging the shell. 30 s rides out a leader election and a chunkserver declared dead.
MOUNT_TIMEOUT_S = 30.0


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
        help="The client credential (TLS clusters) or cluster secret file (with --meta).",
    )(f)
    return f


def _set_client_timeout(ctx: click.Context, _: click.Parameter, value: float) -> None:
    ctx.meta["dfs.client_timeout_s"] = value


def sync_on_close_option(f: F) -> F:
    return click.option(
        "--sync-on-close",
        is_flag=True,
        help="Make every close durable on every replica, as fsync does (slower; by default "
        "a close leaves the bytes in the replicas' memory, a small new file's in the "
        "mount's until its release lands them, and fsync makes them durable).",
    )(f)


def client_options(f: F) -> F:
    """``cluster_options`` and ``--timeout``, for commands that work on files."""
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=CLIENT_TIMEOUT_S,
        show_default=True,
        expose_value=False,
        callback=_set_client_timeout,
        help="Seconds an operation may wait for the cluster before it fails.",
    )(f)
    return cluster_options(f)


def find_cluster(
    directory: Path, meta: str | None, secret_file: Path | None, role: str = ADMIN
) -> tuple[list[str], Credentials]:
    """(metaserver addresses, credentials) from the options; a clear error otherwise.
    ``role``: what the process speaks as where its file does not say (the CLI is the
    operator's, ``admin``; a mount is a ``client``)."""
    try:
        if meta:
            if secret_file is None:
                raise click.UsageError("--meta needs --secret FILE")
            addresses = [a.strip() for a in meta.split(",") if a.strip()]
            return addresses, load_client_credentials(secret_file, role)
        layout = local.load_layout(directory.absolute())
        return layout.meta_addresses, local.client_credentials(layout, role)
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    except (OSError, SecretFileError, CredentialFileError) as e:
        raise click.ClickException(f"cannot read the cluster's credentials: {e}") from None


def size_bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def human(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def run_client(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    work: Callable[[Any], Any],
) -> Any:
    """Run ``work(fs)`` with a connected ``FsClient``; a ``DfsError`` becomes a one-line error."""

    from dfs.cli import files

    addresses, secret = find_cluster(directory, meta, secret_file)

    timeout_s = click.get_current_context().meta.get("dfs.client_timeout_s", CLIENT_TIMEOUT_S)

    async def main() -> Any:
        async with files.client(addresses, secret, timeout_s) as fs:
            return await work(fs)

    return run_async(main)


def run_async(main: Callable[[], Any]) -> Any:
    """Run ``main()`` (a coroutine function) on asyncio for a command; a ``DfsError`` or an
    ``OSError`` becomes a one-line error (exit 1)."""
    import anyio

    from dfs.wire.errors import DfsError

    try:
        return anyio.run(main, backend="asyncio")
    except DfsError as e:
        raise click.ClickException(
            f"{e.code.name.lower().replace('_', ' ')}: {e.message}"
        ) from None
    except OSError as e:
        raise click.ClickException(str(e)) from None
