"""The metaserver's operations (protocol version 1): one definition each. Pure.

Who sends what: clients (the mount, the CLI, tools) send ``fs.*``, ``admin.*`` and
``status``; chunkservers register, heartbeat and report (``cs.*``); metaservers send each
other Raft traffic (the one-way ``raft`` frame) and ``meta.members``. The leader sends a
client the one-way ``fs.recall``. ``metaserver/server.py`` checks every request against
its definition here, role first, before it runs it; the namespace checks the meaning
again when it applies a command (``metaserver/namespace/commands.py``), with the same
limits (``limits.py``).

``session`` ops are mutations: they carry ``client``/``seq`` and are applied once per
pair. The request fields of a mutation are exactly the arguments of its namespace
command (``Op.args``).
"""

from __future__ import annotations

from dfs.wire import shapes
from dfs.wire.errors import NameTooLong, TooBig
from dfs.wire.limits import (
    BAD_CHUNKS_MAX,
    BATCH_OPS_MAX,
    CHUNK_ID_MAX,
    CS_ADDRESS_CHARS_MAX,
    CS_LABEL_CHARS_MAX,
    CS_UUID_CHARS_MAX,
    GOAL_MAX,
    GOAL_MIN,
    HOLDS_PER_REQUEST_MAX,
    LEASE_RELEASE_INOS_MAX,
    LOCATE_COUNT_MAX,
    NAME_BYTES_MAX,
    READDIR_LIMIT_MAX,
    REPORT_PAGE_MAX,
    RESERVE_ENTRIES_MAX,
    SYMLINK_TARGET_BYTES_MAX,
    UINT64_MAX,
    XATTR_NAME_BYTES_MAX,
    XATTR_VALUE_BYTES_MAX,
)
from dfs.wire.ops_chunk import TIMEOUT_MS
from dfs.wire.spec import (
    ADMIN,
    ANY,
    ANYONE,
    BOOL,
    BYTES,
    CHUNKSERVER,
    INT,
    LIST,
    MAP,
    METASERVER,
    STR,
    UINT,
    USERS,
    Field,
    Op,
)

# ------------------------------------------------------------------ common fields
SESSION = (
    Field("client", UINT, required=False, doc="the session: 1 .. 2^63-1, 0 = none"),
    Field("seq", UINT, required=False, doc="increasing per `client`"),
)
HOLDER = Field("holder", UINT, required=False,
               doc="the client's random id, for holds and directory leases")  # fmt: skip
COMMON = (TIMEOUT_MS,)
FS_COMMON = (TIMEOUT_MS, HOLDER, *SESSION)

CLIENTS = USERS  # files: a client's or the operator's
ADMINS = frozenset({ADMIN})  # the cluster: the operator's only
CHUNKSERVERS = frozenset({CHUNKSERVER})
METASERVERS = frozenset({METASERVER})


def _name(name: str = "name", doc: str = "") -> Field:
    return Field(name, BYTES, high=NAME_BYTES_MAX, error=NameTooLong,
                 message=f"{name} over {NAME_BYTES_MAX} bytes", doc=doc)  # fmt: skip


def _i(name: str, required: bool = True, doc: str = "") -> Field:
    """An int a mutation hands to its command (the namespace checks its range)."""
    return Field(name, INT, required=required, doc=doc)


def _b(name: str, doc: str = "") -> Field:
    return Field(name, BOOL, required=False, doc=doc)


def _u(name: str, required: bool = True, doc: str = "") -> Field:
    return Field(name, UINT, required=required, doc=doc)


def _ids(name: str, high: int, what: str, required: bool = True, doc: str = "") -> Field:
    return Field(name, LIST, required=required, high=high, items="id",
                 message=f"{name}: at most {high} {what}", doc=doc)  # fmt: skip


def _fs(name: str, *fields: Field, answer: str = "", reply: tuple[Field, ...] = (),
        session: bool = False) -> Op:  # fmt: skip
    return Op(name, CLIENTS, fields=fields, reply=reply, answer=answer, session=session,
              common=FS_COMMON)  # fmt: skip


ATTR = Field("attr", MAP, doc="see Maps in answers")
PARENT_ATTR = Field("parent_attr", MAP, required=False,
                    doc="the directory's attributes after the name was added")  # fmt: skip
_OWNER = (_i("uid"), _i("gid"))

