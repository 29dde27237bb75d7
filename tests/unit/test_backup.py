"""The metadata backup file (dfs/wire/backupfile.py), its reader and the restore into a
Raft directory (metaserver/restore.py, metaserver/raft/seed.py), and the restored group's
first command (namespace ``restored``).

Checks: a file written as the CLI writes it reads back to the same header and image; one
flipped byte anywhere (prefix, header, image, checksum), a cut file, another format
version or a huge length field is refused with ``BackupError``, before anything of it is
used; a restore into an empty directory gives a Raft storage whose snapshot is the image
at the backup's index and term with the new membership, followed by the ``restored``
command; that command moves the chunk id counter past the gap and never back; a backup of
another cluster or chunk size, and a directory that holds a log, are refused; a version
bump with ``past`` (a member newer than the restored table) goes past it.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import msgpack
import pytest

from dfs.wire.backupfile import (
    PREFIX_BYTES,
    BackupError,
    BackupHeader,
    cluster_id,
    encode_head,
)
from metaserver.namespace import Namespace, encode_command
from metaserver.namespace.state import Chunk
from metaserver.raft.seed import NotEmptyError
from metaserver.raft.storage import RaftStorage
from metaserver.restore import CHUNK_ID_GAP, read_backup, restore

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CHUNK = 65536
SECRET = b"s" * 32


def image() -> bytes:
    ns = Namespace(chunk_size_bytes=CHUNK)
    ns.apply(encode_command("mkdir", 0, 0, 1, {"parent": 1, "name": b"d", "mode": 0o755,
                                              "uid": 0, "gid": 0}))  # fmt: skip
    return ns.snapshot()


def write(path: Path, img: bytes, *, secret: bytes = SECRET, chunk: int = CHUNK) -> BackupHeader:
    h = BackupHeader(cluster_id(secret), 42, 7, chunk, 123, len(img))
    head = encode_head(h)
    path.write_bytes(head + img + hashlib.sha256(head + img).digest())
    return h


def test_a_backup_reads_back_as_written(tmp_path: Path) -> None:
    img = image()
    h = write(tmp_path / "b", img)
    assert read_backup(tmp_path / "b") == (h, img)
    assert cluster_id(SECRET) != cluster_id(b"t" * 32) and SECRET.hex() not in h.cluster_id


def test_every_flipped_byte_and_a_cut_file_are_refused(tmp_path: Path) -> None:
    img = image()
    write(tmp_path / "b", img)
    raw = (tmp_path / "b").read_bytes()
    for at in range(len(raw)):
        bad = bytearray(raw)
        bad[at] ^= 0x10
        (tmp_path / "x").write_bytes(bytes(bad))
        with pytest.raises(BackupError):
            read_backup(tmp_path / "x")
    for keep in (0, 5, PREFIX_BYTES, len(raw) - 1):
        (tmp_path / "x").write_bytes(raw[:keep])
        with pytest.raises(BackupError):
            read_backup(tmp_path / "x")


def test_lengths_are_bounded_before_use(tmp_path: Path) -> None:
    prefix = struct.pack(">8sHHI", b"DFSBKUP\x00", 1, 0, 1 << 31)
    (tmp_path / "x").write_bytes(prefix + bytes(100))
    with pytest.raises(BackupError, match="header length"):
        read_backup(tmp_path / "x")
    (tmp_path / "x").write_bytes(struct.pack(">8sHHI", b"DFSBKUP\x00", 2, 0, 10) + bytes(100))
    with pytest.raises(BackupError, match="version 2"):
        read_backup(tmp_path / "x")
    header = msgpack.packb({"cluster_id": "c", "index": 1, "term": 1, "chunk_size": CHUNK,
                            "created_ns": 1, "image_bytes": 1 << 50})  # fmt: skip
    raw = struct.pack(">8sHHI", b"DFSBKUP\x00", 1, 0, len(header)) + header
    (tmp_path / "x").write_bytes(raw + struct.pack(">Q", 1 << 50) + bytes(64))
    with pytest.raises(BackupError, match=r"image length|bytes, its header"):
        read_backup(tmp_path / "x")


def test_restore_seeds_a_raft_directory(tmp_path: Path) -> None:
    img = image()
    write(tmp_path / "b", img)
    d = tmp_path / "raft"
    restore(tmp_path / "b", d, node_id=2, voters=[1, 2, 3], chunk_size=CHUNK, secret=SECRET,
            sync=False)  # fmt: skip
    storage = RaftStorage.open(d, sync=False)
    try:
        hs, snap, entries = storage.initial_state()
    finally:
        storage.close()
    assert snap is not None and (snap.meta.index, snap.meta.term) == (42, 7)
    assert snap.meta.conf.voters == (1, 2, 3)
    version, members, app = msgpack.unpackb(snap.data, raw=False)
    assert (version, members, app) == (1, [], img)
    assert (hs.term, hs.commit) == (7, 42)
    [entry] = entries
    assert (entry.index, entry.term) == (43, 7)
    ns = Namespace(chunk_size_bytes=CHUNK)
    ns.restore(app)
    before = ns.next_chunk_id
    assert ns.apply(entry.data)["ok"]
    assert ns.next_chunk_id == before + CHUNK_ID_GAP
    # Never back: a floor below the counter changes nothing.
    assert ns.apply(encode_command("restored", 0, 0, 1, {"chunk_id_floor": 1}))["ok"]
    assert ns.next_chunk_id == before + CHUNK_ID_GAP
    assert ns.lookup(1, b"d")["ino"] > 1

    with pytest.raises(NotEmptyError):
        restore(tmp_path / "b", d, node_id=1, voters=[1], chunk_size=None, secret=None,
                sync=False)  # fmt: skip


def test_another_cluster_chunk_size_or_member_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "b", image())
    d = tmp_path / "raft"
    with pytest.raises(BackupError, match="cluster"):
        restore(tmp_path / "b", d, node_id=1, voters=[1], chunk_size=None, secret=b"t" * 32)
    with pytest.raises(BackupError, match="chunk size"):
        restore(tmp_path / "b", d, node_id=1, voters=[1], chunk_size=2 * CHUNK, secret=None)
    with pytest.raises(BackupError, match="not one of the members"):
        restore(tmp_path / "b", d, node_id=4, voters=[1, 2], chunk_size=None, secret=None)
    assert not d.exists()
    restore(tmp_path / "b", d, node_id=1, voters=[1], chunk_size=None, secret=b"t" * 32,
            any_cluster=True, sync=False)  # fmt: skip


def test_a_version_bump_goes_past_a_members_version() -> None:
    ns = Namespace(chunk_size_bytes=CHUNK)
    ns.restore(image())
    ns.cs_table[1] = ("u", "a:1")
    ns.cs_by_uuid["u"] = 1
    created = ns.apply(encode_command("create", 0, 0, 1, {"parent": 1, "name": b"f",
                                                          "mode": 0o100644, "uid": 0,
                                                          "gid": 0}))  # fmt: skip
    assert created["ok"], created
    ino = created["attr"]["ino"]
    ns.chunk_table[9] = Chunk(9, 3, 10, [1], ino, 0)
    ns.inodes[ino].chunks = {0: 9}
    bump = {"chunk_id": 9, "version": 3, "length": 10}
    assert ns.apply(encode_command("version_bump", 0, 0, 2, {**bump, "past": 7}))["version"] == 8
    bump["version"] = 8
    assert ns.apply(encode_command("version_bump", 0, 0, 3, {**bump, "past": 2}))["version"] == 9
