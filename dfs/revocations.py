"""Certificates the cluster CA revoked: the ``crl.pem`` beside a process's credential.

What it owns: reading a certificate revocation list (``dfs/pki.py``'s ``revoke`` writes
it, ``dfs revoke`` runs that), checking it is the cluster CA's, and reading it again when
the file changes. What it must not do: decide what a revoked peer gets (``Credentials``
refuses its handshake; ``RpcServer`` closes its connections).

WHERE. The list is ``crl.pem`` in the directory of the credential file: an operator who
revokes a credential copies the one file next to every server's credential (``dfs up``'s
servers share the cluster's ``tls/`` directory, so there is nothing to copy). No file:
nothing is revoked.

WHEN. A server looks at the file's modification time and size at most once every
``RELOAD_S`` (on a handshake, and on its sweep of open connections) and reads it again
when they changed, so a revocation takes effect within about a second, without a restart.
A list that is malformed or not signed by a CA the credential trusts is refused at start
(``CredentialFileError``); one that turns bad later is logged and the last good list
stays in force (a half-copied file must not lift revocations). What a list names is added
to what earlier ones named: an older copy, or the file's removal, lifts nothing (a
process forgets only when it restarts).

OPEN CONNECTIONS. A revoked peer's handshake is refused (``Credentials.handshake``); the
connections already open are closed by ``sweep``, which a server runs every ``RELOAD_S``
over every authenticated connection of the process, accepted or dialled (``dfs.rpc``
registers them with ``watch``). A client process (the mount, the CLI: the anyio driver)
checks only at its handshakes: a revoked server keeps the connections a mount already
has until they break.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from pathlib import Path
from typing import Protocol

from dfs.ratelog import RateLimitedLog
from dfs.wire.auth import PeerInfo

CRL_FILE = "crl.pem"
RELOAD_S = 1.0

log = logging.getLogger(__name__)
_bad_log = RateLimitedLog(log)


class RevocationListError(Exception):
    """The list is malformed or not the cluster CA's."""


def read_revoked(data: bytes, ca_pem: str) -> frozenset[int]:
    """The serial numbers in the PEM revocation list ``data``, which must be signed by one
    of the CA certificates in ``ca_pem``. ``RevocationListError`` otherwise."""
    from cryptography import x509  # only where a list exists

    try:
        crl = x509.load_pem_x509_crl(data)
        cas = x509.load_pem_x509_certificates(ca_pem.encode())
    except ValueError as e:
        raise RevocationListError(f"not a PEM certificate revocation list: {e}") from None
    for ca in cas:
        try:
            if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return frozenset(r.serial_number for r in crl)
        except TypeError:  # a key type a CRL cannot be signed with
            continue
    raise RevocationListError("not signed by the cluster CA")


class _Open(Protocol):
    """An authenticated connection, as the sweep sees it (``dfs.rpc.Connection``)."""

    @property
    def peer(self) -> PeerInfo | None: ...
    @property
    def peername(self) -> str: ...
    def close(self) -> None: ...


class Revocations:
    """The revoked serial numbers for one credential (see the module docstring), and the
    open connections of this process made with it (``watch``), which ``sweep`` closes
    when their peer's certificate is revoked."""

    def __init__(self, path: Path, ca_pem: str) -> None:
        self.path = path
        self._ca_pem = ca_pem
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of what was read
        self._due = 0.0
        self._open: weakref.WeakSet[_Open] = weakref.WeakSet()

    def load(self) -> None:
        """Read the list now; ``RevocationListError`` if it is bad (at start). What it
        names is added to what was read before: entries are never dropped (``pki.revoke``
        keeps them), so an older copy of the list or its removal lifts nothing."""
        self._due = time.monotonic() + RELOAD_S
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                log.warning(
                    "tls: the revocation list is gone; what it named stays revoked "
                    "event=crl_removed path=%s", self.path,
                )  # fmt: skip
            self._stamp = None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._serials = self._serials | read_revoked(self.path.read_bytes(), self._ca_pem)
        self._stamp = stamp

    def serials(self, now: float | None = None) -> frozenset[int]:
        """The revoked serials, read again when due (``now``: ``time.monotonic()``) and
        the file changed."""
        if (time.monotonic() if now is None else now) >= self._due:
            try:
                self.load()
            except (OSError, RevocationListError) as e:
                _bad_log.log(
                    logging.WARNING, ("crl", str(self.path)),
                    "tls: keeping the last revocation list event=crl_unreadable path=%s "
                    "error=%s", self.path, e,
                )  # fmt: skip
        return self._serials

    def revoked(self, serial: int | None) -> bool:
        return serial is not None and serial in self.serials()

    def watch(self, connection: _Open) -> None:
        """Remember an authenticated connection (accepted or dialled; held weakly)."""
        self._open.add(connection)

    def sweep(self) -> None:
        """Close every watched connection whose peer's certificate is revoked (a server
        runs this every ``RELOAD_S``: ``dfs.rpcserver.RpcServer``)."""
        revoked = self.serials()
        for connection in list(self._open) if revoked else ():
            peer = connection.peer
            if peer is not None and peer.serial in revoked:
                self._open.discard(connection)
                log.warning(
                    "tls: closing connection event=cert_revoked peer=%s name=%s serial=%x",
                    connection.peername, peer.name, peer.serial,
                )  # fmt: skip
                connection.close()


__all__ = ["CRL_FILE", "RELOAD_S", "RevocationListError", "Revocations", "read_revoked"]