# ------------------------------------------------------------------ reads
FS_LOOKUP = _fs("fs.lookup", _u("parent"), _name(), reply=(ATTR,))
FS_GETATTR = _fs("fs.getattr", _u("ino"), reply=(ATTR,))
FS_OPEN = _fs(
    "fs.open", _u("ino"), reply=(ATTR,),
    answer="linearizable, as `fs.getattr`; the holder holds the inode open from now on "
    "(`holder` 0: no hold)",
)  # fmt: skip
FS_RELEASE = _fs(
    "fs.release", _ids("inos", HOLDS_PER_REQUEST_MAX, "inode numbers"),
    answer="`{}`; the holder's holds on these inodes end",
)  # fmt: skip
FS_KEEPALIVE = _fs(
    "fs.keepalive",
    _ids("inos", HOLDS_PER_REQUEST_MAX, "inode numbers",
         doc="every inode the holder has open"),
    _ids("writing", HOLDS_PER_REQUEST_MAX, "chunk ids", required=False,
         doc="chunk ids it has uploaded to and not yet committed"),
    reply=(_u("keepalive_ms", doc="how often to send it"),
           Field("metaservers", LIST, doc="the voters' addresses: where the client looks "
                 "for the leader from now on")),
    answer="holds not named end; the chunks named count as busy for the upkeep's quiet "
    "window",
)  # fmt: skip
FS_READDIR = _fs(
    "fs.readdir", _u("ino"), _u("cookie", False, "0 = start"),
    _u("limit", False, f"entries, 1..{READDIR_LIMIT_MAX} (clamped)"),
    reply=(Field("entries", LIST, doc="`[name, attr, cookie]`"), Field("more", BOOL)),
    answer="Pass the last entry's `cookie` to continue. Cookies stay valid while the "
    "directory changes: an entry present for the whole listing is returned exactly once. "
    "`.` and `..` are not listed.",
)  # fmt: skip
FS_READLINK = _fs("fs.readlink", _u("ino"), reply=(Field("target", BYTES),))
FS_GETXATTR = _fs(
    "fs.getxattr", _u("ino"),
    Field("name", BYTES, high=XATTR_NAME_BYTES_MAX, error=NameTooLong,
          message=f"name over {XATTR_NAME_BYTES_MAX} bytes"),
    reply=(Field("value", BYTES),), answer="`NoAttr` if absent",
)  # fmt: skip
FS_LISTXATTR = _fs("fs.listxattr", _u("ino"), reply=(Field("names", LIST),))
FS_STATFS = _fs("fs.statfs", reply=shapes.STATFS)
FS_LOCATE = _fs(
    "fs.locate", _u("ino"), _u("index", doc="first chunk index"),
    _u("count", False, f"1..{LOCATE_COUNT_MAX} (clamped)"),
    reply=(Field("chunks", LIST, doc="`{index, chunk_id, version, length, replicas: "
                 "[{id, address}], token, expiry_ms}`"),),
    answer="the chunks that exist in that range (holes are absent). `token` is a read "
    "token. `replicas` lists live chunkservers only.",
)  # fmt: skip

# ------------------------------------------------------------------ mutations
_RESERVED_INO = "a number `fs.reserve` gave the sender (in `fs.batch`)"
FS_MKDIR = _fs("fs.mkdir", _i("parent"), _name(), _i("mode"), *_OWNER,
               _i("ino", False, _RESERVED_INO), reply=(ATTR, PARENT_ATTR),
               session=True)  # fmt: skip
FS_CREATE = _fs(
    "fs.create", _i("parent"), _name(), _i("mode"), *_OWNER,
    _b("exclusive"), _i("ino", False, _RESERVED_INO),
    Field("first_chunk", BOOL, required=False, arg=False,
          doc="the file and its chunk 0 in one command"),
    reply=(ATTR, Field("created", BOOL), PARENT_ATTR,
           Field("handle", MAP, required=False, doc="chunk 0's write handle")),
    answer="`created` false: the file existed and `exclusive` was false; `parent_attr` when "
    "created; with `first_chunk`, when created and placement succeeded: `handle` (the fields "
    "of `fs.write_handle`'s answer)",
    session=True,
)  # fmt: skip
FS_MKNOD = _fs("fs.mknod", _i("parent"), _name(), _i("mode", doc="S_IFREG/FIFO/SOCK/CHR/BLK"),
               _i("rdev", False), *_OWNER, reply=(ATTR, PARENT_ATTR), session=True)  # fmt: skip
