"""``dfs init``: the configs of a cluster on several hosts (dfs/cli/deploy.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from chunkserver.config import load_config as load_cs_config
from dfs.cli import cluster as local
from dfs.cli.main import cli
from dfs.credentials import TlsCredential
from dfs.secret import load_secret
from dfs.wire.token import verify_key
from metaserver.config import load_config as load_meta_config

pytestmark = pytest.mark.timeout(60)


def test_init_writes_one_config_per_server_naming_the_hosts_paths(tmp_path: Path) -> None:
    out = tmp_path / "conf"
    result = CliRunner().invoke(cli, [
        "init", "--metaservers", "m1,m2:7000,10.0.0.3", "--chunkservers", "c1,c2:9200",
        "--out", str(out), "--data-root", "/srv/dfs", "--chunk-size", "16M",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "copy" in result.output and "dfs-metaserver" in result.output
    metas = [load_meta_config(out / f"meta{i}" / "meta.toml") for i in (1, 2, 3)]
    assert [(m.listen_host, m.listen_port) for m in metas] == [
        ("m1", 9000),
        ("m2", 7000),
        ("10.0.0.3", 9000),
    ]
    assert [m.node.data_dir for m in metas] == [Path(f"/srv/dfs/meta{i}") for i in (1, 2, 3)]
    assert {m.secret_file for m in metas} == {Path("/etc/dfs/secret")}
    assert {m.chunk_size_bytes for m in metas} == {16 << 20}
    assert [m.metrics_port for m in metas] == [10000, 8000, 10000]
    peers = metas[0].node.peers
    assert sorted(peers.values()) == ["10.0.0.3:9000", "m1:9000", "m2:7000"]
    css = [load_cs_config(out / f"cs{i}" / "cs.toml") for i in (1, 2)]
    assert [(c.listen_host, c.listen_port) for c in css] == [("c1", 9100), ("c2", 9200)]
    assert [c.data_dir for c in css] == [Path("/srv/dfs/cs1"), Path("/srv/dfs/cs2")]
    assert {c.metaservers for c in css} == {("m1:9000", "m2:7000", "10.0.0.3:9000")}
    assert stat.S_IMODE((out / "secret").stat().st_mode) == 0o600
    # TLS by default: each server's config names its credential on its host; the files
    # here are private, and each certificate names its server's role and host.
    assert [m.credential_file for m in metas] == [Path(f"/etc/dfs/meta{i}.pem") for i in (1, 2, 3)]
    assert [c.credential_file for c in css] == [Path(f"/etc/dfs/cs{i}.pem") for i in (1, 2)]
    # Chunkservers hold no secret: their credentials carry the key that checks tokens.
    assert {c.secret_file for c in css} == {None}
    public = verify_key(load_secret(out / "secret"))
    assert TlsCredential.load(out / "tls" / "cs1.pem").verify_key == public
    assert TlsCredential.load(out / "tls" / "meta1.pem").verify_key is None
    for name in ("ca.key", "ca.pem", "client.pem", "meta1.pem", "cs2.pem"):
        assert stat.S_IMODE((out / "tls" / name).stat().st_mode) == 0o600, name
    cert = x509.load_pem_x509_certificate((out / "tls" / "meta3.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "metaserver"
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.3"]
    assert "client.pem" in result.output and "ca.key off them" in result.output


def test_init_no_tls_writes_no_credentials(tmp_path: Path) -> None:
    out = tmp_path / "conf"
    result = CliRunner().invoke(cli, [
        "init", "--metaservers", "m1", "--chunkservers", "c1", "--out", str(out), "--no-tls",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_meta_config(out / "meta1" / "meta.toml").credential_file is None
    assert load_cs_config(out / "cs1" / "cs.toml").secret_file == Path("/etc/dfs/secret")
    assert not (out / "tls").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metaservers", "m1,m1", "--chunkservers", "c1"], "given twice"),
        (["--metaservers", "m1:x", "--chunkservers", "c1"], "not HOST[:PORT]"),
        (["--metaservers", "m1", "--chunkservers", "c1", "--data-root", "rel"], "absolute"),
    ],
)
def test_init_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["init", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o").exists()


def test_init_refuses_a_directory_in_use_and_warns_of_an_even_count(tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    args = ["init", "--metaservers", "m1,m2", "--chunkservers", "c1"]
    result = CliRunner().invoke(cli, [*args, "--out", str(used)])
    assert result.exit_code == 2 and "not empty" in result.output
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "even")])
    assert result.exit_code == 0 and "odd number" in result.output


def test_a_new_local_metaserver_gets_ports_and_a_credential_of_its_own(tmp_path: Path) -> None:
    """``dfs admin metaserver add --local`` on a ``dfs up --tls`` directory (metrics on):
    the new server's config copies the first one's but for its ports and credential."""
    layout = local.init_layout(tmp_path / "c", metaservers=1, chunkservers=1, metrics=True,
                               tls=True)  # fmt: skip
    node_id, address = local.new_metaserver(layout)
    first = load_meta_config(layout.dir / "meta1" / "meta.toml")
    new = load_meta_config(layout.dir / f"meta{node_id}" / "meta.toml")
    assert f"{new.listen_host}:{new.listen_port}" == address != layout.metaservers[1]
    assert new.metrics_port not in (None, first.metrics_port, new.listen_port)
    assert new.credential_file == layout.tls_dir / f"meta{node_id}.pem"
    assert new.credential_file.exists() and new.credential_file != first.credential_file


def test_credential_reissues_a_chunkserver_with_the_token_key(tmp_path: Path) -> None:
    """What a TLS cluster's chunkserver needs to run without the secret."""
    out = tmp_path / "conf"
    runner = CliRunner()
    result = runner.invoke(cli, [
        "init", "--metaservers", "m1", "--chunkservers", "c1", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    pem = tmp_path / "cs9.pem"
    args = ["credential", "cs9", "--dir", str(out), "--out", str(pem)]
    result = runner.invoke(cli, [*args, "--chunkserver", "10.0.0.9"])
    assert result.exit_code == 0, result.output
    cred = TlsCredential.load(pem)
    assert cred.role == "chunkserver"
    assert cred.verify_key == verify_key(load_secret(out / "secret"))
    other = tmp_path / "x.pem"
    result = runner.invoke(cli, [*args[:-1], str(other), "--chunkserver", "h", "--admin"])
    assert result.exit_code != 0 and not other.exists()
