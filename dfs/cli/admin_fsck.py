"""``dfs admin fsck``, ``setgoal`` and ``getgoal``: a subtree's health and its replication
goals, as HDFS's ``fsck`` and MooseFS's ``mfssetgoal`` / ``mfsgetgoal``::

    dfs admin fsck [PATH] [--json]          every file at risk under PATH, by path
    dfs admin fsck --salvage FILE [--zero]  its lost chunks back from quarantine/
    dfs admin setgoal N PATH... [-r]        the goal of PATH (-r: and of all below it)
    dfs admin getgoal PATH... [-r] [--json] the goal of PATH (-r: counts of each goal below)

Each asks the leader (``admin.fsck``, ``admin.set_goal``, ``admin.goals``: docs/PROTOCOL.md)
one page of its walk of the subtree at a time, sending back the cursor it got, until
none comes; the leader judges the chunks and resolves the paths. Paths are the cluster's
(absolute; a relative one is taken from the root), not a mount's.

fsck's exit code, for scripts (HDFS's fsck and e2fsck's kind): 0 healthy; 1 some file is
at risk or lost (each one named); 2 a usage error (click's); 3 could not check (no
leader answered, the path does not exist). On a terminal, a tree of more than one page
shows a progress line on stderr. setgoal and getgoal go on with the next PATH after one
fails, then exit 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from dfs.cli import admin as admin_cli
from dfs.cli.admin import Ask, Progress
from dfs.cli.common import client_options, human
from dfs.wire.errors import DfsError

EXIT_AT_RISK = 1
EXIT_NOT_CHECKED = 3
PROBLEM_TEXT = {
    "missing": "missing",
    "no_good_replica": "no good replica",
    "under_goal": "under goal",
    "corrupt": "corrupt",
}
_SUMMED = ("files", "dirs", "others", "bytes", "chunks", "empty_chunks", "over_goal",
           "files_at_risk")  # fmt: skip


class NotChecked(click.ClickException):
    exit_code = EXIT_NOT_CHECKED


def _remote(path: str) -> bytes:
    b = os.fsencode(path)
    return b if b.startswith(b"/") else b"/" + b


def _join(root: bytes, rel: bytes) -> str:
    if not rel:
        return os.fsdecode(root)
    return os.fsdecode(root.rstrip(b"/") + b"/" + rel)


def _add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for k, n in more.items():
        into[k] = into.get(k, 0) + n


def _n(n: int, thing: str) -> str:
    """``1 chunk``, ``2 chunks``."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _by_number(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: int(kv[0]))


class _Walking:
    """The progress line of a walk of more than one page (stderr, on a terminal only)."""

    def __init__(self) -> None:
        self.on = sys.stderr.isatty()
        self.bar = Progress(sys.stderr, tty=True)
        self.drawn = False

    def show(self, done: int, total: int | None, text: str) -> None:
        if not self.on:
            return
        self.drawn = True
        if total:
            self.bar.show(done, total, text)
        else:
            sys.stderr.write(f"\r{text}\x1b[K")
            sys.stderr.flush()

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------- fsck


def _empty_summary() -> dict[str, Any]:
    return {**dict.fromkeys(_SUMMED, 0), "problems": {}, "replicas": {}}


async def _fsck_walk(ask: Ask, root: bytes) -> dict[str, Any]:
    """Every page of ``admin.fsck`` on ``root``, summed: the report ``--json`` prints."""
    summary = _empty_summary()
    files: list[dict[str, Any]] = []
    progress = _Walking()
    cursor = None
    settling = False
    try:
        while True:
            fields: dict[str, Any] = {"path": root}
            if cursor is not None:
                fields["cursor"] = cursor
            page = await ask("admin.fsck", **fields)
            s = page["summary"]
            for k in _SUMMED:
                summary[k] += s[k]
            _add_counts(summary["problems"], s["problems"])
            _add_counts(summary["replicas"], s["replicas"])
            settling = settling or page["settling"]
            for f in page["files"]:
                files.append({**f, "path": _join(root, f["path"])})
            cursor = page["cursor"]
            if cursor is None:
                break
            done = summary["files"] + summary["dirs"] + summary["others"]
            progress.show(done, page["total"], f"{done} checked, {len(files)} at risk")
    finally:
        progress.end()
    return {
        "path": os.fsdecode(root),
        "healthy": not files,
        "settling": settling,
        "files": files,
        "summary": summary,
    }