FS_SYMLINK = _fs(
    "fs.symlink", _i("parent"), _name(),
    Field("target", BYTES, high=SYMLINK_TARGET_BYTES_MAX, error=NameTooLong,
          message=f"symlink target over {SYMLINK_TARGET_BYTES_MAX} bytes"),
    *_OWNER, _i("ino", False, _RESERVED_INO), reply=(ATTR, PARENT_ATTR), session=True,
)  # fmt: skip
FS_LINK = _fs("fs.link", _i("ino"), _i("parent"), _name(), reply=(ATTR, PARENT_ATTR),
              session=True)  # fmt: skip
_EXPECT_INO = "the inode the client expects `name` to name"
FS_UNLINK = _fs(
    "fs.unlink", _i("parent"), _name(), _b("keep", "ignored: the leader decides"),
    _i("ino", False, _EXPECT_INO),
    answer="`Stale` when `ino` is given and the name names another inode (nothing changes)",
    session=True,
)  # fmt: skip
FS_RMDIR = _fs("fs.rmdir", _i("parent"), _name(), _i("ino", False, _EXPECT_INO),
               answer="as `fs.unlink`", session=True)  # fmt: skip
FS_RENAME = _fs(
    "fs.rename", _i("parent"), _name(), _i("new_parent"), _name("new_name"),
    _i("flags", False, "0, 1 = NOREPLACE, 2 = EXCHANGE, as Linux `renameat2`"),
    _b("keep", "ignored: the leader decides"), session=True,
)  # fmt: skip
FS_SETATTR = _fs(
    "fs.setattr", _i("ino"), _i("mode", False), _i("uid", False), _i("gid", False),
    _i("size", False), _i("atime_ns", False), _i("mtime_ns", False),
    _b("atime_now", "use the server's time"), _b("mtime_now", "use the server's time"),
    reply=(ATTR,), session=True,
)  # fmt: skip
FS_SETXATTR = _fs(
    "fs.setxattr", _i("ino"),
    Field("name", BYTES, high=XATTR_NAME_BYTES_MAX, error=NameTooLong,
          message=f"name over {XATTR_NAME_BYTES_MAX} bytes"),
    Field("value", BYTES, high=XATTR_VALUE_BYTES_MAX, error=TooBig,
          message=f"xattr value over {XATTR_VALUE_BYTES_MAX} bytes"),
    _i("flags", False, "0, 1 = CREATE, 2 = REPLACE"), session=True,
)  # fmt: skip
FS_REMOVEXATTR = _fs(
    "fs.removexattr", _i("ino"),
    Field("name", BYTES, high=XATTR_NAME_BYTES_MAX, error=NameTooLong,
          message=f"name over {XATTR_NAME_BYTES_MAX} bytes"),
    session=True,
)  # fmt: skip
FS_SET_GOAL = _fs("fs.set_goal", _i("ino"), _i("goal", doc=f"{GOAL_MIN}..{GOAL_MAX}"),
                  reply=(ATTR,), session=True)  # fmt: skip
FS_COMMIT = _fs(
    "fs.commit", _i("ino"), _i("size"), _i("mtime_ns", False),
    Field("chunks", LIST, doc="`[index, length, chunk_id, version]` (the write handle the "
          "data was written under)"),
    _i("mode", False), _i("uid", False), _i("gid", False), _i("atime_ns", False),
    reply=(ATTR,),
    answer="`Stale` when any entry's chunk is not the file's chunk at `index` or not at "
    "`version`",
    session=True,
)  # fmt: skip
FS_WRITE_HANDLE = _fs(
    "fs.write_handle", _u("ino"), _u("index", doc="chunk index"),
    Field("drop", LIST, required=False, high=GOAL_MAX, items=UINT,
          message=f"drop: at most {GOAL_MAX} chunkserver ids",
          doc="ids of chain members that failed under the writer's last handle"),
    reply=shapes.WRITE_HANDLE,
    session=True,
)  # fmt: skip
FS_PUNCH = _fs(
    "fs.punch", _i("ino"), _i("offset", doc="bytes, as a size"), _i("length", doc=">= 1"),
    _b("zero", "`ZERO_RANGE`: the range counts as allocated afterwards (default: as punched)"),
    reply=(ATTR, _u("first", doc="first chunk index of the span"),
           _u("stop", doc="chunk index past it"), _u("dropped", doc="chunks dropped")),
    answer="the chunks whose bytes inside the file all lie in `[offset, offset + length)` "
    "leave the file (they read as zeros; their replicas are collected as garbage): those "
    "of `[first, stop)` (empty when `stop <= first`); the size stays, mtime and ctime move. "
    "The rest of the range is the sender's to zero. `fallocate(PUNCH_HOLE)` and "
    "`ZERO_RANGE` (metaserver/namespace/holes.py). The span counts as punched: the "
    "file's `blocks` drop by its bytes inside the file until a write or `fs.allocate` "
    "fills it; with `zero`, the range counts as allocated instead, as `fs.allocate` "
    "leaves it",
    session=True,
)  # fmt: skip
FS_ALLOCATE = _fs(
    "fs.allocate", _i("ino"), _i("offset", doc="bytes, as a size"), _i("length", doc=">= 1"),
    reply=(ATTR, _u("filled_bytes", doc="bytes of the file that count as allocated again")),
    answer="the punched chunks `[offset, offset + length)` touches count in the file's "
    "`blocks` again; nothing else changes (`fallocate` mode 0 over a punched range: "
    "metaserver/namespace/holes.py)",
    session=True,
)  # fmt: skip

