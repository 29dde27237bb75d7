"""docs/PROTOCOL.md's tables are what the definitions in dfs/wire say (tools/protocoldoc.py).

A change to an operation's definition without ``scripts/gen-protocol-doc`` fails here; so
does a hand edit of a generated table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dfs.wire.ops import CHUNKSERVER_OPS, METASERVER_OPS
from dfs.wire.ops_meta import SENT_BY_METASERVER
from tools import protocoldoc

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_the_committed_doc_is_the_generated_one() -> None:
    text = protocoldoc.DOC.read_text()
    assert protocoldoc.update(text) == text, "run scripts/gen-protocol-doc"
    assert protocoldoc.main(["--check"]) == 0


def test_every_defined_op_has_one_row() -> None:
    text = protocoldoc.DOC.read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \|", text, re.MULTILINE)
    defined = [*METASERVER_OPS, *CHUNKSERVER_OPS, *(op.name for op in SENT_BY_METASERVER)]
    assert sorted(rows) == sorted(defined)


def test_a_changed_table_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "PROTOCOL.md"
    doc.write_text(
        protocoldoc.DOC.read_text().replace(
            "| `fs.lookup` | client, admin |", "| `fs.lookup` | anyone |"
        )
    )
    assert protocoldoc.main(["--check", "--doc", str(doc)]) == 1
    assert protocoldoc.main(["--doc", str(doc)]) == 0
    assert doc.read_text() == protocoldoc.DOC.read_text()
