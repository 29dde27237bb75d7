"""``dfs init``: the configs and credentials of a cluster whose servers run on hosts of
their own (docs/OPERATIONS.md, "Deploying on several hosts").

What it owns: turning host lists into a cluster directory of the same layout ``dfs up``
makes (``cluster.toml``, ``secret``, ``tls/`` with the CA and every process's credential,
``metaI/meta.toml``, ``csI/cs.toml``), whose configs
name the paths on the servers' hosts, and the copy-and-start instructions it prints. What
it must not do: touch a host (it only writes files here; the operator copies them).
"""

from __future__ import annotations

from pathlib import Path

import click

from dfs.cli import cluster as local
from dfs.cli.common import dir_option, size_bytes
from dfs.wire.spec import ADMIN, CHUNKSERVER, CLIENT


@click.command("init")
@click.option(
    "--metaservers",
    "meta_hosts",
    required=True,
    metavar="HOST[:PORT],...",
    help=f"The metaservers (an odd number; port {local.META_PORT_DEFAULT}).",
)
@click.option(
    "--chunkservers",
    "cs_hosts",
    required=True,
    metavar="HOST[:PORT],...",
    help=f"The chunkservers (port {local.CS_PORT_DEFAULT}).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the configs and the secret (must not exist).",
)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/dfs"),
    show_default=True,
    help="Data directories on the hosts: DATA_ROOT/metaI, csI.",
)
@click.option(
    "--secret-path",
    type=click.Path(path_type=Path),
    default=Path("/etc/dfs/secret"),
    show_default=True,
    help="Where the servers find the cluster secret on their hosts.",
)
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="Make the cluster's CA and a TLS credential per server and for clients.",
)
@click.option(
    "--credential-dir",
    type=click.Path(path_type=Path),
    default=Path("/etc/dfs"),
    show_default=True,
    help="Where each server finds its credential (NAME.pem) on its host.",
)
@click.option("--chunk-size", default="64M", show_default=True, help="Chunk size.")
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help=f"Prometheus metrics on each server's port + {local.METRICS_PORT_OFFSET}.",
)
def init_command(
    meta_hosts: str,
    cs_hosts: str,
    out: Path,
    data_root: Path,
    secret_path: Path,
    tls: bool,
    credential_dir: Path,
    chunk_size: str,
    metrics: bool,
) -> None:
    """Write the configs of a cluster on several hosts, one per server, and its secret."""
    try:
        metaservers = local.parse_hosts(meta_hosts, local.META_PORT_DEFAULT)
        chunkservers = local.parse_hosts(cs_hosts, local.CS_PORT_DEFAULT)
        size = size_bytes(chunk_size)
    except (local.ClusterError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    if len(metaservers) % 2 == 0:
        click.echo(
            f"warning: {len(metaservers)} metaservers tolerate no more failures than "
            f"{len(metaservers) - 1}; an odd number is usual",
            err=True,
        )
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} exists and is not empty")
    if not all(p.is_absolute() for p in (data_root, secret_path, credential_dir)):
        raise click.UsageError(
            "--data-root, --secret-path and --credential-dir must be absolute paths"
        )
    try:
        layout = local.init_layout(
            out,
            chunk_size=size,
            addresses=(metaservers, chunkservers),
            metrics=metrics,
            data_root=data_root,
            secret_path=secret_path,
            tls=tls,
            credential_dir=credential_dir,
        )
    except (local.ClusterError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"dfs cluster configs in {layout.dir}")
    servers = "metaserver (chunkservers need none)" if tls else "server"
    click.echo(f"  copy {layout.secret_file} to {secret_path} on every {servers} (mode 0600)")
    if tls:
        click.echo(f"  copy {layout.tls_dir}/NAME.pem to {credential_dir}/NAME.pem on the "
                   f"host of server NAME (mode 0600); keep {layout.tls_dir}/ca.key off them")  # fmt: skip
    for i, address in sorted(layout.metaservers.items()):
        host = address.rpartition(":")[0]
        click.echo(f"  {host}: meta{i}/meta.toml -> /etc/dfs/meta.toml, "
                   f"then: systemctl enable --now dfs-metaserver")  # fmt: skip
    for i, address in sorted(layout.chunkservers.items()):
        host = address.rpartition(":")[0]
        click.echo(f"  {host}: cs{i}/cs.toml -> /etc/dfs/cs.toml, "
                   f"then: systemctl enable --now dfs-chunkserver")  # fmt: skip
    client = f"{credential_dir}/client.pem (from {layout.client_file})" if tls else secret_path
    if tls:
        click.echo(f"  operators: {layout.admin_file} (dfs admin ... --secret admin.pem)")
    click.echo(f"  clients: dfs mount --meta {','.join(metaservers)} --secret {client} "
               "MOUNTPOINT")  # fmt: skip


