"""The namespace command format (version 1), its limits, and the argument checks. Pure.

This module owns the bytes of a namespace command and the validation of every value
decoded from them. It knows nothing of inodes or directories: ``ops.py`` calls the
``arg_*`` helpers here and then applies the checked values.

Command format, version 1 (``COMMAND_VERSION``): one msgpack array, bytes as msgpack bin,
strings as msgpack str::

    [1,          # COMMAND_VERSION: a decoder refuses any other number
     op,         # str: "mkdir", "create", ... (the fs.* ops of docs/PROTOCOL.md without
                 #   the "fs." prefix, plus "write_handle", "cs_register" and the
                 #   leader's "replica_add", "replica_drop", "version_bump",
                 #   "length_recover", "write_marks", "gc_done", "release_orphans",
                 #   "reserve" (pools.py); "set_goal_tree" (tree.py); "trash_expire",
                 #   "trash_purge", "trash_restore", "set_trash_tree" (trash.py);
                 #   "restored" (cluster.py);
                 #   "batch":
                 #   {"ops": [[op, args], ...]} of BATCH_OPS, each applied as if alone,
                 #   see batch.py)
     client,     # int, 0 .. 2^63-1: the session (0 = none), see metaserver/raft/sessions.py
     seq,        # int, 0 .. 2^64-1: the session's sequence number
     now_ns,     # int, 0 .. 2^63-1: the leader's clock when it proposed the command; the
                 #   only clock the state machine ever reads, so every replica agrees
     args]       # map, str keys: the op's fields (names, targets, xattrs as bin)

Rules:
1. ``decode_command`` never raises on bad bytes: a command that cannot be decoded or whose
   envelope is wrong is a ``ProtocolError`` the caller turns into an error result.
2. The ``arg_*`` helpers raise ``ProtocolError`` for a missing field or a value of the
   wrong type (the proposer broke the format), ``Invalid``/``NameTooLong``/``TooBig`` for a
   well-typed value out of range (a request that makes no sense). A ``bool`` is never an
   ``int`` here, as in ``dfs.wire.messages``.
3. Every limit of the namespace is defined here, with its reason, or in
   ``dfs/wire/limits.py`` when the protocol states it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from dfs.wire.errors import Invalid, NameTooLong, ProtocolError, TooBig
from dfs.wire.limits import (
    COMMIT_CHUNKS_MAX,
    FILE_SIZE_BYTES_MAX,
    FRAME_HEADER_BYTES_MAX,
    GOAL_MAX,
    LOCATE_COUNT_MAX,
    NAME_BYTES_MAX,
    SYMLINK_TARGET_BYTES_MAX,
    UINT64_MAX,
    XATTR_NAME_BYTES_MAX,
    XATTR_VALUE_BYTES_MAX,
)
from dfs.wire.limits import (
    INT63_MAX as INT63_MAX,  # (metaserver/repair.py takes it from here)
)

COMMAND_VERSION = 1

# --- limits ---------------------------------------------------------------------------
# The protocol's limits are defined once, in dfs/wire/limits.py (with their reasons); the
# namespace checks them again when it applies a command, with the same errors. Those below
# are the namespace's own.
# All names + values of one inode: xattrs live in the replicated state and in every
# snapshot, so one inode must not be able to grow it without bound (ext4 allows one block).
XATTR_BYTES_PER_INODE_MAX = 256 * 1024
# Hard links to one inode, as ext4's EXT4_LINK_MAX. Directories are not capped: their
# nlink counts subdirectories and is only reported, never used to free anything.
LINKS_MAX = 65000
# Entries in one directory. The whole directory is one object in the state and in every
# snapshot; past this, creating fails with NoSpace (as ext4 does when its index is full).
DIR_ENTRIES_MAX = 1 << 22
GOAL_DEFAULT = 3
# A removed regular file stays in the trash this long unless its directory says
# otherwise (MooseFS's default trash time: one day); 0 frees removed files at once.
TRASH_S_DEFAULT = 86_400
# The longest trash time (about 136 years: a u32 of seconds, as MooseFS's).
TRASH_S_MAX = (1 << 32) - 1
# Trash entries one trash_restore / trash_purge / trash_expire command handles at most.
TRASH_BATCH_MAX = 4096
# A replica set never lists more chunkservers than the highest goal.
REPLICAS_MAX = GOAL_MAX
# The ops a batch may hold (their namespace names): removals, the creates and commits of
# files created under a directory lease, and changes of a leased directory's attributes
# (docs/ARCHITECTURE.md, "Directory leases").
BATCH_OPS = frozenset({"unlink", "rmdir", "create", "mkdir", "symlink", "commit", "setattr"})
# fs.locate's count, as the namespace's chunks() query takes it.
CHUNKS_QUERY_MAX = LOCATE_COUNT_MAX
INT64_MIN = -(1 << 63)

# Decoder limits: a command travels in one Raft entry, itself inside one frame header.
_UNPACK_LIMITS: dict[str, int] = {
    "max_bin_len": FRAME_HEADER_BYTES_MAX,
    "max_str_len": 1 << 16,
    "max_array_len": 2 * COMMIT_CHUNKS_MAX,
    "max_map_len": 64,
    "max_ext_len": 0,
}


def encode_command(op: str, client: int, seq: int, now_ns: int, args: dict[str, Any]) -> bytes:
    """The bytes of one command (format version 1, above)."""
    return bytes(msgpack.packb([COMMAND_VERSION, op, client, seq, now_ns, args], use_bin_type=True))


def decode_command(data: bytes) -> tuple[str, int, int, int, dict[str, Any]]:
    """``(op, client, seq, now_ns, args)``; raises only ``ProtocolError``."""
    if len(data) > FRAME_HEADER_BYTES_MAX:
        raise ProtocolError("namespace command over the frame header limit")
    try:
        cmd = msgpack.unpackb(data, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as e:  # any malformed bytes: the command is refused, not applied
        raise ProtocolError(f"undecodable namespace command: {type(e).__name__}") from None
    if type(cmd) is not list or len(cmd) != 6:
        raise ProtocolError("a namespace command is a 6-element array")
    version, op, client, seq, now_ns, args = cmd
    if version != COMMAND_VERSION or type(version) is not int:
        raise ProtocolError("unknown namespace command version", version=_plain(version))
    if type(op) is not str:
        raise ProtocolError("op must be str")
    if type(client) is not int or not 0 <= client <= INT63_MAX:
        raise ProtocolError("client must be an int in 0..2^63-1")
    if type(seq) is not int or not 0 <= seq <= UINT64_MAX:
        raise ProtocolError("seq must be an int in 0..2^64-1")
    if type(now_ns) is not int or not 0 <= now_ns <= INT63_MAX:
        raise ProtocolError("now_ns must be an int in 0..2^63-1")
    if type(args) is not dict or not all(type(k) is str for k in args):
        raise ProtocolError("args must be a map with str keys")
    return op, client, seq, now_ns, args


def _plain(value: Any) -> Any:
    """A msgpack-friendly echo of a bad value for an error's details."""
    return value if type(value) in (int, str, bool) or value is None else type(value).__name__


