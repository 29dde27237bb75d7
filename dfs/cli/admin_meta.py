"""``dfs admin metaserver``: the metaservers' Raft membership, changed online.

    dfs admin metaserver list [--json]
    dfs admin metaserver add ADDR [--id N]       a metaserver started with join = true
    dfs admin metaserver add --local [--id N]    a new one in a dfs up directory, started
    dfs admin metaserver remove ID
    dfs admin metaserver transfer-leader [ID]

Each sends one ``admin.meta_*`` request (docs/PROTOCOL.md) to the leader, following its
redirects, and prints the answer. With a ``dfs up`` directory (``--dir``, no ``--meta``)
``add --local`` and ``remove`` also keep the directory's layout in step: the new
metaserver's config and process, the address lists ``dfs status`` and the clients read
(``dfs/cli/cluster.py``, "metaserver membership"). The layout lists a metaserver while it
is a member or its process runs: ``add --local`` enters the new one once it is a member
(an add that fails stops it, unless it became a learner), ``remove`` takes one out once
it is not a member and its process is gone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from dfs.cli import cluster as local
from dfs.cli.common import cluster_options, find_cluster, run_async
from dfs.credentials import Credential

# An add waits for the new metaserver to catch up (a snapshot and the log after it); a
# server answers within a minute at most, and the client's retry resumes the wait.
ADD_TIMEOUT_S = 120.0
CHANGE_TIMEOUT_S = 30.0


def _call(
    addresses: list[str], secret: Credential, op: str, timeout_s: float, **fields: Any
) -> Any:
    """``op`` at the leader (redirects followed, retried until ``timeout_s``); a
    ``DfsError`` becomes a one-line error."""
    import anyio

    from dfs.client.meta import MetaClient
    from dfs.client.pool import ConnectionPool

    async def main() -> Any:
        async with anyio.create_task_group() as tg:
            pool = ConnectionPool(tg, secret, name="dfs-admin", connect_timeout_s=2.0)
            meta = MetaClient(pool, addresses, timeout_s=timeout_s,
                              attempt_timeout_s=timeout_s, lanes_max=1)  # fmt: skip
            try:
                return await meta.read(op, **fields)
            finally:
                await pool.aclose()
                tg.cancel_scope.cancel()

    return run_async(main)


def _local_layout(directory: Path, meta: str | None) -> local.Layout | None:
    """The ``dfs up`` directory the command works on, or None with ``--meta``."""
    if meta:
        return None
    try:
        return local.load_layout(directory.absolute())
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def metaserver() -> None:
    """Add, remove and lead metaservers (replace a lost host)."""


@metaserver.command("list")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(directory: Path, meta: str | None, secret_file: Path | None, as_json: bool) -> None:
    """The members as the leader sees them: voters, learners and how far each has caught
    up."""
    addresses, secret = find_cluster(directory, meta, secret_file)
    view = _call(addresses, secret, "meta.members", CHANGE_TIMEOUT_S, leader_only=True)
    if as_json:
        click.echo(json.dumps(view, indent=2, sort_keys=True))
        return
    click.echo(f"leader metaserver {view['leader']} at {view['leader_address']}, "
               f"term {view['term']}, last index {view['last_index']}")  # fmt: skip
    for m in view["metaservers"]:
        role = "leader" if m["id"] == view["leader"] else m["membership"]
        caught = (
            f"match {m['match']}  lag {m['lag']}  {m['sending']}"
            + ("" if m.get("active", True) else "  not heard from")
            if "match" in m
            else "not replicating"
        )
        click.echo(f"  {m['id']:<3d} {m['address'] or '?':21s} {role:8s} {caught}")


@metaserver.command()
@cluster_options
@click.argument("address", required=False)
@click.option("--id", "node_id", type=click.IntRange(min=1), help="The new metaserver's id "
              "(checked against its config; by default the id it reports).")  # fmt: skip
@click.option("--local", "local_", is_flag=True, help="Create, start and add a new metaserver "
              "in the dfs up directory (--dir); no ADDRESS.")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=ADD_TIMEOUT_S,
              show_default=True, help="Seconds to wait for it to catch up.")  # fmt: skip
def add(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    address: str | None,
    node_id: int | None,
    local_: bool,
    timeout_s: float,
) -> None:
    """Add the metaserver at ADDRESS (running, started empty with join = true): it joins as
    a learner, catches up, then becomes a voter."""
    if local_ == (address is not None):
        raise click.UsageError("give ADDRESS, or --local (and no ADDRESS)")
    addresses, secret = find_cluster(directory, meta, secret_file)
    layout = None
    if local_:
        layout = _local_layout(directory, meta)
        if layout is None:
            raise click.UsageError("--local works on a dfs up directory (--dir), not --meta")
        node_id, address = _start_local(layout, node_id, secret)
    assert address is not None
    fields: dict[str, Any] = {"address": address}
    if node_id is not None:
        fields["node_id"] = node_id
    try:
        result = _call(addresses, secret, "admin.meta_add", timeout_s, **fields)
    except (click.ClickException, KeyboardInterrupt) as e:
        if layout is None:
            raise
        assert node_id is not None
        what = _settle_failed_add(layout, node_id, address, addresses, secret)
        if isinstance(e, KeyboardInterrupt):
            click.echo(what, err=True)
            raise
        raise click.ClickException(f"{e.message}\n{what}") from None
    if layout is not None:
        local.set_metaservers(layout, {**layout.metaservers, result["node_id"]: address})
    if result["was_voter"]:
        # An earlier attempt promoted it and its answer was lost (the client retries), or
        # it was added before.
        click.echo(f"metaserver {result['node_id']} at {result['address']} is already a voter")
        return
    how = "from a snapshot" if result["by_snapshot"] else "from the log"
    click.echo(f"metaserver {result['node_id']} at {result['address']} is a voter "
               f"(caught up {how} in {result['catch_up_ms'] / 1000:.1f} s)")  # fmt: skip


def _start_local(layout: local.Layout, node_id: int | None, secret: Credential) -> tuple[int, str]:
    """A new metaserver in the ``dfs up`` directory, started and answering: (its id, its
    address). It is not in the layout yet (it is no member yet). On failure, what was
    started is stopped."""
    try:
        node_id, address = local.new_metaserver(layout, node_id)
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    pid = None
    try:
        pid = local.start_metaserver(layout, node_id, address)
        asyncio.run(local.wait_answers(address, secret))
    except BaseException as e:
        how = local.stop_metaserver(layout, node_id, pid=pid)
        if not isinstance(e, local.ClusterError | OSError):
            raise
        raise click.ClickException(
            f"{e}\n(metaserver {node_id}: {how}, not added; see "
            f"{layout.dir / 'logs' / f'meta{node_id}.log'})"
        ) from None
    click.echo(f"metaserver {node_id} started at {address}, pid {pid}")
    return node_id, address


def _settle_failed_add(
    layout: local.Layout, node_id: int, address: str, addresses: list[str], secret: Credential
) -> str:
    """After ``add --local`` failed: the layout lists the new metaserver if it is a member
    (a learner, which the same add resumes), or may be one (no leader answers to say);
    else it is stopped. Returns what became of it, for the user."""
    name = f"meta{node_id}"
    try:
        view = _call(addresses, secret, "meta.members", CHANGE_TIMEOUT_S, leader_only=True)
        member: bool | None = node_id in view["voters"] + view["learners"]
    except click.ClickException:
        member = None
    if member is False:
        how = local.stop_metaserver(layout, node_id)
        return f"(metaserver {node_id} is not a member: {how}; {name} is left unused)"
    local.set_metaservers(layout, {**layout.metaservers, node_id: address})
    which = "is a member" if member else "may be a member (no leader answered)"
    return (
        f"(metaserver {node_id} {which}: it runs and stays in {layout.dir}; `dfs admin "
        f"metaserver add {address}` resumes, `dfs admin metaserver remove {node_id}` gives up)"
    )


@metaserver.command()
@cluster_options
@click.argument("node_id", type=click.IntRange(min=1))
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=CHANGE_TIMEOUT_S,
              show_default=True, help="Seconds to wait for the change.")  # fmt: skip
def remove(
    directory: Path, meta: str | None, secret_file: Path | None, node_id: int, timeout_s: float
) -> None:
    """Remove metaserver NODE_ID from the cluster (the leader hands over first). The removed
    metaserver exits; in a dfs up directory it also leaves the layout."""
    addresses, secret = find_cluster(directory, meta, secret_file)
    result = _call(addresses, secret, "admin.meta_remove", timeout_s, node_id=node_id)
    # Not a member (any more): removed by an earlier attempt whose answer was lost (the
    # client retries), or never one. Either way, what is left of it in the layout goes.
    what = "removed" if result["was_member"] else "is not a member (already removed?)"
    click.echo(f"metaserver {node_id} {what}; voters {result['voters']}"
               + (f", learners {result['learners']}" if result["learners"] else ""))  # fmt: skip
    layout = _local_layout(directory, meta)
    if layout is not None and node_id in layout.metaservers:
        how = local.forget_metaserver(layout, node_id)
        if how == "still running":
            raise click.ClickException(
                f"meta{node_id} still runs after SIGTERM: it stays in {layout.dir} (`dfs "
                f"down` stops it; `dfs admin metaserver remove {node_id}` again forgets it)"
            )
        click.echo(f"  meta{node_id} {how}; {layout.dir / 'cluster.toml'} updated")


@metaserver.command("transfer-leader")
@cluster_options
@click.argument("node_id", type=click.IntRange(min=1), required=False)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=CHANGE_TIMEOUT_S,
              show_default=True, help="Seconds to wait for the change.")  # fmt: skip
def transfer_leader(
    directory: Path,
    meta: str | None,
    secret_file: Path | None,
    node_id: int | None,
    timeout_s: float,
) -> None:
    """Hand leadership to NODE_ID (by default: the most caught-up other voter that the
    leader hears from)."""
    addresses, secret = find_cluster(directory, meta, secret_file)
    fields = {"node_id": node_id} if node_id else {}
    result = _call(addresses, secret, "admin.transfer_leader", timeout_s, **fields)
    click.echo(f"metaserver {result['leader']} at {result['leader_address']} leads")


__all__ = ["metaserver"]
