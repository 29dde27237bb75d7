"""``scripts/bench cluster``'s figures: units and ratios to the same run's local baseline."""

from __future__ import annotations

import pytest

from tools.bench.cluster import with_ratios

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_units_and_ratios() -> None:
    fig = {
        "cluster_seq_write_MBps": 100.0,
        "cluster_small_files_per_s": 50.0,
        "mount_cp_small_files_per_s": 200.0,
        "mount_tar_x_s": 20.0,
        "tar_x_entries": 2624,
    }
    base = {
        "local_seq_write_MBps": 400.0,
        "local_small_files_per_s": 1000.0,
        "local_cp_small_files_per_s": 4000.0,
        "local_tar_x_s": 0.5,
    }
    out = with_ratios(fig, base)
    assert out["cluster_seq_write_MBps"] == (100.0, "MB/s")
    assert out["mount_cp_small_files_per_s"] == (200.0, "/s")
    assert out["mount_tar_x_s"] == (20.0, "s") and out["local_tar_x_s"] == (0.5, "s")
    assert out["tar_x_entries"] == (2624, "entries")
    assert out["cluster_seq_write_MBps_ratio"] == (0.25, "x")
    assert out["mount_cp_small_files_per_s_ratio"] == (0.05, "x")
    assert out["mount_tar_x_s_ratio"] == (40.0, "x")  # seconds: higher is slower
    assert "tar_x_entries_ratio" not in out
    # Without the mount figures (no root, --no-mount), nothing else changes.
    assert set(with_ratios({"cluster_small_files_per_s": 1.0}, base)) == {
        "cluster_small_files_per_s", "cluster_small_files_per_s_ratio", *base,
    }  # fmt: skip
