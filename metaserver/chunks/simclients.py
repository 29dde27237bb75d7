"""The simulation's clients (``metaserver/chunks/sim.py``): writers that take write
handles as the metaserver gives them, write through the chain and commit, and readers that
read any live member and check what they get against the file model."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from dfs.wire.errors import Corrupt, DfsError, InternalError, NoSpace, Timeout, Unavailable
from metaserver.chunks import handles
from metaserver.chunks.simserver import CHUNK, FileModel, Violation
from metaserver.namespace.state import ROOT_INO

if TYPE_CHECKING:
    from metaserver.chunks.sim import Simulation

# The chain failures for which a writer names the member in its next handle (``drop``), as
# the client's ``_REPLICA_LOST`` (``dfs/client/files.py``); a lost message is a timeout.
# Others (``Stale``: a fence or another handle moved the version on) only take a new handle.
REPLICA_LOST = (Unavailable, Timeout, InternalError, Corrupt, NoSpace, TimeoutError)

# Writers stop writing after this (virtual) time; readers read until near the end.
WRITE_UNTIL_S = 60.0
READ_UNTIL_S = 115.0


async def handle(sim: Simulation, ino: int, index: int, reported: list[int]) -> dict[str, Any]:
    """A write handle, as ``MetaServer._write_handle`` gives it (the same rules:
    ``metaserver/chunks/handles.py``, ``Repair.settle_handle``)."""
    link, repair, ns = sim.link, sim.repair, sim.ns
    existing = ns.chunks(ino, index, 1)
    now = sim.now
    link.know_all_chunkservers()
    args: dict[str, Any] = {"ino": ino, "index": index, "replicas": []}
    if existing:
        model = sim.files.get(ino)
        if model is not None:
            model.uploading = int(existing[0]["chunk_id"])  # its keepalive names it now
        handles.check_writable(existing[0])
        drop = handles.handle_drop(existing[0], reported, link.registry, now)
        if drop:
            args["drop"] = drop
    else:
        args["replicas"] = handles.place_chunk(link.placer, link.registry, sim.goal, CHUNK, now)
    result = await link.propose_internal("write_handle", args)
    chunk_id = int(result["chunk_id"])
    repair.writing(chunk_id)
    if not result["allocated"]:
        kept, length = await repair.settle_handle(
            chunk_id, int(result["version"]), int(result["length"]), result["replicas"]
        )
        result = {**result, "replicas": kept, "length": length}
    return result


async def write(sim: Simulation, model: FileModel, offset: int, data: bytes, die: bool) -> bool:
    """Write ``data`` at ``offset`` (inside one chunk) and commit; True when acked."""
    index, off = divmod(offset, CHUNK)
    fill = data[0]
    for i in range(offset, offset + len(data)):
        model.maybe.setdefault(i, set()).add(fill)
    model.writing += 1
    drop: list[int] = []
    handles: list[dict[str, Any]] = []
    partial = False  # a chain broke: some member may hold the bytes, another not
    try:
        for _ in range(4):
            try:
                h = await handle(sim, model.ino, index, drop)
            except (DfsError, TimeoutError):
                await sim.sleep(0.5)
                continue
            handles.append(h)
            chunk_id, version = int(h["chunk_id"]), int(h["version"])
            model.uploading = chunk_id
            chain = list(h["replicas"])
            if not chain:  # the client refuses a handle with an empty chain
                await sim.sleep(0.5)
                continue
            failed = None
            for n, cs_id in enumerate(chain):
                if die and n == len(chain) - 1 and n > 0:
                    model.abandoned_s = sim.now
                    sim.log(f"FAULT writer of ino {model.ino} dies mid-chain")
                    return False
                sim.repair.writing(chunk_id)  # the writer's keepalive
                try:
                    await sim.cs_call(cs_id, "chunk.write", 3.0, {
                        "chunk_id": chunk_id, "version": version, "length": h["length"],
                        "offset": off, "data": data,
                    })  # fmt: skip
                except (DfsError, TimeoutError) as e:
                    failed = cs_id if isinstance(e, REPLICA_LOST) else -1
                    partial = True  # this one, or one before it, may hold the bytes
                    break
            if failed is not None:
                drop = [failed] if failed >= 0 else []
                continue
            size = max(len(model.acked), offset + len(data))
            try:
                await sim.link.propose_internal("commit", {
                    "ino": model.ino, "size": size, "mtime_ns": 1,
                    "chunks": [[index, off + len(data), chunk_id, version]],
                })  # fmt: skip
            except (DfsError, TimeoutError):
                return False
            sim.repair.committed(chunk_id)
            model.acknowledged(offset, data)
            sim.writes_acked += 1
            return True
        if partial:
            # Given up (EIO) after a chain broke: the open case too (see Options.open_case).
            model.abandoned_s = sim.now
        return False
    finally:
        model.writing -= 1
        model.uploading = None
        for chunk_id in {h["chunk_id"] for h in handles}:
            sim.failing.pop(int(chunk_id), None)  # dropped by now, or kept: no longer failing


async def writer(sim: Simulation, wid: int) -> None:
    rng = sim.rng
    mine: list[FileModel] = []
    for n in range(rng.randint(4, 10)):
        await sim.sleep(rng.uniform(0.2, 4.0))
        if sim.now > WRITE_UNTIL_S:
            return
        if not mine or rng.random() < 0.3:
            try:
                result = await sim.link.propose_internal("create", {
                    "parent": ROOT_INO, "name": f"w{wid}-{n}".encode(),
                    "mode": 0o100644, "uid": 0, "gid": 0,
                })  # fmt: skip
            except (DfsError, TimeoutError):
                continue
            model = FileModel(int(result["attr"]["ino"]), f"w{wid}-{n}".encode())
            sim.files[model.ino] = model
            mine.append(model)
        model = rng.choice(mine)
        if model.writing or model.abandoned_s is not None:
            continue
        if len(mine) > 2 and rng.random() < 0.1:
            mine.remove(model)
            with contextlib.suppress(DfsError, TimeoutError):
                await sim.link.propose_internal("unlink", {"parent": ROOT_INO, "name": model.name})
            continue
        size = len(model.acked)
        # An overwrite, or an append.
        offset = rng.randrange(size) if size and rng.random() < 0.4 else size
        room = CHUNK - offset % CHUNK
        length = min(room, rng.randint(1, CHUNK // 2))
        if offset + length > 2 * CHUNK:
            continue
        data = bytes([rng.randint(1, 255)]) * length
        die = sim.faults and rng.random() < 0.05
        await write(sim, model, offset, data, die)
        if model.abandoned_s is not None:
            return


async def reader(sim: Simulation) -> None:
    rng = sim.rng
    while sim.now < READ_UNTIL_S:
        await sim.sleep(rng.uniform(0.2, 2.0))
        chunks = [c for c in sim.ns.chunk_table.values() if c.length]
        if not chunks:
            continue
        chunk = rng.choice(chunks)
        live = [c for c in chunk.replicas if sim.link.registry.is_alive(c, sim.now)]
        if not live:
            continue
        cs_id = rng.choice(live)
        version, length, ino, index = chunk.version, chunk.length, chunk.ino, chunk.index
        model = sim.files.get(ino)
        # A read overlapping a write's acknowledgement may return what was there before it
        # (the file model forgets replaced bytes at the acknowledgement: seed 3260).
        before = model.copy() if model is not None else None
        try:
            got = await sim.cs_call(
                cs_id, "chunk.read", 3.0, {"chunk_id": chunk.chunk_id, "version": version}
            )
        except (DfsError, TimeoutError):
            continue
        data = got["data"][:length]
        if len(data) < length:
            continue  # short: the client tries another replica
        if (
            model is not None
            and before is not None
            and not model.allowed(index * CHUNK, data)
            and not before.allowed(index * CHUNK, data)
        ):
            raise Violation(f"read of chunk {chunk.chunk_id} v{version} from cs {cs_id} "
                            f"returned bytes never written")  # fmt: skip
