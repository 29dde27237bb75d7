"""The mount as programs use it: system calls through a real FUSE mount of a real cluster.

What these tests check (issue 4, "Proof"):
- file operations through the OS: open/write/read, nanosecond times (``os.utime(ns=)``),
  hard links (one inode, nlink seen through every name), symlinks, chmod/chown (setuid
  cleared), rename over a file and ``renameat2`` flags, mkdir/rmdir (ENOTEMPTY), xattrs,
  FIFOs, device nodes and sockets, truncate, O_APPEND, O_EXCL, the errno of each failure;
  new inodes owned by the caller; an open file unlinked or renamed over stays readable,
  writable and fstat-able through its descriptor;
- a directory of more than one readdir page lists every name once; ``rm -rf`` empties it;
- ``statvfs`` shows the cluster's capacity; ``flock`` and ``fcntl`` locks exclude;
- sqlite3: 10,000 rows in 100 transactions, ``PRAGMA integrity_check`` ok;
- editor-style save (temp file, fsync, rename over) keeps the new content;
- ``cp -a`` and ``rsync -a`` of a tree with symlinks, hard links, modes and nanosecond
  mtimes are identical, and a second ``rsync -a --itemize-changes`` transfers nothing;
- ``tar c | tar x`` of the Python standard library, ``diff -r`` clean;
- ``git init/add/commit/log/gc/fsck`` inside the mount;
- a 1 GiB file read back with ``dd bs=1M`` has the same sha256, and ``du`` agrees;
- two mounts of one cluster: a file closed on one is read whole on the other.

One cluster and one mount per module (``conftest.py``); each test works in a directory of
its own. rsync and git come from scripts/bootstrap; their tests fail if they are missing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(120)]

STDLIB = Path(json.__file__).resolve().parents[1]
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def run(*argv: str, cwd: Path | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        return e.errno or 0
    raise AssertionError(f"{fn}{args} did not fail")


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What cp -a and rsync -a preserve, for every path under ``root``: type and mode,
    owner, size, nanosecond mtime (not of directories, whose mtime changes as their
    entries are made), which paths share an inode, symlink targets and bytes."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        link_group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else rel
        if stat.S_ISLNK(st.st_mode):
            content: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = None
        mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, mtime, link_group, content)
        if not stat.S_ISDIR(st.st_mode):
            out[rel] += (st.st_size,)
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local tree with symlinks, hard links, odd modes and nanosecond mtimes."""
    root = tmp_path_factory.mktemp("tree") / "t"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n" * 1000)
    (root / "big.bin").write_bytes(os.urandom(3 * (1 << 20) + 12345))  # crosses chunks
    (root / "empty").write_bytes(b"")
    (root / "sub" / "exec.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.link(root / "a.txt", root / "sub" / "hard-a")
    os.symlink("../a.txt", root / "sub" / "rel-link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.chmod(root / "sub" / "exec.sh", 0o750)
    os.chmod(root / "empty", 0o400)
    os.chmod(root / "sub" / "deeper", 0o700)
    os.chmod(root / "a.txt", 0o4755)
    for i, path in enumerate(sorted(root.rglob("*"))):
        os.utime(
            path,
            ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + i),
            follow_symlinks=False,
        )
    return root


# ---------------------------------------------------------------------- basic operations


def test_write_read_and_nanosecond_times(workdir: Path) -> None:
    path = workdir / "f"
    with open(path, "wb") as f:
        f.write(b"hello world")
    assert path.read_bytes() == b"hello world"
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"WORLD", 6) == 5
        assert os.pread(fd, 100, 0) == b"hello WORLD"
    finally:
        os.close(fd)
    os.utime(path, ns=(1_234_567_890_123_456_789, 1_234_567_890_987_654_321))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (
        1_234_567_890_123_456_789,
        1_234_567_890_987_654_321,
    )
    assert st.st_size == 11 and stat.S_ISREG(st.st_mode)
    before = st.st_ctime_ns
    os.utime(path)  # UTIME_NOW for both
    st = os.stat(path)
    assert abs(st.st_mtime_ns - time.time_ns()) < 5e9 and st.st_ctime_ns >= before
    # UTIME_OMIT for atime: only mtime moves.
    os.utime(path, ns=(st.st_atime_ns, 42))
    assert os.stat(path).st_mtime_ns == 42 and os.stat(path).st_atime_ns == st.st_atime_ns
    assert os.stat(path).st_blocks >= 1 and os.stat(path).st_blksize >= 4096


