"""What a process proves itself with, and how it checks its peers.

What it owns: ``Credentials``, the one value every connection is opened or accepted with
(``dfs.rpc`` for servers, ``dfs.client.conn`` for clients), and reading a TLS credential
file (``dfs/pki.py`` writes them) into ``ssl`` contexts.

Two kinds of cluster:

- **TLS** (``tls`` set; what ``dfs up`` and ``dfs init`` make): every connection is TLS 1.3,
  mutual, against the cluster CA. A peer's role and name are its certificate's (subject OU
  and CN); the in-band handshake (``dfs/wire/auth.py``) then only checks that the peer's
  claim agrees with its certificate. A client holds a client credential and no cluster
  secret; servers also hold the secret, which keys the chunk access tokens.
- **Secret only** (``tls`` None; clusters made before TLS, and the tests that build
  servers in one process): the HMAC handshake on the shared secret, as before. Anyone who
  holds the secret can claim any role.

A plain ``bytes`` secret wherever a ``Credentials`` is taken means ``Credentials(secret)``
(``of``), so code and tests that only ever had a secret go on working.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dfs.secret import load_secret
from dfs.wire.auth import PeerInfo
from dfs.wire.errors import AuthError
from dfs.wire.spec import ROLES

# subjectAltName URIs restricting a client to a user: dfs:uid=U, dfs:gid=G (dfs/pki.py)
USER_URI = "dfs:"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


class CredentialFileError(Exception):
    """The credential file is missing, unreadable, malformed or too open. A local error."""


@dataclass(frozen=True)
class TlsCredential:
    """One credential file (``dfs/pki.py``): own certificate, key, and the CA's (or the
    CAs': every certificate after the first)."""

    path: Path
    ca_pem: str = field(repr=False)

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
        if len(certs) < 2 or b"PRIVATE KEY-----" not in data:
            raise CredentialFileError(
                f"credential {os.fspath(p)!r} must hold a certificate, its key and the CA's"
            )
        # Every certificate after the process's own is a CA it trusts (two while a new CA
        # is rolled out, docs/SECURITY.md).
        credential = cls(p, b"".join(certs[1:]).decode())
        try:
            credential.client_context  # noqa: B018 - load it now: errors here, not per dial
        except (ssl.SSLError, ValueError) as e:
            raise CredentialFileError(f"credential {os.fspath(p)!r}: {e}") from None
        return credential

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

    @classmethod
    def of(cls, value: Credentials | bytes | None) -> Credentials:
        return value if isinstance(value, Credentials) else cls(secret=value)

    def client_context(self) -> ssl.SSLContext | None:
        return self.tls.client_context if self.tls is not None else None

    def server_context(self) -> ssl.SSLContext | None:
        return self.tls.server_context if self.tls is not None else None


Credential = Credentials | bytes | None  # what connect/serve and their callers accept


def load_client_credentials(path: str | os.PathLike[str]) -> Credentials:
    """A client's credentials from the one file it was given: a TLS credential (PEM), or
    the cluster secret of a secret-only cluster. ``CredentialFileError`` or
    ``dfs.secret.SecretFileError`` on a bad file."""
    try:
        with open(path, "rb") as f:
            pem = f.read(64).lstrip().startswith(b"-----BEGIN")
    except OSError as e:
        raise CredentialFileError(f"cannot read credential {os.fspath(path)!r}: {e}") from e
    if pem:
        return Credentials(None, TlsCredential.load(path))
    return Credentials(load_secret(path))


def token_client(credentials: Credentials, peer: PeerInfo | None) -> str:
    """The name a token issued to ``peer`` is bound to (``dfs/wire/token.py``): its
    certificate's name in a TLS cluster; empty in a secret-only one, where a name is a
    claim that proves nothing."""
    if credentials.tls is None or peer is None:
        return ""
    return peer.name


def server_secret(credentials: Credentials) -> bytes:
    """The cluster secret a server cannot run without (it keys the chunk tokens)."""
    if not credentials.secret:
        raise AuthError("a server needs the cluster secret")
    return credentials.secret


def certified_peer(peercert: dict[str, Any] | None) -> PeerInfo:
    """The role and name that a verified peer certificate (``getpeercert()``) states;
    ``AuthError`` when it states no known role."""
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
        if kind != "URI" or not str(value).startswith(USER_URI) or not number.isdigit():
            continue
        if key == "uid":
            if uid is not None:
                raise AuthError("the peer's certificate names two uids")
            uid = int(number)
        elif key == "gid":
            gids.append(int(number))
    if uid is None and gids:
        raise AuthError("the peer's certificate names groups without a uid")
    return PeerInfo(role, subject.get("commonName", "?"), uid, tuple(gids))
