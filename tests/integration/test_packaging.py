"""The wheel ships the product and nothing of the test harness.

``pip install .`` must give the ``dfs`` command and the two server daemons, and none of
``tools/`` (fakes, the chaos run, the network-namespace cluster, the fault proxy, the
benchmarks) nor the tests. The test builds the wheel as pip does (from a copy of the
checkout, so that no ``build/`` is left in it; without build isolation, so offline) and
reads its file list and entry points.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = {"dfs", "metaserver", "chunkserver"}
# What the checkout holds beside the product; a wheel built from it must leave them out.
COPIED = ("pyproject.toml", "README.md", "dfs", "metaserver", "chunkserver", "tools", "tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in COPIED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("dfs-*.whl")
    return built


def test_the_wheel_holds_the_product_and_no_tools(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == PRODUCT
    leaked = [
        n
        for n in names
        if any(part in ("tools", "tests", "testing") for part in n.split("/"))
        or "bench" in n.rsplit("/", 1)[-1]
    ]
    assert leaked == []
    # The product is all there: the client, the mount, the CLI and both servers.
    for module in ("dfs/cli/main.py", "dfs/fuse/mount.py", "dfs/client/__init__.py",
                   "metaserver/server.py", "chunkserver/server.py", "dfs/py.typed"):  # fmt: skip
        assert module in names
    assert wheel.name == f"dfs-{dfs.__version__}-py3-none-any.whl"


def test_the_wheel_installs_the_commands(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (entry,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry).decode()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert dict(parser["console_scripts"]) == {
        "dfs": "dfs.cli.main:main",
        "dfs-metaserver": "metaserver.server:main",
        "dfs-chunkserver": "chunkserver.server:main",
    }


def test_dfs_version_names_the_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dfs.cli.main", "version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"dfs {dfs.__version__}\n"
