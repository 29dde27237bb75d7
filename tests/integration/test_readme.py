"""The README's "First five minutes", run exactly as written, in a scratch directory.

The commands are read from the README itself (the first code block under that heading), so
the README cannot drift from what works. ``scripts/dfs`` is the repository's; the cluster
lives in the scratch directory's ``dfs-data`` and is stopped by PID at the end, whatever
happens.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.cli import cluster as local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## First five minutes", 1)[1]
    block = section.split("```", 2)[1]
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line:
            commands.append(line)
    return commands


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    yield tmp_path
    data = tmp_path / "dfs-data"
    if (data / "cluster.toml").exists():
        local.stop_daemons(local.load_layout(data), timeout_s=10)


def test_first_five_minutes(scratch: Path) -> None:
    commands = readme_commands()
    assert commands[0].startswith("scripts/dfs up") and commands[-1] == "scripts/dfs down"
    outputs = []
    for command in commands:
        argv = command.replace("scripts/dfs", str(ROOT / "scripts" / "dfs"), 1)
        proc = subprocess.run(
            ["bash", "-c", argv], cwd=scratch, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{command!r} failed:\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    by_command = dict(zip(commands, outputs, strict=True))
    assert "README.md" in by_command["scripts/dfs ls -l /docs"]
    assert by_command["scripts/dfs cat /docs/README.md | head -3"].startswith("# dfs")
    assert "leader metaserver" in by_command["scripts/dfs status"]
    assert by_command["scripts/dfs down"].count("stopped") == 6
