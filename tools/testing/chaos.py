"""Issue 5's chaos run: a seeded workload through a real mount on a cluster across network
hosts, while servers crash, pause, lose their network and have their disks corrupted; at
the end every acknowledged byte must be there, and no read may ever have returned bytes
the model does not allow.

    python -m tools.testing.chaos --minutes M --seed S [--dir D] [--metaservers 3]
                                [--chunkservers 4] [--workers 2]       (scripts/chaos)

HOW IT RUNS. The orchestrator (this process) starts a ``NetCluster`` (1 MiB chunks and
short timeouts, ``META_OPTIONS``/``CS_OPTIONS``), puts a proxy of ``tools.testing.proxy`` on
the client's paths to the first half of the chunkservers (idle until a delay or a stall
fault; every connection made by the client to those servers goes through it), and starts
the *workload* (``python -m tools.testing.chaos workload ...``) on the client host. ``ip
netns exec`` gives that process a mount namespace of its own, so the workload mounts the
cluster itself (``dfs mount --foreground`` as its child) where only it sees the mount, and
every operation is an ordinary system call on that mount. The two talk through the
workload's stdin (commands ``stop``, ``verify``) and stdout (one JSON event a line). The
orchestrator runs the faults on its main thread (``NetCluster`` restarts daemons under
``setpriv --pdeathsig``, tied to the thread that starts them), then heals everything, stops
the workload, waits (bounded) until the leader's ``health`` shows no missing, under-goal or
corrupt chunk, and asks the workload to verify through a *fresh* mount (no cache of the
old one can hide a loss). Its last line is ``chaos: ops N, faults F, lost L, corrupt C``;
exit status 0 only when L and C are 0 and the run itself completed.

THE MODEL (``Entry``, ``check_read``; pure). Each workload thread owns a directory
(``/chaos/w<i>``) and a model of it: for every file name, the contents it may have
(``candidates``), whether it may be absent (``maybe``), and whether a failed data op left
its contents uncertain (``frozen``). Rules:
1. A ``close`` or ``fsync`` that returned success acknowledges the content; an ``unlink``,
   ``rename`` or ``mkdir`` that returned success acknowledges the namespace change. A
   failed ``fsync`` is not undone by a later successful ``close`` (Linux reports a write
   error once).
2. A failed data op may have landed in part: its candidates are the old and the new
   content (and the empty file after a truncating open), and a read is accepted when its
   length lies between the candidates' and *every byte equals some candidate's byte at
   that position* (chunks and blocks of one write can land independently). A failed op
   may also land late (a retry the client gave up on may still commit), so a file with a
   failed data op is *frozen*: never written again, only read, renamed or unlinked.
3. A failed namespace op makes the names it touched ``maybe`` (present with one of their
   candidates, or absent) for good: a name is never reused after that, because a late
   commit of the failed op could still change it. New files and directories always get
   fresh names.
4. Reads during the run must match (``check_read``); a mismatch counts as ``corrupt``,
   with its kind: ``unwritten`` (bytes nobody wrote), ``zeros``, ``stale`` (the content
   before the last acknowledged one), ``length``; ``missing`` is a file the model holds
   for certain that could not be found, ``namespace`` an answer no history allows (EEXIST
   for a fresh name, ENOENT for a name held for certain, a listing with unknown names).
5. At the end every name of the model is checked through the fresh mount: present and
   matching when certain, matching or absent when ``maybe``, and no other name may exist.
   Anything else counts as ``lost`` (an acknowledged file, byte or namespace change that
   did not survive).

THE FAULTS (``FaultScheduler``), drawn from ``random.Random(seed)``, each held a few
seconds, at most ``overlap_max`` (2) at once, never two on one host: ``kill -9`` and
restart of a chunkserver, of the metaserver leader; SIGSTOP/SIGCONT of a chunkserver or a
metaserver; the leader partitioned from the majority, both ways or one way (either
direction); a chunkserver isolated; 20 % packet loss between the client and a chunkserver
or the leader; a delay or a stall on a proxied client path; one byte flipped in a random
chunk replica on a chunkserver's disk (held until the replica is gone or its block checks
again: quarantined, replaced, or legitimately rewritten); every daemon killed and started
again. The budget keeps the run about safety, not about making everything unavailable:
at most goal - 1 = 2 chunkservers out at once (killed, paused, isolated, stalled, holding
a flipped replica, or restarted less than ``COOLDOWN_S`` ago), a second one only while
the leader reports every chunk at its goal; at most one metaserver out (killed, paused,
partitioned, or just restarted); everything killed only when nothing else is going on,
and for at most two seconds. The fault *choices* follow the seed; their timing, and so the
run, depends on the machine's speed (a run is not replayable step by step; the logs are in
the cluster directory: ``logs/chaos-*.log`` next to the daemons').
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import queue
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import xxhash

from dfs.cli import cluster as local
from dfs.fuse.mountinfo import FS_TYPE, mount_info
from tools.testing.netns import NetCluster, NetError, cleanup_stale
from tools.testing.proxy import ProxyControl

MIB = 1 << 20
CHUNK_BYTES = MIB
GOAL = 3
# The failure tests' short timeouts (tests/failures): a chunkserver is dead after 3 s,
# repair starts 1 s after a change, garbage waits 2 s, block reports every 3 s, scrubbing
# fast enough that a flipped byte is found within seconds.
META_OPTIONS = {
    "tick_ms": 50,
    "dead_timeout_ms": 3000,
    "repair_interval_ms": 200,
    "repair_quiet_ms": 1000,
    "gc_grace_ms": 2000,
    "replication_jobs": 8,
}
CS_OPTIONS = {
    "heartbeat_ms": 200,
    "report_interval_ms": 3000,
    "scrub_bytes_per_s": 32 * MIB,
    "scrub_period_ms": 0,
}
# The mount's client timeout: an operation the cluster does not answer fails after this
# (EIO/ETIMEDOUT), so a fault costs the workload at most this per system call.
MOUNT_TIMEOUT_S = 20.0
# A system call on the mount that takes this long is reported as stuck (each FUSE request
# is bounded by the client's timeout; a whole multi-MiB write is a handful of them).
STUCK_S = 180.0
# Waits of the orchestrator, each a deadline on something that normally takes seconds.
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 400.0
HEALTH_TIMEOUT_S = 180.0
VERIFY_TIMEOUT_S = 900.0
TICK_S = 0.25
PROGRESS_EVERY_S = 15.0
# Chunk store format version 1 (chunkserver/store.py): header fields and the data offset.
_CHUNK_HEADER = struct.Struct(">8sHHIQQQII")
CHUNK_MAGIC = b"dfschunk"
CHUNK_TABLE_OFFSET = 64
CHUNK_DATA_OFFSET = 135168

# ---------------------------------------------------------------------- the model (pure)


@dataclass
class Entry:
    """One file name of a worker's model (rules 1-3 of the module docstring)."""

    candidates: list[bytes]
    maybe: bool = False  # may be absent: a failed namespace op touched the name
    frozen: bool = False  # a failed data op: contents uncertain, never written again
    previous: bytes | None = None  # the content acknowledged before, to classify a mismatch

    @property
    def settled(self) -> bool:
        """Certain to exist with exactly one content: data ops may use it."""
        return not self.maybe and not self.frozen and len(self.candidates) == 1

    def acknowledge(self, content: bytes) -> None:
        self.previous, self.candidates = self.candidates[0], [content]

    def freeze(self, *candidates: bytes) -> None:
        self.frozen = True
        for c in candidates:
            if c not in self.candidates:
                self.candidates.append(c)