# ------------------------------------------------------------------ leases, batches, pools
FS_DIR_LEASE = _fs(
    "fs.dir_lease", _u("ino", doc="a directory"),
    reply=(Field("granted", BOOL), _u("lease_ms", False), Field("attr", MAP, required=False),
           Field("entries", LIST, required=False), Field("batch_ops", LIST, required=False)),
    answer="when granted: the directory's `attr`, its complete listing (`[name, attr, "
    "cookie]`), `batch_ops` (the ops `fs.batch` takes from this leader). Linearizable as a "
    "read. Refused (`granted: false`) for a directory of more than 4,096 entries, or when "
    "the lease was recalled while it was being granted. `holder` must not be 0",
)  # fmt: skip
FS_LEASE_RELEASE = _fs(
    "fs.lease_release", _ids("inos", LEASE_RELEASE_INOS_MAX, "directories"),
    answer="`{}`; the holder's leases on these directories end",
)  # fmt: skip
FS_LEASE_RENEW = _fs(
    "fs.lease_renew", _ids("inos", LEASE_RELEASE_INOS_MAX, "directories"),
    reply=(Field("renewed", LIST, doc="the inode numbers renewed"), _u("lease_ms")),
    answer="after a read barrier (as a grant), the holder's leases on these directories "
    "that were granted on this connection and are neither recalled nor expired last "
    "`lease_ms` from now, as a new grant's would (without a listing); the others are left "
    "as they are",
)  # fmt: skip
FS_BATCH = _fs(
    "fs.batch",
    Field("ops", LIST, low=1, high=BATCH_OPS_MAX, message=f"ops: 1..{BATCH_OPS_MAX} sub-ops",
          doc="`[op, fields]`, `op` one of the batchable ops, `fields` as that op's "
          "(without session)"),
    reply=(Field("results", LIST, doc="one per sub-op, in order, `{\"ok\": true, ...}` (what "
                 "the op alone answers) or `{\"ok\": false, \"err\": {...}}` (the error the op "
                 "alone would give)"),),
    answer="`op` one of `fs.unlink`, `fs.rmdir`, `fs.create`, `fs.mkdir`, `fs.symlink`, "
    "`fs.commit`, `fs.setattr`; a `fs.create` with `ino`, an inode number `fs.reserve` gave "
    "the sender, and optional `hold: true` when the sender has the file open; a `fs.mkdir` "
    "or `fs.symlink` with or without `ino`; a `fs.setattr` without `size`, `atime_now`, "
    "`mtime_now`. An op with `ino` takes that reserved number (a file also its chunk; "
    "`Stale` when it is not the sender's, used, or expired), a create is then always "
    "exclusive, and, with `hold`, the sender holds the file from then on; a directory made "
    "with `ino` is leased to the sender (`fs.dir_lease`'s lease) from its answer on, unless "
    "somebody leases it already. One Raft entry; the sub-ops apply "
    "in order, each to the state the ones before it left; one failing neither undoes nor "
    "stops the others. A malformed sub-op refuses the whole batch (`Invalid`) before "
    "anything is proposed",
    session=True,
)  # fmt: skip
FS_RESERVE = _fs(
    "fs.reserve", _u("holder"),
    Field("count", UINT, low=1, high=RESERVE_ENTRIES_MAX,
          message=f"count: 1..{RESERVE_ENTRIES_MAX}"),
    Field("goal", UINT, low=GOAL_MIN, high=GOAL_MAX, message=f"goal: {GOAL_MIN}..{GOAL_MAX}"),
    reply=(Field("entries", LIST, doc="`{ino, handle}`"), _u("ttl_ms")),
    answer="`handle` a write handle for the entry's chunk 0 (the fields of "
    "`fs.write_handle`'s answer; version 1, length 0, the chain placed for `goal` replicas), "
    "fewer than `count` (none) when placement cannot give `goal` chunkservers; `ttl_ms`: the "
    "entries' life (the leader refuses them after it). One Raft entry; at most 1,024 entries "
    "per holder; expired ones are swept",
    session=True,
)  # fmt: skip
FS_RECALL = Op(
    "fs.recall", METASERVERS, fields=(_ids("inos", LEASE_RELEASE_INOS_MAX, "directories"),),
    oneway=True, answer="one-way, leader to the lease's holder: send what you queued, then "
    "`fs.lease_release`",
)  # fmt: skip

