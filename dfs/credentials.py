"""What a process proves itself with, and how it checks its peers.

What it owns: ``Credentials``, the one value every connection is opened or accepted with
(``dfs.rpc`` for servers, ``dfs.client.conn`` for clients), and reading a TLS credential
file (``dfs/pki.py`` writes them) into ``ssl`` contexts.

Two kinds of cluster:

- **TLS** (``tls`` set; what ``dfs init`` and ``dfs up --tls`` make): every connection is
  TLS 1.3, mutual, against the cluster CA. A peer's role and name are its certificate's
  (subject OU and CN); a process speaks as its own certificate's role (``claim``), and the
  in-band handshake (``dfs/wire/auth.py``) only checks that the peer's claim agrees with
  its certificate. A client holds a client (or an operator's ``admin``) credential and no
  cluster secret; metaservers also hold the secret, which signs the chunk access tokens
  (``token_minter``); a chunkserver's credential carries the key that checks them
  (``token_checker``), and the chunkserver needs no secret.
- **Secret only** (``tls`` None; ``dfs up`` without ``--tls``, clusters made before TLS,
  and the tests that build servers in one process): the HMAC handshake on the shared
  secret, as before. Anyone who holds the secret can claim any role.

A plain ``bytes`` secret wherever a ``Credentials`` is taken means ``Credentials(secret)``
(``of``), so code and tests that only ever had a secret go on working.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import ssl
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dfs.revocations import CRL_FILE, RevocationListError, Revocations
from dfs.secret import load_secret
from dfs.wire.auth import NONCE_BYTES, Handshake, PeerInfo, Side, check_secret
from dfs.wire.errors import AuthError
from dfs.wire.spec import ROLES
from dfs.wire.token import VERIFY_KEY_BYTES, Checker, Minter, signing_key, token_key, verify_key

# subjectAltName URIs restricting a client to a user: dfs:uid=U, dfs:gid=G (dfs/pki.py)
USER_URI = "dfs:"
# A credential file's first line: "# dfs credential: role ROLE, name NAME" (dfs/pki.py).
CREDENTIAL_LINE = "# dfs credential: "
_LINE = re.compile(rb"# dfs credential: role (\w+), name ([^\n]*)\n")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)
# A chunkserver's credential also holds the key that checks chunk tokens (dfs/pki.py).
VERIFY_KEY_PEM = "DFS TOKEN VERIFY KEY"
_PEM_VERIFY_KEY = re.compile(
    rb"-----BEGIN DFS TOKEN VERIFY KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END DFS TOKEN VERIFY KEY-----"
)


class CredentialFileError(Exception):
    """The credential file is missing, unreadable, malformed or too open. A local error."""


@dataclass(frozen=True)
class TlsCredential:
    """One credential file (``dfs/pki.py``): own certificate, key, and the CA's (or the
    CAs': every certificate after the first)."""

    path: Path
    role: str  # the role its certificate gives; what this process claims with it
    ca_pem: str = field(repr=False)
    cert_id: str = ""  # its own certificate's fingerprint (``certified_peer`` gives peers')
    verify_key: bytes | None = None  # a chunkserver's: checks chunk tokens (dfs/wire/token.py)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TlsCredential:
        """Read and check ``path``; ``CredentialFileError`` on any problem."""
        p = Path(path)
        try:
            st = p.stat()
            data = p.read_bytes()
        except OSError as e:
            raise CredentialFileError(f"cannot read credential {os.fspath(p)!r}: {e}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialFileError(
                f"credential {os.fspath(p)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {os.fspath(p)}"
            )
        certs = _PEM_CERT.findall(data)
        line = _LINE.match(data)
        if len(certs) < 2 or b"PRIVATE KEY-----" not in data or line is None:
            raise CredentialFileError(
                f"credential {os.fspath(p)!r} must hold its first line (dfs credential: ...), "
                "a certificate, its key and the CA's"
            )
        role = line.group(1).decode()
        if role not in ROLES:
            raise CredentialFileError(f"credential {os.fspath(p)!r}: unknown role {role!r}")
        # Every certificate after the process's own is a CA it trusts (two while a new CA
        # is rolled out, docs/SECURITY.md).
        own = ssl.PEM_cert_to_DER_cert(certs[0].decode())
        verify_key = None
        block = _PEM_VERIFY_KEY.search(data)
        if block is not None:
            try:
                verify_key = base64.b64decode(b"".join(block.group(1).split()), validate=True)
            except binascii.Error:
                verify_key = b""
            if len(verify_key) != VERIFY_KEY_BYTES:
                raise CredentialFileError(
                    f"credential {os.fspath(p)!r}: the token verification key is malformed"
                )
        credential = cls(p, role, b"".join(certs[1:]).decode(), cert_fingerprint(own), verify_key)
        try:
            credential.client_context  # noqa: B018 - load it now: errors here, not per dial
        except (ssl.SSLError, ValueError) as e:
            raise CredentialFileError(f"credential {os.fspath(p)!r}: {e}") from None
        try:
            credential.revocations.load()
        except (OSError, RevocationListError) as e:
            path = os.fspath(credential.revocations.path)
            raise CredentialFileError(f"revocation list {path!r}: {e}") from None
        return credential

    @cached_property
    def revocations(self) -> Revocations:
        """The certificates the CA revoked: ``crl.pem`` beside this file (``dfs/revocations.py``)."""
        return Revocations(self.path.parent / CRL_FILE, self.ca_pem)

    def _context(self, purpose: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.path)
        ctx.load_verify_locations(cadata=self.ca_pem)
        # Peers are checked against the cluster CA and by the role in their certificate,
        # not by host name: a server is dialled at whatever address the metaservers list.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_CLIENT)

    @cached_property
    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_SERVER)


