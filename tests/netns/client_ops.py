"""What the netns tests run on a client host: ``FsClient`` with the timeouts a test
chooses (the ``dfs`` CLI's are fixed), one line of output per file.

    python client_ops.py --meta A,B,C --secret F [--timeout S --io-timeout S ...] COMMAND

Commands (paths in the cluster; every file's bytes are ``content(name, size)``, so any
reader can check them without being told them):
    write DIR NAME...       create DIR if missing, write each file; "ok NAME SECONDS"
    write-loop DIR          write DIR/w00000, w00001, ... until --count or --stop-file;
                            "ok NAME" once a file's close returned (acknowledged), "err NAME
                            ERROR" when it failed (the loop goes on with the next name)
    read DIR NAME...        read and check each file; "ok NAME SECONDS" or "bad NAME WHY"
Exit status 0 when every file was ok, 1 otherwise. Run as a script (not imported by the
tests): it only needs ``dfs`` installed.
"""

from __future__ import annotations

import argparse
import os
import random
import stat
import sys
import time
from pathlib import Path

import anyio

from dfs.client import ClientOptions, FsClient
from dfs.secret import load_secret
from dfs.wire.errors import DfsError, Exists
from tools.testing.fsread import read_to_eof

MODE = stat.S_IFREG | 0o644


def content(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def say(*words: object) -> None:
    print(*words, flush=True)


async def ensure_dir(fs: FsClient, path: str) -> int:
    ino = (await fs.resolve(b"/")).ino
    for part in path.strip("/").split("/"):
        if not part:
            continue
        try:
            ino = (await fs.mkdir(ino, part.encode(), 0o755)).ino
        except Exists:
            ino = (await fs.lookup(ino, part.encode())).ino
    return ino


async def write_one(fs: FsClient, parent: int, name: str, size: int) -> None:
    _, f = await fs.create_and_open(
        parent, name.encode(), MODE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    )
    try:
        await f.write(0, content(name, size))
    finally:
        await f.close()


async def read_one(fs: FsClient, parent: int, name: str) -> bytes:
    return await read_to_eof(fs, parent, name.encode())


async def run(args: argparse.Namespace) -> int:
    options = ClientOptions(
        timeout_s=args.timeout,
        attempt_timeout_s=args.attempt_timeout,
        connect_timeout_s=args.connect_timeout,
        io_timeout_s=args.io_timeout,
        attr_ttl_s=0.0,
    )
    secret = load_secret(Path(args.secret))
    failures = 0
    async with FsClient.open_cluster(args.meta.split(","), secret, options=options) as fs:
        if args.command in ("write", "write-loop"):
            parent = await ensure_dir(fs, args.dir)
        else:
            parent = (await fs.resolve(args.dir.encode())).ino
        if args.command == "write-loop":
            i = 0
            while i < args.count and not (args.stop_file and Path(args.stop_file).exists()):
                name = f"w{i:05d}"
                try:
                    await write_one(fs, parent, name, args.size)
                    say("ok", name)
                except DfsError as e:
                    say("err", name, repr(e).replace("\n", " "))
                    failures += 1
                i += 1
            return 1 if failures else 0
        for name in args.names:
            t = time.monotonic()
            try:
                if args.command == "write":
                    await write_one(fs, parent, name, args.size)
                else:
                    data = await read_one(fs, parent, name)
                    if data != content(name, args.size):
                        say("bad", name, f"{len(data)} bytes, not the {args.size} written")
                        failures += 1
                        continue
                say("ok", name, f"{time.monotonic() - t:.3f}")
            except DfsError as e:
                say("bad", name, repr(e).replace("\n", " "))
                failures += 1
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--meta", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--attempt-timeout", type=float, default=2.0)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--io-timeout", type=float, default=10.0)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--stop-file")
    p.add_argument("command", choices=("write", "write-loop", "read"))
    p.add_argument("dir")
    p.add_argument("names", nargs="*")
    return anyio.run(run, p.parse_args(), backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
