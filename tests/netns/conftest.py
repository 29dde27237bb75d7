"""Setup of the tests across network namespaces (``tools.testing.netns``).

The tests that make namespaces (all but the proxy's, through the ``netns_ready``
fixture) need root, ``ip`` and ``iptables``. Without them they skip with the reason,
except when ``CI`` is set in the environment: CI runs as root with ``scripts/bootstrap``'s
packages, so a missing piece there is a broken CI, and the tests fail instead.

Before the first of them, ``cleanup_stale()`` removes what killed runs left (the
namespaces of runs whose owner process is gone, and what still runs in them).
"""

from __future__ import annotations

import os

import pytest
from netns_helpers import netns_unavailable

from tools.testing.netns import cleanup_stale


@pytest.fixture(scope="session")
def netns_ready() -> None:
    """Requested by every test (or fixture) that makes namespaces."""
    reason = netns_unavailable()
    if reason is None:
        cleanup_stale()
        return
    if os.environ.get("CI"):
        pytest.fail(f"netns tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)
