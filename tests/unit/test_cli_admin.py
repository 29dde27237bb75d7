"""``dfs admin`` and ``dfs status`` output against golden files, with the leader's answers
scripted (the CLI's one seam to the cluster, ``dfs.cli.admin._session``, replaced): the
``--json`` outputs scripts rely on, the texts, the exit codes, and the progress display on
a terminal and off it. ``DFS_UPDATE_GOLDEN=1`` rewrites the files after a deliberate change.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from dfs.cli import admin as admin_cli
from dfs.cli.main import cli, render_status

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

GOLDEN = Path(__file__).parent / "cli_golden"

PROGRESS = {
    "running": True,
    "threshold_pct": 5.0,
    "bandwidth_bps": 8 << 20,
    "moved_bytes": 96 << 20,
    "moves_done": 96,
    "in_flight": 2,
    "left_bytes": 32 << 20,
    "spread_pct": 7.25,
    "rate_bps": 4 << 20,
    "stop_reason": "",
}
STOPPED = {
    **PROGRESS,
    "running": False,
    "threshold_pct": None,
    "bandwidth_bps": None,
    "in_flight": 0,
    "left_bytes": 0,
    "rate_bps": 0,
    "stop_reason": "balanced",
    "spread_pct": 3.5,
}
PLAN = {
    "threshold_pct": 5.0,
    "moves": [
        {"chunk_id": 10 + i, "from": 1, "to": 4, "bytes": 1 << 20} for i in range(22)
    ],
    "moves_total": 22,
    "bytes": 22 << 20,
    "spread_before_pct": 31.25,
    "spread_after_pct": 4.5,
    "servers": [
        {"cs_id": 1, "used_bytes": 40 << 20, "capacity_bytes": 64 << 20,
         "used_pct": 62.5, "used_pct_after": 28.1},
        {"cs_id": 4, "used_bytes": 0, "capacity_bytes": 64 << 20,
         "used_pct": 0.0, "used_pct_after": 34.4},
    ],
}  # fmt: skip


def row(cs_id: int, state: str, replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": cs_id,
        "address": f"127.0.0.1:{40100 + cs_id}",
        "alive": state != "dead",
        "state": state,
        "draining": state in ("draining", "drained"),
        "host": "127.0.0.1",
        "rack": "",
        "capacity_bytes": 64 << 20,
        "used_bytes": replicas << 20,
        "chunks": replicas,
        "replicas": replicas,
        "replica_bytes": replicas << 20,
        "load": 0,
        "pid": 1000 + cs_id,
        "last_heartbeat_ms_ago": 120,
        **extra,
    }


class Leader:
    """Scripted answers: each op's list is consumed in order (the last one repeats)."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, bool, dict[str, Any]]] = []

    async def ask(self, op: str, mutate: bool = False, **fields: Any) -> dict[str, Any]:
        self.calls.append((op, mutate, fields))
        queue = self.answers[op]
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def leader(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[Any]]], Leader]:
    def make(answers: dict[str, list[Any]]) -> Leader:
        scripted = Leader(answers)

        def session(
            directory: Path,
            meta: str | None,
            secret: Path | None,
            work: Callable[..., Awaitable[Any]],
        ) -> Any:
            return anyio.run(work, scripted.ask)

        async def no_sleep(seconds: float) -> None:
            pass

        monkeypatch.setattr(admin_cli, "_session", session)
        monkeypatch.setattr(admin_cli, "_sleep", no_sleep)
        return scripted

    return make


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("DFS_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["admin", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_rebalance_status_and_plan(leader: Callable[..., Leader]) -> None:
    scripted = leader({"admin.rebalance": [PROGRESS]})
    golden("rebalance_status.json", run("rebalance", "--status", "--json"))
    golden("rebalance_status.txt", run("rebalance", "--status"))
    assert scripted.calls[0] == ("admin.rebalance", False, {"action": "status"})
    scripted = leader({"admin.rebalance": [{**PLAN, "moves": PLAN["moves"][:2]}]})
    golden("rebalance_plan.json", run("rebalance", "--dry-run", "--json", "--threshold", "5"))
    assert scripted.calls[0][2] == {"action": "plan", "threshold_pct": 5.0}
    leader({"admin.rebalance": [PLAN]})
    golden("rebalance_plan.txt", run("rebalance", "--dry-run"))


def test_rebalance_start_wait_and_stop(leader: Callable[..., Leader]) -> None:
    scripted = leader({"admin.rebalance": [PROGRESS, PROGRESS, STOPPED]})
    out = run("rebalance", "--threshold", "5", "--bandwidth", "8", "--wait")
    golden("rebalance_wait.txt", out)
    assert scripted.calls[0] == (
        "admin.rebalance",
        True,
        {"action": "start", "threshold_pct": 5.0, "bandwidth_bps": 8 << 20},
    )
    assert [c[2]["action"] for c in scripted.calls[1:]] == ["status", "status"]
    leader({"admin.rebalance": [STOPPED]})
    assert json.loads(run("rebalance", "--stop", "--json"))["running"] is False
    run("rebalance", "--stop", "--status", code=2)
    run("rebalance", "--threshold", "0", code=2)


def test_wait_exits_1_unless_the_rebalance_ended_balanced(leader: Callable[..., Leader]) -> None:
    for reason, code in (("balanced", 0), ("no_moves", 1), ("stopped by the operator", 1)):
        leader({"admin.rebalance": [PROGRESS, {**STOPPED, "stop_reason": reason}]})
        out = run("rebalance", "--threshold", "5", "--wait", code=code)
        assert reason in out


def test_a_stuck_decommission_says_so_and_gives_up_at_its_timeout(
    leader: Callable[..., Leader], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Clock:  # each look at the clock is 7 s later: the wait's polls are not slept
        now = 0.0

        def monotonic(self) -> float:
            self.now += 7.0
            return self.now

    monkeypatch.setattr(admin_cli, "time", Clock())
    stuck = row(3, "draining", 2)
    leader({"admin.drain": [{"chunkserver": stuck}], "status": [{"chunkservers": [stuck]}]})
    result = CliRunner().invoke(
        cli, ["admin", "decommission", "3", "--wait", "--wait-timeout", "120"]
    )
    assert result.exit_code == 1, result.output
    assert result.output.count("nothing moved off chunkserver 3 for 60 s") == 1
    assert "not drained after 120 s" in result.output
    leader({"admin.drain": [{"chunkserver": None}]})
    assert "no chunkserver 3" in run("decommission", "3", code=1)


def test_decommission_forget(leader: Callable[..., Leader]) -> None:
    draining = row(3, "draining", 2)
    drained = row(3, "drained", 0)
    scripted = leader(
        {
            "admin.drain": [{"chunkserver": draining}],
            "status": [{"chunkservers": [draining]}, {"chunkservers": [drained]}],
        }
    )
    golden("decommission_wait.json", run("decommission", "3", "--wait", "--json"))
    assert scripted.calls[0] == ("admin.drain", True, {"cs_id": 3, "draining": True})
    leader({"admin.drain": [{"chunkserver": drained}]})
    golden("decommission.txt", run("decommission", "3"))
    leader({"admin.drain": [{"chunkserver": row(3, "alive", 2)}]})
    golden("recommission.txt", run("recommission", "3"))
    scripted = leader({"admin.forget": [{}]})
    assert run("forget", "3") == "chunkserver 3 forgotten\n"
    assert scripted.calls == [("admin.forget", True, {"cs_id": 3})]
    run("forget", "0", code=2)


def test_status_text_shows_states_hosts_and_the_rebalance() -> None:
    st = {
        "leader": 1,
        "leader_address": "127.0.0.1:40001",
        "term": 2,
        "metaservers": [
            {"id": 1, "address": "127.0.0.1:40001", "state": "up", "role": "leader",
             "pid": 900, "term": 2, "commit": 40, "applied": 40},
        ],
        "chunkservers": [
            row(1, "alive", 8, rack="r1"),
            row(2, "dead", 8),
            row(3, "draining", 4),
            row(4, "drained", 0, host="node-4"),
        ],
        "files": 3, "dirs": 1, "chunks": 8, "bytes": 8 << 20,
        "capacity_bytes": 256 << 20, "used_bytes": 20 << 20,
        "health": None,
        "rebalance": PROGRESS,
    }  # fmt: skip
    golden("status.txt", render_status(st) + "\n")


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise() -> None:
    tty = io.StringIO()
    p = admin_cli.Progress(tty, tty=True)
    p.show(25, 100, "a")
    p.show(50, 100, "b")
    p.end()
    assert tty.getvalue() == (
        "\r[######..................]  25%  a\x1b[K\r[############............]  50%  b\x1b[K\n"
    )
    plain = io.StringIO()
    p = admin_cli.Progress(plain, tty=False)
    p.show(25, 100, "a")
    p.show(50, 100, "b")  # within PLAIN_EVERY_S of the first: not printed
    p.end()
    assert plain.getvalue() == "a\n"


# A CLI run in a pseudo-terminal, the leader's answers scripted in the child.
_TTY_DRIVER = """
import json, sys
from dfs.cli import admin
answers = json.loads(sys.argv[1])
async def ask(op, mutate=False, **fields):
    return answers.pop(0) if len(answers) > 1 else answers[0]
def session(directory, meta, secret, work):
    import anyio
    return anyio.run(work, ask)
admin._session = session
admin.POLL_S = 0.01
from dfs.cli.main import cli
cli(["admin", "rebalance", "--threshold", "5", "--wait"])
"""


def test_wait_draws_a_bar_on_a_terminal() -> None:
    moving = [{**PROGRESS, "moved_bytes": n << 20, "left_bytes": (128 - n) << 20}
              for n in (0, 32, 96)]  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _TTY_DRIVER, json.dumps([*moving, STOPPED])],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed its end
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(master)
    assert proc.returncode == 0, seen
    text = seen.decode()
    assert "\r[........................]   0%  0 B moved, 128.0 MiB left" in text, text
    assert (
        "\r[######..................]  25%  32.0 MiB moved, 96.0 MiB left, 4.0 MiB/s, ETA 0:24"
        in text
    )
    assert "\r[##################......]  75%  96.0 MiB moved" in text
    assert "\x1b[K" in text
    assert text.rstrip().endswith("no rebalance running (balanced); spread 3.5 points"), text
