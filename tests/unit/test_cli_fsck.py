"""``dfs admin fsck``, ``setgoal`` and ``getgoal`` against golden files, with the leader's
answers scripted (``dfs.cli.admin._session`` replaced, as in test_cli_admin.py): the
``--json`` shapes scripts rely on, the texts, the paging (each cursor sent back) and the
exit codes. ``DFS_UPDATE_GOLDEN=1`` rewrites the files after a deliberate change."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from dfs.cli import admin as admin_cli
from dfs.cli import admin_fsck
from dfs.cli.common import run_async
from dfs.cli.main import cli
from dfs.wire.errors import NotFound

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

GOLDEN = Path(__file__).parent / "cli_golden"
CURSOR = [[1, b"", 4], [12, b"tree", 9]]


def summary(**over: Any) -> dict[str, Any]:
    s = {
        "files": 10, "dirs": 2, "others": 1, "bytes": 5 << 20, "chunks": 12,
        "empty_chunks": 1, "over_goal": 0, "files_at_risk": 0,
        "problems": {"missing": 0, "no_good_replica": 0, "under_goal": 0, "corrupt": 0},
        "replicas": {"2": 11},
    }  # fmt: skip
    s.update(over)
    return s


LOST = {
    "path": b"lost", "ino": 40, "goal": 2, "size": 3 << 20, "problems": ["missing"],
    "chunks_at_risk": 3,
    "chunks": [
        {"chunk_id": 70, "index": 0, "problem": "missing", "replicas": [1, 3], "live": 0,
         "good": 0},
        {"chunk_id": 71, "index": 1, "problem": "missing", "replicas": [], "live": 0,
         "good": 0, "quarantined_on": 2},
    ],
}  # fmt: skip
THIN = {
    "path": b"sub/thin", "ino": 41, "goal": 3, "size": 100, "problems": ["under_goal"],
    "chunks_at_risk": 1,
    "chunks": [{"chunk_id": 80, "index": 0, "problem": "under_goal", "replicas": [1, 2],
                "live": 2, "good": 1, "quarantined_on": 2}],
}  # fmt: skip
PAGE1 = {"files": [LOST], "cursor": CURSOR, "total": 30, "settling": False,
         "summary": summary(files_at_risk=1, replicas={"0": 3, "2": 8},
                            problems={"missing": 3, "no_good_replica": 0, "under_goal": 0,
                                      "corrupt": 0})}  # fmt: skip
PAGE2 = {"files": [THIN], "cursor": None, "total": 30, "settling": True,
         "summary": summary(files=5, dirs=1, others=0, bytes=100, chunks=2, empty_chunks=0,
                            over_goal=1, files_at_risk=1, replicas={"1": 1, "3": 1},
                            problems={"missing": 0, "no_good_replica": 0, "under_goal": 1,
                                      "corrupt": 0})}  # fmt: skip
HEALTHY = {"files": [], "cursor": None, "total": None, "settling": False, "summary": summary()}


class Leader:
    """Scripted answers: each op's list is consumed in order (the last one repeats); a
    ``DfsError`` in the list is raised."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, bool, dict[str, Any]]] = []

    async def ask(self, op: str, mutate: bool = False, **fields: Any) -> dict[str, Any]:
        self.calls.append((op, mutate, fields))
        queue = self.answers[op]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


