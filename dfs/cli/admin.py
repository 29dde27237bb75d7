"""``dfs admin``: the operator's commands on a running cluster (rebalancing, draining and
forgetting chunkservers, metaserver membership; fsck and goals are in ``admin_fsck.py``,
backup and restore in ``admin_backup.py``). Each parses its arguments, calls the
leader (``admin.*`` ops, docs/PROTOCOL.md) and prints the answer; ``--json`` on every
command that reports prints the leader's answer as it came, for scripts.

Exit codes: 0 done; 1 an error the message names (the cluster refused, or could not be
reached); 2 a usage error.

Waiting (``--wait``): the command polls the leader once a second until the work is done.
On a terminal it redraws one progress line (a bar, bytes moved, rate, ETA); otherwise
it prints a plain line every ``PLAIN_EVERY_S`` seconds, for logs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from dfs.cli.admin_meta import metaserver
from dfs.cli.common import client_options, human, run_client

T = TypeVar("T")
Ask = Callable[..., Awaitable[dict[str, Any]]]  # ask(op, mutate=False, **fields)

POLL_S = 1.0  # how often --wait asks the leader
# A decommission that has moved nothing for this long is probably stuck (too few other
# live chunkservers for some chunk's goal): --wait says so once, and keeps waiting.
DRAIN_STALL_S = 60.0
# The one way a rebalance ends well; any other stop reason (the core found no move that
# brings the spread within the threshold, or the operator stopped it) makes --wait exit 1.
REBALANCE_DONE = "balanced"
PLAIN_EVERY_S = 5.0  # a plain progress line this often when stdout is not a terminal
BAR_WIDTH = 24
MOVES_SHOWN = 20  # moves --dry-run lists (the rest are counted)
MIB = 1 << 20
_FRAME_FIELDS = frozenset({"id", "ok"})  # the RPC frame's, not the answer's (dfs/rpc.py)


@click.group()
def admin() -> None:
    """Operate a running cluster: rebalance, drain, membership, fsck, goals, backup."""


admin.add_command(metaserver)


# ---------------------------------------------------------------------- talking to the leader


def _session(
    directory: Path, meta: str | None, secret_file: Path | None, work: Callable[[Ask], Awaitable[T]]
) -> T:
    """Run ``work(ask)`` with one client session; ``ask(op, mutate=False, **fields)`` sends
    an op to the leader (a mutation once, exactly: ``dfs/client/meta.py``)."""

    async def run(fs: Any) -> T:
        async def ask(op: str, mutate: bool = False, **fields: Any) -> dict[str, Any]:
            call = fs.meta.mutate if mutate else fs.meta.read
            header = await call(op, **fields)
            return {k: v for k, v in header.items() if k not in _FRAME_FIELDS}

        return await work(ask)

    result: T = run_client(directory, meta, secret_file, run)
    return result


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)  # the poll period of --wait, not a wait for a condition


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _rate(bps: float | None) -> str:
    return f"{human(int(bps or 0))}/s"


def _eta(left: int, rate_bps: float) -> str:
    if not left:
        return "0:00"
    if rate_bps <= 0:
        return "?"
    s = int(left / rate_bps)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """One progress display: a redrawn line on a terminal, periodic plain lines otherwise."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._last_plain = float("-inf")

    def show(self, done: int, total: int, text: str) -> None:
        if self.tty:
            frac = done / total if total else 1.0
            filled = round(min(max(frac, 0.0), 1.0) * BAR_WIDTH)
            bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
            self.out.write(f"\r{bar} {frac:4.0%}  {text}\x1b[K")
            self.out.flush()
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            self.out.write(text + "\n")
            self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


# ---------------------------------------------------------------------- rebalance


def render_progress(p: dict[str, Any]) -> str:
    """``admin.rebalance`` status as one paragraph."""
    if not p["running"]:
        why = f" ({p['stop_reason']})" if p.get("stop_reason") else ""
        return f"no rebalance running{why}; spread {_pct(p['spread_pct'])} points"
    bandwidth = p["bandwidth_bps"]
    limit = f"{human(bandwidth)}/s" if bandwidth else "no limit"
    return (
        f"rebalance running: threshold {_pct(p['threshold_pct'])} points, bandwidth {limit}\n"
        f"  spread {_pct(p['spread_pct'])} points; moved {human(p['moved_bytes'])} "
        f"({p['moves_done']} moves, {p['in_flight']} in flight), "
        f"{human(p['left_bytes'])} left at {_rate(p['rate_bps'])}"
    )


def progress_text(p: dict[str, Any]) -> str:
    """The changing part of a waiting rebalance's progress line."""
    return (
        f"{human(p['moved_bytes'])} moved, {human(p['left_bytes'])} left, "
        f"{_rate(p['rate_bps'])}, ETA {_eta(p['left_bytes'], p['rate_bps'])}, "
        f"spread {_pct(p['spread_pct'])} points"
    )