def test_hard_links_share_one_inode(workdir: Path) -> None:
    a, b = workdir / "a", workdir / "b"
    a.write_bytes(b"x")
    os.link(a, b)
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert os.stat(a).st_nlink == 2 and os.stat(b).st_nlink == 2
    with open(b, "ab") as f:
        f.write(b"y")
    assert a.read_bytes() == b"xy"
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and b.read_bytes() == b"xy"
    assert errno_of(os.link, workdir, workdir / "dirlink") == errno.EPERM


def test_symlink_and_readlink(workdir: Path) -> None:
    (workdir / "target").write_bytes(b"data")
    os.symlink("target", workdir / "link")
    assert os.readlink(workdir / "link") == "target"
    assert (workdir / "link").read_bytes() == b"data"
    assert stat.S_ISLNK(os.lstat(workdir / "link").st_mode)
    long_target = "x/" * 1000
    os.symlink(long_target, workdir / "long")
    assert os.readlink(workdir / "long") == long_target


def test_chmod_chown_and_setuid_cleared(workdir: Path) -> None:
    path = workdir / "f"
    path.write_bytes(b"#!/bin/sh\n")
    os.chmod(path, 0o4755)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o4755
    os.chown(path, 1234, 5678)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o755  # chown clears setuid, as on ext4
    os.chmod(path, 0o2775)
    os.chown(path, 1234, 5679)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o775  # setgid with group exec too


def test_new_inodes_take_the_callers_ids_and_setgid_group(workdir: Path) -> None:
    os.chmod(workdir, 0o777)
    sgid = workdir / "sgid"
    sgid.mkdir()
    os.chown(sgid, 0, 4321)
    os.chmod(sgid, 0o2777)
    # The directories above the mount are root's (mode 0700): enter it, then drop rights.
    script = (
        "import os, sys\n"
        "os.chdir(sys.argv[1]); os.setgid(2000); os.setuid(1000)\n"
        "open('mine', 'w').close(); os.mkdir('mydir')\n"
        "open('sgid/in-sgid', 'w').close(); os.mkdir('sgid/subdir')\n"
    )
    run(sys.executable, "-c", script, str(workdir))
    for name in ("mine", "mydir"):
        st = os.stat(workdir / name)
        assert (st.st_uid, st.st_gid) == (1000, 2000), name
    st = os.stat(sgid / "in-sgid")
    assert (st.st_uid, st.st_gid) == (1000, 4321)
    assert os.stat(sgid / "subdir").st_mode & stat.S_ISGID


