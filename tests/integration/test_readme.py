"""The README's "First five minutes", run exactly as written, in a scratch directory.

The commands are read from the README itself (the first code block under that heading), so
the README cannot drift from what works. ``scripts/dfs`` is the repository's; the cluster
lives in the scratch directory's ``dfs-data``, mounted with FUSE at its ``dfs-mnt``, and is
unmounted and stopped by PID at the end, whatever happens. Mounting needs root and
/dev/fuse (CI has both); elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.cli import cluster as local
from dfs.fuse.mountinfo import mount_info

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
        reason="the README mounts the cluster: needs root, /dev/fuse and fusermount3",
    ),
]

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
        local.stop_daemons(local.load_layout(data), timeout_s=10)  # unmounts first


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
    assert f"mounted at  {scratch / 'dfs-mnt'}" in outputs[0]
    assert "README.md" in by_command["ls -l dfs-mnt"]
    df = by_command["df -h dfs-mnt"].splitlines()
    assert df[1].split()[0] == "dfs" and df[1].split()[-1] == str(scratch / "dfs-mnt")
    assert by_command["scripts/dfs cat /docs/old/README.md | head -3"].startswith("# dfs")
    assert "leader metaserver" in by_command["scripts/dfs status"]
    down = by_command["scripts/dfs down"]
    assert down.count("stopped") == 6 and "unmounted" in down, down
    # Nothing left: no mount, and the directory is an empty directory again.
    assert mount_info(scratch / "dfs-mnt") is None
    assert list((scratch / "dfs-mnt").iterdir()) == []
