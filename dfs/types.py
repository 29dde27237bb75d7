"""Identifier types shared by every process; the limits they took from here.

Ids are plain integers on the wire and on disk; the NewTypes only help the reader
and the type checker tell them apart. The protocol's limits are defined in
``dfs.wire.limits``; the few below are imported here for the modules that take them from
this one.
"""

from typing import NewType

from dfs.wire.limits import (
    BATCH_OPS_MAX as BATCH_OPS_MAX,
)
from dfs.wire.limits import (
    FRAME_HEADER_BYTES_MAX as FRAME_HEADER_BYTES_MAX,
)
from dfs.wire.limits import (
    FRAME_PAYLOAD_BYTES_MAX as FRAME_PAYLOAD_BYTES_MAX,
)
from dfs.wire.limits import (
    HOLDS_PER_REQUEST_MAX as HOLDS_PER_REQUEST_MAX,
)

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
InodeId = NewType("InodeId", int)
ChunkId = NewType("ChunkId", int)
