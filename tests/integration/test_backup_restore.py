"""``dfs admin backup`` and ``dfs admin restore`` against a real local cluster (three
chunkservers, small chunks), as an operator runs them.

Checks: a backup taken while a client writes files in a loop, restored into a new group
of three metaservers (the old one stopped, its Raft directories moved aside, each member
seeded from its config, all started on the same chunkservers), holds every file closed before the backup began, byte for byte, not the
files written after it, and no file with other bytes than were written (a file of the backup
written again after it reads as it was in the backup, after its chunk's version went past
the chunkservers' newer one), and the chunks of files written after it wait the garbage's
grace before they are deleted; the restored group takes new files (its chunk ids go on past every id the old group may have
given); a backup file with one byte flipped is refused with a clear error, and so is a
directory that holds a log already.

Every daemon started here is stopped by PID in a finalizer, even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from admin_cluster import CHUNK, REPORT_OPTIONS, running

from dfs.cli import cluster as local
from dfs.client import FsClient
from dfs.secret import load_secret
from tools.testing.localcluster import client, dfs_cli
from tools.testing.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEADLINE_S = 60.0
MODE = 0o100644


@pytest.fixture(params=[1])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A running cluster of ``request.param`` metaservers and three chunkservers."""
    d = tmp_path / "cluster"
    with running(d, metaservers=request.param, cs_options=REPORT_OPTIONS):
        yield d