# --- argument checks ------------------------------------------------------------------


def check_fields(args: dict[str, Any], allowed: frozenset[str]) -> None:
    """Refuse fields the op does not know: a misspelt optional field must not pass silently."""
    if not args.keys() <= allowed:
        unknown = sorted(args.keys() - allowed)
        raise ProtocolError(f"unknown field {unknown[0]!r}", fields=unknown)


def _missing(key: str) -> ProtocolError:
    return ProtocolError(f"missing field {key!r}")


def arg_int(args: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = args.get(key)
    if type(v) is not int:
        if key not in args:
            raise _missing(key)
        raise ProtocolError(f"field {key!r} must be int")
    if not lo <= v <= hi:
        raise Invalid(f"field {key!r} out of range", field=key)
    return v


def arg_opt_int(args: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    if key not in args:
        return None
    return arg_int(args, key, lo, hi)


def arg_bool(args: dict[str, Any], key: str, default: bool | None = None) -> bool:
    if key not in args:
        if default is None:
            raise _missing(key)
        return default
    v = args[key]
    if type(v) is not bool:
        raise ProtocolError(f"field {key!r} must be bool")
    return v


def arg_ino(args: dict[str, Any], key: str) -> int:
    return arg_int(args, key, 1, INT63_MAX)


def arg_bytes(args: dict[str, Any], key: str) -> bytes:
    v = args.get(key)
    if type(v) is not bytes:
        if key not in args:
            raise _missing(key)
        raise ProtocolError(f"field {key!r} must be bytes")
    return v


def arg_str(args: dict[str, Any], key: str, chars_max: int) -> str:
    v = args.get(key)
    if type(v) is not str:
        if key not in args:
            raise _missing(key)
        raise ProtocolError(f"field {key!r} must be str")
    if not v or len(v) > chars_max:
        raise Invalid(f"field {key!r} must be 1..{chars_max} characters", field=key)
    return v


def check_name(name: bytes) -> bytes:
    """A directory entry name, validated as Linux would (the errno choice is in the comment)."""
    # Empty, ".", "..", "/" or NUL: EINVAL-like (Linux gives ENOENT/EEXIST/EBUSY by path
    # resolution; over the wire there is no path, so the name is simply invalid).
    if not name or name == b"." or name == b".." or b"/" in name or b"\0" in name:
        raise Invalid("invalid name", name=name[:NAME_BYTES_MAX])
    if len(name) > NAME_BYTES_MAX:
        raise NameTooLong(f"name over {NAME_BYTES_MAX} bytes", length=len(name))
    return name


def arg_name(args: dict[str, Any], key: str) -> bytes:
    return check_name(arg_bytes(args, key))


def arg_symlink_target(args: dict[str, Any], key: str) -> bytes:
    target = arg_bytes(args, key)
    # symlink(2) gives ENOENT for an empty target; it can never resolve, so it is invalid.
    if not target or b"\0" in target:
        raise Invalid("invalid symlink target")
    if len(target) > SYMLINK_TARGET_BYTES_MAX:
        raise NameTooLong(f"symlink target over {SYMLINK_TARGET_BYTES_MAX} bytes")
    return target


def check_xattr_name(name: bytes) -> bytes:
    # An xattr name is a C string in every syscall: it cannot be empty or hold a NUL.
    if not name or b"\0" in name:
        raise Invalid("invalid xattr name")
    if len(name) > XATTR_NAME_BYTES_MAX:
        raise NameTooLong(f"xattr name over {XATTR_NAME_BYTES_MAX} bytes")
    return name


def arg_xattr_value(args: dict[str, Any], key: str) -> bytes:
    value = arg_bytes(args, key)
    if len(value) > XATTR_VALUE_BYTES_MAX:  # E2BIG in Linux
        raise TooBig(f"xattr value over {XATTR_VALUE_BYTES_MAX} bytes")
    return value


def arg_size(args: dict[str, Any], key: str) -> int:
    """A file size: a negative one is invalid, one past the maximum is TooBig (EFBIG)."""
    v = args.get(key)
    if type(v) is not int:
        if key not in args:
            raise _missing(key)
        raise ProtocolError(f"field {key!r} must be int")
    if v < 0:
        raise Invalid(f"field {key!r} must be >= 0", field=key)
    if v > FILE_SIZE_BYTES_MAX:
        raise TooBig(f"size over {FILE_SIZE_BYTES_MAX} bytes", field=key)
    return v


def arg_int_list(args: dict[str, Any], key: str, length_max: int) -> list[int]:
    v = args.get(key)
    if type(v) is not list:
        if key not in args:
            raise _missing(key)
        raise ProtocolError(f"field {key!r} must be a list")
    if len(v) > length_max:
        raise Invalid(f"field {key!r} over {length_max} items", field=key)
    for x in v:
        if type(x) is not int:
            raise ProtocolError(f"field {key!r} must hold ints")
    return v


def arg_commit_chunks(args: dict[str, Any], key: str, chunk_size_bytes: int) -> list[list[int]]:
    """``[[index, length, chunk_id, version], ...]``: index in range, length >= 0, and the
    chunk id and version of the write handle the data was written under."""
    v = args.get(key)
    if type(v) is not list:
        if key not in args:
            raise _missing(key)
        raise ProtocolError(f"field {key!r} must be a list")
    if len(v) > COMMIT_CHUNKS_MAX:
        raise Invalid(f"field {key!r} over {COMMIT_CHUNKS_MAX} items", field=key)
    index_max = chunk_index_max(chunk_size_bytes)
    for entry in v:
        if type(entry) is not list or len(entry) != 4 or any(type(x) is not int for x in entry):
            raise ProtocolError(f"field {key!r} must hold [index, length, chunk_id, version] ints")
        index, length, chunk_id, version = entry
        if not 0 <= index <= index_max or length < 0 or chunk_id < 1 or version < 1:
            raise Invalid(
                f"field {key!r}: index, length, chunk or version out of range", index=index
            )
    return v


def chunk_index_max(chunk_size_bytes: int) -> int:
    """The highest chunk index of a file of at most ``FILE_SIZE_BYTES_MAX`` bytes."""
    return (FILE_SIZE_BYTES_MAX - 1) // chunk_size_bytes
