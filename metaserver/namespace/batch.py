"""The ``batch`` command: several namespace ops in one Raft entry. Pure.

What it owns: applying a batch's sub-ops in order, each to its own result. A client that
removes names under directory leases (docs/ARCHITECTURE.md, "Directory leases") ships
them in one ``fs.batch`` request, which the leader proposes as one command, so that
``rm -rf`` costs one commit per batch instead of one per name.

Rules:
1. Each sub-op is applied exactly as the op alone would be (``ops.OPS``), to the state
   the sub-ops before it left. Every op checks before it changes anything (``ops.py``
   rule 1), so a sub-op that fails leaves the state as it was, and the ones after it still
   run: one error neither undoes nor stops the others.
2. The whole batch is one session command (one ``client``, ``seq``): a retry gets the
   first answer, every sub-op's result included, and nothing is applied twice.
3. Only ``BATCH_OPS`` may be batched, at most ``BATCH_OPS_MAX``; a malformed batch is
   refused whole (``ProtocolError``/``Invalid``) before any sub-op runs.
"""

from __future__ import annotations

from typing import Any

from dfs.wire.errors import DfsError, InternalError, ProtocolError, error_to_wire
from dfs.wire.limits import BATCH_OPS_MAX
from metaserver.namespace.commands import BATCH_OPS, check_fields
from metaserver.namespace.ops import OPS, Result
from metaserver.namespace.state import State

_BATCH = frozenset({"ops"})


def batch(st: State, now_ns: int, a: dict[str, Any]) -> Result:
    check_fields(a, _BATCH)
    ops = a.get("ops")
    if type(ops) is not list:
        raise ProtocolError("field 'ops' must be a list")
    if not 1 <= len(ops) <= BATCH_OPS_MAX:
        raise ProtocolError(f"a batch holds 1..{BATCH_OPS_MAX} ops")
    for sub in ops:
        if (
            type(sub) is not list
            or len(sub) != 2
            or sub[0] not in BATCH_OPS
            or type(sub[1]) is not dict
        ):
            raise ProtocolError(f"a batch op is [op, args] with op in {sorted(BATCH_OPS)}")
    results: list[dict[str, Any]] = []
    for op, args in ops:
        try:
            result = OPS[op](st, now_ns, args)
        except DfsError as e:
            result = {"ok": False, "err": error_to_wire(e)}
        except Exception as e:  # a bug: recorded as namespace.apply records one
            err = InternalError(f"{op} failed: {type(e).__name__}", op=op)
            result = {"ok": False, "err": error_to_wire(err)}
        results.append(result)
    return {"ok": True, "results": results}
