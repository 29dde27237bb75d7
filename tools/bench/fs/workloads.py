"""The nine workloads of ``scripts/bench fs``: what each does, on any directory, and its figure.

It imports nothing but the standard library, so the command line can list the workloads
without loading the client. What it owns: the workloads' names, units, order and definitions (docs/PERFORMANCE.md has
them in prose), the inputs they read from the local disk (made once per benchmark, not
timed), and the untimed setup a workload needs when the one that normally precedes it was
not selected (``--only seq-read`` first writes the big file). What it must not know: what
file system it runs on (a target gives it a directory) or how figures are reported.

One run of the selected workloads on one target (``run_sequence``) goes in the canonical
order below, in a fresh directory ``DIR`` of that target; what a workload leaves behind is
what the next one uses:

    seq-write     dd if=SRC of=DIR/big bs=1M conv=fsync         MB/s (10^6 bytes, as dd)
    seq-read      caches dropped; dd if=DIR/big of=/dev/null bs=1M   MB/s
    rand-read     4 KiB reads at random 4 KiB-aligned offsets of DIR/big, queue depth 1,
                  O_DIRECT, for a fixed time                     IOPS
    small-create  cp -r SMALL DIR/small (20 dirs of 4 KiB random files)   files/s
    stat-cold     caches dropped; ls -lR DIR/small >/dev/null     files/s
    stat-warm     the same again at once                          files/s
    small-rm      rm -rf DIR/small                                files/s
    untar         tar xf STDLIB.tar -C DIR/untar                  s
    untar-rm      rm -rf DIR/untar                                s

"Caches dropped" is ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root): the kernel forgets
pages, entries and attributes of every file system, the mounts' included. Before
small-create and untar too (untimed, the inputs read back into the page cache after it:
``settle_disk`` says why). SRC is kept in the
page cache (read once, untimed, before each seq-write), so seq-write measures the target.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Workload names in the order they run; each one's unit, and whether more is better.
ORDER = (
    "seq-write",
    "seq-read",
    "rand-read",
    "small-create",
    "stat-cold",
    "stat-warm",
    "small-rm",
    "untar",
    "untar-rm",
)
UNITS = {
    "seq-write": "MB/s",
    "seq-read": "MB/s",
    "rand-read": "IOPS",
    "small-create": "files/s",
    "stat-cold": "files/s",
    "stat-warm": "files/s",
    "small-rm": "files/s",
    "untar": "s",
    "untar-rm": "s",
}
# Figures in seconds are better when lower; every other one when higher.
LOWER_IS_BETTER = frozenset(w for w, unit in UNITS.items() if unit == "s")

# What ``untar`` unpacks: the standard library's sources, as tests/fuse takes them (no
# site-packages, no byte code).
STDLIB = Path(json.__file__).resolve().parents[1]
TAR_EXCLUDES = ["--exclude=site-packages", "--exclude=__pycache__"]
SMALL_FILE_BYTES = 4096
SMALL_DIRS = 20
RAND_READ_BYTES = 4096
# One command (dd, cp, tar, rm, ls) may take this long before the benchmark gives up: a
# hung mount must end the benchmark with an error, not hold it forever.
COMMAND_TIMEOUT_S = 1800.0
_PIECE_BYTES = 1 << 20
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True)
class Inputs:
    """What the workloads read from the local disk, made once by ``make_inputs``."""

    big_src: Path  # random bytes, big_mib MiB
    small_src: Path  # SMALL_DIRS directories of 4 KiB random files
    small_files: int
    tarball: Path  # the Python standard library's sources
    tar_entries: int


@dataclass(frozen=True)
class Settings:
    big_mib: int
    rand_read_s: float


# Which input each workload reads (directly or through its untimed setup).
_BIG_USERS = frozenset({"seq-write", "seq-read", "rand-read"})
_SMALL_USERS = frozenset({"small-create", "stat-cold", "stat-warm", "small-rm"})
_TAR_USERS = frozenset({"untar", "untar-rm"})


def make_inputs(
    directory: Path,
    selected: list[str],
    big_mib: int,
    small_files: int,
    tar_source: Path = STDLIB,
) -> Inputs:
    """Write the inputs the ``selected`` workloads need into ``directory`` (on the local
    disk), random bytes throughout: a peer that skips zero blocks must not gain by it.
    ``tar_source`` is what ``untar`` unpacks (the standard library's sources; a smaller
    tree for a quick run)."""
    directory.mkdir(parents=True, exist_ok=True)
    big = directory / "big.src"
    if _BIG_USERS.intersection(selected):
        with open(big, "wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(_PIECE_BYTES))
    small = directory / "small"
    small.mkdir()
    if _SMALL_USERS.intersection(selected):
        for i in range(small_files):
            sub = small / f"d{i % SMALL_DIRS:02d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i:05d}").write_bytes(os.urandom(SMALL_FILE_BYTES))
    tarball = directory / "stdlib.tar"
    entries = 0
    if _TAR_USERS.intersection(selected):
        _run(["tar", "-C", str(tar_source), "-cf", str(tarball), *TAR_EXCLUDES, "."])
        listing = subprocess.run(
            ["tar", "-tf", str(tarball)],
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        entries = len(listing.stdout.splitlines())
    return Inputs(big, small, small_files, tarball, entries)


def drop_caches() -> None:
    """Write back dirty data, then make the kernel forget cached pages, dentries, inodes."""
    os.sync()
    DROP_CACHES.write_text("3\n")


def settle_disk(*warm: Path) -> None:
    """Before a workload that creates many files: ``drop_caches``, then read ``warm``
    (files, or directories' files) back into the page cache.

    Why: on an ext4 without a journal, as this machine's disk is, the kernel does not
    reuse an inode freed within the last minute or more (``recently_deleted``, checked
    for every candidate in ``find_inode_bit``, a buffer-cache lookup each). After another
    target's removals (thousands of files, or chunk files) each create here took ~550 µs
    instead of ~25, and which target ran after which decided the figures: dfs's second
    run always followed the local target's removals. An inode-table block no longer cached
    counts as written out, so dropping the (written back) cache ends the wait."""
    drop_caches()
    for path in warm:
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file():
                _warm(item)


def _run(argv: list[str], *, stdout: int | None = None) -> None:
    subprocess.run(
        argv, check=True, stdin=subprocess.DEVNULL, stdout=stdout, timeout=COMMAND_TIMEOUT_S
    )


def _timed(argv: list[str], *, quiet: bool = False) -> float:
    """Seconds ``argv`` took to run (it must succeed)."""
    t0 = time.perf_counter()
    _run(argv, stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - t0


def _warm(path: Path) -> None:
    """Read ``path`` whole, so that it is in the page cache."""
    with open(path, "rb") as f:
        while f.read(_PIECE_BYTES * 8):
            pass


def rand_read_iops(path: Path, seconds: float, seed: int) -> float:
    """4 KiB O_DIRECT reads at random aligned offsets of ``path``, one at a time, for
    ``seconds``: reads per second."""
    blocks = os.stat(path).st_size // RAND_READ_BYTES
    if blocks == 0:
        raise ValueError(f"{path} is smaller than one read")
    rng = random.Random(seed)
    buf = mmap.mmap(-1, RAND_READ_BYTES)  # page-aligned, as O_DIRECT requires
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        count = 0
        start = now = time.perf_counter()
        deadline = start + seconds
        while now < deadline:
            offset = rng.randrange(blocks) * RAND_READ_BYTES
            if os.preadv(fd, [buf], offset) != RAND_READ_BYTES:
                raise OSError(f"short read at {offset} of {path}")
            count += 1
            now = time.perf_counter()
        return count / (now - start)
    finally:
        os.close(fd)
        buf.close()


class Sequence:
    """One run of the selected workloads in one fresh directory of one target."""

    def __init__(self, directory: Path, inputs: Inputs, settings: Settings, seed: int) -> None:
        self.dir = directory
        self.inputs = inputs
        self.settings = settings
        self.seed = seed
        self.big = directory / "big"
        self.small = directory / "small"
        self.untar_dir = directory / "untar"
        self._listed = False  # DIR/small was just listed (stat-warm follows at once)

    # ---------------------------------------------------------------- untimed setup

    def _ensure_big(self) -> None:
        if not self.big.exists():
            _warm(self.inputs.big_src)
            _run(["dd", f"if={self.inputs.big_src}", f"of={self.big}", "bs=1M",
                  "conv=fsync", "status=none"])  # fmt: skip

    def _ensure_small(self) -> None:
        if not self.small.exists():
            _run(["cp", "-r", str(self.inputs.small_src), str(self.small)])
            self._listed = False

    def _ensure_untar(self) -> None:
        if not self.untar_dir.exists():
            self.untar_dir.mkdir()
            _run(["tar", "xf", str(self.inputs.tarball), "-C", str(self.untar_dir)])

    # ---------------------------------------------------------------- the workloads

    def seq_write(self) -> float:
        self.big.unlink(missing_ok=True)
        _warm(self.inputs.big_src)
        seconds = _timed(["dd", f"if={self.inputs.big_src}", f"of={self.big}", "bs=1M",
                          "conv=fsync", "status=none"])  # fmt: skip
        return self.big.stat().st_size / 1e6 / seconds

    def seq_read(self) -> float:
        self._ensure_big()
        drop_caches()
        seconds = _timed(["dd", f"if={self.big}", "of=/dev/null", "bs=1M", "status=none"])
        return self.big.stat().st_size / 1e6 / seconds

    def rand_read(self) -> float:
        self._ensure_big()
        return rand_read_iops(self.big, self.settings.rand_read_s, self.seed)

    def small_create(self) -> float:
        if self.small.exists():
            shutil.rmtree(self.small)
        settle_disk(self.inputs.small_src)
        seconds = _timed(["cp", "-r", str(self.inputs.small_src), str(self.small)])
        self._listed = False
        return self.inputs.small_files / seconds

    def stat_cold(self) -> float:
        self._ensure_small()
        drop_caches()
        seconds = _timed(["ls", "-lR", str(self.small)], quiet=True)
        self._listed = True
        return self.inputs.small_files / seconds

    def stat_warm(self) -> float:
        self._ensure_small()
        if not self._listed:
            _run(["ls", "-lR", str(self.small)], stdout=subprocess.DEVNULL)
        seconds = _timed(["ls", "-lR", str(self.small)], quiet=True)
        return self.inputs.small_files / seconds

    def small_rm(self) -> float:
        self._ensure_small()
        seconds = _timed(["rm", "-rf", str(self.small)])
        return self.inputs.small_files / seconds

    def untar(self) -> float:
        if self.untar_dir.exists():
            shutil.rmtree(self.untar_dir)
        self.untar_dir.mkdir()
        settle_disk(self.inputs.tarball)
        return _timed(["tar", "xf", str(self.inputs.tarball), "-C", str(self.untar_dir)])

    def untar_rm(self) -> float:
        self._ensure_untar()
        return _timed(["rm", "-rf", str(self.untar_dir)])

    def cleanup(self) -> None:
        """Remove what the run left (untimed), so runs do not fill the disk."""
        if self.dir.exists():
            _run(["rm", "-rf", str(self.dir)])

    def step(self, workload: str) -> Callable[[], float]:
        return {
            "seq-write": self.seq_write,
            "seq-read": self.seq_read,
            "rand-read": self.rand_read,
            "small-create": self.small_create,
            "stat-cold": self.stat_cold,
            "stat-warm": self.stat_warm,
            "small-rm": self.small_rm,
            "untar": self.untar,
            "untar-rm": self.untar_rm,
        }[workload]


def parse_only(text: str | None) -> list[str]:
    """The workloads ``--only`` names, in canonical order (all without it)."""
    if not text:
        return list(ORDER)
    wanted = {w.strip() for w in text.split(",") if w.strip()}
    unknown = wanted - set(ORDER)
    if unknown:
        raise ValueError(f"unknown workload(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(ORDER)}")  # fmt: skip
    return [w for w in ORDER if w in wanted]
