"""``scripts/bench fs``'s report: medians, ratios oriented so that above 1 means dfs is
better, the line format the docs describe, and ``--only``."""

from __future__ import annotations

import json

import pytest

from tools.bench.fs.report import Results, as_json, lines, plot
from tools.bench.fs.workloads import ORDER, parse_only

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def results() -> Results:
    r = Results()
    for value in (100.0, 300.0, 200.0):
        r.add("seq-write", "dfs", value)
    r.add("seq-write", "moosefs", 400.0)
    r.add("untar", "dfs", 10.0)
    r.add("untar", "moosefs", 5.0)
    r.add("untar", "passthrough", 20.0)
    r.rss_peak_mib["dfs"] = 55.4
    return r


def test_median_and_ratio_orientation() -> None:
    r = results()
    assert r.median("seq-write", "dfs") == 200.0
    assert r.ratio("seq-write", "moosefs") == 0.5  # half the throughput
    assert r.ratio("untar", "moosefs") == 0.5  # twice the time
    assert r.ratio("untar", "passthrough") == 2.0  # half the time
    assert r.ratio("seq-write", "passthrough") is None  # it did not run


def test_lines_in_order_then_rss_then_ratios() -> None:
    out = lines(results(), ["dfs", "moosefs", "passthrough"])
    assert out == [
        "seq-write dfs 200 MB/s",
        "seq-write moosefs 400 MB/s",
        "untar dfs 10 s",
        "untar moosefs 5 s",
        "untar passthrough 20 s",
        "rss-peak dfs 55 MiB",
        "ratio seq-write dfs/moosefs 0.5",
        "ratio untar dfs/moosefs 0.5",
        "ratio untar dfs/passthrough 2",
    ]


def test_json_has_runs_and_ratios() -> None:
    data = json.loads(as_json(results()))
    assert data["figures"]["seq-write"]["dfs"] == {
        "value": 200.0, "unit": "MB/s", "runs": [100.0, 300.0, 200.0]
    }  # fmt: skip
    assert data["ratios"]["untar"] == {"dfs/moosefs": 0.5, "dfs/passthrough": 2.0}


def test_only_keeps_the_canonical_order_and_refuses_unknown_names() -> None:
    assert parse_only(None) == list(ORDER)
    assert parse_only("untar,seq-read") == ["seq-read", "untar"]
    with pytest.raises(ValueError, match="nope"):
        parse_only("seq-read,nope")


def test_plot_draws_a_panel_per_peer_with_each_ratio() -> None:
    svg = plot(results())
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "dfs ÷ MooseFS" in svg and "dfs ÷ the pass-through" in svg
    # seq-write and untar against MooseFS, untar against the pass-through: three bars.
    assert svg.count("<rect") - svg.count('fill="white"') == 3
    assert "0.50 x" in svg and "2.00 x" in svg and "tar x" in svg
