"""Issue 5's chaos run (``tools.testing.chaos``, ``scripts/chaos``) at a reduced size, and
its model's read check.

The run: a cluster across network namespaces (3 metaservers, 4 chunkservers), a workload
through a real mount on the client host, 45 s of seeded faults (crashes, pauses,
partitions, packet loss, a stalled or delayed path, flipped bytes on a disk, the whole
cluster killed), then every acknowledged write checked through a fresh mount. Its last
line must say that nothing was lost and no read returned bytes nobody wrote, after some
operations and some faults. ``DFS_CHAOS_SEED`` picks another seed; ``DFS_CHAOS_SECONDS``
another length. The full size is ``scripts/chaos --minutes 5 --seed 1``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import pythonpath_env
from tools.testing.chaos import Entry, check_read, mismatch_kind

pytestmark = [pytest.mark.netns]

SEED = int(os.environ.get("DFS_CHAOS_SEED", "1"))
SECONDS = float(os.environ.get("DFS_CHAOS_SECONDS", "45"))
LAST_LINE = re.compile(r"^chaos: ops (\d+), faults (\d+), lost (\d+), corrupt (\d+)$")


# ---------------------------------------------------------------------- the model's check


def test_a_read_is_checked_byte_by_byte_against_the_candidates() -> None:
    old, new = b"a" * 10, b"b" * 6
    assert check_read(old, [old]) is None
    assert check_read(b"a" * 9, [old]) == 9  # short: the length is wrong
    # A failed overwrite of the first 6 bytes may have landed in part, at any position.
    assert check_read(b"abab" + b"a" * 6, [old, new + old[6:]]) is None
    # A failed truncate-and-write: any prefix of the new content, or the empty file.
    assert check_read(b"", [b"", new]) is None
    assert check_read(b"bbb", [b"", new]) is None
    assert check_read(b"bb\0", [b"", new]) == 2


def test_mismatches_are_classified() -> None:
    entry = Entry([b"new content"], previous=b"old content")
    assert mismatch_kind(b"old content", entry, 0) == "stale"
    assert mismatch_kind(b"\0" * 11, entry, 0) == "zeros"
    assert mismatch_kind(b"xyz content", entry, 0) == "unwritten"
    assert mismatch_kind(b"new", entry, 3) == "length"


# ---------------------------------------------------------------------- the run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_run_loses_nothing(netns_ready: None, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tools.testing.chaos", "--seconds", str(SECONDS)]
    argv += ["--seed", str(SEED), "--dir", str(tmp_path / "chaos")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=280, env=pythonpath_env())
    output = proc.stdout.strip().splitlines()
    print("\n".join(output[-60:]))
    print(proc.stderr[-4000:], file=sys.stderr)
    assert output, "the chaos run printed nothing"
    m = LAST_LINE.match(output[-1])
    assert m is not None, f"unexpected last line: {output[-1]!r}"
    ops, faults, lost, corrupt = map(int, m.groups())
    assert ops > 0 and faults > 0, output[-1]
    assert (lost, corrupt) == (0, 0), f"seed {SEED}: logs in {tmp_path / 'chaos'}"
    assert proc.returncode == 0, f"seed {SEED}: exit {proc.returncode}"
