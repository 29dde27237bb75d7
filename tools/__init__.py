"""The repository's test and benchmark tools, kept out of the wheel.

``pip install .`` ships ``dfs``, ``metaserver`` and ``chunkserver`` only; what tests,
benchmarks and documentation need beside the product lives here and is imported from a
checkout (the repository root on ``sys.path``: pytest's ``pythonpath``, the scripts'
``PYTHONPATH``):

- ``tools.testing``: fakes and harnesses (fake cluster, faulty disk, FUSE environment,
  polling, the network-namespace cluster, its fault proxy and the chaos run);
- ``tools.bench``: ``scripts/bench`` and its benchmarks;
- ``tools.protocoldoc``: docs/PROTOCOL.md's tables from the wire definitions.

Product code never imports ``tools`` (tests/unit/test_boundaries.py,
tests/unit/test_packaging.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pythonpath_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the repository root first on ``PYTHONPATH``:
    for a child started as ``python -m tools....``, whatever its working directory."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env
