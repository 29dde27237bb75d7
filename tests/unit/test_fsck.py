"""metaserver/fsck.py: each chunk's finding from the chunk table and the leader's soft
state (liveness, bad marks, unanswered pushes), a page's summary, paging, and the
goal survey; against a real namespace, registry and chunk core."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dfs.wire.errors import error_from_wire
from metaserver import fsck
from metaserver.chunks.core import ChunkCore
from metaserver.chunks.placement import Placer, Registry
from metaserver.namespace import Namespace, encode_command
from metaserver.namespace.state import ROOT_INO

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

CHUNK = 1 << 20


class Cluster:
    def __init__(self, servers: int = 4) -> None:
        self.ns = Namespace(chunk_size_bytes=CHUNK, trash_s_default=0)  # removals free at once
        self.now = 100.0
        self.registry = Registry(dead_timeout_s=10.0, started_s=0.0)
        self.core = ChunkCore(Placer("weighted", random.Random(1)), quiet_s=0.0)
        self.seq = 0
        for i in range(servers):
            self.apply("cs_register", {"uuid": f"u{i}", "address": f"h{i}:1"})
        self.beat(*self.ns.chunkservers())

    def apply(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        result = self.ns.apply(encode_command(op, 0, 0, self.seq, args))
        if not result["ok"]:
            raise error_from_wire(result["err"])
        return result

    def beat(self, *cs_ids: int) -> None:
        for cs_id in cs_ids:
            self.registry.heartbeat(cs_id, f"h{cs_id}:1", self.now, capacity_bytes=1 << 30,
                                    used_bytes=0, chunks=0, load=0, pid=1)  # fmt: skip

    def mkdir(self, name: bytes, parent: int = ROOT_INO) -> int:
        return int(self.apply("mkdir", {"parent": parent, "name": name, "mode": 0o755,
                                        "uid": 0, "gid": 0})["attr"]["ino"])  # fmt: skip

    def file(self, name: bytes, replicas: list[int], goal: int, parent: int = ROOT_INO,
             length: int = CHUNK, chunks: int = 1) -> list[int]:  # fmt: skip
        ino = self.apply("create", {"parent": parent, "name": name, "mode": 0o100644,
                                    "uid": 0, "gid": 0})["attr"]["ino"]  # fmt: skip
        self.apply("set_goal", {"ino": ino, "goal": goal})
        ids = []
        for index in range(chunks):
            h = self.apply("write_handle", {"ino": ino, "index": index, "replicas": replicas})
            ids.append(int(h["chunk_id"]))
            if length:
                self.apply("commit", {"ino": ino, "size": index * CHUNK + length, "mtime_ns": 1,
                                      "chunks": [[index, length, h["chunk_id"], h["version"]]]})  # fmt: skip
        return ids

    def page(self, path: bytes = b"/", cursor: Any = None, limit: int = 1000) -> dict[str, Any]:
        from metaserver.namespace.tree import resolve

        root = resolve(self.ns, path)
        return fsck.fsck_page(self.ns, self.registry, self.core, self.now, root, cursor, limit)


def version(c: Cluster, chunk_id: int) -> int:
    return int(c.ns.chunk_table[chunk_id].version)


def test_each_finding_and_the_summary() -> None:
    c = Cluster(4)
    c.file(b"ok", [1, 2], goal=2)
    c.file(b"over", [1, 2, 3], goal=2)
    c.file(b"empty", [1, 2], goal=2, length=0)
    [lost] = c.file(b"lost", [4], goal=2)
    c.file(b"thin", [1], goal=2)
    [bad] = c.file(b"bad", [2], goal=1)
    [corrupt] = c.file(b"corrupt", [1, 2, 3], goal=2)
    [unsure] = c.file(b"unsure", [1, 3], goal=2)
    c.core.mark_bad(bad, 2, version(c, bad))
    c.core.mark_bad(corrupt, 3, version(c, corrupt))
    c.core.push_unanswered(unsure, 3, version(c, unsure))
    c.now += 20
    c.beat(1, 2, 3)  # chunkserver 4 is dead
    page = c.page()
    assert page["cursor"] is None and page["settling"] is False
    found = {f["path"]: f for f in page["files"]}
    assert sorted(found) == [b"bad", b"corrupt", b"lost", b"thin", b"unsure"]
    assert found[b"lost"]["problems"] == ["missing"]
    assert found[b"lost"]["chunks"] == [{"chunk_id": lost, "index": 0, "problem": "missing",
                                          "replicas": [4], "live": 0, "good": 0}]  # fmt: skip
    assert found[b"thin"]["chunks"][0]["problem"] == "under_goal"
    assert found[b"bad"]["chunks"][0] == {
        "chunk_id": bad, "index": 0, "problem": "no_good_replica", "replicas": [2],
        "live": 1, "good": 0, "quarantined_on": 2,
    }  # fmt: skip
    assert found[b"corrupt"]["chunks"][0]["problem"] == "corrupt"
    assert found[b"corrupt"]["chunks"][0]["quarantined_on"] == 3
    assert found[b"unsure"]["chunks"][0]["problem"] == "under_goal"
    assert found[b"unsure"]["chunks"][0]["good"] == 1
    s = page["summary"]
    assert (s["files"], s["dirs"], s["others"], s["files_at_risk"]) == (8, 1, 0, 5)
    assert (s["chunks"], s["empty_chunks"], s["over_goal"]) == (8, 1, 1)
    assert s["problems"] == {"missing": 1, "no_good_replica": 1, "under_goal": 2, "corrupt": 1}
    assert s["replicas"] == {"0": 2, "1": 2, "2": 2, "3": 1}


def test_a_subtree_in_pages_names_paths_below_it() -> None:
    c = Cluster(3)
    a = c.mkdir(b"a")
    sub = c.mkdir(b"sub", a)
    c.file(b"outside", [3], goal=1)  # missing, but not under /a
    for i in range(5):
        c.file(b"f%d" % i, [1, 3] if i % 2 else [1], goal=2, parent=sub)
    c.now += 20
    c.beat(1, 2)  # chunkserver 3 is dead
    files: list[bytes] = []
    cursor = None
    pages = 0
    while True:
        page = c.page(b"/a", cursor, limit=2)
        assert page["total"] is None
        files += [f["path"] for f in page["files"]]
        pages += 1
        cursor = page["cursor"]
        if cursor is None:
            break
    assert pages >= 3
    assert files == [b"sub/f%d" % i for i in range(5)]
    assert c.page(b"/")["total"] == len(c.ns.inodes)


def test_a_page_ends_once_it_names_as_many_files_as_it_may(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fsck, "FILES_PAGE_MAX", 2)
    monkeypatch.setattr(fsck, "CHUNKS_PER_FILE_MAX", 2)
    c = Cluster(2)
    for i in range(5):
        c.file(b"f%d" % i, [2], goal=1, chunks=3)
    c.now += 20
    c.beat(1)
    first = c.page()
    assert [f["path"] for f in first["files"]] == [b"f0", b"f1"]
    assert first["files"][0]["chunks_at_risk"] == 3 and len(first["files"][0]["chunks"]) == 2
    rest = c.page(cursor=first["cursor"])
    assert [f["path"] for f in rest["files"]] == [b"f2", b"f3"]


def test_a_new_leader_says_it_is_settling() -> None:
    c = Cluster(1)
    c.core.restart(c.now, grace_s=10.0)
    assert c.page()["settling"] is True
    c.now += 11
    assert c.page()["settling"] is False


def test_goals_page_counts_each_kind_by_goal() -> None:
    c = Cluster(1)
    a = c.mkdir(b"a")
    c.apply("set_goal", {"ino": a, "goal": 2})
    c.file(b"f", [1], goal=2, parent=a)
    c.file(b"g", [1], goal=1, parent=a)
    c.apply("symlink", {"parent": a, "name": b"l", "target": b"f", "uid": 0, "gid": 0})
    from metaserver.namespace.tree import resolve

    page = fsck.goals_page(c.ns, resolve(c.ns, b"/a"), None)
    assert page == {"files": {"2": 1, "1": 1}, "dirs": {"2": 1}, "others": {"2": 1},
                    "cursor": None, "total": None}  # fmt: skip


def test_a_chunk_whose_newest_version_no_member_took_has_no_good_replica() -> None:
    c = Cluster(2)
    [chunk_id] = c.file(b"f", [1, 2], goal=2)
    root = c.ns.inodes[ROOT_INO]
    page = fsck.fsck_page(c.ns, c.registry, c.core, c.now, root, None,
                          unpushed=lambda cid: cid == chunk_id)  # fmt: skip
    [f] = page["files"]
    assert f["chunks"][0]["problem"] == "no_good_replica"
    assert (f["chunks"][0]["live"], f["chunks"][0]["good"]) == (2, 0)
