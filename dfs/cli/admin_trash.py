"""``dfs admin trash``, ``settrashtime``, ``gettrashtime`` and ``usage``: removed files
kept for their trash time (MooseFS's trash and ``mfssettrashtime``), and a subtree's
usage from the namespace's recursive statistics (no walk)::

    dfs admin trash ls [PATH] [--json]           what the trash holds (under PATH)
    dfs admin trash restore PATH|ID [--to PATH]  put files back (a tree: every file)
    dfs admin trash purge [PATH] [--older-than T]  let them be collected now
    dfs admin settrashtime SECONDS PATH... [-r]  0: removed files are freed at once
    dfs admin gettrashtime PATH... [-r] [--json]
    dfs admin usage [PATH] [--json]

Each asks the leader (``admin.trash_*``, ``admin.set_trash_time``, ``admin.trash_time``,
``admin.usage``: docs/PROTOCOL.md), a bounded batch at a time, until it says there is no
more. Paths are the cluster's (absolute; a relative one is taken from the root).
Exit 0 done; 1 something failed (each named).
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

import click

from dfs.cli import admin as admin_cli
from dfs.cli.admin import Ask
from dfs.cli.admin_fsck import _by_number, _each, _remote, count_pages, set_on_paths
from dfs.cli.common import client_options, human

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90``, ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if m is None:
        raise click.BadParameter(f"{text!r}: a number of seconds, or with s, m, h, d or w")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _select(target: str | None) -> dict[str, Any]:
    """An ID (digits) or a PATH."""
    if target is None:
        return {}
    if target.isdigit():
        return {"ino": int(target)}
    return {"path": _remote(target)}


@click.group()
def trash() -> None:
    """Removed files kept for their trash time: list, restore, purge."""


@trash.command("ls")
@client_options
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def trash_ls(
    directory: Path, meta: str | None, secret_file: Path | None, path: str | None, as_json: bool
) -> None:
    """List the files in the trash (removed from PATH or below it)."""

    async def work(ask: Ask) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        cursor = None
        while True:
            fields = _select(path)
            if cursor is not None:
                fields["cursor"] = cursor
            page = await ask("admin.trash_list", **fields)
            entries.extend(page["entries"])
            cursor = page["cursor"]
            if cursor is None:
                return {"entries": entries, "files": page["files"], "bytes": page["bytes"]}

    answer = admin_cli._session(directory, meta, secret_file, work)
    for e in answer["entries"]:
        e["path"] = os.fsdecode(e["path"])
    if as_json:
        admin_cli._echo_json(answer)
        return
    for e in answer["entries"]:
        click.echo(f"{e['ino']:>10d}  {human(e['size']):>10s}  removed {_when(e['removed_ns'])}"
                   f"  expires {_when(e['expires_ns'])}  {e['path']}")  # fmt: skip
    click.echo(f"trash: {answer['files']} files, {human(answer['bytes'])}")


@trash.command("restore")
@client_options
@click.argument("target", metavar="PATH|ID")
@click.option("--to", "to", default=None, help="A new path, or a directory to restore into.")
def trash_restore(
    directory: Path, meta: str | None, secret_file: Path | None, target: str, to: str | None
) -> None:
    """Put back the file removed from PATH (every file removed from below it, for a
    directory), or the entry ID, making the missing directories on the way."""

    async def work(ask: Ask) -> tuple[int, list[dict[str, Any]]]:
        restored = 0
        failed: list[dict[str, Any]] = []
        while True:
            fields = _select(target)
            if to is not None:
                fields["to"] = _remote(to)
            page = await ask("admin.trash_restore", mutate=True, **fields)
            restored += page["restored"]
            failed.extend(page["failed"])
            if not page["more"] or not page["restored"]:
                return restored, failed

    restored, failed = admin_cli._session(directory, meta, secret_file, work)
    for f in failed:
        click.echo(f"{os.fsdecode(f['path']) or f['ino']}: {f['msg']}", err=True)
    click.echo(f"restored {restored} files")
    if failed or not restored:
        raise click.exceptions.Exit(1)


@trash.command("purge")
@client_options
@click.argument("target", metavar="[PATH|ID]", required=False)
@click.option("--older-than", "older_than", default=None,
              help="Only files removed at least this long ago (30s, 15m, 2h, 7d).")  # fmt: skip
def trash_purge(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    target: str | None,
    older_than: str | None,
) -> None:
    """Let the files in the trash (removed from PATH or below, or entry ID) be collected
    now; their space comes back once no client holds them open."""
    fields = _select(target)
    if older_than is not None:
        fields["older_than_s"] = parse_duration(older_than)

    async def work(ask: Ask) -> int:
        purged = 0
        while True:
            page = await ask("admin.trash_purge", mutate=True, **fields)
            purged += int(page["purged"])
            if not page["more"] or not page["purged"]:
                return purged

    purged = admin_cli._session(directory, meta, secret_file, work)
    click.echo(f"purged {purged} files")


@click.command()
@client_options
@click.argument("seconds", metavar="SECONDS")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Also every file and directory below.")
def settrashtime(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    seconds: str,
    paths: tuple[str, ...],
    recursive: bool,
) -> None:
    """Set how long a file removed from each PATH is kept (SECONDS, or 15m, 2h, 7d; 0:
    freed at once); with -r, of everything below too. New files take their directory's."""
    trash_s = parse_duration(seconds)
    set_on_paths(
        directory, meta, secret_file, paths, "admin.set_trash_time", "trash_s", trash_s, recursive
    )


