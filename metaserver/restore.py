"""A metaserver group started from a metadata backup (``dfs admin restore``, which runs
``python -m metaserver.restore``).

    python -m metaserver.restore FILE --dir D [--id N] [--voters 1,2,3] [--chunk-size B]
    python -m metaserver.restore FILE --config metaserver.toml

What it owns: reading a backup file (``dfs/wire/backupfile.py``) with every length bounded
and its sha256 checked before anything in it is used, checking that the image loads
(``Namespace.restore``), and seeding the Raft directory (``metaserver/raft/seed.py``): the
image as a snapshot at the backup's index and term, with the new group's members as its
membership, then one ``restored`` command (``namespace/cluster.py``) that moves the chunk
id counter ``CHUNK_ID_GAP`` past the backup's, so that no new chunk takes the id of one
written after the backup. A metaserver started on the directory (alone, or with the
other members seeded alike from the same file) begins from that state; the
chunkservers' registrations and block reports are judged against the backup's chunk
table (docs/OPERATIONS.md, "Backup and restore").

The config form takes the node id, the data directory, the members (``[peers]``), the
chunk size and the cluster secret from the metaserver's config file: run it on every
member's host with that host's file. A backup of another cluster (its cluster id is not
this secret's) is refused unless ``--any-cluster``.

Exit codes: 0 done; 1 the file is damaged, of another cluster or chunk size, or the
directory holds a log already; 2 a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from dfs.secret import load_secret
from dfs.wire.backupfile import (
    DIGEST_BYTES,
    IMAGE_LEN_BYTES,
    PREFIX_BYTES,
    BackupError,
    BackupHeader,
    cluster_id,
    decode_header,
    header_len,
)
from metaserver.config import load_config
from metaserver.namespace import Namespace, encode_command
from metaserver.raft.seed import NotEmptyError, seed

# How far past the backup's chunk id counter the restored group starts giving ids: more
# chunks than any cluster writes between a backup and its restore.
CHUNK_ID_GAP = 1 << 32
_READ_BYTES = 1 << 20


def read_backup(path: Path) -> tuple[BackupHeader, bytes]:
    """The header and image of a backup file, after its checksum matched."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        prefix = f.read(PREFIX_BYTES)
        hl = header_len(prefix)
        if size < PREFIX_BYTES + hl + IMAGE_LEN_BYTES + DIGEST_BYTES:
            raise BackupError("damaged backup: the file is cut short")
        raw = f.read(hl)
        image_len_raw = f.read(IMAGE_LEN_BYTES)
        header = decode_header(raw, image_len_raw)
        head_len = PREFIX_BYTES + hl + IMAGE_LEN_BYTES
        if size != head_len + header.image_bytes + DIGEST_BYTES:
            raise BackupError(
                f"damaged backup: {size} bytes, its header says "
                f"{head_len + header.image_bytes + DIGEST_BYTES}"
            )
        hasher = hashlib.sha256(prefix + raw + image_len_raw)
        image = bytearray()
        while len(image) < header.image_bytes:
            piece = f.read(min(_READ_BYTES, header.image_bytes - len(image)))
            if not piece:
                raise BackupError("damaged backup: the file is cut short")
            image += piece
        hasher.update(image)
        if f.read(DIGEST_BYTES) != hasher.digest():
            raise BackupError("damaged backup: checksum mismatch (the file was changed or "
                              "damaged after it was written)")  # fmt: skip
    return header, bytes(image)


def restore(
    path: Path,
    directory: Path,
    *,
    node_id: int,
    voters: list[int],
    chunk_size: int | None,
    secret: bytes | None,
    any_cluster: bool = False,
    sync: bool = True,
) -> BackupHeader:
    """Seed ``directory`` from the backup at ``path`` (see the module docstring)."""
    header, image = read_backup(path)
    if secret is not None and not any_cluster and cluster_id(secret) != header.cluster_id:
        raise BackupError(
            f"the backup is of cluster {header.cluster_id}, not of this secret's "
            f"({cluster_id(secret)}); --any-cluster restores it anyway"
        )
    if chunk_size is not None and chunk_size != header.chunk_size:
        raise BackupError(
            f"the backup's chunk size is {header.chunk_size}, the config's {chunk_size}"
        )
    if node_id not in voters:
        raise BackupError(f"node {node_id} is not one of the members {voters}")
    ns = Namespace(chunk_size_bytes=header.chunk_size)
    try:
        ns.restore(image)
    except ValueError as e:
        raise BackupError(f"the backup's namespace does not load: {e}") from e
    floor = ns.next_chunk_id + CHUNK_ID_GAP
    command = encode_command("restored", 0, 0, time.time_ns(), {"chunk_id_floor": floor})
    seed(directory, index=header.index, term=header.term, voters=voters, app=image,
         commands=[command], sync=sync)  # fmt: skip
    return header


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metaserver.restore", description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--dir", type=Path, help="the new node's Raft directory (empty)")
    p.add_argument("--config", type=Path, help="the metaserver's config file")
    p.add_argument("--id", type=int, default=1, help="this node's id (with --dir)")
    p.add_argument("--voters", default=None, help="the members' ids, e.g. 1,2,3 (with --dir)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--secret-file", type=Path, default=None)
    p.add_argument("--any-cluster", action="store_true")
    a = p.parse_args(argv)
    if (a.dir is None) == (a.config is None):
        p.error("give one of --dir and --config")
    try:
        if a.config is not None:
            cfg = load_config(a.config)
            directory = cfg.node.data_dir
            node_id = int(cfg.node.id)
            voters = sorted(int(n) for n in cfg.node.peers)
            chunk_size: int | None = cfg.chunk_size_bytes
            secret: bytes | None = load_secret(cfg.secret_file)
        else:
            directory = a.dir
            node_id = a.id
            voters = [int(v) for v in a.voters.split(",")] if a.voters else [node_id]
            chunk_size = a.chunk_size
            secret = load_secret(a.secret_file) if a.secret_file is not None else None
        h = restore(a.file, directory, node_id=node_id, voters=voters, chunk_size=chunk_size,
                    secret=secret, any_cluster=a.any_cluster)  # fmt: skip
    except (BackupError, NotEmptyError, OSError, ValueError) as e:
        print(f"restore: {e}", file=sys.stderr)
        return 1
    print(f"restored {a.file} (cluster {h.cluster_id}, index {h.index}, term {h.term}) into "
          f"{directory} as node {node_id} of {','.join(map(str, voters))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CHUNK_ID_GAP", "main", "read_backup", "restore"]
