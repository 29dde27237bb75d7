"""New files written through a write-only descriptor go around the kernel's page cache
(``FOPEN_DIRECT_IO``: dfs/fuse/operations.py, rule 8): the kernel then asks for no
``security.capability`` xattr before each write; a reader opened meanwhile in the same
mount (its pages cached, or mapped) sees every write at once; setuid given while such a file is open is still cleared
by a non-root writer's next write, as the kernel would do for a cached file."""

from __future__ import annotations

import mmap
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fuse_cluster import Mounts

from dfs.cli import cluster as local

pytestmark = [pytest.mark.timeout(300)]

FILES = 20
WRITES = 10  # per file, as tar writes a file in 10 KiB records


def request_count(log_text: str, op: str) -> int:
    """The count of ``op`` in the FUSE request table a mount logs at unmount."""
    found = re.findall(rf"^{re.escape(op)}\s+(\d+)\s", log_text, re.M)
    return int(found[0]) if found else 0


def test_new_files_written_write_only_cost_no_capability_lookups(
    mounts: Mounts, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFS_MOUNT_STATS", "1")
    other = mounts.mount("direct-stats") / workdir.name
    record = os.urandom(10 * 1024)
    for i in range(FILES):
        fd = os.open(other / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for _ in range(WRITES):
                assert os.write(fd, record) == len(record)
        finally:
            os.close(fd)
    pid_file = local.mount_pid_file(mounts.layout.dir / "run", other.parent)
    assert local.stop_mount(pid_file, timeout_s=30) is not None
    text = (mounts.layout.dir / "logs" / f"{pid_file.stem}.log").read_text(errors="replace")
    table = text[text.index("FUSE requests:") :]
    assert request_count(table, "write") >= FILES * WRITES, table[:3000]
    assert request_count(table, "getxattr") == 0, table[:3000]
    for i in range(FILES):  # read back through the module's main mount
        assert (workdir / f"f{i}").read_bytes() == record * WRITES


def test_a_reader_opened_while_a_direct_writer_is_open_sees_each_write(workdir: Path) -> None:
    path = workdir / "shared"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"a" * 8192)
        rfd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(rfd, 8192, 0) == b"a" * 8192
            os.pwrite(fd, b"b" * 4096, 0)  # over what the reader has read
            assert os.pread(rfd, 8192, 0) == b"b" * 4096 + b"a" * 4096
            os.write(fd, b"c" * 100)
            assert os.fstat(rfd).st_size == 8292
            assert os.pread(rfd, 200, 8192) == b"c" * 100
            # A shared mapping of the cached reader follows the direct writes too.
            with mmap.mmap(rfd, 8192, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                assert m[:4096] == b"b" * 4096
                os.pwrite(fd, b"d" * 4096, 4096)
                assert m[4096:8192] == b"d" * 4096
        finally:
            os.close(rfd)
    finally:
        os.close(fd)


def test_setuid_given_while_a_direct_writer_is_open_is_cleared_by_its_next_write(
    workdir: Path,
) -> None:
    os.chmod(workdir, 0o777)
    script = (
        "import os, sys\n"
        "os.chdir(sys.argv[1]); os.setuid(1000)\n"
        "fd = os.open('prog', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)\n"
        "os.write(fd, b'one')\n"
        "os.fchmod(fd, 0o4755)\n"
        "assert os.fstat(fd).st_mode & 0o7777 == 0o4755\n"
        "os.write(fd, b'two')\n"
        "os.close(fd)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(workdir)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    st = os.stat(workdir / "prog")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 1000
    assert (workdir / "prog").read_bytes() == b"onetwo"
