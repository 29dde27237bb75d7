"""``scripts/bench fs``: the runner. Starts the targets, runs the workloads on each, in turn,
``--runs`` times, stops everything, prints the report.

What it owns: the command line of ``bench fs``, the benchmark's temp dir (on the same disk
as the working tree), the order of runs (run 1 on every target, then run 2 ..., so a burst
of load from elsewhere on a shared machine spreads over all targets rather than one), and
the guarantee that every process it started ends and every mount it made is gone when it
returns, on error, Ctrl-C or SIGTERM too. Progress goes to stderr, one line a step; the
figures to stdout (``report.py``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from tools import ROOT
from tools.bench.fs import report, workloads
from tools.bench.fs.targets import (
    DfsTarget,
    LocalTarget,
    PassthroughTarget,
    Target,
    TargetUnavailable,
    rss_peak_mib,
)

# Where the temp dir goes when the system's is on another disk than the working tree
# (ignored by git, as benchmark output is).
FALLBACK_DIR = ROOT / "bench-out"


def _progress(message: str) -> None:
    print(f"bench fs: {message}", file=sys.stderr, flush=True)


def _temp_parent(requested: Path | None) -> Path:
    if requested is not None:
        return requested
    system = Path(tempfile.gettempdir())
    if system.stat().st_dev == ROOT.stat().st_dev:
        return system
    FALLBACK_DIR.mkdir(exist_ok=True)
    return FALLBACK_DIR


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the targets


def _make_targets(args: argparse.Namespace, root: Path) -> list[Target]:
    targets: list[Target] = [
        DfsTarget(
            root / "dfs",
            mount_stats=args.mount_stats,
            mount_args=shlex.split(args.dfs_mount_args),
            tls=args.tls,
        )
    ]
    if args.peer == "moosefs":
        from tools.bench.fs.moosefs import MooseFsTarget

        targets.append(MooseFsTarget(root / "moosefs"))
    if not args.no_passthrough:
        targets.append(PassthroughTarget(root / "passthrough"))
    targets.append(LocalTarget(root / "local"))
    return targets


def _run_all(
    args: argparse.Namespace,
    targets: list[Target],
    inputs: workloads.Inputs,
    selected: list[str],
    results: report.Results,
) -> None:
    settings = workloads.Settings(big_mib=args.big_mib, rand_read_s=args.rand_seconds)
    for run in range(1, args.runs + 1):
        for target in targets:
            sequence = workloads.Sequence(target.directory / f"run{run}", inputs, settings, run)
            sequence.dir.mkdir()
            for i, workload in enumerate(selected):
                t0 = time.perf_counter()
                value = sequence.step(workload)()
                results.add(workload, target.name, value)
                _progress(f"run {run}/{args.runs} {target.name} {workload} "
                          f"{report.number(value)} {workloads.UNITS[workload]} "
                          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
                following = selected[i + 1] if i + 1 < len(selected) else None
                if following != "stat-warm":
                    stats = target.segment_end()
                    if stats is not None:
                        print(f"# mount-stats {target.name} run {run} up to {workload}:\n"
                              f"{stats}", file=sys.stderr, flush=True)  # fmt: skip
            sequence.cleanup()
    for target in targets:
        peak = rss_peak_mib(target.fuse_pid())
        if peak is not None:
            results.rss_peak_mib[target.name] = peak


def fs_main(args: argparse.Namespace) -> int:
    try:
        selected = workloads.parse_only(args.only)
    except ValueError as e:
        print(f"bench fs: {e}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench fs: needs root (FUSE mounts, dropping the page cache)", file=sys.stderr)
        return 2
    if args.peer == "moosefs":
        from tools.bench.fs.moosefs import MooseFsUnavailable, ensure_installed

        try:
            ensure_installed()
        except MooseFsUnavailable as e:
            print(f"bench fs: {e}", file=sys.stderr)
            return 1
    root = Path(tempfile.mkdtemp(prefix="dfs-bench-fs-", dir=_temp_parent(args.dir)))
    results = report.Results(settings={
        "big_mib": args.big_mib, "small_files": args.small_files, "runs": args.runs,
        "rand_read_s": args.rand_seconds, "workloads": selected,
        "dfs_mount_args": args.dfs_mount_args,
    })  # fmt: skip
    targets = _make_targets(args, root)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _progress(f"inputs: {args.big_mib} MiB of random bytes, {args.small_files} small "
                  f"files, a tarball of {args.untar_source}, in {root}")  # fmt: skip
        inputs = workloads.make_inputs(
            root / "inputs", selected, args.big_mib, args.small_files, args.untar_source
        )
        results.settings["tar_entries"] = inputs.tar_entries
        for target in targets:
            t0 = time.perf_counter()
            target.start()
            _progress(f"{target.name} ready at {target.directory} "
                      f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        _run_all(args, targets, inputs, selected, results)
    except TargetUnavailable as e:
        print(f"bench fs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench fs: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        for target in reversed(targets):
            try:
                target.stop()
            except Exception as e:  # keep stopping the others; say what was left
                _progress(f"stopping {target.name} failed: {e!r}")
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            _progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    names = [t.name for t in targets]
    if args.plot is not None:
        args.plot.write_text(report.plot(results))
        _progress(f"plot written to {args.plot}")
    if args.json:
        print(report.as_json(results))
    else:
        print("\n".join(report.lines(results, names)))
    return 0