@click.command("credential")
@dir_option
@click.argument("name")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="The file to write (0600)."
)
@click.option(
    "--uid",
    type=click.IntRange(min=0),
    default=None,
    help="Restrict the client to this user: the metaservers check its requests' "
    "permissions as this uid (absent: a client trusted with any uid, as root's mount).",
)
@click.option(
    "--gids", default="", metavar="G,...", help="The restricted user's groups (with --uid)."
)
@click.option(
    "--admin", is_flag=True, help="An operator's credential: it may run dfs admin commands."
)
@click.option(
    "--chunkserver",
    "cs_host",
    default=None,
    metavar="HOST",
    help="A chunkserver's credential, for the server reached at HOST: with the key that "
    "checks chunk tokens, so that its config needs no secret_file.",
)
def credential_command(
    directory: Path,
    name: str,
    out: Path,
    uid: int | None,
    gids: str,
    admin: bool,
    cs_host: str | None,
) -> None:
    """Issue a credential NAME from the cluster's CA (DIR/tls/ca.key) into OUT: a client's
    for a host's mount (files only), with --admin an operator's, with --chunkserver a
    chunkserver's."""
    from dfs import pki

    try:
        groups = tuple(int(g) for g in gids.split(",") if g.strip())
    except ValueError:
        raise click.BadParameter(
            f"not a list of group ids: {gids!r}", param_hint="--gids"
        ) from None
    if groups and uid is None:
        raise click.UsageError("--gids restricts a credential only with --uid")
    if admin and uid is not None:
        raise click.UsageError("an operator's credential is not restricted to a user")
    if cs_host is not None and (admin or uid is not None):
        raise click.UsageError("--chunkserver goes with neither --admin nor --uid")
    if out.exists():
        raise click.UsageError(f"{out} exists")
    layout = _tls_layout(directory)
    role = CHUNKSERVER if cs_host is not None else ADMIN if admin else CLIENT
    hosts = (cs_host,) if cs_host is not None else ()
    try:
        pem = local.make_credential(layout, role, name, hosts, uid=uid, gids=groups)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot read the cluster's CA: {e}") from None
    pki.write_credential(out, pem)
    if cs_host is not None:
        who = f"host {cs_host}"
    else:
        who = f"user {uid}, groups {list(groups)}" if uid is not None else "any user"
    click.echo(f"{role} credential {name!r} ({who}) in {out}, serial {pki.serial_of(pem):x}")


def _tls_layout(directory: Path) -> local.Layout:
    """The cluster in ``directory``, which must have a CA (TLS); a ClickException else."""
    try:
        layout = local.load_layout(directory.absolute())
    except local.ClusterError as e:
        raise click.ClickException(str(e)) from None
    if not layout.tls:
        raise click.ClickException(f"the cluster in {layout.dir} has no TLS, so no CA")
    return layout


@click.command("revoke")
@dir_option
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--serial",
    "serials",
    multiple=True,
    metavar="HEX",
    help="A certificate's serial number (hexadecimal, as `dfs credential` printed it).",
)
def revoke_command(directory: Path, files: tuple[Path, ...], serials: tuple[str, ...]) -> None:
    """Revoke the credentials in FILES (or by --serial): the CA adds them to its revocation
    list, DIR/tls/crl.pem. Servers that find it beside their credential refuse those
    certificates within a second and close their connections; copy it next to every
    server's credential on other hosts."""
    from dfs import pki
    from dfs.revocations import RevocationListError

    if not files and not serials:
        raise click.UsageError("name the credentials to revoke: FILE... or --serial HEX")
    try:
        numbers = {int(s, 16) for s in serials}
    except ValueError:
        raise click.BadParameter("not a hexadecimal serial", param_hint="--serial") from None
    try:
        numbers |= {pki.serial_of(path.read_bytes()) for path in files}
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot read a certificate: {e}") from None
    layout = _tls_layout(directory)
    try:
        every = pki.revoke(pki.load_authority(layout.tls_dir), layout.tls_dir, numbers)
    except (OSError, ValueError, RevocationListError) as e:
        raise click.ClickException(f"cannot update the revocation list: {e}") from None
    for serial in sorted(numbers):
        click.echo(f"revoked serial {serial:x}")
    click.echo(f"{len(every)} revoked in {layout.tls_dir / 'crl.pem'}: copy it next to "
               "every server's credential on other hosts")  # fmt: skip


__all__ = ["credential_command", "init_command", "revoke_command"]