# ------------------------------------------------------------------ chunkservers
_CS_ID = _u("cs_id")
_CS_LOAD = (_u("capacity_bytes", False), _u("used_bytes", False), _u("pid", False))
CS_REGISTER = Op(
    "cs.register", CHUNKSERVERS,
    fields=(
        Field("uuid", STR, low=1, high=CS_UUID_CHARS_MAX,
              message=f"uuid (1-{CS_UUID_CHARS_MAX} chars) and address host:port",
              doc="the chunkserver's identity, kept in its data dir"),
        Field("address", STR, high=CS_ADDRESS_CHARS_MAX,
              message=f"uuid (1-{CS_UUID_CHARS_MAX} chars) and address host:port",
              doc='"host:port" it serves on'),
        Field("host", STR, required=False, high=CS_LABEL_CHARS_MAX,
              doc="placement label: the config's, by default the address's host; absent, the "
              "one registered before is kept"),
        Field("rack", STR, required=False, high=CS_LABEL_CHARS_MAX,
              doc='placement label: the config\'s, by default ""'),
        *_CS_LOAD,
    ),
    reply=(_CS_ID,), answer="`cs_id` is stable for a uuid: through Raft the first time",
    common=COMMON,
)  # fmt: skip
CS_HEARTBEAT = Op(
    "cs.heartbeat", CHUNKSERVERS,
    fields=(_CS_ID, Field("address", STR, required=False, high=CS_ADDRESS_CHARS_MAX),
            *_CS_LOAD, _u("chunks", False, "count"),
            _u("load", False, "requests in flight")),
    answer="`{}`; `NotFound` for an id the leader does not know (register again)",
    common=COMMON,
)  # fmt: skip
CS_REPORT = Op(
    "cs.report", CHUNKSERVERS,
    fields=(
        _CS_ID,
        Field("chunks", LIST, high=REPORT_PAGE_MAX,
              items=((0, UINT64_MAX), (0, UINT64_MAX), (0, UINT64_MAX)),
              message=f"chunks: at most {REPORT_PAGE_MAX} [chunk_id, version, length]",
              doc="`[chunk_id, version, length]`, in chunk id order across the parts"),
        _u("part", False, "0, 1, 2 …"), _b("final", "true on the last part (default)"),
    ),
    answer="`{}` (a chunkserver ignores extra fields)", common=COMMON,
)  # fmt: skip
CS_BAD_CHUNKS = Op(
    "cs.bad_chunks", CHUNKSERVERS,
    fields=(
        _CS_ID,
        Field("chunks", LIST, high=BAD_CHUNKS_MAX, items=((0, CHUNK_ID_MAX), (0, UINT64_MAX)),
              message=f"chunks: at most {BAD_CHUNKS_MAX} [chunk_id, version]",
              doc="`[chunk_id, version]`"),
    ),
    answer="`{}` (a chunkserver ignores extra fields)", common=COMMON,
)  # fmt: skip

# ------------------------------------------------------------------ cluster and admin
STATUS = Op(
    "status", ANYONE, common=COMMON,
    answer="`node_id`, `pid`, `term`, `role`, `leader`, `leader_address`, `commit`, "
    "`applied`, `metaservers`: [{id, address, learner, membership, ...}] (see \"Metaserver "
    "membership\"), `chunkservers`: [{id, address, alive, state (\"alive\", \"dead\", "
    "\"draining\" or \"drained\": draining with no replica left), draining (bool), host, rack "
    "(\"\" none), capacity_bytes, used_bytes, chunks (the server's own count), replicas and "
    "replica_bytes (what the chunk table places there), load, pid, last_heartbeat_ms_ago}] "
    "(the leader's view; empty elsewhere), `rebalance` (leader only, else nil): the "
    "`admin.rebalance` status answer, `health` (leader only, else nil): {total, empty, "
    "missing, one_copy, under_goal, over_goal, corrupt, garbage, replicating} (a chunk with no "
    "data is always healthy; `under_goal` counts `one_copy` chunks too; `missing`: no live "
    "replica; `corrupt`: chunks with a replica reported bad and not yet back at goal; "
    "`garbage`: deleted chunks not yet collected; `replicating`: copies in flight), `files`, "
    "`chunks`, `bytes`, `trash_files`, `trash_bytes` (removed files kept: trash). Any node answers with its own view.",
)  # fmt: skip
_ADMIN_PATH = Field("path", BYTES, doc="absolute")
_CURSOR = Field("cursor", ANY, required=False, doc="the last page's")


