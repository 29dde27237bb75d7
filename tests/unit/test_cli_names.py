"""``dfs ls`` and ``dfs stat`` print names as ``ls -b`` does: no name moves the cursor,
recolours the terminal or passes for two lines."""

from __future__ import annotations

import pytest

from dfs.cli.files import shown_name

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain name.txt", "plain name.txt"),
        ("café ☕".encode(), "café ☕"),
        (b"two\nlines", "two\\nlines"),
        (b"\x1b[2J\x1b[31mred", "\\033[2J\\033[31mred"),
        (b"tab\there\r", "tab\\there\\r"),
        (b"back\\slash", "back\\\\slash"),
        (b"not utf-8 \xff\xfe", "not utf-8 \\377\\376"),
        (b"del\x7f c1\xc2\x9b", "del\\177 c1\\233"),
    ],
)
def test_names_are_shown_escaped(raw: bytes, shown: str) -> None:
    assert shown_name(raw) == shown
    assert all(ch.isprintable() or ch == " " for ch in shown_name(raw))
