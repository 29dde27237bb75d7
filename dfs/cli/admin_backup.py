"""``dfs admin backup`` and ``dfs admin restore``: the namespace exported as of one Raft
index while the cluster serves, and a new metaserver group started from the export::

    dfs admin backup FILE [--json]
    dfs admin restore FILE --dir D [--id N] [--voters 1,2,3] [--chunk-size B] [--secret F]
    dfs admin restore FILE --config metaserver.toml      (on each member's host)

backup asks the leader for an image (``admin.backup``, docs/PROTOCOL.md), reads it in
1 MiB pieces straight into the file (``dfs/wire/backupfile.py``) written next to FILE,
checks them against the leader's sha256, and fsyncs and renames it: FILE is whole or
absent. restore runs ``python -m metaserver.restore`` (``metaserver/restore.py``: the
client side does not import server code), which refuses a damaged file or a directory
that holds a log. docs/OPERATIONS.md, "Backup and restore", says what happens to chunks
written after the backup.

Exit codes: 0 done; 1 an error the message names; 2 a usage error.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from dfs.cli import admin as admin_cli
from dfs.cli.admin import Ask
from dfs.cli.common import client_options, find_cluster, human
from dfs.wire.backupfile import BackupHeader, cluster_id, encode_head
from dfs.wire.errors import DfsError


async def fetch(ask: Ask, secret: bytes, f: BinaryIO) -> BackupHeader:
    """Take an image on the leader and write the whole file to ``f``: the head, the
    image's pieces as they come (never all of it in memory), the sha256. The image is
    checked against the leader's own sha256 of it."""
    first = await ask("admin.backup")
    token, size = first["token"], first["image_bytes"]
    header = BackupHeader(
        cluster_id=cluster_id(secret), index=first["index"], term=first["term"],
        chunk_size=first["chunk_size"], created_ns=time.time_ns(), image_bytes=size,
    )  # fmt: skip
    head = encode_head(header)
    f.write(head)
    whole = hashlib.sha256(head)
    image = hashlib.sha256()
    done = 0
    while done < size:
        piece = (await ask("admin.backup", token=token, offset=done))["data"]
        if not piece:
            raise click.ClickException(f"the leader's image ended at {done} of {size} bytes")
        f.write(piece)
        whole.update(piece)
        image.update(piece)
        done += len(piece)
    if done != size or image.digest() != first["sha256"]:
        raise click.ClickException("the image read does not match the leader's checksum")
    f.write(whole.digest())
    return header


def write_backup(path: Path, secret: bytes, ask_run: Any) -> BackupHeader:
    """Write the backup file at ``path`` (temp file, fsync, rename: whole or absent)."""
    tmp = path.with_name(path.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            header: BackupHeader = ask_run(lambda ask: fetch(ask, secret, f))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return header


@click.command()
@client_options
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def backup(
    directory: Path, meta: str | None, secret_file: Path | None, file: Path, as_json: bool
) -> None:
    """Write a checksummed export of the namespace as of one Raft index to FILE, while the
    cluster serves."""
    _, secret = find_cluster(directory, meta, secret_file)

    def run(work: Any) -> BackupHeader:
        result: BackupHeader = admin_cli._session(directory, meta, secret_file, work)
        return result

    if secret.secret is None:
        raise click.ClickException(
            "a backup names its cluster by the cluster secret, which a client credential "
            "does not hold: run it with --dir on the cluster's directory"
        )
    try:
        h = write_backup(file, secret.secret, run)
    except DfsError as e:
        raise click.ClickException(f"backup failed: {e}") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {file}: {e}") from None
    size = file.stat().st_size
    if as_json:
        click.echo(json.dumps({"file": str(file), "cluster_id": h.cluster_id, "index": h.index,
                               "term": h.term, "bytes": size}))  # fmt: skip
    else:
        click.echo(f"backup of cluster {h.cluster_id} as of index {h.index} (term {h.term}): "
                   f"{file} ({human(size)})")  # fmt: skip


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dir", "raft_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The new metaserver's Raft directory (empty or absent).")  # fmt: skip
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The new metaserver's config file: its id, data_dir, [peers], chunk size "
              "and secret (as dfs init writes it).")  # fmt: skip
@click.option("--id", "node_id", type=click.IntRange(min=1), default=1, show_default=True,
              help="This node's id (with --dir).")  # fmt: skip
@click.option(
    "--voters",
    default=None,
    metavar="ID,...",
    help="The new group's member ids (with --dir; default: this node alone).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse a backup of another chunk size (with --dir).",
)
@click.option(
    "--secret",
    "secret_file",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Refuse a backup of another cluster (with --dir).",
)
@click.option("--any-cluster", is_flag=True, help="Restore a backup of another cluster.")
def restore(
    file: Path, raft_dir: Path | None, config: Path | None, node_id: int, voters: str | None,
    chunk_size: int | None, secret_file: Path | None, any_cluster: bool,
) -> None:  # fmt: skip
    """Start a new metaserver group from the backup FILE: write the Raft directory of one
    member (run it for each, then start them)."""
    if (raft_dir is None) == (config is None):
        raise click.UsageError("give one of --dir and --config")
    argv = [sys.executable, "-m", "metaserver.restore", str(file)]
    if config is not None:
        argv += ["--config", str(config)]
    else:
        argv += ["--dir", str(raft_dir), "--id", str(node_id)]
        if voters:
            argv += ["--voters", voters]
        if chunk_size is not None:
            argv += ["--chunk-size", str(chunk_size)]
        if secret_file is not None:
            argv += ["--secret-file", str(secret_file)]
    if any_cluster:
        argv.append("--any-cluster")
    code = subprocess.call(argv)
    if code:
        raise click.exceptions.Exit(1)


__all__ = ["backup", "fetch", "restore", "write_backup"]
