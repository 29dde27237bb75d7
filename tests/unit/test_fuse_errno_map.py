"""The errno map of the FUSE adapter (``dfs/fuse/errno_map.py``): total over every
``ErrorCode``, the choices the issue fixes, the per-operation overrides, and EIO (logged
once) for anything that is not a ``DfsError``."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import pytest

from dfs.fuse.errno_map import BAD_HANDLE, ERRNO_BY_CODE, OP_OVERRIDES, errno_for, errno_for_code
from dfs.wire.errors import DfsError, ErrorCode, NoAttr, NotFound, TooBig, error_class

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_code_has_a_real_errno(code: ErrorCode) -> None:
    assert code in ERRNO_BY_CODE, f"ErrorCode.{code.name} has no errno"
    value = ERRNO_BY_CODE[code]
    assert value in errno.errorcode, f"{value} is not an errno"
    assert errno_for_code(code) == value
    # Every error the client can raise (each code's class) maps through errno_for.
    err = DfsError(code, "x")
    assert errno_for(err) == value
    cls = error_class(code)
    if cls is not DfsError:
        assert errno_for(DfsError(code)) == value


def test_no_stray_keys() -> None:
    assert set(ERRNO_BY_CODE) == set(ErrorCode)
    for (op, code), value in OP_OVERRIDES.items():
        assert isinstance(op, str) and op and code in ErrorCode and value in errno.errorcode


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (ErrorCode.NOT_FOUND, errno.ENOENT),
        (ErrorCode.EXISTS, errno.EEXIST),
        (ErrorCode.NOT_EMPTY, errno.ENOTEMPTY),
        (ErrorCode.NOT_DIR, errno.ENOTDIR),
        (ErrorCode.IS_DIR, errno.EISDIR),
        (ErrorCode.INVALID, errno.EINVAL),
        (ErrorCode.NAME_TOO_LONG, errno.ENAMETOOLONG),
        (ErrorCode.NO_SPACE, errno.ENOSPC),
        (ErrorCode.PERMISSION, errno.EPERM),
        (ErrorCode.TOO_MANY_LINKS, errno.EMLINK),
        (ErrorCode.NO_ATTR, errno.ENODATA),
        (ErrorCode.TIMEOUT, errno.ETIMEDOUT),
        (ErrorCode.UNAVAILABLE, errno.EIO),
        (ErrorCode.TOO_BIG, errno.EFBIG),
        (ErrorCode.UNSUPPORTED, errno.EOPNOTSUPP),
        (ErrorCode.CORRUPT, errno.EIO),
    ],
    ids=lambda v: v.name if isinstance(v, ErrorCode) else errno.errorcode[v],
)
def test_fixed_choices(code: ErrorCode, expected: int) -> None:
    assert errno_for_code(code) == expected


def test_operation_overrides() -> None:
    # A value too big for an xattr is E2BIG (setxattr(2)); a file too big stays EFBIG.
    assert errno_for(TooBig("value"), "setxattr") == errno.E2BIG
    assert errno_for(TooBig("file"), "write") == errno.EFBIG
    assert errno_for(DfsError(ErrorCode.NAME_TOO_LONG), "getxattr") == errno.ERANGE
    assert errno_for(DfsError(ErrorCode.NAME_TOO_LONG), "lookup") == errno.ENAMETOOLONG
    assert errno_for(NoAttr("x"), "removexattr") == errno.ENODATA
    assert BAD_HANDLE == errno.EBADF


def test_unexpected_errors_are_eio_and_logged_once(expect_log: Callable[..., None]) -> None:
    expect_log(r"readdir: unexpected KeyError", logging.ERROR)
    assert errno_for(KeyError("boom"), "readdir") == errno.EIO
    assert errno_for(KeyError("again"), "readdir") == errno.EIO  # not logged a second time
    assert errno_for(NotFound("fine"), "readdir") == errno.ENOENT


def test_logged_once_per_type(
    caplog: pytest.LogCaptureFixture, expect_log: Callable[..., None]
) -> None:
    expect_log(r"some-op-only-here: unexpected ZeroDivisionError", logging.ERROR)
    with caplog.at_level(logging.ERROR, logger="dfs.fuse.errno_map"):
        for _ in range(3):
            assert errno_for(ZeroDivisionError(), "some-op-only-here") == errno.EIO
    records = [r for r in caplog.records if "some-op-only-here" in r.getMessage()]
    assert len(records) == 1
