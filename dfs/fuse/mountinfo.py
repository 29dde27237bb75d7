"""Which mounts exist, read from /proc/self/mountinfo, and the mount's file-system type.

No request ever reaches a mount from here (nothing is stat'ed), so a hung or dead mount
cannot block the CLI that asks. Pure Python, no FUSE binding: ``dfs.cli`` uses it for
``dfs umount``, ``dfs down`` and to see when a background mount is live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# What mount(8) and df(1) show as the type of a dfs mount (FUSE's "fuse." + subtype).
FS_TYPE = "fuse.dfs"


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo that matters here."""

    mountpoint: str
    device: str  # "major:minor": the name of the mount's bdi in /sys/class/bdi
    fstype: str


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def resolve(path: str | Path) -> str:
    """``path`` absolute, with the symlinks of its parent resolved but not of its last
    component: resolving that would stat the mount's root, which blocks on a hung mount."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(head)


def mount_info(path: str | Path) -> MountInfo | None:
    """The mount whose mountpoint is ``path`` (made absolute, symlinks resolved), read
    from /proc/self/mountinfo: no request reaches the mount itself, so a hung or dead
    mount cannot block this."""
    target = resolve(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) >= 5 and _unescape(parts[4]) == target:
                fstype = right.split()[0] if right else ""
                found = MountInfo(target, parts[2], fstype)  # the last one is on top
    return found


__all__ = ["FS_TYPE", "MountInfo", "mount_info", "resolve"]