@dataclass(frozen=True)
class Credentials:
    """``secret``: the cluster secret (servers always; clients only of a secret-only
    cluster). ``tls``: this process's TLS credential, or None for a secret-only cluster."""

    secret: bytes | None = field(default=None, repr=False)
    tls: TlsCredential | None = None
    role: str | None = None  # what a secret-only cluster's process claims (None: as asked)

    @classmethod
    def of(cls, value: Credentials | bytes | None) -> Credentials:
        return value if isinstance(value, Credentials) else cls(secret=value)

    def claim(self, asked: str) -> str:
        """The role to speak as: the certificate's in a TLS cluster; else ``role`` if set
        (the operator's CLI claims ``admin``), else ``asked``."""
        if self.tls is not None:
            return self.tls.role
        return self.role or asked

    def context(self, given: ssl.SSLContext | None, *, server: bool) -> ssl.SSLContext | None:
        """The TLS context a connection runs under: ``given`` (tests), else the
        credential's, else None (plain TCP, whose handshake the secret must key:
        ``AuthError`` now, a configuration error, before any peer is involved)."""
        if given is None and self.tls is not None:
            given = self.tls.server_context if server else self.tls.client_context
        if given is None:
            check_secret(self.secret)
        return given

    def handshake(
        self, *, side: Side, role: str, name: str, peercert: dict[str, Any] | None, der: bytes
    ) -> Handshake:
        """The in-band handshake of one connection (``dfs/wire/auth.py``): on the secret,
        or, in a TLS cluster, checking the claims against the peer's certificate
        (``peercert``, as ``getpeercert()`` gives it, and its DER bytes)."""
        tls = self.tls
        certified = certified_peer(peercert, der) if tls is not None else None
        if tls is not None and certified is not None and tls.revocations.revoked(certified.serial):
            raise AuthError(
                f"the peer's certificate ({certified.role} {certified.name!r}, serial "
                f"{certified.serial:x}) is revoked"
            )
        return Handshake(
            self.secret, os.urandom(NONCE_BYTES), side=side, role=role, name=name,
            certified=certified,
        )  # fmt: skip

    def watch(self, connection: Any, peer: PeerInfo | None) -> PeerInfo:
        """``connection`` just authenticated ``peer``: in a TLS cluster it is closed when
        the peer's certificate is revoked (``Revocations.sweep``). Returns ``peer``."""
        assert peer is not None
        if self.tls is not None:
            self.tls.revocations.watch(connection)
        return peer


Credential = Credentials | bytes | None  # what connect/serve and their callers accept