def _chunk_line(c: dict[str, Any], goal: int) -> str:
    p = c["problem"]
    if p == "missing":
        members = ", ".join(str(cs) for cs in c["replicas"]) or "none"
        what = f"no live replica (chunkservers in its set: {members})"
    elif p == "no_good_replica":
        what = f"{_n(c['live'], 'live replica')}, each reported bad or maybe stale"
    elif p == "under_goal":
        what = f"{_n(c['good'], 'good replica')}, goal {goal}"
    else:
        what = f"a replica was reported bad; {c['good']} good, goal {goal}"
    if "quarantined_on" in c:
        what += f"; a copy in quarantine on chunkserver {c['quarantined_on']}"
    return f"    chunk {c['chunk_id']} (index {c['index']}): {PROBLEM_TEXT[p]}: {what}"


def render_fsck(report: dict[str, Any]) -> str:
    lines = []
    for f in report["files"]:
        kinds = ", ".join(PROBLEM_TEXT[p] for p in f["problems"])
        lines.append(f"{f['path']}: {kinds} ({_n(f['chunks_at_risk'], 'chunk')} at risk, "
                     f"goal {f['goal']}, {human(f['size'])})")  # fmt: skip
        for c in f["chunks"]:
            lines.append(_chunk_line(c, f["goal"]))
        if f["chunks_at_risk"] > len(f["chunks"]):
            lines.append(f"    ... and {_n(f['chunks_at_risk'] - len(f['chunks']), 'more chunk')}")
    s = report["summary"]
    with_data = s["chunks"] - s["empty_chunks"]
    lines.append(
        f"{report['path']}: {_n(s['files'], 'file')}, {s['dirs']} directories, "
        f"{s['others']} others; {_n(s['chunks'], 'chunk')} ({s['empty_chunks']} empty), "
        f"{human(s['bytes'])}"
    )
    if with_data:
        spread = ", ".join(f"{n} with {k}" for k, n in _by_number(s["replicas"]))
        lines.append(f"  chunks by good live replicas: {spread}")
    problems = ", ".join(f"{n} {PROBLEM_TEXT[p]}" for p, n in s["problems"].items() if n)
    if problems:
        lines.append(f"  chunks at risk: {problems}")
    if s["over_goal"]:
        lines.append(f"  {_n(s['over_goal'], 'chunk')} over goal (the leader trims them)")
    if report["settling"]:
        lines.append(
            "  note: the leader took over recently and has not heard from every chunkserver "
            "yet: it counts them alive until it does; check again in a little while"
        )
    at_risk = s["files_at_risk"]
    lines.append("HEALTHY" if report["healthy"] else f"AT RISK: {_n(at_risk, 'file')}")
    return "\n".join(lines)


@click.command()
@client_options
@click.argument("path", default="/")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--salvage", is_flag=True,
              help="PATH is a file: bring back the best quarantined copy of each chunk no "
              "good live replica holds.")  # fmt: skip
