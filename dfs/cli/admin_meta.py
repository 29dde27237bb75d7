"""``dfs admin metaserver``: the metaservers' Raft membership, changed online."""

from __future__ import annotations

import click


@click.group()
def metaserver() -> None:
    """Add, remove and lead metaservers (replace a lost host)."""
