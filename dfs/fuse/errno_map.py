"""The one place where dfs errors become POSIX error numbers.

Rules of this module:
1. ``ERRNO_BY_CODE`` is total over ``ErrorCode``: every code, present and future, has an
   errno chosen here with its reason (``tests/unit/test_fuse_errno_map.py`` checks that no
   member is missing). Nothing else in dfs names an errno.
2. A few operations give a code a more precise meaning than the default, as Linux does:
   ``OP_OVERRIDES`` lists them (the xattr calls: a value too big is E2BIG, not EFBIG).
3. Anything that is not a ``DfsError`` reaching the FUSE edge is a bug: ``errno_for``
   logs it (once per exception type and operation, with its traceback, so that a storm of
   failing requests does not flood the log) and answers EIO, the errno every I/O system
   call documents.

Pure but for the logging: no FUSE binding is imported, so the map is testable anywhere.
"""

from __future__ import annotations

import errno
import logging

from dfs.wire.errors import DfsError, ErrorCode

log = logging.getLogger(__name__)

ERRNO_BY_CODE: dict[ErrorCode, int] = {
    # Not an error: a peer that answers "failed" with OK is confused. Should never reach
    # here; if it does, the operation did not do what was asked.
    ErrorCode.OK: errno.EIO,
    # No such inode, name, chunk: what a local file system says for a missing name.
    ErrorCode.NOT_FOUND: errno.ENOENT,
    # The name (or, with XATTR_CREATE, the xattr) already exists: open(O_EXCL), mkdir,
    # link, rename(NOREPLACE) and setxattr(XATTR_CREATE) all give EEXIST.
    ErrorCode.EXISTS: errno.EEXIST,
    # rmdir of a non-empty directory, rename over one.
    ErrorCode.NOT_EMPTY: errno.ENOTEMPTY,
    # A path component or rename target that is not a directory.
    ErrorCode.NOT_DIR: errno.ENOTDIR,
    # unlink of a directory (Linux gives EISDIR), a file operation on a directory.
    ErrorCode.IS_DIR: errno.EISDIR,
    # A well-formed request that makes no sense: a bad name, moving a directory into its
    # own subtree, unknown flags: EINVAL as rename(2), mknod(2) and setxattr(2) give it.
    ErrorCode.INVALID: errno.EINVAL,
    # A name over 255 bytes, a symlink target over its limit.
    ErrorCode.NAME_TOO_LONG: errno.ENAMETOOLONG,
    # No chunkserver can take the data, a full directory: the disk-full errno.
    ErrorCode.NO_SPACE: errno.ENOSPC,
    # A handle or version that is no longer current and that the client's own retries
    # could not renew: NFS's "stale file handle", which tells the caller to look up again.
    ErrorCode.STALE: errno.ESTALE,
    # Peers gone or not enough replicas until the deadline: an I/O error, as a soft NFS
    # mount gives when its server does not come back.
    ErrorCode.UNAVAILABLE: errno.EIO,
    # A checksum mismatch on every replica: the data cannot be read, as a bad sector.
    ErrorCode.CORRUPT: errno.EIO,
    # The client follows leader hints until its deadline; one still surfacing means no
    # leader could be found in time: the cluster is unavailable.
    ErrorCode.NOT_LEADER: errno.EIO,
    # The only permission the cluster itself refuses is structural: a hard link to a
    # directory, for which link(2) gives EPERM. Access by mode bits (EACCES) is checked by
    # the kernel (the mount uses default_permissions) before a request reaches us, and an
    # expired chunk token is renewed by the client, so EPERM is the honest answer.
    ErrorCode.PERMISSION: errno.EPERM,
    # The operation did not finish within the client's timeout (dfs mount --timeout).
    # ETIMEDOUT rather than EIO: it tells the user what happened ("Connection timed
    # out"), as NFS's softerr mounts do; programs treat it as any other I/O failure.
    ErrorCode.TIMEOUT: errno.ETIMEDOUT,
    # A peer broke the wire rules (a bug, or mismatched versions): an I/O error.
    ErrorCode.PROTOCOL: errno.EIO,
    # The cluster secret was refused. Not EACCES: the user's permissions are not the
    # problem, and chmod would not fix it; the mount's log says what happened.
    ErrorCode.AUTH: errno.EIO,
    # A bug or unknown error on the remote side.
    ErrorCode.INTERNAL: errno.EIO,
    # A file past the largest size (truncate, write at a huge offset): EFBIG as write(2)
    # and truncate(2) give it. The xattr calls map it to E2BIG (OP_OVERRIDES).
    ErrorCode.TOO_BIG: errno.EFBIG,
    # Overloaded past the client's retries. Not EAGAIN: a blocking read or write must not
    # return "try again", which programs only expect with O_NONBLOCK.
    ErrorCode.BUSY: errno.EIO,
    # An operation or feature the cluster does not have.
    ErrorCode.UNSUPPORTED: errno.EOPNOTSUPP,
    # getxattr/removexattr of an absent attribute: ENODATA (Linux's ENOATTR).
    ErrorCode.NO_ATTR: errno.ENODATA,
    # link(2) past the most links an inode may have.
    ErrorCode.TOO_MANY_LINKS: errno.EMLINK,
    # A credential restricted to a uid (docs/SECURITY.md) asked beyond that uid's rights;
    # the kernel's own check (default_permissions) normally answers first.
    ErrorCode.ACCESS: errno.EACCES,
}

