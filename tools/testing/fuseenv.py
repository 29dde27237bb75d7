"""Whether FUSE mounts can be tested here, the rule the mount tests follow with it, and
whether their clusters speak TLS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def fuse_unavailable() -> str | None:
    """Why a mount cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "the mount tests run as root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian's fuse3)"
    return None


def tls_by_default() -> bool:
    """Whether the FUSE and failure tests' clusters speak TLS: ``DFS_TEST_TLS=1`` runs
    those suites on TLS clusters (``DFS_TEST_TLS=1 scripts/test tests/fuse tests/failures``),
    as docs/SECURITY.md says they pass."""
    return os.environ.get("DFS_TEST_TLS") == "1"


def skip_unless_fuse(items: list[Any], folder: Path, skip_marker: Any) -> None:
    """Mark the tests under ``folder`` skipped when no mount can be made, except in CI
    (``CI`` set): there a missing requirement must fail the tests, not hide them."""
    reason = fuse_unavailable()
    if reason is None or os.environ.get("CI"):
        return
    for item in items:
        if folder in item.path.parents:
            item.add_marker(skip_marker(reason=reason))
