"""docs/PROTOCOL.md's operation tables, generated from the definitions in ``dfs/wire``.

    python -m tools.protocoldoc            rewrite the tables in docs/PROTOCOL.md
    python -m tools.protocoldoc --check    exit 1 when the committed doc differs

(``scripts/gen-protocol-doc`` runs it.) What it owns: the rendering of ``dfs.wire.spec.Op``
definitions as Markdown tables, and the blocks of the doc between ``<!-- BEGIN GENERATED
ops:NAME -->`` and ``<!-- END GENERATED ops:NAME -->`` markers; the prose around them is
written by hand. ``tests/unit/test_protocol_doc.py`` checks that the committed doc is what
this renders.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from dfs.wire import ops_chunk, ops_meta, shapes
from dfs.wire.spec import LIST, ROLES, Field, Op
from tools import ROOT

DOC = ROOT / "docs" / "PROTOCOL.md"

_M = ops_meta
SECTIONS: dict[str, tuple[Op, ...]] = {
    "fs": tuple(op for op in _M.META_OPS if op.name.startswith("fs.")),
    "cluster": (
        _M.STATUS, _M.CS_REGISTER, _M.CS_HEARTBEAT, _M.CS_REPORT, _M.CS_BAD_CHUNKS,
        _M.ADMIN_REBALANCE, _M.ADMIN_DRAIN, _M.ADMIN_FORGET, _M.ADMIN_FSCK, _M.ADMIN_GOALS,
        _M.ADMIN_SET_GOAL, _M.ADMIN_SALVAGE, _M.ADMIN_BACKUP, _M.ADMIN_TRASH_TIME,
        _M.ADMIN_SET_TRASH_TIME, _M.ADMIN_TRASH_LIST, _M.ADMIN_TRASH_RESTORE, _M.ADMIN_TRASH_PURGE,
        _M.ADMIN_USAGE,
    ),
    "membership": (
        _M.ADMIN_META_ADD, _M.ADMIN_META_REMOVE, _M.ADMIN_TRANSFER_LEADER, _M.META_MEMBERS,
    ),
    "oneway": (_M.RAFT, *_M.SENT_BY_METASERVER),
    "chunk": ops_chunk.CHUNK_OPS,
}  # fmt: skip

_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED ops:(?P<name>[a-z]+) -->\n).*?(<!-- END GENERATED ops:(?P=name) -->)",
    re.DOTALL,
)


def _number(n: int) -> str:
    if n == (1 << 64) - 1:
        return "2^64-1"
    if n == (1 << 63) - 1:
        return "2^63-1"
    return f"{n:,}"


def _range(f: Field) -> str:
    unit = {"bytes": " bytes", "str": " chars", "list": " items"}.get(f.kind, "")
    low, high = f.low, f.high
    if high is None:
        return f">= {_number(low)}" if low else ""
    if low:
        return f"{_number(low)}..{_number(high)}{unit}"
    return f"at most {_number(high)}{unit}"


def _kind(f: Field) -> str:
    if f.kind != LIST or f.items is None:
        return f.kind
    if isinstance(f.items, str):
        return {"id": "list of ids >= 1", "uint": "list of uint", "str": "list of str"}[f.items]
    if isinstance(f.items[0], Field):
        return f"list of maps [{', '.join(render_field(i) for i in f.items)}]"
    return f"list of [{', '.join('int' for _ in f.items)}]"


def render_field(f: Field) -> str:
    """``name`` (kind, range, optional: doc)."""
    bits = [_kind(f)]
    if limit := _range(f):
        bits.append(limit)
    if not f.required:
        bits.append("optional")
    text = ", ".join(bits)
    if f.doc:
        text += f": {f.doc}"
    return f"`{f.name}` ({text})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _request(op: Op) -> str:
    text = ", ".join(render_field(f) for f in op.fields)
    if op.session:
        text = f"{text} + session" if text else "session"
    return text


def _reply(op: Op) -> str:
    parts = [", ".join(f"`{f.name}`" + (f" ({f.doc})" if f.doc else "") for f in op.reply)]
    parts.append(op.answer)
    return "; ".join(p for p in parts if p) or "`{}`"


def _roles(op: Op) -> str:
    return ", ".join(r for r in ROLES if r in op.roles)


def render_shapes() -> str:
    """The maps nested in answers (``dfs/wire/shapes.py``), one list item each."""
    return "".join(
        f"- **{name}**: {', '.join(render_field(f) for f in fields)}\n"
        for name, fields in shapes.SHAPES.items()
    )


def render(name: str) -> str:
    """The Markdown table of section ``name``."""
    if name == "shapes":
        return render_shapes()
    ops = SECTIONS[name]
    if name == "chunk":
        lines = ["| op | from | request fields | payload | response |", "|---|---|---|---|---|"]
        for op in ops:
            response = _reply(op)
            if op.reply_payload:
                response = f"payload: {op.reply_payload}; {response}"
            cells: tuple[str, ...] = (
                f"`{op.name}`", _roles(op), _request(op), op.payload, response
            )  # fmt: skip
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    else:
        lines = ["| op | from | request fields | response fields |", "|---|---|---|---|"]
        for op in ops:
            cells = (f"`{op.name}`", _roles(op), _request(op), _reply(op))
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def update(text: str) -> str:
    """``text`` with every generated block rendered afresh."""

    def block(m: re.Match[str]) -> str:
        return m.group(1) + render(m.group("name")) + m.group(3)

    return _BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = args.doc.read_text()
    new = update(text)
    if args.check:
        if new != text:
            print(f"{args.doc} is stale: run scripts/gen-protocol-doc", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.doc.write_text(new)
        print(f"{args.doc}: tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
