"""The command line of ``scripts/bench fs``: its options and their defaults.

It loads no client or FUSE code (``workloads`` imports only the standard library), so
that ``scripts/bench raft`` and ``cluster``, which build the same parser, do not either.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.bench.fs import workloads

BIG_MIB_DEFAULT = 1024
SMALL_FILES_DEFAULT = 2000
RUNS_DEFAULT = 2
RAND_READ_S_DEFAULT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", choices=["moosefs"], default=None,
                        help="also measure MooseFS 3 (installed with apt-get if missing)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    parser.add_argument("--only", default=None, metavar="W[,W...]",
                        help=f"run these workloads only: {', '.join(workloads.ORDER)}")  # fmt: skip
    parser.add_argument("--runs", type=int, default=RUNS_DEFAULT,
                        help="runs per workload and target; each figure is their median")  # fmt: skip
    parser.add_argument("--big-mib", type=int, default=BIG_MIB_DEFAULT,
                        help="size of the big file of seq-write, seq-read, rand-read")  # fmt: skip
    parser.add_argument("--small-files", type=int, default=SMALL_FILES_DEFAULT,
                        help="files of 4 KiB in small-create, stat-*, small-rm")  # fmt: skip
    parser.add_argument("--rand-seconds", type=float, default=RAND_READ_S_DEFAULT,
                        help="how long rand-read reads, per run and target")  # fmt: skip
    parser.add_argument("--untar-source", type=Path, default=workloads.STDLIB,
                        help="the tree untar unpacks (default: the standard library's sources)")  # fmt: skip
    parser.add_argument("--no-passthrough", action="store_true",
                        help="skip the pass-through target (and its ratios)")  # fmt: skip
    parser.add_argument("--mount-stats", action="store_true",
                        help="run the dfs mount with DFS_MOUNT_STATS=1 and remount it after "
                        "each workload (but before stat-warm), printing its counters to stderr")  # fmt: skip
    parser.add_argument("--dfs-mount-args", default="", metavar="ARGS",
                        help="more options for the dfs mount, e.g. --no-local-reads "
                        "(the dfs figures are then that mount's)")  # fmt: skip
    parser.add_argument("--tls", action="store_true",
                        help="the dfs cluster speaks TLS (dfs up --tls): what TLS costs")  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the temp dir goes (default: the system's, if it is on "
                        "the working tree's disk)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument("--plot", type=Path, default=None, metavar="F.svg",
                        help="also draw dfs's ratios to each peer as an SVG bar chart")  # fmt: skip
