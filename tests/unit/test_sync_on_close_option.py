"""``--sync-on-close``: from ``dfs mount`` and ``dfs up`` to the mount's client options.
(What the option does to a close is tested in ``test_client_io.py``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dfs.cli import main as cli_main
from dfs.client import ClientOptions
from dfs.fuse.mount import MountConfig, client_options

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_the_default_close_does_not_sync_and_the_option_makes_it() -> None:
    assert ClientOptions().sync_on_close is False
    config = MountConfig(meta_addresses=["h:1"], secret=b"s" * 32, mountpoint=Path("/m"))
    assert client_options(config).sync_on_close is False
    config.sync_on_close = True
    assert client_options(config).sync_on_close is True


@pytest.mark.parametrize("command", ["mount", "up"])
def test_mount_and_up_offer_the_option(command: str) -> None:
    result = CliRunner().invoke(cli_main.cli, [command, "--help"])
    assert result.exit_code == 0 and "--sync-on-close" in result.output


def test_a_background_mount_passes_the_option_to_its_foreground_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    def start_mount(args: list[str], *rest: Any) -> int:
        started.append(args)
        return 1

    monkeypatch.setattr(cli_main.local, "start_mount", start_mount)
    monkeypatch.setattr(cli_main, "_check_mountpoint", lambda where: None)
    monkeypatch.setattr(cli_main, "find_cluster", lambda *a: (["h:1"], b"s" * 32))
    where = tmp_path / "m"
    where.mkdir()
    for extra, expected in (([], False), (["--sync-on-close"], True)):
        result = CliRunner().invoke(
            cli_main.cli, ["mount", "--dir", str(tmp_path), *extra, str(where)]
        )
        assert result.exit_code == 0, result.output
        assert ("--sync-on-close" in started[-1]) is expected