def _admin(name: str, *fields: Field, answer: str = "", session: bool = False) -> Op:
    return Op(name, ADMINS, fields=fields, answer=answer, session=session, common=FS_COMMON)


ADMIN_REBALANCE = _admin(
    "admin.rebalance",
    Field("action", STR, doc='"start" (with `threshold_pct`, default 10, and '
          '`bandwidth_bps`), "stop", "status" or "plan" (with `threshold_pct`, default the '
          "running one's or 10)"),
    Field("threshold_pct", ANY, required=False, doc="a number, 0.01..100"),
    _u("bandwidth_bps", False, "0: no limit"),
    answer="start, stop, status: `running`, `threshold_pct`, `bandwidth_bps` (nil when not "
    "running), `moved_bytes`, `moves_done` (since this leader took over), `in_flight`, "
    "`left_bytes` (the current plan's), `spread_pct`, `rate_bps`, `stop_reason` (why the last "
    "run ended: \"stopped by the operator\", or the core's reason; \"\" while running). plan: "
    "`threshold_pct`, `moves`: [{chunk_id, from, to, bytes}] (the first 1,000), "
    "`moves_total`, `bytes`, `spread_before_pct`, `spread_after_pct`, `servers`: [{cs_id, "
    "used_bytes, capacity_bytes, used_pct, used_pct_after}]. Spread: the largest distance, in "
    "points, of a live non-draining chunkserver's used fraction from the cluster's. Start and "
    "stop are mutations (client, seq); start while one runs changes its parameters.",
)  # fmt: skip
ADMIN_DRAIN = _admin(
    "admin.drain", _u("cs_id"),
    Field("draining", BOOL, doc="true decommissions, false recommissions"),
    answer="`chunkserver`: its `status` entry",
)  # fmt: skip
ADMIN_FORGET = _admin(
    "admin.forget", _u("cs_id"),
    answer="`{}`; `Invalid` while the chunkserver is alive (a new leader counts every one "
    "alive for one dead timeout) or while a replica set names it; `NotFound` for an unknown "
    "id. Afterwards the id is gone from `status` and never given again.",
)  # fmt: skip
ADMIN_FSCK = _admin(
    "admin.fsck", Field("path", BYTES, doc="absolute; the last symlink not followed"), _CURSOR,
    answer="one page of the walk of the subtree (5,000 entries at most; it ends early once it "
    "names 500 files): `files`: [{path (bytes, relative to `path`; \"\" for itself), ino, goal, "
    "size, problems (worst first, of \"missing\", \"no_good_replica\", \"under_goal\", "
    "\"corrupt\"), chunks_at_risk, chunks: [{chunk_id, index, problem, replicas (the set), "
    "live, good, quarantined_on?}] (the first 16)}], `summary`: {files, dirs, others, bytes, "
    "chunks, empty_chunks, over_goal, files_at_risk, problems: {kind: chunks}, replicas: "
    "{good live replicas (str): chunks with data}}, `cursor` (nil once done), `total` (inodes "
    "in the namespace when `path` is \"/\", else nil), `settling` (bool: the leader has not "
    "heard every chunkserver since it took over). Leader only.",
)  # fmt: skip
ADMIN_GOALS = _admin(
    "admin.goals", _ADMIN_PATH, _b("recursive", "default false"), _CURSOR,
    answer="not recursive: `goal`, `kind` (\"file\", \"dir\" or \"other\"); recursive, a page: "
    "`files`, `dirs`, `others`: {goal (str): count}, `cursor`, `total`",
)  # fmt: skip
ADMIN_SET_GOAL = _admin(
    "admin.set_goal", _ADMIN_PATH,
    Field("goal", UINT, low=GOAL_MIN, high=GOAL_MAX, message=f"goal: {GOAL_MIN}..{GOAL_MAX}"),
    _b("recursive", "default false"), _CURSOR,
    answer="a page (4,096 entries): `changed`, `unchanged` (inodes), `cursor` (nil once done; "
    "send it back with a new seq). The leases on the subtree's directories are recalled "
    "first.",
    session=True,
)  # fmt: skip
ADMIN_SALVAGE = _admin(
    "admin.salvage", _ADMIN_PATH, _b("zero", "lost blocks read as zeros (default: as errors)"),
    answer="`chunks`: [{chunk_id, index, salvaged (bool), why, and once a copy was chosen: "
    "cs_id, copy, blocks, good_blocks, lost_blocks, copies}] for each chunk of the file "
    "that no good live replica holds: the best quarantined copy on a live chunkserver (most "
    "blocks verified, then newest version) is made a replica again (`chunk.salvage`) and "
    "taken back into the set. Leader only.",
)  # fmt: skip
ADMIN_BACKUP = _admin(
    "admin.backup",
    _u("token", False, "absent: take a new image; else the one `token` names"),
    _u("offset", False, "with `token`: where in the image to read (default 0)"),
    answer="without `token`: the leader takes an image of the namespace as of its applied "
    "index (the state machine's snapshot, kept for the reads that follow: at most 2 at once, "
    "each dropped 60 s after its last read) and answers `token`, `index`, `term`, "
    "`chunk_size`, `image_bytes`, `sha256` (bytes, of the image). With `token`: `data` "
    "(bytes: the image from `offset`, at most 1 MiB; empty past its end). `NotFound`: no "
    "such image (expired, or another leader's). Leader only.",
)  # fmt: skip
_TRASH_TIME = Field("trash_s", UINT, high=(1 << 32) - 1, message="trash_s: 0..2^32-1 seconds",
                    doc="seconds a removed file is kept; 0: freed at once")  # fmt: skip
