"""The metadata backup file (``dfs admin backup`` writes it, ``dfs admin restore`` reads
it): its one definition, its encoding and its checks. Pure: no I/O; the writer and the
reader hand the bytes in and out (``dfs/cli/admin_backup.py``, ``metaserver/restore.py``).

What it owns: the format below, the bounds on every length read from a file, and the
cluster id a backup names. What it must not do: know the namespace snapshot's format (the
image travels as the bytes the namespace made, whatever their version: a restore hands
them to ``Namespace.restore``, which accepts the versions it reads), or unpickle anything
(msgpack with limits, as on the wire).

FORMAT, version 1 (``BACKUP_FORMAT_VERSION``); integers big-endian::

    offset  size         field
    0       8            magic         b"DFSBKUP\\0"
    8       2            version       1
    10      2            flags         0
    12      4            header_len    1 .. HEADER_BYTES_MAX
    16      header_len   header        msgpack map, str keys:
                                         cluster_id   str, ``cluster_id(secret)``
                                         index, term  the Raft index and term the image is as of
                                         chunk_size   the cluster's chunk size (bytes)
                                         created_ns   the writer's wall clock
                                         image_bytes  the image's length
    16+hl   8            image_len     equal to header's image_bytes, <= IMAGE_BYTES_MAX
    24+hl   image_len    image         the namespace snapshot, as ``Namespace.snapshot()``
    ...     32           sha256        of every byte before it

A reader checks the magic, the version and both lengths before reading on, and the
sha256 over the whole file before it trusts any of it: a flipped byte anywhere is refused
with ``BackupError``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

BACKUP_FORMAT_VERSION = 1
MAGIC = b"DFSBKUP\x00"
_PREFIX = struct.Struct(">8sHHI")  # magic, version, flags, header_len
_IMAGE_LEN = struct.Struct(">Q")
PREFIX_BYTES = _PREFIX.size
IMAGE_LEN_BYTES = _IMAGE_LEN.size
DIGEST_BYTES = 32
HEADER_BYTES_MAX = 64 * 1024
# The namespace image of a very large cluster (a few hundred bytes per inode): far above
# any namespace a metaserver holds in memory, a bound against a corrupt length field.
IMAGE_BYTES_MAX = 1 << 40
# What the leader sends of the image per request (``admin.backup``): well inside a frame
# header (``FRAME_HEADER_BYTES_MAX``), and small enough not to hold the loop.
PIECE_BYTES = 1 << 20
_HEADER_KEYS: dict[str, type] = {"cluster_id": str, "index": int, "term": int, "chunk_size": int,
                "created_ns": int, "image_bytes": int}  # fmt: skip


class BackupError(Exception):
    """The file is not a usable backup (damaged, cut short, another format)."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    cluster_id: str
    index: int
    term: int
    chunk_size: int
    created_ns: int
    image_bytes: int


def cluster_id(secret: bytes) -> str:
    """The name of the cluster whose secret this is: a fingerprint, never the secret."""
    return hashlib.sha256(b"dfs-cluster-id\x00" + secret).hexdigest()[:32]


def encode_head(h: BackupHeader) -> bytes:
    """Everything before the image: prefix, header and the image's length."""
    header: bytes = msgpack.packb(
        {"cluster_id": h.cluster_id, "index": h.index, "term": h.term,
         "chunk_size": h.chunk_size, "created_ns": h.created_ns,
         "image_bytes": h.image_bytes},
        use_bin_type=True,
    )  # fmt: skip
    assert len(header) <= HEADER_BYTES_MAX and 0 <= h.image_bytes <= IMAGE_BYTES_MAX
    prefix = _PREFIX.pack(MAGIC, BACKUP_FORMAT_VERSION, 0, len(header))
    return prefix + header + _IMAGE_LEN.pack(h.image_bytes)


def header_len(prefix: bytes) -> int:
    """The header's length from the file's first ``PREFIX_BYTES``, checked."""
    if len(prefix) < PREFIX_BYTES:
        raise BackupError("not a dfs backup: the file is shorter than its prefix")
    magic, version, flags, hl = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise BackupError("not a dfs backup (bad magic)")
    if version != BACKUP_FORMAT_VERSION or flags != 0:
        raise BackupError(f"backup format version {version} flags {flags}: not readable here")
    if not 1 <= hl <= HEADER_BYTES_MAX:
        raise BackupError(f"damaged backup: header length {hl}")
    return int(hl)


def decode_header(raw: bytes, image_len_raw: bytes) -> BackupHeader:
    """The header (``header_len`` bytes after the prefix) and the image length after it."""
    try:
        value = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, max_bin_len=0, max_array_len=0,
            max_map_len=len(_HEADER_KEYS) * 2, max_str_len=HEADER_BYTES_MAX, max_ext_len=0,
        )  # fmt: skip
    except Exception as e:
        raise BackupError(f"damaged backup: undecodable header ({type(e).__name__})") from None
    if type(value) is not dict:
        raise BackupError("damaged backup: the header is not a map")
    fields: dict[str, Any] = {}
    for key, kind in _HEADER_KEYS.items():
        v: Any = value.get(key)
        if type(v) is not kind or (type(v) is int and v < 0):
            raise BackupError(f"damaged backup: header field {key!r} is {v!r}")
        fields[key] = v
    image_len: int = _IMAGE_LEN.unpack(image_len_raw)[0]
    if image_len != fields["image_bytes"] or image_len > IMAGE_BYTES_MAX:
        raise BackupError(f"damaged backup: image length {image_len}")
    return BackupHeader(**fields)


__all__ = [
    "BACKUP_FORMAT_VERSION",
    "DIGEST_BYTES",
    "IMAGE_LEN_BYTES",
    "PIECE_BYTES",
    "PREFIX_BYTES",
    "BackupError",
    "BackupHeader",
    "cluster_id",
    "decode_header",
    "encode_head",
    "header_len",
]
