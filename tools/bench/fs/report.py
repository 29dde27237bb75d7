"""The figures of ``scripts/bench fs``: medians, ratios and their text or JSON form. Pure.

What it owns: how runs become one figure (the median), how a ratio is oriented (above 1
means dfs is better: a time's ratio is inverted), and the output format, which the test
and docs/PERFORMANCE.md read::

    WORKLOAD TARGET VALUE UNIT            one per workload and target, workloads in order
    rss-peak TARGET VALUE MiB             the peak RSS (VmHWM) of each FUSE process
    ratio WORKLOAD dfs/PEER VALUE         PEER: moosefs (when it ran), then passthrough

With ``--json``, one object: ``{"figures": {W: {T: {"value", "unit", "runs"}}},
"rss_peak_mib": {T: V}, "ratios": {W: {"dfs/PEER": V}}, "settings": {...}}``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from tools.bench import plot as benchplot
from tools.bench.fs.workloads import LOWER_IS_BETTER, ORDER, UNITS

# The targets dfs is compared with, in the order their ratio lines come.
PEERS = ("moosefs", "passthrough")
# Short names under the bars of ``plot`` (a panel has room for about seven characters).
PLOT_LABELS = {
    "seq-write": "write", "seq-read": "read", "rand-read": "4K rand", "small-create": "cp -r",
    "stat-cold": "ls cold", "stat-warm": "ls warm", "small-rm": "rm -rf", "untar": "tar x",
    "untar-rm": "tar rm",
}  # fmt: skip
PEER_TITLES = {"moosefs": "MooseFS", "passthrough": "the pass-through"}


@dataclass
class Results:
    """Every run's figure, by workload and target, and each FUSE process's peak RSS."""

    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss_peak_mib: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, workload: str, target: str, value: float) -> None:
        self.runs.setdefault(workload, {}).setdefault(target, []).append(value)

    def median(self, workload: str, target: str) -> float | None:
        values = self.runs.get(workload, {}).get(target)
        return statistics.median(values) if values else None

    def ratio(self, workload: str, peer: str) -> float | None:
        """dfs against ``peer`` on ``workload``, above 1 when dfs is better."""
        ours, theirs = self.median(workload, "dfs"), self.median(workload, peer)
        if ours is None or theirs is None or ours <= 0 or theirs <= 0:
            return None
        return theirs / ours if workload in LOWER_IS_BETTER else ours / theirs

    def workloads(self) -> list[str]:
        return [w for w in ORDER if w in self.runs]

    def ratios(self) -> list[tuple[str, str, float]]:
        out = []
        for peer in PEERS:
            for workload in self.workloads():
                value = self.ratio(workload, peer)
                if value is not None:
                    out.append((workload, f"dfs/{peer}", value))
        return out


def number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def lines(results: Results, targets: list[str]) -> list[str]:
    out = []
    for workload in results.workloads():
        for target in targets:
            value = results.median(workload, target)
            if value is not None:
                out.append(f"{workload} {target} {number(value)} {UNITS[workload]}")
    for target in targets:
        if target in results.rss_peak_mib:
            out.append(f"rss-peak {target} {results.rss_peak_mib[target]:.0f} MiB")
    for workload, pair, value in results.ratios():
        out.append(f"ratio {workload} {pair} {value:.3g}")
    return out


def as_json(results: Results) -> str:
    figures: dict[str, dict[str, Any]] = {}
    for workload in results.workloads():
        for target, values in results.runs[workload].items():
            figures.setdefault(workload, {})[target] = {
                "value": round(statistics.median(values), 3),
                "unit": UNITS[workload],
                "runs": [round(v, 3) for v in values],
            }
    ratios: dict[str, dict[str, float]] = {}
    for workload, pair, value in results.ratios():
        ratios.setdefault(workload, {})[pair] = round(value, 4)
    return json.dumps(
        {
            "figures": figures,
            "rss_peak_mib": {t: round(v, 1) for t, v in results.rss_peak_mib.items()},
            "ratios": ratios,
            "settings": results.settings,
        }
    )


def plot(results: Results) -> str:
    """An SVG of dfs's ratios (``--plot``): a panel per peer that ran, a bar per workload,
    a line at 1 (level with the peer; above it dfs is better)."""
    panels = []
    for peer in PEERS:
        bars = [
            (PLOT_LABELS.get(w, w), value)
            for w in results.workloads()
            if (value := results.ratio(w, peer)) is not None
        ]
        if bars:
            panels.append(
                benchplot.Panel(
                    title=f"dfs ÷ {PEER_TITLES[peer]}",
                    unit="x",
                    bars=bars,
                    references=[(f"level with {PEER_TITLES[peer]}", 1.0)],
                )
            )
    return benchplot.svg(panels, caption="scripts/bench fs: above 1, dfs is better")
