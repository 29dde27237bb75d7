"""chunkserver/config.py: the ``host`` and ``rack`` labels (optional; checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkserver.config import load_config

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

BASE = 'listen = "127.0.0.1:0"\ndata_dir = "d"\nsecret_file = "s"\nmetaservers = ["127.0.0.1:1"]\n'


def config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "cs.toml"
    path.write_text(BASE + extra)
    return path


def test_labels_default_and_given(tmp_path: Path) -> None:
    plain = load_config(config(tmp_path, ""))
    assert plain.host is None and plain.rack == ""  # the server uses its address's host
    labelled = load_config(config(tmp_path, 'host = "node-7"\nrack = "r2"\n'))
    assert (labelled.host, labelled.rack) == ("node-7", "r2")


@pytest.mark.parametrize(
    ("extra", "message"),
    [('host = ""\n', "host must be"), ("host = 3\n", "host must be"),
     ("rack = 3\n", "rack must be"), (f'rack = "{"r" * 256}"\n', "rack must be")],
)  # fmt: skip
def test_bad_labels_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(config(tmp_path, extra))
