"""The dependency rules of docs/ARCHITECTURE.md, checked by reading imports with ``ast``.

Rules (a module that does not exist yet is simply not checked):
1. Pure modules import no I/O, clock, thread or global-randomness module: ``dfs.wire``,
   ``metaserver.raft.core`` and its parts (``PURE_RAFT``), ``metaserver.raft.types``,
   ``metaserver.namespace`` and the chunk core ``metaserver.chunks`` (but its simulator, ``sim*``).
   ``metaserver.raft.core`` may import ``random``, for the ``random.Random`` it is given.
2. ``metaserver.raft`` imports from ``dfs`` only ``dfs.types`` and ``dfs.wire`` (its I/O
   rim, ``node``, ``kvserver`` and ``kvclient``, also ``dfs.rpc``, ``dfs.leader``, ``dfs.secret`` and
   ``dfs.daemon``; they and ``metaserver.raft.config`` also ``dfs.config``), and
   from ``metaserver`` only ``metaserver.raft``: the consensus library knows no file system.
3. ``dfs.wire`` imports from the project only ``dfs.types`` and ``dfs.wire``.
4. Server code (``metaserver``, ``chunkserver``) never imports the client side
   (``dfs.client``, ``dfs.fuse``, ``dfs.cli``); the client side never imports server code.
5. Only ``dfs.cli`` imports ``click``; only ``dfs.fuse`` imports ``pyfuse3``.
6. The product (``dfs``, ``metaserver``, ``chunkserver``) never imports ``tools``, the test
   and benchmark tools that stay out of the wheel (tests/unit/test_packaging.py).
Imports under ``if TYPE_CHECKING:`` are ignored: they cost nothing at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dfs", "metaserver", "chunkserver")
IMPURE = {"asyncio", "socket", "time", "os", "threading", "random", "subprocess", "selectors"}
IMPURE |= {"multiprocessing", "trio", "anyio", "shutil", "signal", "errno"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports at run time."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # ``from dfs import wire`` imports dfs.wire: record the submodule form too.
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def rooted(names: set[str], package: str) -> set[str]:
    return {n for n in names if under(n, package)}


def top(name: str) -> str:
    return name.split(".")[0]


# The Raft core and the pure modules it is made of.
PURE_RAFT = (
    "metaserver.raft.core",
    "metaserver.raft.log",
    "metaserver.raft.progress",
    "metaserver.raft.reads",
    "metaserver.raft.types",
)


# Pure modules given a ``random.Random`` (they may import ``random`` for its type).
RANDOM_GIVEN = ("metaserver.raft.core", "metaserver.chunks.placement")


def is_pure(module: str) -> bool:
    return (
        under(module, "dfs.wire")
        or module in PURE_RAFT
        or under(module, "metaserver.namespace")
        or (under(module, "metaserver.chunks") and not module.startswith("metaserver.chunks.sim"))
    )


RAFT_IO_RIM = {
    "metaserver.raft.node",
    "metaserver.raft.peer",
    "metaserver.raft.kvserver",
    "metaserver.raft.kvclient",
}


def violations() -> list[str]:
    found: list[str] = []
    for module, path in modules():
        names = imports(module, path)
        tops = {top(n) for n in names}
        if is_pure(module):
            allowed = {"random"} if module in RANDOM_GIVEN else set()
            for bad in sorted((tops & IMPURE) - allowed):
                found.append(f"{module} is pure but imports {bad}")
        if under(module, "metaserver.raft"):
            allowed_dfs = ["dfs.types", "dfs.wire"]
            if module in RAFT_IO_RIM:
                allowed_dfs += [
                    "dfs.rpc",
                    "dfs.leader",
                    "dfs.secret",
                    "dfs.credentials",
                    "dfs.daemon",
                ]
            if module in RAFT_IO_RIM or module == "metaserver.raft.config":
                allowed_dfs += ["dfs.config"]
            for name in sorted(rooted(names, "dfs")):
                if name != "dfs" and not any(under(name, a) for a in allowed_dfs):
                    found.append(f"{module} (Raft library) imports {name}")
            for name in sorted(rooted(names, "metaserver")):
                if name != "metaserver" and not under(name, "metaserver.raft"):
                    found.append(f"{module} (Raft library) imports {name}")
        if under(module, "dfs.wire"):
            for name in sorted(n for n in names if top(n) in PACKAGES):
                if not (under(name, "dfs.types") or under(name, "dfs.wire") or name == "dfs"):
                    found.append(f"{module} (pure wire) imports {name}")
        if top(module) in ("metaserver", "chunkserver"):
            for client_side in ("dfs.client", "dfs.fuse", "dfs.cli"):
                for name in sorted(rooted(names, client_side)):
                    found.append(f"{module} (server) imports client-side {name}")
        if any(under(module, p) for p in ("dfs.client", "dfs.fuse", "dfs.cli")):
            for name in sorted(n for n in names if top(n) in ("metaserver", "chunkserver")):
                found.append(f"{module} (client side) imports server code {name}")
        if "click" in tops and not under(module, "dfs.cli"):
            found.append(f"{module} imports click (only dfs.cli may)")
        if "pyfuse3" in tops and not under(module, "dfs.fuse"):
            found.append(f"{module} imports pyfuse3 (only dfs.fuse may)")
        for name in sorted(rooted(names, "tools")):
            found.append(f"{module} (product) imports {name}, a tool outside the wheel")
    return found


def test_dependency_boundaries() -> None:
    assert violations() == []


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    # The rules are only worth something if the import reader works: try it on known code.
    names = imports("dfs.wire.codec", ROOT / "dfs" / "wire" / "codec.py")
    assert {"msgpack", "struct", "dfs.wire.limits", "dfs.wire.errors"} <= names
    sample = tmp_path / "m.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import os.path\n"
        "from . import sibling\n"
        "from ..x import y\n"
        "if TYPE_CHECKING:\n    import asyncio\n"
        "def f():\n    import socket\n"
    )
    names = imports("pkg.sub.m", sample)
    assert {"os.path", "pkg.sub", "pkg.sub.sibling", "pkg.x", "pkg.x.y", "socket"} <= names
    assert "asyncio" not in names
    assert any(m == "dfs.rpc" for m, _ in modules())
