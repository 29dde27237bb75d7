"""The ``dfs`` command: a click group. Each command parses arguments and calls into the
library; no file-system logic lives here. More commands (up, down, mount, ls, put, get,
admin ...) arrive with their issues.
"""

from __future__ import annotations

import click

import dfs


@click.group()
def cli() -> None:
    """dfs: a chunked distributed file system."""


@cli.command()
def version() -> None:
    """Print the dfs version."""
    click.echo(f"dfs {dfs.__version__}")


def main() -> None:
    """Console-script entry point (``dfs = dfs.cli.main:main``)."""
    cli()


if __name__ == "__main__":
    main()