def render_plan(plan: dict[str, Any]) -> str:
    """``admin.rebalance`` plan: the totals, the moves (the first ``MOVES_SHOWN``) and a
    per-server table of used fractions now and after."""
    lines = [
        f"plan at threshold {_pct(plan['threshold_pct'])} points: {plan['moves_total']} moves, "
        f"{human(plan['bytes'])}; spread {_pct(plan['spread_before_pct'])} -> "
        f"{_pct(plan['spread_after_pct'])} points",
    ]
    moves = plan["moves"]
    for m in moves[:MOVES_SHOWN]:
        lines.append(
            f"  chunk {m['chunk_id']}: cs {m['from']} -> cs {m['to']}  {human(m['bytes'])}"
        )
    if plan["moves_total"] > MOVES_SHOWN:
        lines.append(f"  ... and {plan['moves_total'] - MOVES_SHOWN} more")
    lines.append(f"  {'cs':>4s}  {'used':>10s}  {'capacity':>10s}  {'now':>6s}  {'after':>6s}")
    for s in plan["servers"]:
        lines.append(
            f"  {s['cs_id']:>4d}  {human(s['used_bytes']):>10s}  {human(s['capacity_bytes']):>10s}"
            f"  {s['used_pct']:5.1f}%  {s['used_pct_after']:5.1f}%"
        )
    if not plan["servers"]:
        lines.append("  (no live chunkserver with a capacity)")
    return "\n".join(lines)


