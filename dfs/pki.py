"""The cluster's certificate authority: make it, and issue each process its credential.

What it owns: the one place that creates keys and certificates (with the ``cryptography``
package); ``dfs/credentials.py`` reads what it writes with the standard ``ssl`` module.

A *credential* is one PEM file, mode 0600, holding in this order: a first line naming it
(``# dfs credential: role ROLE, name NAME``, which the process reads to know the role it
speaks as), the process's certificate, its private key, and the cluster CA's certificate
(the trust anchor it checks its peers against); a chunkserver's ends with the public key
that checks chunk access tokens (``DFS TOKEN VERIFY KEY``, ``dfs/wire/token.py``), so that
it needs no cluster secret. One file per process, so that handing a host its identity is copying
one file. The certificate names the process (subject CN, e.g. ``meta-1``) and its
**role** (subject OU: ``metaserver``, ``chunkserver``, ``admin`` or ``client``): a server
takes a
peer's role from its certificate, never from what the peer says, so a client credential
cannot act as a server (docs/SECURITY.md).

The CA's own key is written next to the credentials (``ca.key``, mode 0600) and is needed
only to issue more of them (``dfs up --add-chunkservers``, a new client); an operator of
several hosts keeps it off the servers (docs/OPERATIONS.md).

Keys are ECDSA P-256 (a TLS 1.3 handshake costs about a millisecond of CPU here, an RSA
2048 one several); certificates are valid for ``VALID_DAYS``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dfs.credentials import CREDENTIAL_LINE, USER_URI, VERIFY_KEY_PEM
from dfs.wire.spec import CHUNKSERVER, CLIENT, ROLES

VALID_DAYS = 10 * 365
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"


@dataclass(frozen=True)
class Authority:
    """A cluster CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_authority(cluster: str) -> Authority:
    """A new CA for the cluster named ``cluster`` (its subject's O and CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"dfs {cluster}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"dfs {cluster} CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    authority: Authority,
    role: str,
    name: str,
    hosts: tuple[str, ...] = (),
    *,
    uid: int | None = None,
    gids: tuple[int, ...] = (),
    verify_key: bytes | None = None,
) -> bytes:
    """A credential (see the module docstring) for process ``name`` acting as ``role``;
    ``hosts`` (names or IP addresses it is reached at) go in its subjectAltName. A client's
    may be restricted to user ``uid`` with groups ``gids``: subjectAltName URIs
    ``dfs:uid=U`` and ``dfs:gid=G`` (``dfs/credentials.py`` reads them). A chunkserver's
    carries ``verify_key``, the public key that checks chunk tokens
    (``dfs.wire.token.verify_key``), in a last block of its own."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if verify_key is not None and role != CHUNKSERVER:
        raise ValueError("only a chunkserver's credential holds the token verification key")
    if uid is not None and role != CLIENT:
        raise ValueError("only a client's credential is restricted to a user")
    if uid is None and gids:
        raise ValueError("groups restrict a credential only with its uid")
    key = ec.generate_private_key(ec.SECP256R1())
    org = authority.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(org)),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if uid is not None:
        names.append(x509.UniformResourceIdentifier(f"{USER_URI}uid={uid}"))
        names += [x509.UniformResourceIdentifier(f"{USER_URI}gid={g}") for g in gids]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    token_block = b""
    if verify_key is not None:
        token_block = (
            f"-----BEGIN {VERIFY_KEY_PEM}-----\n{base64.b64encode(verify_key).decode()}\n"
            f"-----END {VERIFY_KEY_PEM}-----\n"
        ).encode()
    return (
        f"{CREDENTIAL_LINE}role {role}, name {name}\n".encode()
        + cert.public_bytes(serialization.Encoding.PEM)
        + _key_pem(key)
        + authority.cert_pem
        + token_block
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode`` (private unless said), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_authority(directory: Path, authority: Authority) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(directory / CA_KEY_FILE, _key_pem(authority.key))
    _write_private(directory / CA_FILE, authority.cert_pem)


def load_authority(directory: Path) -> Authority:
    cert = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / CA_KEY_FILE}: not an EC key")
    return Authority(cert, key)


def write_credential(path: Path, credential: bytes) -> None:
    _write_private(path, credential)


def serial_of(pem: bytes) -> int:
    """The serial number of the first certificate in ``pem`` (a credential file, or a
    certificate): what a revocation names. ``ValueError`` when there is none."""
    return x509.load_pem_x509_certificates(pem)[0].serial_number


def revoke(authority: Authority, directory: Path, serials: set[int]) -> frozenset[int]:
    """Add ``serials`` to the CA's revocation list, ``directory/crl.pem`` (made when
    absent; ``dfs/revocations.py`` reads it), signed by the CA; returns every serial the
    list now names. Entries are never removed: a certificate revoked stays revoked."""
    from dfs.revocations import CRL_FILE, read_revoked

    path = directory / CRL_FILE
    old = read_revoked(path.read_bytes(), authority.cert_pem.decode()) if path.exists() else set()
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=VALID_DAYS))
    )
    every = frozenset(old) | frozenset(serials)
    for serial in sorted(every):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(authority.key, hashes.SHA256())
    # Public (it names serials and is signed): readable by whichever user a server runs as.
    _write_private(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return every