@click.option(
    "--zero",
    is_flag=True,
    help="With --salvage: blocks no copy holds read as zeros, not as errors.",
)
def fsck(
    directory: Path, meta: str | None, secret_file: Path | None, path: str, as_json: bool,
    salvage: bool, zero: bool,
) -> None:  # fmt: skip
    """Name every file under PATH (default: all) with a chunk missing (no live replica),
    under its goal, with only bad or stale replicas, or with a replica in quarantine.
    Exit 0 healthy, 1 at risk, 3 could not check. With --salvage: exit 0 when every chunk
    that needed it came back, 1 otherwise."""
    root = _remote(path)
    if zero and not salvage:
        raise click.UsageError("--zero goes with --salvage")
    if salvage:
        _salvage(directory, meta, secret_file, root, zero, as_json)
        return
    try:
        report = admin_cli._session(directory, meta, secret_file,
                                    lambda ask: _fsck_walk(ask, root))  # fmt: skip
    except click.ClickException as e:
        raise NotChecked(e.message) from None
    if as_json:
        admin_cli._echo_json(report)
    else:
        click.echo(render_fsck(report))
    if not report["healthy"]:
        raise click.exceptions.Exit(EXIT_AT_RISK)


def render_salvage(path: str, chunks: list[dict[str, Any]]) -> str:
    if not chunks:
        return f"{path}: every chunk has a good live replica: nothing to salvage"
    lines = []
    for c in chunks:
        head = f"{path}: chunk {c['index']} ({c['chunk_id']}): "
        if c.get("cs_id") is None or not c["salvaged"]:
            lines.append(head + f"not salvaged: {c['why']}")
            continue
        lost = c["lost_blocks"]
        lines.append(
            head + f"salvaged from chunkserver {c['cs_id']} ({c['good_blocks']} of "
            f"{c['blocks']} blocks verified; copies found: {c['copies']})"
            + (f"; {_n(lost, 'block')} lost" if lost else "")
        )
    return "\n".join(lines)


def _salvage(
    directory: Path, meta: str | None, secret_file: Path | None, root: bytes, zero: bool,
    as_json: bool,
) -> None:  # fmt: skip
    async def work(ask: Ask) -> dict[str, Any]:
        return await ask("admin.salvage", path=root, zero=zero)

    try:
        answer = admin_cli._session(directory, meta, secret_file, work)
    except DfsError as e:
        raise click.ClickException(f"salvage failed: {e}") from None
    chunks = answer["chunks"]
    if as_json:
        admin_cli._echo_json(answer)
    else:
        click.echo(render_salvage(os.fsdecode(root), chunks))
    if not all(c["salvaged"] for c in chunks):
        raise click.exceptions.Exit(EXIT_AT_RISK)


# ---------------------------------------------------------------------- goals


async def _each(ask: Ask, paths: tuple[str, ...], one: Any) -> tuple[list[Any], bool]:
    """``one(ask, path)`` for each path; an error is printed and the next path goes on.
    Returns the answers and whether all went well."""
    out: list[Any] = []
    ok = True
    for path in paths:
        try:
            out.append(await one(ask, _remote(path)))
        except DfsError as e:
            ok = False
            click.echo(f"{path}: {e.code.name.lower().replace('_', ' ')}: {e.message}", err=True)
    return out, ok


@click.command()
@client_options
@click.argument("goal", type=click.IntRange(1, 16))
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Also every file and directory below.")
def setgoal(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    goal: int,
    paths: tuple[str, ...],
    recursive: bool,
) -> None:
    """Set the replication goal (1..16) of each PATH; with -r, of everything below too.
    New files take their directory's goal; the leader copies or trims replicas to match."""

    set_on_paths(directory, meta, secret_file, paths, "admin.set_goal", "goal", goal, recursive)