ADMIN_TRASH_TIME = _admin(
    "admin.trash_time", _ADMIN_PATH, _b("recursive", "default false"), _CURSOR,
    answer="not recursive: `trash_s`, `kind` (\"file\", \"dir\" or \"other\"); recursive, a "
    "page: `files`, `dirs`, `others`: {trash_s (str): count}, `cursor`, `total`",
)  # fmt: skip
ADMIN_SET_TRASH_TIME = _admin(
    "admin.set_trash_time", _ADMIN_PATH, _TRASH_TIME, _b("recursive", "default false"),
    _CURSOR,
    answer="a page (4,096 entries): `changed`, `unchanged` (inodes), `cursor` (nil once done; "
    "send it back with a new seq). New files and directories take their directory's.",
    session=True,
)  # fmt: skip
_TRASH_SELECT = (
    Field("path", BYTES, required=False,
          doc="absolute: the entries removed from it or from below it (default all)"),
    _u("ino", False, "one entry, by inode number"),
)  # fmt: skip
ADMIN_TRASH_LIST = _admin(
    "admin.trash_list", *_TRASH_SELECT, _u("cursor", False, "the last page's"),
    answer="a page (1,000 entries), in the order removed: `entries`: [{ino, path (bytes), "
    "size, removed_ns, expires_ns}], `cursor` (nil once done), `files`, `bytes` (the whole "
    "trash's)",
)  # fmt: skip
ADMIN_TRASH_RESTORE = _admin(
    "admin.trash_restore", *_TRASH_SELECT,
    Field("to", BYTES, required=False,
          doc="absolute: the new path, or a directory to restore into (one entry only)"),
    answer="up to 4,096 entries (the newest of each path) put back at their path (the "
    "missing directories made, mode 0755): `restored`, `failed`: [{ino, path, code, msg}] "
    "(a name taken, a file on the path), `more` (bool: send again for the rest)",
    session=True,
)  # fmt: skip
ADMIN_TRASH_PURGE = _admin(
    "admin.trash_purge", *_TRASH_SELECT,
    _u("older_than_s", False, "only entries removed at least this long ago"),
    answer="up to 4,096 entries leave the trash for collection: `purged`, `more` (bool)",
    session=True,
)  # fmt: skip
# A user's too: what `du` would walk for (the mount's `getfattr -n dfs.usage`).
ADMIN_USAGE = _fs(
    "admin.usage", Field("path", BYTES, required=False, doc="absolute"),
    _u("ino", False, "instead of `path`"),
    answer="from the namespace's recursive statistics, without a walk: `bytes` (regular "
    "files' sizes), `physical_bytes` (each file's size less its punched chunks, times its "
    "goal), `files`, `dirs` (itself included), and the cluster's `trash_files`, `trash_bytes`, `garbage_chunks` "
    "(deleted, not yet collected). A file with several names counts under its oldest.",
)  # fmt: skip
ADMIN_META_ADD = _admin(
    "admin.meta_add",
    Field("address", STR, doc='"host:port" of a running metaserver started empty with '
          "`join = true`"),
    _u("node_id", False, "checked against the id it reports"),
    answer="`node_id`, `address`, `catch_up_ms`, `by_snapshot` (bool), `was_voter` (bool). "
    "Leader only. Adds it as a learner, waits until it caught up, promotes it to voter. A node "
    "already a voter at `address` is a success with `was_voter` true (nothing done). "
    "`NotFound`: nothing answers at `address`; `Exists`: the address is another member's, or "
    "the id is a member at another address (a learner at the same address is resumed "
    "instead); `Invalid`: the node already has a membership, or is another id than `node_id`; "
    "`Timeout`: still catching up (it stays a learner: the same request resumes).",
)  # fmt: skip
ADMIN_META_REMOVE = _admin(
    "admin.meta_remove", _u("node_id"),
    answer="`voters`, `learners` (after the change), `was_member` (bool). Leader only. An id "
    "not in the configuration is a success with `was_member` false (nothing done); "
    "`Invalid`: the last voter. For the leader itself: leadership moves first to another "
    "voter (one the leader streams entries to and heard from recently, the most caught up of "
    "those) and the answer is `NotLeader` naming it (`leader_id`), where the same request "
    "then removes the old leader.",
)  # fmt: skip
ADMIN_TRANSFER_LEADER = _admin(
    "admin.transfer_leader",
    _u("node_id", False, "by default the voter a removal of the leader would pick"),
    answer="`leader`, `leader_address`, once it leads. Leader only. `Invalid`: not a voter, or "
    "no other voter.",
)  # fmt: skip
META_MEMBERS = Op(
    "meta.members", ANYONE, fields=(_b("leader_only", "`NotLeader` on a follower"),),
    answer="`node_id`, `term`, `role`, `leader`, `leader_address`, `commit`, `applied`, "
    "`last_index`, `voters`, `learners`, `metaservers` (as in `status`). Any node answers with "
    "its own view.",
    common=COMMON,
)  # fmt: skip