class Writer:
    """A client writing files in a loop in a thread of its own: /load/f<n>, sizes from a
    few bytes to two chunks and a bit; ``closed`` lists (name, bytes) in close order."""

    def __init__(self, d: Path) -> None:
        layout = local.load_layout(d)
        self.addresses, self.secret = layout.meta_addresses, load_secret(layout.secret_file)
        self.closed: list[tuple[bytes, bytes]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            anyio.run(self._write)
        except BaseException as e:
            self.error = e

    async def _write(self) -> None:
        async with FsClient.open_cluster(self.addresses, self.secret) as fs:
            top = await fs.mkdir(1, b"load", 0o755)
            n = 0
            while not self.stop.is_set():
                n += 1
                name = b"f%d" % n
                data = os.urandom((n * 37_003) % (2 * CHUNK + 5_000) + 1)
                _, f = await fs.create_and_open(top.ino, name, MODE, os.O_WRONLY | os.O_CREAT)
                try:
                    await f.write(0, data)
                finally:
                    await f.close()
                self.closed.append((name, data))

    def count(self) -> int:
        if self.error is not None:
            raise self.error
        return len(self.closed)


def read_tree(d: Path) -> dict[bytes, bytes]:
    async def go() -> dict[bytes, bytes]:
        async with client(d) as fs:
            top = await fs.lookup(1, b"load")
            out = {}
            async for entry in fs.readdir(top.ino):
                if entry.name in (b".", b".."):
                    continue
                attr = await fs.lookup(top.ino, entry.name)
                f = await fs.open(attr.ino, os.O_RDONLY)
                try:
                    out[entry.name] = await f.read(0, attr.size) if attr.size else b""
                finally:
                    await f.close()
            return out

    result: dict[bytes, bytes] = anyio.run(go)
    return result


def write_at(d: Path, name: bytes, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of /name (made if missing), then close."""

    async def go() -> None:
        async with client(d) as fs:
            _, f = await fs.create_and_open(1, name, MODE, os.O_WRONLY | os.O_CREAT)
            try:
                await f.write(offset, data)
            finally:
                await f.close()

    anyio.run(go)


def read_file(d: Path, name: bytes) -> bytes:
    async def go() -> bytes:
        async with client(d) as fs:
            attr = await fs.lookup(1, name)
            f = await fs.open(attr.ino, os.O_RDONLY)
            try:
                return await f.read(0, attr.size)
            finally:
                await f.close()

    result: bytes = anyio.run(go)
    return result


@pytest.mark.parametrize("cluster", [3], indirect=True)
def test_backup_under_load_restored_into_a_new_group(cluster: Path, tmp_path: Path) -> None:
    d = str(cluster)
    backup = tmp_path / "meta.backup"
    grown = os.urandom(100_000)
    write_at(cluster, b"grown", 0, grown)
    writer = Writer(cluster)
    writer.thread.start()
    try:
        wait_for(lambda: writer.count() >= 8, DEADLINE_S, "files written before the backup")
        before = len(writer.closed)  # closed before the backup began
        out = dfs_cli("admin", "backup", "--dir", d, str(backup)).stdout
        assert "as of index" in out, out
        # The load goes on after the backup: these files must not come back. A file of
        # the backup written again after it (a newer version of its chunk on the
        # chunkservers) reads as it was in the backup.
        write_at(cluster, b"grown", len(grown), os.urandom(100_000))  # appended
        wait_for(lambda: writer.count() >= before + 4, DEADLINE_S, "files after the backup")
    finally:
        writer.stop.set()
        writer.thread.join(timeout=DEADLINE_S)
    assert not writer.thread.is_alive() and writer.error is None, writer.error
    written = dict(writer.closed)
    assert len(read_tree(cluster)) == len(written)

    # The old group stopped, its directories moved aside, a new one seeded from the
    # backup with each member's config (as on each host), and started.
    layout = local.load_layout(cluster)
    for node_id in layout.metaservers:
        assert local.stop_metaserver(layout, node_id) == "stopped"
    chunk_files = {p.relative_to(cluster) for p in cluster.glob("cs*/data/chunks/*/*.chunk")}
    for node_id in layout.metaservers:
        raft = cluster / f"meta{node_id}" / "raft"
        raft.rename(raft.with_name("raft.old"))
        config = str(cluster / f"meta{node_id}" / "meta.toml")
        out = dfs_cli("admin", "restore", str(backup), "--config", config).stdout
        assert f"as node {node_id} of 1,2,3" in out, out
    # Restoring again into what is now a log is refused.
    again = dfs_cli("admin", "restore", str(backup), "--config", config, code=1)
    assert "already holds a Raft log" in again.stderr, again.stderr
    local.start_daemons(layout, only={f"meta{i}" for i in layout.metaservers})

    restored = wait_for(lambda: _try(read_tree, cluster), DEADLINE_S, "the restored namespace")
    for name, data in writer.closed[:before]:
        assert restored.get(name) == data, f"{name!r} differs after the restore"
    assert wait_for(lambda: _try(read_file, cluster, b"grown"), DEADLINE_S,
                    "the grown file readable") == grown  # fmt: skip
    for name, data in restored.items():  # closed in the backup's index, or caught mid-write
        assert data == written[name][: len(data)], f"{name!r} holds other bytes"
    assert len(restored) < len(written)  # the files written after the backup are not there
    # Their chunks are unknown to the restored group, and wait the garbage's grace (30 s)
    # before the block reports delete them: none is gone yet.
    now = {p.relative_to(cluster) for p in cluster.glob("cs*/data/chunks/*/*.chunk")}
    assert chunk_files <= now, sorted(chunk_files - now)

    # The restored group writes new files (fresh chunk ids), and reads them back.
    async def write_new() -> bytes:
        async with client(layout) as fs:
            data = os.urandom(CHUNK + 10)
            _, f = await fs.create_and_open(1, b"after", MODE, os.O_RDWR | os.O_CREAT)
            try:
                await f.write(0, data)
                back = await f.read(0, len(data))
            finally:
                await f.close()
            assert back == data
            return data

    anyio.run(write_new)


def _try(fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)``, or None while the new group elects itself and finds its servers."""
    try:
        return fn(*args)
    except Exception:
        return None


def test_a_damaged_backup_is_refused(cluster: Path, tmp_path: Path) -> None:
    backup = tmp_path / "meta.backup"
    dfs_cli("admin", "backup", "--dir", str(cluster), str(backup))
    raw = bytearray(backup.read_bytes())
    for at in (len(raw) // 2, 20, len(raw) - 1):  # the image, the header, the checksum
        bad = tmp_path / f"bad{at}.backup"
        flipped = bytearray(raw)
        flipped[at] ^= 0x01
        bad.write_bytes(bytes(flipped))
        proc = dfs_cli("admin", "restore", str(bad), "--dir", str(tmp_path / f"r{at}"), code=1)
        assert "damaged backup" in proc.stderr, proc.stderr
        assert not (tmp_path / f"r{at}").exists() or not any((tmp_path / f"r{at}").iterdir())
    cut = tmp_path / "cut.backup"
    cut.write_bytes(bytes(raw[:-100]))
    proc = dfs_cli("admin", "restore", str(cut), "--dir", str(tmp_path / "rcut"), code=1)
    assert "damaged backup" in proc.stderr, proc.stderr
    # The good file restores (a single-node group in a directory of its own).
    ok = tmp_path / "rok"
    dfs_cli("admin", "restore", str(backup), "--dir", str(ok), "--chunk-size", str(CHUNK))
    assert any(p.name.startswith("snap-") for p in ok.iterdir())
    shutil.rmtree(ok)