def test_write_by_non_root_clears_setuid(workdir: Path) -> None:
    os.chmod(workdir, 0o777)
    path = workdir / "suid"
    path.write_bytes(b"x")
    os.chmod(path, 0o4777)
    run(
        sys.executable,
        "-c",
        "import os, sys; os.chdir(sys.argv[1]); os.setuid(1000); open('suid', 'ab').write(b'y')",
        str(workdir),
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
    assert path.read_bytes() == b"xy"


def test_rename_over_and_renameat2_flags(workdir: Path) -> None:
    a, b, c = workdir / "a", workdir / "b", workdir / "c"
    a.write_bytes(b"new")
    b.write_bytes(b"old")
    os.rename(a, b)
    assert not a.exists() and b.read_bytes() == b"new"
    c.write_bytes(b"other")
    with pytest.raises(FileExistsError):
        renameat2(b, c, RENAME_NOREPLACE)
    renameat2(b, c, RENAME_EXCHANGE)
    assert b.read_bytes() == b"other" and c.read_bytes() == b"new"
    (workdir / "d1").mkdir()
    assert errno_of(os.rename, workdir / "d1", workdir / "d1" / "inside") == errno.EINVAL


def test_mkdir_rmdir_and_errors(workdir: Path) -> None:
    d = workdir / "d"
    d.mkdir(mode=0o750)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750 and os.stat(d).st_nlink == 2
    (d / "f").write_bytes(b"")
    assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert errno_of(os.mkdir, d) == errno.EEXIST
    assert errno_of(os.stat, workdir / "missing") == errno.ENOENT
    assert errno_of(os.listdir, d / "f") == errno.ENOTDIR
    assert errno_of(os.unlink, d) == errno.EISDIR
    assert errno_of(os.open, workdir / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    os.unlink(d / "f")
    os.rmdir(d)
    assert not d.exists()


def test_large_directory_listing_and_rm_rf(workdir: Path) -> None:
    # More entries than one fs.readdir page (1,024): every name listed exactly once,
    # with attributes (READDIRPLUS), then removed by rm -rf.
    d = workdir / "many"
    d.mkdir()
    names = {f"file-{i:05d}" for i in range(1100)}
    for name in names:
        os.close(os.open(d / name, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == len(names) and set(listed) == names
    assert all(e.stat(follow_symlinks=False).st_size == 0 for e in os.scandir(d))
    run("rm", "-rf", str(d))
    assert not d.exists()


def test_xattrs(workdir: Path) -> None:
    path = workdir / "f"
    path.write_bytes(b"")
    os.setxattr(path, "user.color", b"blue")
    os.setxattr(path, "user.empty", b"")
    assert os.getxattr(path, "user.color") == b"blue"
    assert sorted(os.listxattr(path)) == ["user.color", "user.empty"]
    assert errno_of(os.setxattr, path, "user.color", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, path, "user.none", b"x", os.XATTR_REPLACE) == errno.ENODATA
    os.removexattr(path, "user.color")
    assert errno_of(os.getxattr, path, "user.color") == errno.ENODATA
    big = os.urandom(60_000)
    os.setxattr(path, "user.big", big)
    assert os.getxattr(path, "user.big") == big


def test_fifo_socket_and_device_nodes(workdir: Path) -> None:
    os.mkfifo(workdir / "fifo", 0o640)
    st = os.stat(workdir / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    os.mknod(workdir / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(workdir / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    os.mknod(workdir / "blk", 0o600 | stat.S_IFBLK, os.makedev(8, 1))
    assert os.stat(workdir / "blk").st_rdev == os.makedev(8, 1)
    # The mount is nodev: the device is kept as metadata only, never opened.
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(workdir / "sock"))
    assert stat.S_ISSOCK(os.stat(workdir / "sock").st_mode)


def test_truncate_append_and_excl(workdir: Path) -> None:
    path = workdir / "f"
    path.write_bytes(b"0123456789")
    os.truncate(path, 4)
    assert path.read_bytes() == b"0123"
    os.truncate(path, 3 * (1 << 20) + 7)  # up, across chunks: zeros
    data = path.read_bytes()
    assert data[:4] == b"0123" and data[4:] == bytes(3 * (1 << 20) + 3)
    with open(path, "r+b") as f:
        f.truncate(2)  # ftruncate
    assert path.read_bytes() == b"01"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"ab")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"cd")  # O_APPEND: still at the end
    finally:
        os.close(fd)
    assert path.read_bytes() == b"01abcd"
    assert errno_of(os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert path.read_bytes() == b""
    fd = os.open(workdir / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert stat.S_IMODE(os.stat(workdir / "new").st_mode) == 0o600


def test_open_file_outlives_its_name(workdir: Path) -> None:
    d = workdir / "d"
    d.mkdir()
    path = d / "f"
    payload = os.urandom(3 * (1 << 20) + 5)
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert not path.exists() and os.listdir(d) == []
        st = os.fstat(fd)
        assert st.st_size == len(payload) and st.st_nlink == 0
        assert os.pread(fd, len(payload), 0) == payload
        os.pwrite(fd, b"more", len(payload))
        os.fsync(fd)
        assert os.pread(fd, 10, len(payload) - 6) == payload[-6:] + b"more"
        # A directory holding a file still open cannot go yet (as on NFS).
        assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    finally:
        os.close(fd)
    os.rmdir(d)  # the hidden name went with the last close

    # close(2) returns before the kernel's RELEASE reaches the mount: an rmdir at once
    # after it must still succeed (the mount waits for the release in flight).
    for i in range(10):
        d = workdir / f"quick{i}"
        d.mkdir()
        (d / "f").write_bytes(b"x" * 4096)
        fd = os.open(d / "f", os.O_RDONLY)
        os.unlink(d / "f")
        os.close(fd)
        os.rmdir(d)
        assert not d.exists()

    # Renamed over while open: the old file stays readable through its descriptor.
    old, new = workdir / "old", workdir / "new"
    old.write_bytes(b"old contents")
    new.write_bytes(b"new contents")
    fd = os.open(old, os.O_RDONLY)
    try:
        os.rename(new, old)
        assert old.read_bytes() == b"new contents"
        assert os.pread(fd, 100, 0) == b"old contents"
        assert sorted(os.listdir(workdir)) == ["old"]
    finally:
        os.close(fd)
    assert sorted(os.listdir(workdir)) == ["old"] and old.read_bytes() == b"new contents"


def test_statvfs_shows_capacity(mnt: Path) -> None:
    sv = os.statvfs(mnt)
    assert sv.f_frsize > 0 and sv.f_bsize > 0 and sv.f_namemax == 255
    total = sv.f_blocks * sv.f_frsize
    free = sv.f_bavail * sv.f_frsize
    assert total > 1 << 30 and 0 < free <= total
    assert sv.f_files > sv.f_ffree > 0
    out = run("df", "-P", str(mnt))
    assert out.splitlines()[1].split()[0] == "dfs"


# ---------------------------------------------------------------------- locks


def test_flock_and_fcntl_locks(workdir: Path) -> None:
    path = workdir / "lock"
    path.write_bytes(b"")
    fd1 = os.open(path, os.O_RDWR)
    fd2 = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd1, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd1, fcntl.LOCK_UN)
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd2, fcntl.LOCK_UN)
        # POSIX record locks belong to the process: another process must be refused.
        fcntl.lockf(fd1, fcntl.LOCK_EX)
        probe = (
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError:\n    print('refused')\nelse:\n    print('granted')\n"
        )
        assert run(sys.executable, "-c", probe, str(path)).strip() == "refused"
        fcntl.lockf(fd1, fcntl.LOCK_UN)
        assert run(sys.executable, "-c", probe, str(path)).strip() == "granted"
    finally:
        os.close(fd1)
        os.close(fd2)


# ---------------------------------------------------------------------- programs


def test_sqlite_10000_rows_in_100_transactions(workdir: Path) -> None:
    db = sqlite3.connect(workdir / "test.db")
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value BLOB)")
        for tx in range(100):
            with db:
                db.executemany(
                    "INSERT INTO t (name, value) VALUES (?, ?)",
                    [(f"row {tx}-{i}", os.urandom(64)) for i in range(100)],
                )
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (10_000,)
    finally:
        db.close()
    db = sqlite3.connect(workdir / "test.db")  # reopened: everything committed is there
    try:
        assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (10_000,)
    finally:
        db.close()


def test_editor_style_save(workdir: Path) -> None:
    path = workdir / "doc.txt"
    path.write_bytes(b"version 1\n")
    reader = os.open(path, os.O_RDONLY)
    try:
        tmp = workdir / ".doc.txt.swp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, b"version 2\n" * 100)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(workdir, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    finally:
        os.close(reader)
    assert path.read_bytes() == b"version 2\n" * 100
    assert not tmp.exists()


def test_cp_a_tree_is_identical(tree: Path, workdir: Path) -> None:
    run("cp", "-a", str(tree), str(workdir / "copy"))
    assert snapshot(workdir / "copy") == snapshot(tree)


def test_rsync_a_then_nothing_to_transfer(tree: Path, workdir: Path) -> None:
    run("rsync", "-aH", f"{tree}/", f"{workdir / 'copy'}/")
    assert snapshot(workdir / "copy") == snapshot(tree)
    again = run("rsync", "-aH", "--itemize-changes", f"{tree}/", f"{workdir / 'copy'}/")
    assert again.strip() == "", again


@pytest.mark.timeout(600)
def test_tar_roundtrip_of_the_stdlib(workdir: Path) -> None:
    """The whole standard library source tree (2,600-odd entries, ~100 MiB; the installed
    packages and byte-code caches left out), as the issue asks: tar c | tar x, diff -r."""
    excludes = ["--exclude=site-packages", "--exclude=__pycache__"]
    tar_c = subprocess.Popen(
        ["tar", "-C", str(STDLIB), "-c", *excludes, "."], stdout=subprocess.PIPE
    )
    try:
        extract = subprocess.run(
            ["tar", "-C", str(workdir), "-x"], stdin=tar_c.stdout, capture_output=True, timeout=500
        )
    finally:
        assert tar_c.stdout is not None
        tar_c.stdout.close()
        assert tar_c.wait(timeout=60) == 0
    assert extract.returncode == 0, extract.stderr
    run("diff", "-r", *excludes, str(STDLIB), str(workdir), timeout=300)
    src = STDLIB / "json" / "decoder.py"
    assert os.stat(workdir / "json" / "decoder.py").st_mtime_ns // 10**9 == int(
        os.stat(src).st_mtime
    )


def test_git_inside_the_mount(workdir: Path) -> None:
    repo = workdir / "repo"
    repo.mkdir()
    shutil.copytree(STDLIB / "json", repo / "json")
    env_args = ["-c", "user.name=dfs", "-c", "user.email=dfs@example.invalid"]
    run("git", "init", "-q", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", *env_args, "commit", "-q", "-m", "first", cwd=repo)
    (repo / "json" / "__init__.py").write_text("# changed\n")
    run("git", *env_args, "commit", "-q", "-am", "second", cwd=repo)
    log = run("git", "log", "--oneline", cwd=repo)
    assert len(log.splitlines()) == 2
    run("git", "gc", "-q", cwd=repo)
    run("git", "fsck", "--strict", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo) == ""


@pytest.mark.timeout(300)
def test_dd_1gib_sha256_and_du(workdir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for _ in range(64):
            block = os.urandom(16 << 20)
            h.update(block)
            f.write(block)
    digest = h.hexdigest()
    run("dd", f"if={src}", f"of={workdir / 'big'}", "bs=1M", "status=none", timeout=240)
    src.unlink()
    back = run("bash", "-c", f"dd if={workdir / 'big'} bs=1M status=none | sha256sum", timeout=240)
    assert back.split()[0] == digest
    du_kib = int(run("du", "-k", str(workdir / "big")).split()[0])
    assert du_kib == 1 << 20
    apparent = int(run("du", "-sb", str(workdir)).split()[0])
    assert apparent >= 1 << 30


# ---------------------------------------------------------------------- two mounts


def test_two_mounts_close_to_open(mounts: Any, mnt: Path, workdir: Path) -> None:
    other = mounts.mount("second")
    rel = workdir.relative_to(mnt)
    there = other / rel
    assert there.is_dir()
    path = workdir / "shared"
    path.write_bytes(b"first version")
    assert (there / "shared").read_bytes() == b"first version"
    # Written again and closed on one mount: the other's next open reads it whole, even
    # though it read (and cached) the older, shorter version a moment ago.
    payload = os.urandom(5 * (1 << 20) + 99)
    with open(path, "wb") as f:
        f.write(payload)
    assert (there / "shared").read_bytes() == payload
    # And the other way round, to a name the first mount has never seen.
    (there / "back").write_bytes(b"from the second mount")
    assert (workdir / "back").read_bytes() == b"from the second mount"


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the kernel's page cache, as seen right after an open of it (the
    open is where the mount tells the kernel to keep or drop the pages)."""
    return int(run("fincore", "--bytes", "--noheadings", "--output", "RES", str(path)))


def test_two_mounts_pages_kept_only_while_the_file_is_unchanged(
    mounts: Any, mnt: Path, workdir: Path
) -> None:
    """keep_cache, close-to-open: a mount keeps a file's pages across opens while nobody
    changed it, and drops them at the first open after another mount changed it, even in
    place at the same size, or after it changed it itself."""
    other = mounts.mount("keep")
    path = workdir / "kept"
    there = other / workdir.relative_to(mnt) / "kept"
    first = os.urandom(1 << 20)
    path.write_bytes(first)
    assert there.read_bytes() == first
    assert resident_bytes(there) == len(first)  # unchanged: kept, and read from memory
    assert there.read_bytes() == first
    # Rewritten in place on the first mount: same size, new bytes, closed.
    second = os.urandom(1 << 20)
    with open(path, "r+b") as f:
        f.write(second)
    assert resident_bytes(there) == 0  # the open saw another version: pages dropped
    assert there.read_bytes() == second
    assert resident_bytes(there) == len(second)
    # Again, and the old mtime put back (as cp -p and rsync -t do): size and mtime are
    # as before, which is all the kernel compares by itself; the ctime tells.
    before = path.stat()
    third = os.urandom(1 << 20)
    with open(path, "r+b") as f:
        f.write(third)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert resident_bytes(there) == 0
    assert there.read_bytes() == third
    second = third
    # Written through the second mount itself: read back right, and its next open drops
    # the pages once (its commit's attributes are new to it too).
    with open(there, "r+b") as f:
        f.write(b"written here")
    assert resident_bytes(there) == 0
    assert there.read_bytes() == b"written here" + second[12:]
    assert path.read_bytes() == b"written here" + second[12:]


def test_open_file_survives_unlink_and_rename_over_from_another_mount(
    mounts: Any, mnt: Path, workdir: Path
) -> None:
    """POSIX unlink-while-open across clients: the metaserver keeps a file another mount
    holds open as an orphan (PROTOCOL.md, fs.open), readable and fstat-able through the
    open descriptor, and frees it at the last close."""
    from fuse_cluster import leader_view as view_of
    from fuse_cluster import wait_until

    def leader_view() -> dict[str, Any]:
        return view_of(mounts.layout)

    # Past a new leader's grace (when it keeps every unlinked file), so that what keeps
    # the files below is their holds.
    wait_until(lambda: leader_view().get("holds_in_grace") is False, 30, "the grace to end")
    other = mounts.mount("fourth")
    there = other / workdir.relative_to(mnt)
    payload = os.urandom(3 * (1 << 20) + 5)
    (workdir / "held").write_bytes(payload)
    (workdir / "replaced").write_bytes(b"old content")
    with open(workdir / "held", "rb") as held, open(workdir / "replaced", "rb") as old:
        os.unlink(there / "held")
        (there / "new").write_bytes(b"new content")
        os.rename(there / "new", there / "replaced")
        # This mount sees the name go within its entry timeout (the attribute TTL).
        wait_until(lambda: not (workdir / "held").exists(), 10, "the unlink to show")
        assert os.fstat(held.fileno()).st_size == len(payload)
        # Nameless but alive on the metaserver (seen once the attribute TTL runs out).
        wait_until(lambda: os.fstat(held.fileno()).st_nlink == 0, 10, "nlink 0")
        assert held.read() == payload
        assert old.read() == b"old content"
        wait_until(lambda: (workdir / "replaced").read_bytes() == b"new content", 10, "the rename")
        assert leader_view()["orphans"] == 2
    assert sorted(os.listdir(there)) == ["replaced"]
    wait_until(lambda: leader_view()["orphans"] == 0, 30, "the orphans to be freed")


def test_tar_style_attributes_and_absent_names_between_mounts(
    mounts: Any, mnt: Path, workdir: Path
) -> None:
    """What tar does to each file (write, futimens, fchown, fchmod, close) shows on this
    mount at once and on another one at the close, which commits it all in one command;
    a name the other mount looked up before it existed shows up there within the TTL."""
    from fuse_cluster import wait_until

    other = mounts.mount("third")
    there = other / workdir.relative_to(mnt)
    assert not (there / "late").exists()  # the other mount caches the absence
    fd = os.open(workdir / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"x" * 5000)
        os.utime(fd, ns=(1_400_000_000_000_000_001, 1_500_000_000_000_000_002))
        os.fchown(fd, 1234, 5678)
        os.fchmod(fd, 0o754)
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (
            0o754, 1234, 5678, 5000,
        )  # fmt: skip
        assert (st.st_atime_ns, st.st_mtime_ns) == (
            1_400_000_000_000_000_001,
            1_500_000_000_000_000_002,
        )
    finally:
        os.close(fd)
    st = os.stat(there / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns) == (
        0o754, 1234, 5678, 5000, 1_500_000_000_000_000_002,
    )  # fmt: skip
    (workdir / "late").write_bytes(b"now")
    wait_until(lambda: (there / "late").exists(), 10, "the name created on the first mount")
    assert (there / "late").read_bytes() == b"now"