@click.command()
@client_options
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Count the inodes below by trash time.")
@click.option("--json", "as_json", is_flag=True, help="Print the answers as JSON.")
def gettrashtime(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    paths: tuple[str, ...],
    recursive: bool,
    as_json: bool,
) -> None:
    """Print the trash time (seconds) of each PATH; with -r, how many files, directories
    and others below it have each."""

    async def work(ask: Ask) -> tuple[list[dict[str, Any]], bool]:
        return await _each(
            ask,
            paths,
            lambda a, root: count_pages(a, "admin.trash_time", root, "trash_s", recursive),
        )

    answers, ok = admin_cli._session(directory, meta, secret_file, work)
    if as_json:
        admin_cli._echo_json(answers)
    else:
        for g in answers:
            if "trash_s" in g:
                click.echo(f"{g['path']}: {g['trash_s']}")
                continue
            click.echo(f"{g['path']}:")
            for kind, label in (("files", "files"), ("dirs", "directories"), ("others", "others")):
                for t, n in _by_number(g[kind]):
                    click.echo(f" {label + ' with trashtime':28s}{t:>10s} : {n:>10d}")
    if not ok:
        raise click.exceptions.Exit(1)


def render_usage(path: str, u: dict[str, Any]) -> str:
    return "\n".join([
        f"{path}:",
        f"  bytes:          {u['bytes']:>16d}  ({human(u['bytes'])})",
        f"  physical bytes: {u['physical_bytes']:>16d}  ({human(u['physical_bytes'])}, "
        "size x goal)",
        f"  files:          {u['files']:>16d}",
        f"  directories:    {u['dirs']:>16d}",
        f"  trash (cluster): {u['trash_files']} files, {human(u['trash_bytes'])}; "
        f"{u['garbage_chunks']} deleted chunks awaiting collection",
    ])  # fmt: skip


@click.command()
@client_options
@click.argument("path", default="/")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def usage(
    directory: Path, meta: str | None, secret_file: Path | None, path: str, as_json: bool
) -> None:
    """A subtree's bytes, physical bytes (size x goal), files and directories, at once
    (no walk), and the cluster's trash."""
    root = _remote(path)

    async def work(ask: Ask) -> dict[str, Any]:
        return await ask("admin.usage", path=root)

    answer = admin_cli._session(directory, meta, secret_file, work)
    if as_json:
        admin_cli._echo_json({"path": os.fsdecode(root), **answer})
    else:
        click.echo(render_usage(os.fsdecode(root), answer))


__all__ = ["gettrashtime", "parse_duration", "settrashtime", "trash", "usage"]