# Raft's one-way frame between metaservers (``metaserver/raft/node.py`` defines its body).
RAFT = Op("raft", METASERVERS, fields=(_u("v"), Field("m", LIST)), oneway=True,
          answer="one-way: Raft messages (`metaserver/raft/types.py`, `message_to_wire`)")  # fmt: skip

META_OPS: tuple[Op, ...] = (
    FS_LOOKUP, FS_GETATTR, FS_OPEN, FS_RELEASE, FS_KEEPALIVE, FS_READDIR, FS_READLINK,
    FS_GETXATTR, FS_LISTXATTR, FS_STATFS, FS_LOCATE,
    FS_MKDIR, FS_CREATE, FS_MKNOD, FS_SYMLINK, FS_LINK, FS_UNLINK, FS_RMDIR, FS_RENAME,
    FS_SETATTR, FS_SETXATTR, FS_REMOVEXATTR, FS_SET_GOAL, FS_COMMIT, FS_WRITE_HANDLE, FS_PUNCH,
    FS_ALLOCATE,
    FS_DIR_LEASE, FS_LEASE_RENEW, FS_LEASE_RELEASE, FS_BATCH, FS_RESERVE,
    CS_REGISTER, CS_HEARTBEAT, CS_REPORT, CS_BAD_CHUNKS,
    STATUS, ADMIN_REBALANCE, ADMIN_DRAIN, ADMIN_FORGET, ADMIN_FSCK, ADMIN_GOALS, ADMIN_SET_GOAL,
    ADMIN_SALVAGE, ADMIN_BACKUP, ADMIN_TRASH_TIME, ADMIN_SET_TRASH_TIME, ADMIN_TRASH_LIST,
    ADMIN_TRASH_RESTORE, ADMIN_TRASH_PURGE, ADMIN_USAGE,
    ADMIN_META_ADD, ADMIN_META_REMOVE, ADMIN_TRANSFER_LEADER, META_MEMBERS, RAFT,
)  # fmt: skip
# Ops the metaserver sends, not takes.
SENT_BY_METASERVER: tuple[Op, ...] = (FS_RECALL,)
# The namespace command each mutation maps to (the server proposes it with ``Op.args``).
COMMANDS: dict[str, str] = {
    op.name: op.name.removeprefix("fs.")
    for op in META_OPS
    if op.session and op.name.startswith("fs.") and op.name not in
    ("fs.batch", "fs.reserve", "fs.write_handle")
}  # fmt: skip

__all__ = ["COMMANDS", "META_OPS", "RAFT", "SENT_BY_METASERVER"]