def set_on_paths(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    paths: tuple[str, ...],
    op: str,
    key: str,
    value: int,
    recursive: bool,
) -> None:
    """The body of ``setgoal`` and ``settrashtime``: ``op`` with ``key`` = ``value`` on each
    path (and, ``recursive``, below it), one line of counts each; exit 1 if any failed."""
    word = {"goal": "goal", "trash_s": "trashtime"}[key]

    async def one(ask: Ask, root: bytes) -> str:
        fields = {"path": root, key: value, "recursive": recursive}
        changed, unchanged = await set_pages(ask, op, fields)
        name = os.fsdecode(root)
        if not recursive:
            return f"{name}: {value}"
        width = len(f" inodes with {word} not changed:")
        return (f"{name}:\n{f' inodes with {word} changed:':<{width}} {changed:>10d}\n"
                f" inodes with {word} not changed: {unchanged:>10d}")  # fmt: skip

    async def work(ask: Ask) -> tuple[list[str], bool]:
        return await _each(ask, paths, one)

    lines, ok = admin_cli._session(directory, meta, secret_file, work)
    for line in lines:
        click.echo(line)
    if not ok:
        raise click.exceptions.Exit(1)


async def set_pages(ask: Ask, op: str, fields: dict[str, Any]) -> tuple[int, int]:
    """``op`` (a setter of a tree's inodes, page by page: ``admin.set_goal``,
    ``admin.set_trash_time``) with ``fields`` until its walk ends; how many inodes it
    changed and how many it left as they were. A progress line on a big tree."""
    changed = unchanged = 0
    cursor = None
    progress = _Walking()
    try:
        while True:
            more: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            page = await ask(op, mutate=True, **fields, **more)
            changed += page["changed"]
            unchanged += page["unchanged"]
            cursor = page["cursor"]
            if cursor is None:
                return changed, unchanged
            progress.show(0, None, f"{changed + unchanged} inodes, {changed} changed")
    finally:
        progress.end()


async def count_pages(ask: Ask, op: str, root: bytes, key: str, recursive: bool) -> dict[str, Any]:
    """``op`` (a getter: ``admin.goals``, ``admin.trash_time``) of ``root``: its ``key``
    and kind, or with ``recursive`` how many files, directories and others below have each
    value (``{"files": {value: count}, ...}``), page by page with a progress line."""
    name = os.fsdecode(root)
    if not recursive:
        answer = await ask(op, path=root)
        return {"path": name, key: answer[key], "kind": answer["kind"]}
    counts: dict[str, dict[str, int]] = {"files": {}, "dirs": {}, "others": {}}
    cursor = None
    progress = _Walking()
    try:
        while True:
            more: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            page = await ask(op, path=root, recursive=True, **more)
            for kind, by_value in counts.items():
                _add_counts(by_value, page[kind])
            cursor = page["cursor"]
            if cursor is None:
                break
            done = sum(sum(c.values()) for c in counts.values())
            progress.show(done, page.get("total"), f"{done} inodes")
    finally:
        progress.end()
    return {"path": name, **counts}


def render_goals(g: dict[str, Any]) -> str:
    if "goal" in g:
        return f"{g['path']}: {g['goal']}"
    lines = [f"{g['path']}:"]
    for kind, label in (("files", "files"), ("dirs", "directories"), ("others", "others")):
        for goal, n in _by_number(g[kind]):
            lines.append(f" {label + ' with goal':24s}{goal:>3s} : {n:>10d}")
    return "\n".join(lines)


@click.command()
@client_options
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True,
              help="Count the files and directories below by goal.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the answers as JSON.")
def getgoal(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    paths: tuple[str, ...],
    recursive: bool,
    as_json: bool,
) -> None:
    """Print the replication goal of each PATH; with -r, how many files, directories and
    others below it (itself included) have each goal."""

    async def work(ask: Ask) -> tuple[list[dict[str, Any]], bool]:
        return await _each(
            ask, paths, lambda a, root: count_pages(a, "admin.goals", root, "goal", recursive)
        )

    answers, ok = admin_cli._session(directory, meta, secret_file, work)
    if as_json:
        admin_cli._echo_json(answers)
    else:
        for g in answers:
            click.echo(render_goals(g))
    if not ok:
        raise click.exceptions.Exit(1)


__all__ = ["fsck", "getgoal", "render_fsck", "render_goals", "setgoal"]