def load_client_credentials(path: str | os.PathLike[str], role: str = "client") -> Credentials:
    """A client's credentials from the one file it was given: a TLS credential (PEM; the
    role is its certificate's), or the cluster secret of a secret-only cluster (claiming
    ``role``: the operator's CLI claims ``admin``). ``CredentialFileError`` or
    ``dfs.secret.SecretFileError`` on a bad file."""
    try:
        with open(path, "rb") as f:
            pem = f.read(64).startswith((CREDENTIAL_LINE.encode(), b"-----BEGIN"))
    except OSError as e:
        raise CredentialFileError(f"cannot read credential {os.fspath(path)!r}: {e}") from e
    if pem:
        return Credentials(None, TlsCredential.load(path))
    return Credentials(load_secret(path), role=role)


def token_client(credentials: Credentials, peer: PeerInfo | None) -> str:
    """What a token issued to ``peer`` is bound to (``dfs/wire/token.py``): its
    certificate's fingerprint in a TLS cluster; empty in a secret-only one, where a name
    is a claim that proves nothing."""
    if credentials.tls is None or peer is None:
        return ""
    return peer.cert_id


def server_secret(credentials: Credentials) -> bytes:
    """The cluster secret a metaserver cannot run without (it signs the chunk tokens)."""
    if not credentials.secret:
        raise AuthError("a metaserver needs the cluster secret")
    return credentials.secret


def token_minter(credentials: Credentials) -> Minter:
    """What a metaserver signs chunk tokens with (``dfs/wire/token.py``): Ed25519
    (version 3) in a TLS cluster, whose chunkservers hold only the public key; the HMAC
    key (version 2) in a secret-only one."""
    secret = server_secret(credentials)
    if credentials.tls is not None:
        return Minter(signer=signing_key(secret))
    return Minter(key=token_key(secret))


def token_checker(credentials: Credentials) -> Checker:
    """What a chunkserver checks chunk tokens with: the public key its credential carries
    (or, in a TLS cluster whose chunkserver still holds the secret, derives from it), and
    the HMAC key when it holds the secret (secret-only clusters; a TLS cluster's tokens of
    metaservers not upgraded yet: docs/OPERATIONS.md). ``AuthError`` when it has neither."""
    tls, secret = credentials.tls, credentials.secret
    public = tls.verify_key if tls is not None else None
    if public is None and tls is not None and secret:
        public = verify_key(secret)
    if public is None and not secret:
        raise AuthError(
            "a chunkserver needs the cluster secret (secret_file) or a credential that "
            "holds the token verification key"
        )
    return Checker(key=token_key(secret) if secret else None, public=public)


def cert_fingerprint(der: bytes) -> str:
    """What tokens are bound to in a TLS cluster: 32 hex digits of the certificate's
    SHA-256 (``dfs/wire/token.py``)."""
    return hashlib.sha256(der).hexdigest()[:32]


def certified_peer(peercert: dict[str, Any] | None, der: bytes = b"") -> PeerInfo:
    """Who a verified peer certificate (``getpeercert()``, and ``der`` its bytes) says the
    peer is: role, name, the user it is restricted to, and the certificate's fingerprint
    (what tokens are bound to: names are not unique, certificates are). ``AuthError``
    when it states no known role."""
    if not peercert:
        raise AuthError("the peer presented no certificate")
    subject: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            subject.setdefault(key, value)
    role = subject.get("organizationalUnitName")
    if role not in ROLES:
        raise AuthError(f"the peer's certificate names no dfs role (OU {role!r})")
    uid: int | None = None
    gids: list[int] = []
    for kind, value in peercert.get("subjectAltName", ()):
        key, _, number = str(value).removeprefix(USER_URI).partition("=")
        if (
            kind != "URI"
            or not str(value).startswith(USER_URI)
            or not (number.isascii() and number.isdigit())
        ):
            continue
        if key == "uid":
            if uid is not None:
                raise AuthError("the peer's certificate names two uids")
            uid = int(number)
        elif key == "gid":
            gids.append(int(number))
    if uid is None and gids:
        raise AuthError("the peer's certificate names groups without a uid")
    cert_id = cert_fingerprint(der) if der else ""
    try:
        serial: int | None = int(str(peercert.get("serialNumber", "")), 16)
    except ValueError:
        serial = None
    return PeerInfo(role, subject.get("commonName", "?"), uid, tuple(gids), cert_id, serial)