# (operation, code) -> errno, where an operation gives a code a sharper meaning.
OP_OVERRIDES: dict[tuple[str, ErrorCode], int] = {
    # setxattr(2): "E2BIG: the size of name or value exceeds a file-system-specific limit".
    ("setxattr", ErrorCode.TOO_BIG): errno.E2BIG,
    # setxattr/getxattr/removexattr(2): a name over 255 bytes is ERANGE, not ENAMETOOLONG.
    ("setxattr", ErrorCode.NAME_TOO_LONG): errno.ERANGE,
    ("getxattr", ErrorCode.NAME_TOO_LONG): errno.ERANGE,
    ("removexattr", ErrorCode.NAME_TOO_LONG): errno.ERANGE,
    # close(2)/fsync(2) whose commit was refused because the written chunk changed under
    # it (another writer or a truncate): data may be lost, which these calls report as EIO.
    # ESTALE would tell the program its file handle is gone, which it is not.
    ("flush", ErrorCode.STALE): errno.EIO,
    ("fsync", ErrorCode.STALE): errno.EIO,
    ("release", ErrorCode.STALE): errno.EIO,
    ("write", ErrorCode.STALE): errno.EIO,
}

# Errnos that are ordinary answers (a missing name, a full directory...), not worth a line
# in the mount's log; the others (EIO, ETIMEDOUT, ESTALE...) are logged with their cause.
QUIET_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EINVAL,
        errno.ENAMETOOLONG,
        errno.ENODATA,
        errno.EPERM,
        errno.EMLINK,
        errno.EOPNOTSUPP,
        errno.ERANGE,
        errno.E2BIG,
    }
)

# The adapter's own refusal, not a cluster error: a request for a file or directory handle
# this mount never gave out (or already released), as close(2) of a bad descriptor.
BAD_HANDLE = errno.EBADF

_logged: set[tuple[str, str]] = set()


def errno_for_code(code: ErrorCode, op: str = "") -> int:
    """The errno for ``code`` in operation ``op`` (a FUSE operation name, or "")."""
    return OP_OVERRIDES.get((op, code)) or ERRNO_BY_CODE.get(code, errno.EIO)


def errno_for(exc: BaseException, op: str = "") -> int:
    """The errno for an exception raised while serving ``op``: the map for a
    ``DfsError``, EIO (logged once per type and operation) for anything else."""
    if isinstance(exc, DfsError):
        return errno_for_code(exc.code, op)
    key = (op, type(exc).__qualname__)
    if key not in _logged:
        _logged.add(key)
        log.error("%s: unexpected %s (%s); answering EIO", op or "fuse", key[1], exc, exc_info=exc)
    else:
        log.debug("%s: unexpected %r; answering EIO", op or "fuse", exc)
    return errno.EIO


__all__ = [
    "BAD_HANDLE",
    "ERRNO_BY_CODE",
    "OP_OVERRIDES",
    "QUIET_ERRNOS",
    "errno_for",
    "errno_for_code",
]
