"""chunkserver/salvage.py: quarantined copies judged block by block, and one made the
replica again.

Checks: a replica found bad on a read is listed with its good and bad blocks counted; its
salvage gives a replica at the asked version whose good blocks read back, whose bad block
reads as ``Corrupt`` without the replica going back to quarantine (and, with ``zero``, as
zeros); a salvage to a length past the copy's end loses the blocks it does not reach; an
unknown copy name is ``NotFound`` and reaches no path.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chunkserver import salvage
from chunkserver.store import ChunkStore
from dfs.wire.errors import Corrupt, NotFound
from dfs.wire.replicafile import BLOCK_BYTES, DATA_OFFSET

# The bad replicas made here are logged as the store logs them, by design.
pytestmark = [pytest.mark.unit, pytest.mark.timeout(60), pytest.mark.allow_warnings]

B = BLOCK_BYTES
CHUNK = 0x105
SIZE = 3 * B + 500


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "cs", chunk_bytes_max=1 << 20)


def quarantined_with_bad_block(store: ChunkStore, bad: int) -> bytes:
    body = random.Random(1).randbytes(SIZE)
    store.write(CHUNK, 3, 0, 0, body)
    path = store.path(CHUNK)
    with open(path, "r+b") as f:
        f.seek(DATA_OFFSET + bad * B + 7)
        byte = f.read(1)
        f.seek(DATA_OFFSET + bad * B + 7)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(Corrupt):
        store.read(CHUNK, 3, 0, SIZE)
    assert store.info(CHUNK) is None
    return body


def test_a_bad_replica_is_judged_and_salvaged(store: ChunkStore) -> None:
    body = quarantined_with_bad_block(store, bad=1)
    [copy] = salvage.quarantined(store, CHUNK)
    assert (copy.version, copy.length, copy.blocks, copy.good_blocks) == (3, SIZE, 4, 3)
    info, lost = salvage.salvage(store, CHUNK, copy.name, 5, SIZE, zero=False)
    assert (info.version, info.length, lost) == (5, SIZE, 1)
    assert bytes(store.read(CHUNK, 5, 0, B)) == body[:B]
    assert bytes(store.read(CHUNK, 5, 2 * B, SIZE)) == body[2 * B :]
    with pytest.raises(Corrupt, match="lost"):
        store.read(CHUNK, 5, B, 10)
    assert store.info(CHUNK) is not None  # still in service
    assert bytes(store.read(CHUNK, 5, 0, 10)) == body[:10]
    assert salvage.quarantined(store, CHUNK) == []  # the copy's file was used up


def test_zero_makes_lost_blocks_read_as_zeros(store: ChunkStore) -> None:
    body = quarantined_with_bad_block(store, bad=3)  # the partial last block
    [copy] = salvage.quarantined(store, CHUNK)
    _, lost = salvage.salvage(store, CHUNK, copy.name, 4, SIZE, zero=True)
    assert lost == 1
    assert bytes(store.read(CHUNK, 4, 0, SIZE)) == body[: 3 * B] + bytes(SIZE - 3 * B)


def test_blocks_past_the_copy_are_lost_and_names_are_checked(store: ChunkStore) -> None:
    quarantined_with_bad_block(store, bad=0)
    [copy] = salvage.quarantined(store, CHUNK)
    with pytest.raises(NotFound):
        salvage.salvage(store, CHUNK, "../../etc/passwd", 4, SIZE, zero=False)
    _, lost = salvage.salvage(store, CHUNK, copy.name, 4, SIZE + 2 * B, zero=True)
    # Block 0 is bad, block 3 was partial in the copy (its bytes past SIZE are not in
    # it), and blocks 4 and 5 are past its end.
    assert lost == 4
