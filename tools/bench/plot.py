"""A dependency-free SVG bar chart for benchmark figures (``scripts/bench ... --plot F``).

Pure: figures in, SVG text out. One panel per group of figures sharing a unit, with
reference lines (a target, a peer's figure measured on the same kind of machine) drawn
across the panel so a reader sees at a glance where each figure stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

PANEL_WIDTH = 420
PANEL_HEIGHT = 260
MARGIN = 48


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    bars: list[tuple[str, float]]
    references: list[tuple[str, float]]  # (label, value): dashed horizontal lines


def _panel(p: Panel, x0: int) -> list[str]:
    top = max([v for _, v in p.bars] + [v for _, v in p.references] + [1e-9]) * 1.15
    plot_h = PANEL_HEIGHT - 2 * MARGIN - 10
    plot_w = PANEL_WIDTH - 2 * MARGIN

    def y(v: float) -> float:
        return MARGIN + plot_h * (1 - v / top)

    out = [
        f'<text x="{x0 + PANEL_WIDTH / 2}" y="20" text-anchor="middle" '
        f'font-weight="bold">{escape(p.title)}</text>',
        f'<line x1="{x0 + MARGIN}" y1="{y(0)}" x2="{x0 + MARGIN + plot_w}" y2="{y(0)}" '
        'stroke="black"/>',
    ]
    n = max(1, len(p.bars))
    slot = plot_w / n
    for i, (label, value) in enumerate(p.bars):
        bx = x0 + MARGIN + i * slot + slot * 0.2
        bw = slot * 0.6
        out.append(
            f'<rect x="{bx:.1f}" y="{y(value):.1f}" width="{bw:.1f}" '
            f'height="{y(0) - y(value):.1f}" fill="#4a7fb5"/>'
        )
        out.append(
            f'<text x="{bx + bw / 2:.1f}" y="{y(value) - 4:.1f}" text-anchor="middle" '
            f'font-size="11">{value:,.2f} {escape(p.unit)}</text>'
            if value < 100
            else f'<text x="{bx + bw / 2:.1f}" y="{y(value) - 4:.1f}" text-anchor="middle" '
            f'font-size="11">{value:,.0f} {escape(p.unit)}</text>'
        )
        out.append(
            f'<text x="{bx + bw / 2:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle" '
            f'font-size="11">{escape(label)}</text>'
        )
    # Reference labels go in a legend under the panel, numbered on their lines, so that
    # they never cover a bar or each other.
    for k, (label, value) in enumerate(p.references, start=1):
        out.append(
            f'<line x1="{x0 + MARGIN}" y1="{y(value):.1f}" x2="{x0 + MARGIN + plot_w}" '
            f'y2="{y(value):.1f}" stroke="#c0392b" stroke-dasharray="5,4"/>'
        )
        out.append(
            f'<text x="{x0 + MARGIN - 4}" y="{y(value) + 4:.1f}" text-anchor="end" '
            f'font-size="10" fill="#c0392b">({k})</text>'
        )
        out.append(
            f'<text x="{x0 + MARGIN}" y="{PANEL_HEIGHT - 14 + 12 * (k - 1)}" '
            f'font-size="10" fill="#c0392b">({k}) {escape(label)}</text>'
        )
    return out


def svg(panels: list[Panel], caption: str = "") -> str:
    width = PANEL_WIDTH * len(panels)
    height = PANEL_HEIGHT + 20 + (20 if caption else 0)
    body: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, p in enumerate(panels):
        body.extend(_panel(p, i * PANEL_WIDTH))
    if caption:
        body.append(
            f'<text x="8" y="{height - 6}" font-size="10" fill="#555">{escape(caption)}</text>'
        )
    body.append("</svg>")
    return "\n".join(body) + "\n"
