"""The one config reader (dfs/config.py) and the daemons' loaders built on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkserver.config import load_config as load_chunkserver
from dfs.config import ConfigFile
from metaserver.config import load_config as load_metaserver
from metaserver.raft.kvserver import load_config as load_kvserver

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

RAFT = (
    'id = 1\nlisten = "127.0.0.1:7001"\ndata_dir = "d"\nsecret_file = "s"\n'
    '[peers]\n1 = "127.0.0.1:7001"\n2 = "[::1]:7002"\n'
)
CHUNK = 'listen = "[::1]:0"\ndata_dir = "d"\nsecret_file = "s"\nmetaservers = ["127.0.0.1:1"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_config_file_checks(tmp_path: Path) -> None:
    path = write(tmp_path, 'a = 1\nb = "x"\nc = true\nd = "h:0"\n')
    with pytest.raises(ValueError, match=r"c\.toml: unknown keys \['d'\]"):
        ConfigFile.load(path, {"a", "b", "c"})
    config = ConfigFile.load(path, {"a", "b", "c", "d", "e"})
    assert config.get("a", int) == 1 and config.get("a", float) == 1.0
    assert config.get("e", int, 7) == 7
    with pytest.raises(ValueError, match="missing key 'e'"):
        config.get("e", int)
    with pytest.raises(ValueError, match="c must be a int, not True"):
        config.get("c", int)  # a bool is no int
    with pytest.raises(ValueError, match="d must be 'host:port'"):
        config.address("d", config.get("d", str))
    assert config.address("d", "h:0", port_zero=True) == ("h", 0)
    assert config.address("d", "[::1]:5") == ("::1", 5)
    assert config.port("e") is None
    with pytest.raises(ValueError, match="a must be a port"):
        ConfigFile(path, {"a": 70000}).port("a")
    with pytest.raises(ValueError, match="not valid TOML"):
        ConfigFile.load(write(tmp_path, "a = = 1\n"), {"a"})


def test_every_daemon_reads_through_it(tmp_path: Path) -> None:
    meta = load_metaserver(write(tmp_path, RAFT + ""))
    assert meta.node.peers == {1: "127.0.0.1:7001", 2: "[::1]:7002"}
    assert (meta.listen_host, meta.listen_port, meta.metrics_port) == ("127.0.0.1", 7001, None)
    assert load_kvserver(write(tmp_path, "debug_ops = true\n" + RAFT)).debug_ops
    cs = load_chunkserver(write(tmp_path, CHUNK))
    assert (cs.listen_host, cs.listen_port) == ("::1", 0)
    for load, text, message in (
        (load_metaserver, "tick_ms = true\n" + RAFT, "tick_ms must be a int"),
        (load_metaserver, "placement = 3\n" + RAFT, "placement must be a str"),
        (load_metaserver, "metrics_port = -1\n" + RAFT, "metrics_port must be a port"),
        (load_metaserver, "bogus = 1\n" + RAFT, "unknown keys"),
        (load_kvserver, RAFT.replace('7001"\nd', '0"\nd'), "listen must be 'host:port'"),
        (load_kvserver, RAFT + "x = 1\n", r"peers: 'x' is not a node id"),
        (load_chunkserver, CHUNK + "heartbeat_ms = 1.5\n", "heartbeat_ms must be a int"),
        (load_chunkserver, CHUNK + "metrics_port = 99999\n", "metrics_port must be a port"),
    ):
        with pytest.raises(ValueError, match=message) as e:
            load(write(tmp_path, text))
        assert str(e.value).startswith(str(tmp_path / "c.toml"))
