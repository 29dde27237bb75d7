"""Golden scenario tests for the Raft core, as readable transcripts (etcd's datadriven style).

Each file in ``raft_testdata/`` is a list of commands; under each command, after a ``----``
line, stands what the command printed. The test runs every command against a small
in-memory cluster of cores and compares. After a deliberate change of behaviour,
regenerate the expected output with

    DFS_REWRITE=1 scripts/test tests/unit/test_raft_transcripts.py

and read the diff: it is the review of the change.

Commands (node ids are integers):
    add-nodes N [voters=1,2,3] [learners=4] [lease=on]  start nodes 1..N; the first ones
                                  bootstrap; lease=on: leader leases (Config.read_lease)
    campaign ID                   start an election on ID
    tick ID [N]                   tick ID N times (default 1)
    tick-election ID              tick ID until its election timeout fires
    stabilize                     deliver messages and handle Readies until nothing moves
    propose ID DATA               propose an entry on ID
    read-index ID CTX...          ask ID for ReadIndexes (together, before its next Ready)
    lease-read ID                 ask ID for a read on its lease: the index, or "no lease"
    transfer-leadership ID TO
    propose-conf-change ID add-voter|add-learner|remove NODE
    compact ID                    snapshot ID at its applied index and compact its log
    isolate ID / heal             drop every message to and from ID / stop dropping
    status                        role, term, leader, commit, applied, last index of each node
    log ID                        the entries ID holds in memory
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dfs.types import LogIndex, NodeId
from metaserver.raft.core import Config, NotLeaderError, ProposalDroppedError, RawNode
from metaserver.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    Snapshot,
    SnapshotMeta,
    conf_change_from_bytes,
)

TESTDATA = Path(__file__).parent / "raft_testdata"


def fmt_entry(e: Entry) -> str:
    if e.type == EntryType.EMPTY:
        body = "empty"
    elif e.type == EntryType.CONF_CHANGE:
        cc = conf_change_from_bytes(e.data)
        body = f"conf:{cc.type.name.lower()}({cc.node_id})"
    else:
        body = e.data.decode()
    return f"{e.term}/{e.index} {body}"


def fmt_msg(m: Message) -> str:
    parts = [f"{m.frm}->{m.to} {m.type.name} term={m.term}"]
    if m.type in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"log={m.log_term}/{m.index}")
    if m.type == MessageType.APP:
        parts.append(f"commit={m.commit}")
        if m.entries:
            parts.append("[" + ", ".join(fmt_entry(e) for e in m.entries) + "]")
    if m.type == MessageType.APP_RESP:
        parts.append(f"index={m.index}")
        if m.reject:
            parts.append(f"rejected hint={m.log_term}/{m.reject_hint}")
    if m.type in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP) and m.reject:
        parts.append("rejected")
    if m.type == MessageType.HEARTBEAT:
        parts.append(f"commit={m.commit}")
    if m.type == MessageType.SNAP and m.snapshot is not None:
        meta = m.snapshot.meta
        parts.append(f"snapshot={meta.term}/{meta.index} offset={m.offset} done={m.done}")
    if m.type == MessageType.SNAP_RESP:
        parts.append(f"index={m.index} offset={m.offset} done={m.done} reject={m.reject}")
    if m.context:
        # ReadIndex rounds are 8-byte integers; other contexts are readable words.
        ctx = m.context
        shown = str(int.from_bytes(ctx, "big")) if len(ctx) == 8 and ctx[0] == 0 else ctx.decode()
        parts.append(f"ctx={shown}")
    return " ".join(parts)


class Cluster:
    def __init__(self) -> None:
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.inbox: list[Message] = []
        self.isolated: set[int] = set()
        self.snapshot_data: dict[int, bytes] = {}

    def add_nodes(
        self, n: int, voters: tuple[int, ...], learners: tuple[int, ...], lease: bool = False
    ) -> str:
        conf = ConfState(tuple(NodeId(v) for v in voters), tuple(NodeId(v) for v in learners))
        for i in range(1, n + 1):
            boot = conf if i in voters or i in learners else None
            self.nodes[i] = RawNode(
                Config(
                    id=NodeId(i),
                    election_ticks=10,
                    heartbeat_ticks=1,
                    snapshot_chunk_bytes=8,
                    read_lease=lease,
                ),
                random.Random(i),
                hard_state=HardState(),
                snapshot=None,
                entries=[],
                bootstrap=boot,
            )
            self.applied[i] = []
        return ""

    def handle(self, i: int, rd: Ready, out: list[str]) -> None:
        node = self.nodes[i]
        lines = []
        if rd.soft_state is not None:
            lines.append(f"  role={rd.soft_state.role.name} leader={rd.soft_state.leader}")
        if rd.hard_state is not None:
            h = rd.hard_state
            lines.append(f"  hard-state term={h.term} vote={h.vote} commit={h.commit}")
        if rd.snapshot is not None:
            m = rd.snapshot.meta
            lines.append(f"  install-snapshot {m.term}/{m.index} voters={list(m.conf.voters)}")
            self.snapshot_data[i] = rd.snapshot.data
        if rd.entries:
            lines.append("  persist " + ", ".join(fmt_entry(e) for e in rd.entries))
        if rd.committed_entries:
            lines.append("  apply " + ", ".join(fmt_entry(e) for e in rd.committed_entries))
            self.applied[i].extend(rd.committed_entries)
        for rs in rd.read_states:
            lines.append(f"  read-state index={rs.index} ctx={rs.context.decode()}")
        for m in rd.messages:
            lines.append("  send " + fmt_msg(m))
            if m.frm not in self.isolated and m.to not in self.isolated:
                self.inbox.append(m)
        node.advance(rd)
        out.append(f"> {i} ready")
        out.extend(lines)

    def process(self, out: list[str]) -> bool:
        moved = False
        for i, node in sorted(self.nodes.items()):
            while node.has_ready():
                self.handle(i, node.ready(), out)
                moved = True
        return moved

    def stabilize(self) -> str:
        out: list[str] = []
        for _ in range(1000):
            moved = self.process(out)
            if self.inbox:
                msgs, self.inbox = self.inbox, []
                for m in msgs:
                    self.nodes[m.to].step(m)
                moved = True
            if not moved:
                return "\n".join(out)
        raise AssertionError("did not stabilize")

    def status(self) -> str:
        out = []
        for i, n in sorted(self.nodes.items()):
            s = n.status()
            out.append(
                f"{i}: {s.role.name} term={s.term} leader={s.leader} commit={s.commit} "
                f"applied={s.applied} last={s.last_index} voters={list(s.conf.voters)} "
                f"learners={list(s.conf.learners)}"
            )
        return "\n".join(out)

    def run(self, cmd: str) -> str:
        words = cmd.split()
        op, args = words[0], words[1:]
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        pos = [a for a in args if "=" not in a]

        def ids(s: str | None) -> tuple[int, ...]:
            return tuple(int(x) for x in s.split(",")) if s else ()

        out: list[str] = []
        try:
            if op == "add-nodes":
                n = int(pos[0])
                voters = ids(kw.get("voters")) or tuple(range(1, n + 1))
                lease = kw.get("lease") == "on"
                return self.add_nodes(n, voters, ids(kw.get("learners")), lease)
            if op == "campaign":
                self.nodes[int(pos[0])].campaign()
            elif op == "tick":
                for _ in range(int(pos[1]) if len(pos) > 1 else 1):
                    self.nodes[int(pos[0])].tick()
            elif op == "tick-election":
                node = self.nodes[int(pos[0])]
                for _ in range(node.randomized_election_ticks):
                    node.tick()
            elif op == "stabilize":
                return self.stabilize()
            elif op == "propose":
                idx = self.nodes[int(pos[0])].propose(pos[1].encode())
                out.append(f"index {idx}")
            elif op == "read-index":
                for ctx in pos[1:]:
                    self.nodes[int(pos[0])].read_index(ctx.encode())
            elif op == "lease-read":
                index = self.nodes[int(pos[0])].lease_read_index()
                out.append("no lease" if index is None else f"lease index={index}")
            elif op == "transfer-leadership":
                self.nodes[int(pos[0])].transfer_leader(NodeId(int(pos[1])))
            elif op == "propose-conf-change":
                kind = {
                    "add-voter": ConfChangeType.ADD_VOTER,
                    "add-learner": ConfChangeType.ADD_LEARNER,
                    "remove": ConfChangeType.REMOVE,
                }[pos[1]]
                idx = self.nodes[int(pos[0])].propose_conf_change(
                    ConfChange(kind, NodeId(int(pos[2])))
                )
                out.append(f"index {idx}")
            elif op == "compact":
                node = self.nodes[int(pos[0])]
                applied = node.applied
                term = node.log.term(applied)
                assert term is not None
                data = f"state-of-{pos[0]}-at-{applied}".encode()
                node.compact(Snapshot(SnapshotMeta(LogIndex(applied), term, node.conf), data))
                out.append(f"compacted to {applied}, log starts at {node.log.offset + 1}")
            elif op == "isolate":
                self.isolated.add(int(pos[0]))
            elif op == "heal":
                self.isolated.clear()
            elif op == "status":
                return self.status()
            elif op == "log":
                node = self.nodes[int(pos[0])]
                return "\n".join(fmt_entry(e) for e in node.log.entries) or "(empty)"
            else:
                raise AssertionError(f"unknown command {op}")
        except (NotLeaderError, ProposalDroppedError) as e:
            out.append(f"error: {type(e).__name__}: {e}")
        self.process(out)
        return "\n".join(out)


def parse(text: str) -> list[tuple[str, str]]:
    """Blocks of `command\\n----\\noutput` separated by blank lines."""
    cases = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].startswith("#"):
            i += 1
            continue
        cmd = lines[i].strip()
        assert lines[i + 1] == "----", f"line {i + 2}: expected ----"
        i += 2
        out = []
        while i < len(lines) and lines[i] != "":
            out.append(lines[i])
            i += 1
        cases.append((cmd, "\n".join(out)))
    return cases


def render(cases: list[tuple[str, str]]) -> str:
    return "\n".join(f"{cmd}\n----\n{out}\n" for cmd, out in cases)


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    header = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#"))
    cases = parse(path.read_text())
    cluster = Cluster()
    got = [(cmd, cluster.run(cmd)) for cmd, _ in cases]
    if os.environ.get("DFS_REWRITE"):
        path.write_text(header + "\n" + render(got))
        return
    for (cmd, want), (_, have) in zip(cases, got, strict=True):
        assert have == want, f"{path.name}: command `{cmd}` printed:\n{have}\n--- expected:\n{want}"
