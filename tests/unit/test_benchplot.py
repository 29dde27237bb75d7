"""The benchmark chart is well-formed SVG and shows every figure it is given."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tools.bench import plot as benchplot


def test_svg_is_well_formed_and_labels_every_bar() -> None:
    panel = benchplot.Panel(
        "commits", "/s", [("1 client", 1019.0), ("64 clients", 16442.0)], [("etcd", 11400.0)]
    )
    text = benchplot.svg([panel], caption="a & b")
    root = ET.fromstring(text)
    rects = [e for e in root.iter() if e.tag.endswith("rect")]
    assert len(rects) == 1 + 2  # the background, then one per bar
    labels = " ".join(e.text or "" for e in root.iter() if e.tag.endswith("text"))
    assert "1,019 /s" in labels and "16,442 /s" in labels and "etcd" in labels
    assert "a &amp; b" in text
    heights = sorted(float(r.get("height", "0")) for r in rects[1:])
    assert heights[0] < heights[1]  # bars scale with their values