@pytest.fixture
def leader(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[Any]]], Leader]:
    def make(answers: dict[str, list[Any]]) -> Leader:
        scripted = Leader(answers)

        def session(
            directory: Path, meta: str | None, secret: Path | None,
            work: Callable[..., Awaitable[Any]],
        ) -> Any:  # fmt: skip
            return run_async(lambda: work(scripted.ask))  # a DfsError: a one-line error

        monkeypatch.setattr(admin_cli, "_session", session)
        return scripted

    return make


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("DFS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["admin", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_fsck_pages_names_files_and_exits_1(leader: Callable[..., Leader]) -> None:
    scripted = leader({"admin.fsck": [PAGE1, PAGE2]})
    out = run("fsck", "/tree", "--json", code=1)
    golden("fsck.json", out)
    report = json.loads(out)
    assert [f["path"] for f in report["files"]] == ["/tree/lost", "/tree/sub/thin"]
    assert scripted.calls == [
        ("admin.fsck", False, {"path": b"/tree"}),
        ("admin.fsck", False, {"path": b"/tree", "cursor": CURSOR}),
    ]
    leader({"admin.fsck": [PAGE1, PAGE2]})
    golden("fsck.txt", run("fsck", "tree", code=1))


def test_fsck_healthy_exits_0_and_could_not_check_exits_3(
    leader: Callable[..., Leader],
) -> None:
    scripted = leader({"admin.fsck": [HEALTHY]})
    out = run("fsck")
    assert scripted.calls == [("admin.fsck", False, {"path": b"/"})]
    assert out.endswith("HEALTHY\n")
    golden("fsck_healthy.txt", out)
    assert json.loads(run("fsck", "--json"))["healthy"] is True
    leader({"admin.fsck": [NotFound("no such file or directory")]})
    assert "not found: no such file or directory" in run("fsck", "/nope", code=3)


def test_setgoal_pages_and_goes_on_after_a_failed_path(leader: Callable[..., Leader]) -> None:
    pages = [{"changed": 4096, "unchanged": 1, "cursor": CURSOR},
             {"changed": 10, "unchanged": 2, "cursor": None}]  # fmt: skip
    scripted = leader({"admin.set_goal": pages})
    golden("setgoal_r.txt", run("setgoal", "-r", "2", "/tree"))
    assert scripted.calls == [
        ("admin.set_goal", True, {"path": b"/tree", "goal": 2, "recursive": True}),
        ("admin.set_goal", True,
         {"path": b"/tree", "goal": 2, "recursive": True, "cursor": CURSOR}),
    ]  # fmt: skip
    one = {"changed": 1, "unchanged": 0, "cursor": None}
    leader({"admin.set_goal": [one, NotFound("no such file or directory"), one]})
    result = CliRunner().invoke(cli, ["admin", "setgoal", "3", "/a", "/b", "/c"])
    assert result.exit_code == 1
    assert result.stdout == "/a: 3\n/c: 3\n"
    assert "/b: not found" in result.output
    run("setgoal", "0", "/a", code=2)
    run("setgoal", "17", "/a", code=2)
    run("setgoal", "2", code=2)


def test_getgoal_plain_recursive_and_json(leader: Callable[..., Leader]) -> None:
    scripted = leader({"admin.goals": [{"goal": 3, "kind": "dir"}, {"goal": 2, "kind": "file"}]})
    golden("getgoal.json", run("getgoal", "/tree", "/tree/f", "--json"))
    assert scripted.calls[0] == ("admin.goals", False, {"path": b"/tree"})
    pages = [
        {"files": {"2": 4000, "3": 1}, "dirs": {"2": 90}, "others": {}, "cursor": CURSOR,
         "total": None},
        {"files": {"2": 10}, "dirs": {"2": 1, "10": 1}, "others": {"2": 1}, "cursor": None,
         "total": None},
    ]  # fmt: skip
    scripted = leader({"admin.goals": list(pages)})
    golden("getgoal_r.json", run("getgoal", "-r", "/tree", "--json"))
    assert scripted.calls[1] == (
        "admin.goals",
        False,
        {"path": b"/tree", "recursive": True, "cursor": CURSOR},
    )
    leader({"admin.goals": list(pages)})
    golden("getgoal_r.txt", run("getgoal", "-r", "/tree"))
    leader({"admin.goals": [{"goal": 3, "kind": "dir"}]})
    assert run("getgoal", "/tree") == "/tree: 3\n"


def test_a_walk_of_several_pages_shows_progress_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for tty, pages in ((True, [PAGE1, PAGE2]), (False, [PAGE1, PAGE2]), (True, [HEALTHY])):
        err = Tty() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        report = anyio.run(admin_fsck._fsck_walk, Leader({"admin.fsck": list(pages)}).ask, b"/")
        assert report["summary"]["files"] == sum(p["summary"]["files"] for p in pages)
        if tty and len(pages) > 1:  # the bar after the first page, ended by a newline
            assert (
                err.getvalue() == "\r[##########..............]  43%  13 checked, 1 at risk\x1b[K\n"
            )
        else:
            assert err.getvalue() == ""
