"""Mutated frames at a live metaserver and chunkserver (issue 12's fuzz proof): requests of
every operation with fields of the wrong type, size or sign, unknown fields and random
payloads, sent by an authenticated client, and garbage bytes after the handshake. The
servers answer each with an error or drop the connection; afterwards they are alive,
serve a legitimate client (a file written and read back) and their memory is back near
where it was.

Membership changes (``admin.meta_*``) and Raft frames are left out: with random but
well-formed fields they could legitimately remove the only metaserver; a client's Raft
frames are refused by role (the role tests)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quick_timers import QUICK_TIMERS

from dfs import rpc
from dfs.cli import cluster as local
from dfs.client import FsClient
from dfs.client.fsclient import ROOT_INO
from dfs.secret import load_secret
from dfs.wire.errors import DfsError
from dfs.wire.ops import CHUNKSERVER_OPS, METASERVER_OPS
from dfs.wire.spec import BOOL, BYTES, INT, LIST, MAP, STR, UINT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Every operation each server defines (dfs/wire/ops_meta.py, ops_chunk.py), but the
# membership changes.
META_OPS = sorted(op for op in METASERVER_OPS if not op.startswith("admin.meta_"))
CS_OPS = sorted(CHUNKSERVER_OPS)
FIELDS = ["parent", "name", "ino", "mode", "uid", "gid", "target", "size", "offset",
          "chunk_id", "version", "token", "chain", "holder", "inos", "ops", "count", "goal",
          "chunks", "cookie", "limit", "flags", "new_parent", "new_name", "value", "path",
          "threshold", "client", "seq", "first_chunk", "exclusive", "keep", "length",
          "cs_id", "address", "uuid", "replicas", "writing", "sync", "expect_length",
          "timeout_ms", "first"]  # fmt: skip
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
LEAF = st.one_of(
    st.none(), st.booleans(), INT64, st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**64 - 1]),
    st.floats(allow_nan=True), st.binary(max_size=300), st.text(max_size=40),
)  # fmt: skip
VALUE = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8),
                                                                      inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
SANE = st.one_of(
    st.integers(min_value=0, max_value=64), st.integers(min_value=0, max_value=2**20),
    st.binary(min_size=1, max_size=16), st.booleans(), st.lists(st.integers(0, 64), max_size=4),
)  # fmt: skip
# The fields each op takes, by kind, from its definition: requests drawn from them pass the
# type checks and reach the handlers; mutations then break one part or another.
TEMPLATES: dict[str, dict[str, str]] = {
    name: {f.name: f.kind for f in op.fields}
    for name, op in {**METASERVER_OPS, **CHUNKSERVER_OPS}.items()
}
SANE_BY_KIND = {
    UINT: st.integers(min_value=0, max_value=64) | st.integers(min_value=0, max_value=2**40),
    INT: st.integers(min_value=0, max_value=64) | st.integers(min_value=-64, max_value=2**40),
    BYTES: st.binary(min_size=1, max_size=16),
    STR: st.text(min_size=1, max_size=16),
    BOOL: st.booleans(),
    LIST: st.lists(st.integers(0, 64), max_size=4) | st.lists(VALUE, max_size=3),
    MAP: st.dictionaries(st.text(max_size=8), SANE, max_size=3),
}


@st.composite
def plausible(draw: st.DrawFn, op: str) -> dict[str, Any]:
    """``op``'s fields with values of the right type, then maybe one broken."""
    fields = {name: draw(SANE_BY_KIND.get(kind, VALUE)) for name, kind in TEMPLATES[op].items()}
    mutation = draw(st.integers(0, 3))
    if mutation == 1 and fields:
        fields.pop(draw(st.sampled_from(sorted(fields))))
    elif mutation == 2 and fields:
        fields[draw(st.sampled_from(sorted(fields)))] = draw(VALUE)
    elif mutation == 3:
        fields[draw(st.sampled_from(FIELDS) | st.text(max_size=12))] = draw(VALUE)
    return fields


@st.composite
def frame(draw: st.DrawFn) -> tuple[str, dict[str, Any], bytes, bool]:
    to_meta = draw(st.booleans())
    ops = META_OPS if to_meta else CS_OPS
    op = draw(st.sampled_from(ops) | st.text(max_size=20))
    if op in TEMPLATES and draw(st.integers(0, 3)):
        fields = draw(plausible(op))
    else:  # wild fields, or plausible ones of no op in particular
        fields = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), VALUE,
                                      max_size=8)
                      | st.dictionaries(st.sampled_from(FIELDS), SANE, min_size=1, max_size=10))  # fmt: skip
    # (A big payload is one repeated byte: hypothesis draws every byte from a bounded
    # buffer, and a frame's size is what matters there.)
    payload = draw(
        st.binary(max_size=512)
        | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=1), st.integers(1, 300_000))
    )
    return op, fields, payload, to_meta


