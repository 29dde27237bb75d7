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
stays in force (a half-copied file must not lift revocations).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from dfs.ratelog import RateLimitedLog

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


class Revocations:
    """The revoked serial numbers for one credential (see the module docstring)."""

    def __init__(self, path: Path, ca_pem: str) -> None:
        self.path = path
        self._ca_pem = ca_pem
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of what was read
        self._due = 0.0

    def load(self) -> None:
        """Read the list now; ``RevocationListError`` if it is bad (at start)."""
        self._due = time.monotonic() + RELOAD_S
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._serials, self._stamp = frozenset(), None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._serials = read_revoked(self.path.read_bytes(), self._ca_pem)
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


__all__ = ["CRL_FILE", "RELOAD_S", "RevocationListError", "Revocations", "read_revoked"]