def check_read(data: bytes, candidates: Sequence[bytes]) -> int | None:
    """None when ``data`` is a content the candidates allow (rule 2): its length between
    theirs, and each byte some candidate's byte at that position. Otherwise the first
    offset that breaks it (for a wrong length: the shorter of the two lengths)."""
    if any(data == c for c in candidates):
        return None
    lengths = [len(c) for c in candidates]
    if not min(lengths) <= len(data) <= max(lengths):
        return min(len(data), max(lengths))
    block = 4096
    for start in range(0, len(data), block):
        piece = data[start : start + block]
        if any(c[start : start + block] == piece for c in candidates):
            continue
        for i, byte in enumerate(piece):
            pos = start + i
            if not any(len(c) > pos and c[pos] == byte for c in candidates):
                return pos
    return None


def mismatch_kind(data: bytes, entry: Entry, pos: int) -> str:
    """What a mismatch at ``pos`` looks like (rule 4)."""
    lengths = [len(c) for c in entry.candidates]
    if not min(lengths) <= len(data) <= max(lengths):
        return "length"
    piece = data[pos : pos + 4096]
    if entry.previous is not None and entry.previous[pos : pos + len(piece)] == piece:
        return "stale"
    if not piece.strip(b"\0"):
        return "zeros"
    return "unwritten"


def describe_mismatch(data: bytes, entry: Entry, pos: int) -> str:
    lengths = sorted({len(c) for c in entry.candidates})
    return (
        f"{mismatch_kind(data, entry, pos)}: read {len(data)} bytes, candidates of "
        f"{lengths} bytes{' (frozen)' if entry.frozen else ''}, first bad byte at {pos} "
        f"(chunk {pos // CHUNK_BYTES}, offset {pos % CHUNK_BYTES} in it)"
    )


# ---------------------------------------------------------------------- the workload

# Operation weights of one worker; ``create`` and ``unlink`` shift with the file count.
OP_WEIGHTS = {
    "create": 22, "overwrite": 10, "append": 8, "rewrite": 6, "rename": 10, "unlink": 10,
    "mkdir": 3, "read": 24, "listdir": 5,
}  # fmt: skip
FILES_PER_WORKER_MAX = 60
DIRS_PER_WORKER_MAX = 12
DIR_DEPTH_MAX = 3
FILE_BYTES_MAX = 6 * MIB
# Sizes of one write(2): a page, a FUSE request's worth, and odd sizes in between.
WRITE_PIECES = (4096, 65536, 200_000, MIB)


