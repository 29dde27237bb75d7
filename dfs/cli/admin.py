"""``dfs admin``: the operator's commands on a running cluster (rebalancing, draining and
forgetting chunkservers, metaserver membership). Each parses its arguments, calls the
leader and prints the answer (``--json`` on every read command); exit codes: 0 done,
1 an error the message names, 2 a usage error."""

from __future__ import annotations

import click

from dfs.cli.admin_meta import metaserver


@click.group()
def admin() -> None:
    """Operate a running cluster: rebalance, drain, membership."""


admin.add_command(metaserver)