async def _wait_rebalance(ask: Ask, first: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Poll until the rebalance is no longer running; returns the last progress."""
    p = first
    display = None if as_json else Progress(sys.stdout)
    while p["running"]:
        if display is not None:
            done = p["moved_bytes"]
            display.show(done, done + p["left_bytes"], progress_text(p))
        await _sleep(POLL_S)
        p = await ask("admin.rebalance", action="status")
    if display is not None:
        display.end()
    return p


@admin.command()
@client_options
@click.option(
    "--threshold",
    type=click.FloatRange(0.01, 100.0),
    default=None,
    help="Points of used fraction each live chunkserver may differ from the cluster's "
    "[default: 10; with --dry-run, the running rebalance's].",
)
@click.option(
    "--bandwidth",
    type=click.FloatRange(min=0.0),
    default=0.0,
    help="MiB a second moved at most, cluster-wide (0: no limit beyond the chunkservers' own).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (moves, bytes, spread); move nothing."
)
@click.option("--wait", is_flag=True, help="Show progress until the rebalance ends.")
@click.option("--status", "show_status", is_flag=True, help="Show the running rebalance.")
@click.option("--stop", is_flag=True, help="Stop the running rebalance.")
@click.option("--json", "as_json", is_flag=True, help="Print the leader's answer as JSON.")
def rebalance(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    threshold: float | None,
    bandwidth: float,
    dry_run: bool,
    wait: bool,
    show_status: bool,
    stop: bool,
    as_json: bool,
) -> None:
    """Move replicas until every live chunkserver's used fraction is within --threshold
    points of the cluster's (counted in bytes). Starts it and returns (--wait: follows it
    to the end); --dry-run shows the plan, --status the progress, --stop stops it."""
    if dry_run + show_status + stop > 1:
        raise click.UsageError("--dry-run, --status and --stop exclude each other")
    if wait and (dry_run or stop):
        raise click.UsageError("--wait goes with a start or --status")

    async def work(ask: Ask) -> dict[str, Any]:
        if dry_run:
            fields = {} if threshold is None else {"threshold_pct": threshold}
            return await ask("admin.rebalance", action="plan", **fields)
        if show_status:
            p = await ask("admin.rebalance", action="status")
        elif stop:
            p = await ask("admin.rebalance", mutate=True, action="stop")
        else:
            p = await ask(
                "admin.rebalance",
                mutate=True,
                action="start",
                threshold_pct=10.0 if threshold is None else threshold,
                bandwidth_bps=int(bandwidth * MIB),
            )
            if not as_json:
                click.echo(render_progress(p))
        if wait:
            p = await _wait_rebalance(ask, p, as_json)
        return p

    answer = _session(directory, meta, secret_file, work)
    if as_json:
        _echo_json(answer)
    elif dry_run:
        click.echo(render_plan(answer))
    elif stop:
        click.echo("rebalance stopped; " + render_progress(answer))
    elif show_status or wait:
        click.echo(render_progress(answer))
    if wait and not answer["running"] and answer["stop_reason"] not in (REBALANCE_DONE, ""):
        # --wait's exit code says whether the cluster ended balanced (HDFS's balancer too).
        raise click.exceptions.Exit(1)


# ---------------------------------------------------------------------- draining


def _find(st: dict[str, Any], cs_id: int) -> dict[str, Any]:
    for c in st["chunkservers"]:
        if c["id"] == cs_id:
            return dict(c)
    raise click.ClickException(f"no chunkserver {cs_id} in the leader's status")


def drain_text(c: dict[str, Any]) -> str:
    return (
        f"chunkserver {c['id']} {c['state']}: {c['replicas']} replicas, "
        f"{human(c['replica_bytes'])} left on it"
    )


async def _wait_drained(
    ask: Ask, cs_id: int, as_json: bool, timeout_s: float | None
) -> dict[str, Any]:
    """Poll ``status`` until the chunkserver is drained; returns its last row. Says once
    when nothing moved for ``DRAIN_STALL_S``; gives up after ``timeout_s`` (exit 1)."""
    display = None if as_json else Progress(sys.stdout)
    total = 0
    started = last_change = time.monotonic()
    left = None
    warned = False
    while True:
        st = await ask("status")
        c = _find(st, cs_id)
        if c["state"] == "drained":
            break
        if not c["draining"]:
            raise click.ClickException(f"chunkserver {cs_id} is no longer draining")
        now = time.monotonic()
        if c["replica_bytes"] != left:
            left, last_change = c["replica_bytes"], now
        elif not warned and now - last_change >= DRAIN_STALL_S:
            warned = True
            others = sum(1 for r in st["chunkservers"] if r["state"] == "alive")
            click.echo(
                f"\nnothing moved off chunkserver {cs_id} for {DRAIN_STALL_S:.0f} s: "
                f"{others} other live chunkservers take replicas, and each chunk needs as "
                "many as its goal",
                err=True,
            )
        if timeout_s is not None and now - started >= timeout_s:
            raise click.ClickException(
                f"chunkserver {cs_id} not drained after {timeout_s:.0f} s ({drain_text(c)}); "
                "it goes on draining"
            )
        total = max(total, c["replica_bytes"])
        if display is not None:
            display.show(total - c["replica_bytes"], total, drain_text(c))
        await _sleep(POLL_S)
    if display is not None:
        display.end()
    return c


def _drain(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    cs_id: int,
    draining: bool,
    wait: bool,
    as_json: bool,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    async def work(ask: Ask) -> dict[str, Any]:
        answer = await ask("admin.drain", mutate=True, cs_id=cs_id, draining=draining)
        c = answer["chunkserver"]
        if c is None:
            raise click.ClickException(f"no chunkserver {cs_id} in the leader's status")
        if wait:
            c = await _wait_drained(ask, cs_id, as_json, timeout_s)
        return dict(c)

    return _session(directory, meta, secret_file, work)


@admin.command()
@client_options
@click.argument("cs_id", metavar="CS", type=click.IntRange(min=1))
@click.option("--wait", is_flag=True, help="Show progress until no replica is left on it.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=1.0),
    default=None,
    help="With --wait: stop waiting (exit 1) after this many seconds; it goes on draining.",
)
@click.option("--json", "as_json", is_flag=True, help="Print its status entry as JSON.")
def decommission(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    cs_id: int,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
) -> None:
    """Move every replica off chunkserver CS (its id in dfs status), keeping each chunk at
    its goal throughout; nothing new is placed there. With --wait, returns once it is
    drained: then it is safe to stop and remove (and dfs admin forget CS)."""
    c = _drain(directory, meta, secret_file, cs_id, True, wait, as_json, wait_timeout)
    if as_json:
        _echo_json(c)
    elif c["state"] == "drained":
        click.echo(
            f"chunkserver {cs_id} is drained: safe to remove "
            f"(stop it, then: dfs admin forget {cs_id})"
        )
    else:
        click.echo(drain_text(c) + f"; follow with: dfs admin decommission {cs_id} --wait")


@admin.command()
@client_options
@click.argument("cs_id", metavar="CS", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print its status entry as JSON.")
def recommission(
    directory: Path, meta: str | None, secret_file: Path | None, cs_id: int, as_json: bool
) -> None:
    """Undo a decommission: chunkserver CS takes new replicas again and its replicas count
    toward their chunks' goals."""
    c = _drain(directory, meta, secret_file, cs_id, False, False, as_json)
    if as_json:
        _echo_json(c)
    else:
        click.echo(f"chunkserver {cs_id} recommissioned: {c['state']}")


@admin.command()
@client_options
@click.argument("cs_id", metavar="CS", type=click.IntRange(min=1))
def forget(directory: Path, meta: str | None, secret_file: Path | None, cs_id: int) -> None:
    """Remove chunkserver CS from the cluster for good: it must be stopped (dead) and hold
    no replica (drained, or every chunk re-replicated elsewhere)."""

    async def work(ask: Ask) -> None:
        await ask("admin.forget", mutate=True, cs_id=cs_id)

    _session(directory, meta, secret_file, work)
    click.echo(f"chunkserver {cs_id} forgotten")
