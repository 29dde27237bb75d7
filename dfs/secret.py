"""The cluster secret file: generate, write (mode 0600) and load.

The file holds the secret as one line of hex (64 characters for the 32 bytes made by
``generate_secret``), so that an operator can copy it between hosts with any tool.

Decision on permissions: ``load_secret`` *refuses* a file that group or others may read or
write (like ssh with a private key), raising ``SecretFileError`` that says how to fix it.
A warning would be ignored, and whoever can read the secret can join the cluster.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dfs.wire.auth import SECRET_BYTES_MIN

SECRET_BYTES = 32


class SecretFileError(Exception):
    """The secret file is missing, unreadable, malformed or too open. A local error."""


def generate_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def write_secret(path: str | os.PathLike[str], secret: bytes) -> None:
    """Write ``secret`` to ``path`` with mode 0600, atomically (temp file, fsync, rename)."""
    if len(secret) < SECRET_BYTES_MIN:
        raise ValueError(f"secret must be at least {SECRET_BYTES_MIN} bytes")
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask, and tmp may pre-exist
        os.write(fd, secret.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a secret file written by ``write_secret``. ``SecretFileError`` on any problem."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise SecretFileError(f"cannot open cluster secret {os.fspath(path)!r}: {e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretFileError(
                f"cluster secret {os.fspath(path)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {os.fspath(path)}"
            )
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise SecretFileError(f"cluster secret {os.fspath(path)!r} is not hex") from None
    if len(secret) < SECRET_BYTES_MIN:
        raise SecretFileError(
            f"cluster secret {os.fspath(path)!r} is shorter than {SECRET_BYTES_MIN} bytes"
        )
    return secret
