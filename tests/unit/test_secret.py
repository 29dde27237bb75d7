"""dfs.secret: the cluster secret file is written 0600 and refused when too open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dfs.secret import SecretFileError, generate_secret, load_secret, write_secret

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_write_then_load(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = generate_secret()
    assert len(secret) == 32 and generate_secret() != secret
    write_secret(path, secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == secret


def test_refuses_group_or_other_access(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_secret(path, generate_secret())
    os.chmod(path, 0o640)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_secret(path)


def test_refuses_missing_malformed_and_short(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="cannot open"):
        load_secret(tmp_path / "nope")
    for content, match in ((b"not hex\n", "not hex"), (b"abcd\n", "shorter")):
        path = tmp_path / "bad"
        path.write_bytes(content)
        os.chmod(path, 0o600)
        with pytest.raises(SecretFileError, match=match):
            load_secret(path)