RSS_GROWTH_MAX = 150 << 20
BASELINE: dict[str, int] = {}  # each server's RSS once ready
ANSWERS: dict[str, int] = {}  # what the fuzzed requests got: "ok" or an error code


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[local.Layout, dict[str, int]]]:
    lay = local.init_layout(
        tmp_path_factory.mktemp("cluster"), metaservers=1, chunkservers=1, chunk_size=1 << 20,
        **QUICK_TIMERS,
    )  # fmt: skip
    pids = local.start_daemons(lay)
    try:
        anyio.run(local.wait_ready, lay, 60.0)
        BASELINE.update({name: rss_bytes(pid) for name, pid in pids.items()})
        yield lay, pids
    finally:
        local.stop_daemons(lay, timeout_s=10)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def send_all(layout: local.Layout, frames: list[Any], seed: int) -> None:
    secret = load_secret(layout.secret_file)
    addresses = {True: layout.meta_addresses[0], False: layout.chunkservers[1]}
    conns: dict[bool, rpc.Connection] = {}

    async def conn_to(to_meta: bool) -> rpc.Connection:
        conn = conns.get(to_meta)
        if conn is None or conn.closed:
            if conn is not None:  # the server dropped it: a frame it could not take
                ANSWERS["dropped"] = ANSWERS.get("dropped", 0) + 1
            host, port = addresses[to_meta].rsplit(":", 1)
            conn = conns[to_meta] = await rpc.connect(host, int(port), secret, name="fuzz")
        return conn

    try:
        for op, fields, payload, to_meta in frames:
            reserved = ("op", "id", "ok", "oneway", "payload", "timeout_s")
            fields = {k: v for k, v in fields.items() if k not in reserved}
            fields.setdefault("timeout_ms", 2000)
            conn = await conn_to(to_meta)
            try:
                await conn.call(op, payload, timeout_s=10.0, **fields)
                answer = "ok"
            except DfsError as e:  # the expected answer: an error, the connection intact
                answer = e.code.name
            except (TypeError, ValueError, OverflowError):
                answer = "not sent"  # not encodable by msgpack here
            ANSWERS[answer] = ANSWERS.get(answer, 0) + 1
        # Garbage after the handshake: the server drops this connection only.
        rng = random.Random(seed)
        for to_meta in addresses:
            conn = await conn_to(to_meta)
            if conn._transport is not None:
                conn._transport.write(rng.randbytes(rng.randrange(1, 4096)))
    finally:
        for conn in conns.values():
            conn.close()


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)  # fmt: skip
@given(frames=st.lists(frame(), min_size=10, max_size=25), seed=st.integers(0, 2**32))
def test_mutated_frames_leave_the_servers_serving(
    cluster: tuple[local.Layout, dict[str, int]], frames: list[Any], seed: int
) -> None:
    layout, pids = cluster
    anyio.run(send_all, layout, frames, seed)
    for name, pid in pids.items():
        assert Path(f"/proc/{pid}").exists(), f"{name} died"


def test_after_the_fuzz_the_cluster_serves_and_memory_is_bounded(
    cluster: tuple[local.Layout, dict[str, int]],
) -> None:
    """Runs after the fuzz (file order): a legitimate client is served; each server's
    RSS grew by less than ``RSS_GROWTH_MAX`` over a fresh one's."""
    layout, pids = cluster
    data = os.urandom(200_000)

    async def use() -> bytes:
        secret = load_secret(layout.secret_file)
        async with FsClient.open_cluster(layout.meta_addresses, secret) as fs:
            _, f = await fs.create_and_open(ROOT_INO, b"after-fuzz", 0o100644,
                                            os.O_RDWR | os.O_CREAT)  # fmt: skip
            await f.write(0, data)
            await f.close()
            attr = await fs.lookup(ROOT_INO, b"after-fuzz")
            async with await fs.open(attr.ino, os.O_RDONLY) as g:
                return await g.read(0, len(data))

    assert anyio.run(use) == data
    status = anyio.run(local.cluster_status, layout.meta_addresses, load_secret(layout.secret_file))
    assert status["leader"] == 1
    for name, pid in pids.items():
        assert rss_bytes(pid) < BASELINE[name] + RSS_GROWTH_MAX, name
    # The fuzz reached the handlers: several kinds of refusal, not one wall.
    print("fuzzed requests answered:", dict(sorted(ANSWERS.items())))
    assert sum(ANSWERS.values()) >= 200
    assert len([code for code in ANSWERS if code not in ("ok", "not sent")]) >= 4
