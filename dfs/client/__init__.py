"""The client side of dfs: ``FsClient``, a POSIX-shaped API over metaservers and
chunkservers, on anyio (trio in the FUSE mount, asyncio in the CLI and tests).

Modules, from the wire up: ``conn`` (authenticated, pipelined connections), ``pool`` (one
per server), ``meta`` (leader discovery, retries, sessions), ``chunkio`` (replica choice,
failover), ``cache`` (attributes, entries, chunk locations), ``files`` (per-inode
write-back, uploads, commits, reads), ``handle`` (``File`` handles and read-ahead),
``allocate`` (fallocate's modes), ``fsclient`` (the API), ``records`` and ``options``
(plain data). Nothing here imports asyncio or server code
(``tests/unit/test_boundaries.py``).
"""

from dfs.client.conn import Connection, connect, open_connection
from dfs.client.fsclient import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    FsClient,
)
from dfs.client.handle import File
from dfs.client.options import ClientOptions
from dfs.client.records import Attr, ChunkLocation, DirEntry, Replica, StatFs, WriteHandle

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INO",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "Attr",
    "ChunkLocation",
    "ClientOptions",
    "Connection",
    "DirEntry",
    "File",
    "FsClient",
    "Replica",
    "StatFs",
    "WriteHandle",
    "connect",
    "open_connection",
]