def _file_size(rng: random.Random) -> int:
    """0 B to 3.5 MiB; the largest third span several 1 MiB chunks."""
    r = rng.random()
    if r < 0.08:
        return 0
    if r < 0.45:
        return rng.randint(1, 64 * 1024)
    if r < 0.70:
        return rng.randint(64 * 1024, MIB)
    return rng.randint(MIB, 3 * MIB + MIB // 2)


class Events:
    """The workload's side of the protocol: one JSON object a line on stdout."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self._out.write(json.dumps({"e": event, **fields}) + "\n")
            self._out.flush()


@dataclass
class Stats:
    ops: int = 0
    failed: int = 0
    reads_checked: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    errnos: Counter[str] = field(default_factory=Counter)
    corrupt: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops, "failed": self.failed, "reads_checked": self.reads_checked,
            "by_op": dict(self.by_op), "errnos": dict(self.errnos), "corrupt": dict(self.corrupt),
        }  # fmt: skip


class Mount:
    """``dfs mount --foreground`` as a child of the workload, in its mount namespace."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        self.point = Path(args.mnt_base) / name
        self.pid_file = Path(args.log_dir).parent / "run" / f"chaos-mount-{name}.pid"
        self.log_file = Path(args.log_dir) / f"chaos-mount-{name}.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.point.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        launcher = ["tools.testing.chaos", "traced-mount"] if self.args.trace else ["dfs.cli.main"]
        argv = [
            sys.executable, "-m", *launcher, "mount", "--foreground",
            "--meta", self.args.meta, "--secret", self.args.secret,
            "--timeout", str(self.args.timeout), "--pid-file", str(self.pid_file),
            str(self.point),
        ]  # fmt: skip
        if shutil.which("setpriv"):
            argv = ["setpriv", "--pdeathsig", "KILL", *argv]  # dies with this thread
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self.args.timeout + local.MOUNT_START_EXTRA_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount at {self.point} exited; see {self.log_file}")
            info = mount_info(self.point)
            if self.pid_file.exists() and info is not None and info.fstype == FS_TYPE:
                return
            time.sleep(0.05)  # polling the mount's own report, with a deadline
        raise RuntimeError(f"mount at {self.point} not live in time; see {self.log_file}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (the mount commits open files and unmounts), SIGKILL past a deadline,
        then detach whatever is left of the mount."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(local.MOUNT_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        info = mount_info(self.point)
        if info is not None and info.fstype == FS_TYPE:
            local.force_unmount(self.point)


def _errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


class Worker:
    """One workload thread: its own directory, its own model, its own seeded stream."""

    def __init__(self, index: int, seed: int, workload: Workload) -> None:
        self.name = f"w{index}"
        self.rng = random.Random(f"{seed}-{self.name}")
        self.w = workload
        self.files: dict[str, Entry] = {}
        self.dirs: dict[str, bool] = {"": False}  # relative path -> maybe
        self.next_id = 0
        self.current: tuple[str, str, float] | None = None  # op, path, start (monotonic)
        self.stuck_reported = False
        self.dead_mount = False

    # -- paths and choices

    def path(self, rel: str) -> str:
        return os.path.join(self.w.mount.point, "chaos", self.name, rel)

    def fresh(self, prefix: str, depth_max: int = DIR_DEPTH_MAX) -> str:
        parents = [d for d, maybe in self.dirs.items() if not maybe and d.count("/") < depth_max]
        parent = self.rng.choice(parents) if parents else ""
        self.next_id += 1
        return f"{parent}/{prefix}{self.next_id}".lstrip("/")

    def pick(self, want: Callable[[Entry], bool]) -> str | None:
        names = [n for n, e in self.files.items() if want(e)]
        return self.rng.choice(names) if names else None

    # -- bookkeeping

    def record(self, op: str, rel: str, error: OSError | None, **extra: Any) -> None:
        st = self.w.stats
        with self.w.lock:
            st.ops += 1
            st.by_op[op] += 1
            if error is not None:
                st.failed += 1
                st.errnos[_errno_name(error)] += 1
        if error is not None and error.errno == errno.ENOTCONN:
            self.dead_mount = True
        took = round(time.monotonic() - self.current[2], 3) if self.current else None
        self.w.journal(self.name, op, rel, error, took=took, **extra)

    def anomaly(self, kind: str, rel: str, text: str) -> None:
        with self.w.lock:
            self.w.stats.corrupt[kind] += 1
        self.w.events.emit("finding", kind=kind, path=f"{self.name}/{rel}", text=text)
        self.w.journal(self.name, "ANOMALY", rel, None, kind=kind, text=text)

    # -- the loop

    def run(self) -> None:
        try:
            self.loop()
        except Exception:  # a bug of the workload, not of dfs: the run is void
            self.w.events.emit("error", text=f"{self.name}: {traceback.format_exc()}")

    def loop(self) -> None:
        while not self.w.stop.is_set():
            weights = dict(OP_WEIGHTS)
            if sum(1 for e in self.files.values() if not e.maybe) >= FILES_PER_WORKER_MAX:
                weights["create"], weights["unlink"] = 1, 30
            if sum(1 for maybe in self.dirs.values() if not maybe) >= DIRS_PER_WORKER_MAX:
                weights["mkdir"] = 0
            op = self.rng.choices(list(weights), list(weights.values()))[0]
            getattr(self, f"op_{op}")()
            self.current = None
            if self.dead_mount:
                self.dead_mount = False
                self.w.stop.wait(1.0)  # the watchdog mounts again; no need to spin meanwhile

    def begin(self, op: str, rel: str) -> None:
        self.current = (op, rel, time.monotonic())
        self.stuck_reported = False

    # -- data ops

    def write(
        self, rel: str, flags: int, offset: int, data: bytes, *, fsync: bool
    ) -> tuple[str, OSError | None, bool]:
        """open, write ``data`` at ``offset`` (or appending) in pieces, maybe fsync, close.
        Returns (the stage that failed or "done", its error, acknowledged)."""
        try:
            fd = os.open(self.path(rel), flags, 0o644)
        except OSError as e:
            return "open", e, False
        stage, error, synced = "write", None, False
        try:
            view, pos = memoryview(data), 0
            while pos < len(data):
                n = min(len(data) - pos, self.rng.choice(WRITE_PIECES))
                if flags & os.O_APPEND:
                    done = os.write(fd, view[pos : pos + n])
                else:
                    done = os.pwrite(fd, view[pos : pos + n], offset + pos)
                if done <= 0:
                    raise OSError(errno.EIO, "short write")
                pos += done
            if fsync:
                stage = "fsync"
                os.fsync(fd)
                synced = True
        except OSError as e:
            error = e
        try:
            os.close(fd)
        except OSError as e:
            if error is None:
                stage, error = "close", e
        if error is None:
            return "done", None, True
        return stage, error, synced  # a successful fsync acknowledged the content already

    def op_create(self) -> None:
        rel = self.fresh("f")
        data = self.rng.randbytes(_file_size(self.rng))
        fsync = self.rng.random() < 0.3
        self.begin("create", rel)
        stage, error, acked = self.write(
            rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0, data, fsync=fsync
        )
        self.record("create", rel, error, size=len(data), stage=stage, fsync=fsync)
        if acked:
            self.files[rel] = Entry([data])
        elif stage == "open":
            self.files[rel] = Entry([b""], maybe=True)
            if error is not None and error.errno == errno.EEXIST:
                self.anomaly("namespace", rel, "create of a fresh name: EEXIST")
        else:
            self.files[rel] = Entry([b""], frozen=True)  # the open created it
            self.files[rel].freeze(data)

    def _modify(self, op: str, flags: int) -> None:
        rel = self.pick(lambda e: e.settled)
        if rel is None:
            return self.op_create()
        entry = self.files[rel]
        old = entry.candidates[0]
        if op == "overwrite":
            offset = self.rng.randint(0, len(old))
            piece = self.rng.randbytes(self.rng.randint(1, 2 * MIB))
            new = old[:offset] + piece + old[offset + len(piece) :]
        elif op == "append":
            offset, piece = len(old), self.rng.randbytes(self.rng.randint(1, 3 * MIB // 2))
            new = old + piece
        else:  # rewrite: O_TRUNC, then the whole new content
            offset, piece = 0, self.rng.randbytes(_file_size(self.rng))
            new = piece
        if len(new) > FILE_BYTES_MAX:
            return self.op_read()
        fsync = self.rng.random() < 0.3
        self.begin(op, rel)
        stage, error, acked = self.write(rel, flags, offset, piece, fsync=fsync)
        self.record(op, rel, error, offset=offset, size=len(piece), stage=stage, fsync=fsync)
        if acked:
            entry.acknowledge(new)
        elif stage == "open":
            if error is not None and error.errno == errno.ENOENT:
                self.anomaly("missing", rel, f"{op}: open of a file held for certain: ENOENT")
            if op == "rewrite":
                entry.freeze(b"")  # the truncation may have happened
        elif op == "rewrite":
            entry.candidates = [b""]  # the truncating open succeeded: the old content is gone
            entry.freeze(new)
        else:
            entry.freeze(new)
        return None

    def op_overwrite(self) -> None:
        self._modify("overwrite", os.O_WRONLY)

    def op_append(self) -> None:
        self._modify("append", os.O_WRONLY | os.O_APPEND)

    def op_rewrite(self) -> None:
        self._modify("rewrite", os.O_WRONLY | os.O_TRUNC)

    def op_read(self) -> None:
        rel = self.pick(lambda e: True)
        if rel is None:
            return self.op_create()
        entry = self.files[rel]
        self.begin("read", rel)
        try:
            data = read_all(self.path(rel))
        except FileNotFoundError as e:
            self.record("read", rel, None if entry.maybe else e)
            if not entry.maybe:
                self.anomaly("missing", rel, "read of a file held for certain: ENOENT")
            return None
        except OSError as e:
            self.record("read", rel, e)
            return None
        self.record("read", rel, None, size=len(data))
        with self.w.lock:
            self.w.stats.reads_checked += 1
        bad = check_read(data, entry.candidates)
        if bad is not None:
            self.anomaly(mismatch_kind(data, entry, bad), rel, describe_mismatch(data, entry, bad))
        return None

    # -- namespace ops

    def op_rename(self) -> None:
        src = self.pick(lambda e: not e.maybe)
        if src is None:
            return self.op_create()
        replace = self.rng.random() < 0.3
        dst = self.pick(lambda e: not e.maybe) if replace else None
        if dst is None or dst == src:
            dst = self.fresh("r")
        self.begin("rename", src)
        try:
            os.rename(self.path(src), self.path(dst))
        except OSError as e:
            self.record("rename", src, e, dst=dst)
            moved = self.files[src]
            moved.maybe = True
            target = self.files.setdefault(dst, Entry([], maybe=True))
            target.maybe = True
            target.freeze(*moved.candidates)
            if e.errno == errno.ENOENT:
                self.anomaly("missing", src, f"rename to {dst}: ENOENT for a certain file")
            return None
        self.record("rename", src, None, dst=dst)
        self.files[dst] = self.files.pop(src)
        return None

    def op_unlink(self) -> None:
        rel = self.pick(lambda e: True)
        if rel is None:
            return self.op_create()
        entry = self.files[rel]
        self.begin("unlink", rel)
        try:
            os.unlink(self.path(rel))
        except OSError as e:
            self.record("unlink", rel, None if entry.maybe and e.errno == errno.ENOENT else e)
            if e.errno == errno.ENOENT and not entry.maybe:
                self.anomaly("missing", rel, "unlink of a file held for certain: ENOENT")
            entry.maybe = True
            return None
        self.record("unlink", rel, None)
        if not entry.maybe:  # a maybe name stays maybe: a late commit may bring it back
            del self.files[rel]
        return None

    def op_mkdir(self) -> None:
        rel = self.fresh("d", DIR_DEPTH_MAX - 1)
        self.begin("mkdir", rel)
        try:
            os.mkdir(self.path(rel))
        except OSError as e:
            self.record("mkdir", rel, e)
            self.dirs[rel] = True
            if e.errno == errno.EEXIST:
                self.anomaly("namespace", rel, "mkdir of a fresh name: EEXIST")
            return
        self.record("mkdir", rel, None)
        self.dirs[rel] = False

    def op_listdir(self) -> None:
        rel = self.rng.choice([d for d, maybe in self.dirs.items() if not maybe])
        self.begin("listdir", rel)
        try:
            names = set(os.listdir(self.path(rel)))
        except OSError as e:
            self.record("listdir", rel, e)
            return
        self.record("listdir", rel, None, entries=len(names))
        problem = self.compare_listing(rel, names)
        if problem:
            self.anomaly("namespace", rel or ".", problem)

    def compare_listing(self, rel: str, names: set[str]) -> str | None:
        """What is wrong with ``names`` as the listing of directory ``rel``, if anything."""
        prefix = f"{rel}/" if rel else ""
        must: set[str] = set()
        may: set[str] = set()
        for table in (self.files, self.dirs):
            for path, value in table.items():
                if not path or not path.startswith(prefix) or "/" in path[len(prefix) :]:
                    continue
                maybe = value.maybe if isinstance(value, Entry) else value
                (may if maybe else must).add(path[len(prefix) :])
        missing, unknown = sorted(must - names), sorted(names - must - may)
        if not missing and not unknown:
            return None
        return f"listing: missing {missing[:5]}, unknown {unknown[:5]}"

    # -- the end

    def verify(self) -> list[str]:
        """Check the model against the (fresh) mount; one line per loss."""
        lost: list[str] = []
        found_files: set[str] = set()
        found_dirs: set[str] = {""}
        root = self.path("")
        for attempt in range(3):
            errors: list[OSError] = []
            found_files.clear()
            found_dirs.intersection_update({""})
            for top, dirs, files in os.walk(root, onerror=errors.append):
                base = os.path.relpath(top, root)
                base = "" if base == "." else base
                found_dirs.update(os.path.join(base, d) for d in dirs)
                found_files.update(os.path.join(base, f) for f in files)
            if not errors:
                break
            if attempt == 2:
                lost.append(f"{self.name}: listing failed: {errors[0]}")
        for rel, maybe in self.dirs.items():
            if not maybe and rel not in found_dirs:
                lost.append(f"{self.name}/{rel}/: directory missing")
        for rel in sorted(found_dirs - set(self.dirs)):
            lost.append(f"{self.name}/{rel}/: unexpected directory")
        for rel in sorted(found_files - set(self.files)):
            lost.append(f"{self.name}/{rel}: unexpected file")
        for rel, entry in self.files.items():
            if rel not in found_files:
                if not entry.maybe:
                    lost.append(f"{self.name}/{rel}: missing")
                continue
            data: bytes | None = None
            error: OSError | None = None
            for _ in range(3):
                try:
                    data = read_all(self.path(rel))
                    break
                except OSError as e:
                    error = e
            if data is None:
                lost.append(f"{self.name}/{rel}: unreadable: {error}")
                continue
            bad = check_read(data, entry.candidates)
            if bad is not None:
                lost.append(f"{self.name}/{rel}: {describe_mismatch(data, entry, bad)}")
        return lost


def read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = []
        while piece := os.read(fd, MIB):
            pieces.append(piece)
    finally:
        os.close(fd)
    return b"".join(pieces)


class Workload:
    """The workload process: mount, workers, watchdog, commands, final verification."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events = Events(sys.stdout)
        self.stats = Stats()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._journal = open(Path(args.log_dir) / "chaos-ops.log", "a", buffering=1)  # noqa: SIM115
        self.mounts = 0
        self.mount = self.new_mount()
        self.workers = [Worker(i, args.seed, self) for i in range(args.workers)]

    def new_mount(self) -> Mount:
        self.mounts += 1
        return Mount(self.args, f"mnt{self.mounts}")

    def journal(self, who: str, op: str, rel: str, error: OSError | None, **extra: Any) -> None:
        record: dict[str, Any] = {"at": _wall(), "w": who, "op": op, "path": rel}
        if error is not None:
            record["err"] = _errno_name(error)
        with self.lock:
            self._journal.write(json.dumps({**record, **extra}) + "\n")

    def run(self) -> int:
        commands: queue.Queue[str] = queue.Queue()

        def read_commands() -> None:
            for line in sys.stdin:
                commands.put(line.strip())
            commands.put("eof")

        threading.Thread(target=read_commands, daemon=True).start()
        self.mount.start()
        self.make_roots()
        self.events.emit("ready", mount=str(self.mount.point))
        threads = [threading.Thread(target=w.run, name=w.name, daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        last_progress = time.monotonic()
        while True:
            try:
                command = commands.get(timeout=1.0)
            except queue.Empty:
                command = ""
            self.watch()
            if time.monotonic() - last_progress >= 5.0:
                last_progress = time.monotonic()
                with self.lock:
                    self.events.emit("progress", **self.stats.as_dict())
            if command == "stop":
                self.stop.set()
                self.join(threads)
                with self.lock:
                    self.events.emit("stopped", **self.stats.as_dict())
            elif command == "verify":
                self.stop.set()
                self.join(threads)
                self.mount.stop()
                lost = self.verify()
                self.events.emit("result", lost=lost, **self.stats.as_dict())
                return 0
            elif command == "eof":
                self.stop.set()
                self.mount.stop()
                return 1

    def make_roots(self) -> None:
        """/chaos/w<i>, retried for a while: the cluster may still be settling."""
        deadline = time.monotonic() + 60
        for w in self.workers:
            while True:
                try:
                    os.makedirs(w.path(""), exist_ok=True)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # retrying an operation the cluster refused, with a deadline

    def watch(self) -> None:
        """Report operations stuck past ``STUCK_S`` and a mount process that died (then
        mount again, so that the run goes on)."""
        now = time.monotonic()
        for w in self.workers:
            current = w.current
            if current and now - current[2] > STUCK_S and not w.stuck_reported:
                w.stuck_reported = True
                w.anomaly("stuck", current[1], f"{current[0]} running for {now - current[2]:.0f} s")
        if not self.mount.alive() and not self.stop.is_set():
            code = self.mount.proc.returncode if self.mount.proc else None
            self.events.emit(
                "finding", kind="mount-died", path="", text=f"mount exited with {code}; "
                f"see {self.mount.log_file}",
            )  # fmt: skip
            with self.lock:
                self.stats.corrupt["mount-died"] += 1
            self.mount.stop()
            self.mount = self.new_mount()
            self.mount.start()

    def join(self, threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + STUCK_S + 60
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            # A system call that never returns: abort the mount so that it does.
            self.events.emit("finding", kind="stuck", path="", text="workers did not stop; "
                             "killing the mount to unblock them")  # fmt: skip
            if self.mount.proc is not None:
                self.mount.proc.kill()
            for t in threads:
                t.join(60)

    def verify(self) -> list[str]:
        mount = self.new_mount()
        mount.start()
        self.mount = mount
        try:
            lost: list[str] = []
            for w in self.workers:
                lost += w.verify()
            return lost
        finally:
            mount.stop()


def workload_main(args: argparse.Namespace) -> int:
    return Workload(args).run()


def traced_mount_main(argv: list[str]) -> int:
    """``dfs ARGV`` (the mount) with every metaserver call of its client logged: op, the
    address tried, the fields that name what it touches, and the answer or error. For
    investigating a finding (``--trace``); the default run does not pay for it."""
    import logging

    from dfs.cli.main import main as dfs_main
    from dfs.client.pool import ConnectionPool

    trace = logging.getLogger("dfs.chaos.trace")
    trace.setLevel(logging.INFO)
    original = ConnectionPool.call
    keys = ("ino", "parent", "name", "new_parent", "new_name", "index", "size", "client", "seq")

    async def call(self: ConnectionPool, address: str, op: str, /, *a: Any, **fields: Any) -> Any:
        if not op.startswith("fs."):
            return await original(self, address, op, *a, **fields)
        what = " ".join(f"{k}={fields[k]!r}" for k in keys if k in fields)
        try:
            header, payload = await original(self, address, op, *a, **fields)
        except BaseException as e:
            trace.info("%s %s %s -> %r", address, op, what, e)
            raise
        answer = {k: v for k, v in header.items() if k in ("chunk_id", "version", "attr")}
        if "attr" in answer:
            answer["attr"] = {k: answer["attr"].get(k) for k in ("ino", "size", "ctime_ns")}
        trace.info("%s %s %s -> ok %s", address, op, what, answer)
        return header, payload

    ConnectionPool.call = call  # type: ignore[method-assign]
    sys.argv = ["dfs", *argv]
    dfs_main()
    return 0


# ---------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One fault: what it takes out (for the budget), how to start and heal it."""

    kind: str
    label: str
    hosts: frozenset[str]  # hosts no other fault may touch meanwhile
    start: Callable[[], object]
    heal: Callable[[], object] = lambda: None
    hold_s: float | None = None  # None: held until ``done()``
    done: Callable[[], bool] | None = None
    cs_out: frozenset[str] = frozenset()  # chunkservers it takes out
    meta_out: frozenset[str] = frozenset()  # metaservers it takes out
    started_at: float = 0.0


@dataclass
class Flip:
    """A byte flipped in a replica's data: where, and how to tell it has been dealt with."""

    path: Path
    inode: int
    block: int
    block_bytes: int

    def resolved(self) -> bool:
        """The replica file is gone or replaced, or the block checks again (rewritten)."""
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != self.inode:
                    return True
                header = _CHUNK_HEADER.unpack(f.read(_CHUNK_HEADER.size))
                length, data_offset = header[6], header[8]
                start = self.block * self.block_bytes
                if length <= start:
                    return True
                f.seek(CHUNK_TABLE_OFFSET + 8 * self.block)
                (want,) = struct.unpack(">Q", f.read(8))
                f.seek(data_offset + start)
                data = f.read(min(self.block_bytes, length - start))
        except FileNotFoundError:
            return True
        except (OSError, struct.error):
            return False  # caught mid-write: look again later
        return bool(xxhash.xxh3_64_intdigest(data) == want)


def flip_a_byte(cs_dir: Path, rng: random.Random) -> tuple[Flip, str] | None:
    """Flip one byte in the data of a random replica under ``cs_dir`` (chunk store format
    1: data at ``CHUNK_DATA_OFFSET``); None if it holds no replica with data."""
    paths = sorted(cs_dir.glob("data/chunks/*/*.chunk"))
    rng.shuffle(paths)
    for path in paths[:20]:
        try:
            with open(path, "r+b") as f:
                header = _CHUNK_HEADER.unpack(f.read(_CHUNK_HEADER.size))
                magic, block_bytes, chunk_id, version, length, data_offset = (
                    header[0], header[3], header[4], header[5], header[6], header[8]
                )  # fmt: skip
                if magic != CHUNK_MAGIC or length == 0 or data_offset != CHUNK_DATA_OFFSET:
                    continue
                pos = rng.randrange(length)
                f.seek(data_offset + pos)
                old = f.read(1)
                if not old:
                    continue
                f.seek(data_offset + pos)
                f.write(bytes([old[0] ^ 0xFF]))
                inode = os.fstat(f.fileno()).st_ino
        except (OSError, struct.error):
            continue
        flip = Flip(path=path, inode=inode, block=pos // block_bytes, block_bytes=block_bytes)
        return flip, f"chunk {chunk_id:#x} v{version} byte {pos}"
    return None


# Hold times of each kind, seconds (uniform).
HOLD_S = {
    "kill-cs": (1.0, 8.0), "pause-cs": (2.0, 8.0), "isolate-cs": (2.0, 8.0),
    "kill-leader": (1.0, 6.0), "pause-meta": (1.0, 6.0), "partition-leader": (2.0, 8.0),
    "partition-leader-oneway": (2.0, 8.0), "drop-client-cs": (3.0, 10.0),
    "drop-client-leader": (3.0, 10.0), "delay-client-cs": (3.0, 10.0),
    "stall-client-cs": (2.0, 6.0), "kill-all": (0.5, 2.0),
}  # fmt: skip
FAULT_WEIGHTS = {
    "kill-cs": 14, "kill-leader": 10, "pause-cs": 7, "pause-meta": 7, "partition-leader": 7,
    "partition-leader-oneway": 7, "isolate-cs": 8, "drop-client-cs": 6, "drop-client-leader": 6,
    "delay-client-cs": 4, "stall-client-cs": 4, "flip": 8, "kill-all": 3,
}  # fmt: skip
# Seconds between one fault's start and the next one's (uniform).
GAP_S = (0.5, 4.0)
# A server healed this recently still counts as out: it is starting, or catching up.
COOLDOWN_S = 5.0
DROP_PROBABILITY = 0.2
CLIENT = "client1"


class FaultScheduler:
    """Starts, holds and heals faults within the budget of the module docstring."""

    def __init__(
        self,
        net: NetCluster,
        rng: random.Random,
        say: Callable[[str], None],
        overlap_max: int,
        note: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.net = net
        self.rng = rng
        self.say = say
        self.note = note  # the run's log only: heals
        self.overlap_max = overlap_max
        self.active: list[Fault] = []
        self.started: Counter[str] = Counter()
        self.cooldown: dict[str, float] = {}  # host -> monotonic time it counts as out until
        self.flip_times: list[float] = []
        self.unfound: list[str] = []  # flips not yet dealt with when the faults ended
        self.proxies: dict[str, ProxyControl] = {}
        self.next_start = 0.0
        self.kill_all_due = False

    @property
    def count(self) -> int:
        return sum(self.started.values())

    def install_proxies(self) -> None:
        """Idle proxies on the client's paths to the first half of the chunkservers: every
        connection the client makes to them goes through one, so a delay or a stall takes
        effect at once."""
        for cs in self.net.chunkservers[: max(1, len(self.net.chunkservers) // 2)]:
            self.proxies[cs] = self.net.delay(CLIENT, cs, 0.0)

    def _status(self) -> dict[str, Any] | None:
        try:
            return self.net.status()
        except Exception:  # a status that cannot be had is a reason to wait, nothing more
            return None

    def tick(self, now: float) -> None:
        for old in list(self.active):
            expired = old.hold_s is not None and now - old.started_at >= old.hold_s
            if expired or (old.done is not None and old.done()):
                self.end(old, now)
        timed = [f for f in self.active if f.kind != "flip"]
        if now < self.next_start or len(timed) >= self.overlap_max:
            return
        self.next_start = now + (0.5 if self.kill_all_due else self.rng.uniform(*GAP_S))
        st = self._status()
        if st is None:
            return
        if self.kill_all_due:
            kind = "kill-all"  # drawn before: no other fault starts until it has run
        else:
            kind = self.rng.choices(list(FAULT_WEIGHTS), list(FAULT_WEIGHTS.values()))[0]
        fault = self.make(kind, st)
        if fault is None or not self.allowed(fault, st, now):
            # Everything killed needs a quiet moment, which overlapping faults rarely
            # leave: wait for one rather than skip it.
            self.kill_all_due = kind == "kill-all"
            return
        self.kill_all_due = False
        fault.started_at = now
        try:
            fault.start()
        except (NetError, OSError, ValueError, LookupError) as e:
            self.say(f"fault {kind} could not start: {e}")
            with contextlib.suppress(NetError, OSError, ValueError):
                fault.heal()
            return
        self.active.append(fault)
        self.started[kind] += 1
        hold = f" for {fault.hold_s:.1f} s" if fault.hold_s is not None else ""
        self.say(f"fault {self.count} {fault.label}{hold}")

    def end(self, fault: Fault, now: float) -> None:
        try:
            fault.heal()
        except (NetError, OSError, ValueError) as e:
            self.say(f"healing {fault.label} failed: {e}")
        else:
            self.note(f"healed {fault.label}")
        self.active.remove(fault)
        for host in fault.cs_out | fault.meta_out:
            self.cooldown[host] = now + COOLDOWN_S
        if fault.kind == "flip":
            self.flip_times.append(now - fault.started_at)

    def heal_all(self) -> None:
        """End every fault, then make sure every daemon runs and every path is clean."""
        now = time.monotonic()
        for fault in list(self.active):
            if fault.kind == "flip":
                self.active.remove(fault)  # nothing to heal; it is left to the cluster
                self.unfound.append(fault.label)
                continue
            self.end(fault, now)
        net = self.net
        net.heal()
        for host in net.metaservers + net.chunkservers:
            if net.hosts[host].paused:
                net.resume(host)
            net.start(host)  # no-op when it runs
        for proxy in self.proxies.values():
            proxy.unstall()
            proxy.set_delay(0.0)

    # -- the budget

    def out(self, now: float) -> tuple[set[str], set[str]]:
        """Chunkservers and metaservers out now: by an active fault or cooling down."""
        cs = {h for f in self.active for h in f.cs_out}
        meta = {h for f in self.active for h in f.meta_out}
        for host, until in self.cooldown.items():
            if until > now:
                (meta if host in self.net.metaservers else cs).add(host)
        return cs, meta

    def allowed(self, fault: Fault, st: dict[str, Any], now: float) -> bool:
        health = st.get("health")
        cs_out, meta_out = self.out(now)
        if fault.kind == "kill-all":
            return not self.active and not cs_out and not meta_out and bool(health)
        if any(fault.hosts & f.hosts for f in self.active):
            return False
        if len(cs_out | fault.cs_out) > GOAL - 1:
            return False
        if fault.cs_out - cs_out:
            if not health or health["missing"] or health["one_copy"]:
                return False
            if cs_out and (health["under_goal"] or health["corrupt"]):
                return False
        meta_max = (len(self.net.metaservers) - 1) // 2
        return len(meta_out | fault.meta_out) <= meta_max

    # -- the faults

    def make(self, kind: str, st: dict[str, Any]) -> Fault | None:
        """A fault of ``kind`` on hosts free now (drawn from the seeded stream), not yet
        started; None when there is none to make."""
        net, rng = self.net, self.rng
        busy = {h for f in self.active for h in f.hosts}
        address = st.get("leader_address")
        leader = net.host_of(address) if address else None
        hold_range = HOLD_S.get(kind)
        hold = rng.uniform(*hold_range) if hold_range else None
        one = frozenset

        def free(hosts: list[str]) -> str:
            left = [h for h in hosts if h not in busy and net.hosts[h].pid is not None]
            return rng.choice(left) if left else ""

        if kind in ("kill-cs", "pause-cs", "isolate-cs", "flip"):
            cs = free(net.chunkservers)
            if not cs or (kind == "flip" and any(f.kind == "flip" for f in self.active)):
                return None
            if kind == "flip":
                return self._flip(cs)
            label, start, heal = {
                "kill-cs": (f"kill -9 {cs}", lambda: net.kill(cs), lambda: net.start(cs)),
                "pause-cs": (f"SIGSTOP {cs}", lambda: net.pause(cs), lambda: net.resume(cs)),
                "isolate-cs": (f"isolate {cs}", lambda: net.isolate(cs), lambda: net.heal(cs)),
            }[kind]
            return Fault(kind, label, one({cs}), start, heal, hold, cs_out=one({cs}))
        if kind in ("delay-client-cs", "stall-client-cs"):
            cs = free(list(self.proxies))
            if not cs:
                return None
            proxy = self.proxies[cs]
            if kind == "stall-client-cs":
                return Fault(kind, f"stall {CLIENT} -> {cs} (proxy)", one({cs}), proxy.stall,
                             proxy.unstall, hold, cs_out=one({cs}))  # fmt: skip
            delay_ms, jitter_ms = rng.uniform(20, 150), rng.uniform(0, 50)
            return Fault(kind, f"delay {CLIENT} -> {cs} {delay_ms:.0f}±{jitter_ms:.0f} ms",
                         one({cs}), lambda: proxy.set_delay(delay_ms, jitter_ms),
                         lambda: proxy.set_delay(0.0), hold)  # fmt: skip
        if kind == "drop-client-cs":
            cs = free(net.chunkservers)
            if not cs or CLIENT in busy:
                return None
            return Fault(kind, f"{DROP_PROBABILITY:.0%} loss {CLIENT} <-> {cs}", one({CLIENT, cs}),
                         lambda: net.drop(CLIENT, DROP_PROBABILITY, peer=cs),
                         lambda: net.heal(cs), hold)  # fmt: skip
        if kind == "pause-meta":
            meta = leader if leader and rng.random() < 0.5 else free(net.metaservers)
            if not meta or meta in busy:
                return None
            return Fault(kind, f"SIGSTOP {meta}{' (leader)' if meta == leader else ''}",
                         one({meta}), lambda: net.pause(meta), lambda: net.resume(meta), hold,
                         meta_out=one({meta}))  # fmt: skip
        if kind == "kill-all":
            return self._kill_all(hold)
        if not leader or leader in busy:
            return None
        lead: str = leader
        if kind == "kill-leader":
            return Fault(kind, f"kill -9 leader {lead}", one({lead}), lambda: net.kill(lead),
                         lambda: net.start(lead), hold, meta_out=one({lead}))  # fmt: skip
        if kind == "drop-client-leader":
            if CLIENT in busy:
                return None
            return Fault(kind, f"{DROP_PROBABILITY:.0%} loss {CLIENT} <-> leader {lead}",
                         one({CLIENT, lead}),
                         lambda: net.drop(CLIENT, DROP_PROBABILITY, peer=lead),
                         lambda: net.heal(lead), hold)  # fmt: skip
        if kind in ("partition-leader", "partition-leader-oneway"):
            others = [m for m in net.metaservers if m != lead]
            names = "+".join(others)
            cut: Callable[[], object]
            if kind == "partition-leader":
                label = f"partition leader {lead} | {names}"
                cut = lambda: net.partition(lead, others)  # noqa: E731
            elif rng.random() < 0.5:
                label = f"partition leader {lead} -> {names} (one way)"
                cut = lambda: net.partition_oneway(lead, others)  # noqa: E731
            else:
                label = f"partition {names} -> leader {lead} (one way)"
                cut = lambda: net.partition_oneway(others, lead)  # noqa: E731
            return Fault(kind, label, one(net.metaservers), cut, lambda: net.heal(lead), hold,
                         meta_out=one({lead}))  # fmt: skip
        raise ValueError(f"unknown fault kind {kind}")

    def _flip(self, cs: str) -> Fault:
        """A byte flipped in a replica on ``cs``, held until the replica is dealt with."""
        flip_seed = self.rng.random()
        flipped: list[Flip] = []
        fault = Fault("flip", f"flip a byte on {cs}", frozenset({cs}), lambda: None,
                      done=lambda: flipped[0].resolved(), cs_out=frozenset({cs}))  # fmt: skip

        def start() -> None:
            found = flip_a_byte(self.net.dir / cs, random.Random(flip_seed))
            if found is None:
                raise LookupError(f"no replica with data on {cs}")
            flipped.append(found[0])
            fault.label = f"flip a byte on {cs}: {found[1]}"

        fault.start = start
        return fault

    def _kill_all(self, hold: float | None) -> Fault:
        net = self.net
        daemons = net.metaservers + net.chunkservers

        def kill_all() -> None:
            for h in daemons:
                with contextlib.suppress(NetError):
                    net.kill(h)

        def start_all() -> None:
            for h in daemons:
                net.start(h)

        return Fault("kill-all", "kill -9 every daemon", frozenset(daemons), kill_all, start_all,
                     hold, cs_out=frozenset(net.chunkservers),
                     meta_out=frozenset(net.metaservers))  # fmt: skip


# ---------------------------------------------------------------------- the orchestrator


class WorkloadProcess:
    """The workload on the client host, and its events."""

    def __init__(self, net: NetCluster, argv: list[str], log: Path) -> None:
        with open(log, "ab") as err:
            self.proc = net.spawn(
                CLIENT, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True, start_new_session=True,
            )  # fmt: skip
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.findings: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.last: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))
        self.events.put({"e": "exit"})

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def drain(self, say: Callable[[str], None], timeout_s: float = 0.0) -> dict[str, Any] | None:
        """Handle the events that arrived (waiting up to ``timeout_s`` for the first);
        return the first that is neither progress nor a finding."""
        while True:
            try:
                event = (
                    self.events.get(timeout=timeout_s) if timeout_s else self.events.get_nowait()
                )
            except queue.Empty:
                return None
            timeout_s = 0.0
            if event["e"] == "progress":
                self.last = event
            elif event["e"] == "finding":
                self.findings.append(event)
                say(f"FINDING {event['kind']} {event['path']}: {event['text']}")
            elif event["e"] == "error":
                self.errors.append(event["text"])
                say(f"ERROR in the workload: {event['text']}")
            else:
                if event["e"] in ("stopped", "result"):
                    self.last = event
                return event

    def wait_for(self, name: str, timeout_s: float, say: Callable[[str], None]) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            event = self.drain(say, min(1.0, max(0.01, deadline - time.monotonic())))
            if event is None:
                continue
            if event["e"] == name:
                return event
            if event["e"] == "exit":
                raise RuntimeError(f"the workload exited (status {self.proc.wait(10)})")
        raise RuntimeError(f"the workload sent no {name!r} in {timeout_s:.0f} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def _wall() -> str:
    """The wall clock as the daemons' logs print it (to the millisecond)."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def wait_healthy(net: NetCluster, timeout_s: float) -> tuple[bool, Any]:
    """Until a leader reports every chunkserver alive and no chunk missing, under its
    goal or corrupt (polled, with a deadline); (reached, the last health seen)."""
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            st = net.status()
        except Exception as e:  # a status that cannot be had yet: ask again
            seen = repr(e)
            st = None
        if st is not None:
            seen = st.get("health")
            h = st.get("health")
            alive = all(c["alive"] for c in st["chunkservers"]) and len(st["chunkservers"]) == len(
                net.chunkservers
            )
            if h and alive and not (h["missing"] or h["under_goal"] or h["corrupt"]):
                return True, h
        time.sleep(0.5)  # polling the leader's own report, with a deadline
    return False, seen


def run(args: argparse.Namespace) -> int:
    duration_s = args.seconds if args.seconds is not None else args.minutes * 60
    base = Path(args.dir).absolute() if args.dir else Path(tempfile.mkdtemp(prefix="dfs-chaos-"))
    if base.exists() and any(base.iterdir()):
        print(f"chaos: {base} is not empty", file=sys.stderr)
        return 2
    base.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()

    run_log: list[TextIO] = []  # the same lines with the wall clock, next to the daemons' logs

    def say(text: str) -> None:
        print(f"chaos: {_clock(time.monotonic() - began)} {text}", flush=True)
        for f in run_log:
            f.write(f"{_wall()} {text}\n")
            f.flush()

    def note(text: str) -> None:
        for f in run_log:
            f.write(f"{_wall()} {text}\n")
            f.flush()

    cleanup_stale()
    rng = random.Random(args.seed)
    net = NetCluster(
        base / "cluster", metaservers=args.metaservers, chunkservers=args.chunkservers,
        clients=1, chunk_size=CHUNK_BYTES, meta_options=META_OPTIONS, cs_options=CS_OPTIONS,
    )  # fmt: skip
    say(f"seed {args.seed}, {duration_s:.0f} s of faults, cluster in {base}")
    lost: list[str] = []
    errors: list[str] = []
    run_s = 0.0
    with net, open(net.dir / "logs" / "chaos-run.log", "a") as log_file:
        run_log.append(log_file)
        logs = net.dir / "logs"
        scheduler = FaultScheduler(net, rng, say, args.overlap, note)
        scheduler.install_proxies()
        argv = [
            sys.executable, "-m", "tools.testing.chaos", "workload",
            "--meta", ",".join(net.meta_addresses), "--secret", str(net.secret_file),
            "--seed", str(args.seed), "--workers", str(args.workers),
            "--timeout", str(args.mount_timeout), "--mnt-base", str(base / "mnt"),
            "--log-dir", str(logs), *(["--trace"] if args.trace else []),
        ]  # fmt: skip
        workload = WorkloadProcess(net, argv, logs / "chaos-workload.log")
        try:
            workload.wait_for("ready", READY_TIMEOUT_S, say)
            say(f"cluster up, workload mounted on {CLIENT}; faults start")
            start = time.monotonic()
            scheduler.next_start = start + 3.0  # let the workload write something first
            last_progress = start
            while (now := time.monotonic()) < start + duration_s:
                scheduler.tick(now)
                event = workload.drain(say)
                if event is not None and event["e"] == "exit":
                    raise RuntimeError("the workload exited during the run")
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    p = workload.last
                    active = ", ".join(f.label for f in scheduler.active) or "none"
                    say(f"ops {p.get('ops', 0)} (failed {p.get('failed', 0)}), "
                        f"faults {scheduler.count}, active: {active}")  # fmt: skip
                time.sleep(TICK_S)  # the faults' clock: holds and gaps are seconds long
            run_s = time.monotonic() - start
            scheduler.heal_all()
            say("faults healed; stopping the workload")
            workload.send("stop")
            stopped = workload.wait_for("stopped", STOP_TIMEOUT_S, say)
            say(f"workload stopped: ops {stopped['ops']} (failed {stopped['failed']}); "
                "waiting for every chunk at its goal")  # fmt: skip
            healthy, health = wait_healthy(net, HEALTH_TIMEOUT_S)
            if not healthy:
                errors.append(f"health not back in {HEALTH_TIMEOUT_S:.0f} s: {health}")
                say(f"ERROR {errors[-1]}")
            else:
                say(f"healthy: {health}")
            workload.send("verify")
            result = workload.wait_for("result", VERIFY_TIMEOUT_S, say)
            lost = result["lost"]
            for line in lost[:30]:
                say(f"LOST {line}")
        except (RuntimeError, NetError, local.ClusterError) as e:
            errors.append(str(e))
            say(f"ERROR {e}")
        finally:
            workload.close()
            errors += workload.errors
            run_log.clear()
    final = workload.last
    ops, corrupt = final.get("ops", 0), sum(final.get("corrupt", {}).values())
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(scheduler.started.items()))
    flips = scheduler.flip_times
    say(f"ran {run_s:.0f} s of faults; faults by kind: {by_kind or 'none'}")
    say(f"ops by kind: {final.get('by_op', {})}; failed {final.get('failed', 0)} "
        f"{final.get('errnos', {})}; checked reads {final.get('reads_checked', 0)}")  # fmt: skip
    if flips:
        say(f"flipped bytes dealt with: {len(flips)}, slowest after {max(flips):.1f} s")
    for label in scheduler.unfound:
        say(f"not yet found by the end (never read, not yet scrubbed): {label}")
    if corrupt:
        say(f"corrupt by kind: {final.get('corrupt')}")
    ok = not errors and not lost and not corrupt
    if not ok:
        say(f"logs kept in {base}")
    elif not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    print(f"chaos: ops {ops}, faults {scheduler.count}, lost {len(lost)}, corrupt {corrupt}")
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chaos", description="Issue 5's chaos run (root).")
    sub = p.add_subparsers(dest="command")
    w = sub.add_parser("workload", help="(internal) the workload, run on the client host")
    w.add_argument("--meta", required=True)
    w.add_argument("--secret", required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--timeout", type=float, default=MOUNT_TIMEOUT_S)
    w.add_argument("--mnt-base", required=True)
    w.add_argument("--log-dir", required=True)
    w.add_argument("--trace", action="store_true")
    p.add_argument("--minutes", type=float, default=5.0, help="how long faults run")
    p.add_argument("--seconds", type=float, help="the same in seconds (overrides --minutes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", help="where the cluster, mounts and logs go (new or empty; "
                   "default: a temporary directory, removed after a clean run)")  # fmt: skip
    p.add_argument("--metaservers", type=int, default=3)
    p.add_argument("--chunkservers", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="workload threads")
    p.add_argument("--overlap", type=int, default=2, help="faults at once, at most")
    p.add_argument("--mount-timeout", type=float, default=MOUNT_TIMEOUT_S,
                   help="the mount's --timeout: shorter makes more operations fail")  # fmt: skip
    p.add_argument("--trace", action="store_true",
                   help="log every metaserver call of the mount (to investigate a finding)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["traced-mount"]:
        return traced_mount_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "workload":
        return workload_main(args)
    if args.chunkservers < GOAL:
        print(f"chaos: needs at least {GOAL} chunkservers (the goal)", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return run(args)
    except (NetError, local.ClusterError) as e:
        print(f"chaos: cannot run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chaos: interrupted; everything removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
