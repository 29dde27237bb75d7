"""Paths for the CLI: resolving an absolute path to attributes, name checks. Pure logic
over three calls of the client (``getattr``, ``lookup``, ``readlink``), which
``FsClient`` provides; the mount never resolves paths (the kernel walks them).
"""

from __future__ import annotations

from dfs.client.records import Attr
from dfs.wire.errors import Invalid, NameTooLong, NotDir
from dfs.wire.limits import NAME_BYTES_MAX, ROOT_INO

# Symlinks followed while resolving one path before giving up (Linux's MAXSYMLINKS).
SYMLINKS_MAX = 40


def check_name(name: bytes) -> None:
    """Refuse a name no local file system takes, before a round trip."""
    if not isinstance(name, bytes):
        raise TypeError("names are bytes")
    if len(name) > NAME_BYTES_MAX:
        raise NameTooLong(f"name of {len(name)} bytes", name=name[:64])
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise Invalid("invalid name", name=name[:64])


class PathResolution:
    """``resolve`` and ``resolve_parent``, mixed into ``FsClient``."""

    async def getattr(self, ino: int, *, fresh: bool = False) -> Attr:
        raise NotImplementedError

    async def lookup(self, parent: int, name: bytes) -> Attr:
        raise NotImplementedError

    async def readlink(self, ino: int) -> bytes:
        raise NotImplementedError

    async def resolve(self, path: bytes, *, follow_symlinks: bool = True) -> Attr:
        """The attributes of absolute ``path``. Symlinks on the way are followed, the last
        component's only with ``follow_symlinks``. ``NotFound``, ``NotDir``, ``Invalid``
        (relative path, or more than ``SYMLINKS_MAX`` symlinks: a loop)."""
        if not path.startswith(b"/"):
            raise Invalid("path must be absolute", path=path[:256])
        root = await self.getattr(ROOT_INO)
        attr = root
        ancestors: list[Attr] = []
        parts = _components(path)
        symlinks = 0
        while parts:
            name = parts.pop(0)
            if name == b"..":
                attr = ancestors.pop() if ancestors else root
                continue
            if not attr.is_dir:
                raise NotDir("not a directory", ino=attr.ino)
            child = await self.lookup(attr.ino, name)
            if child.is_symlink and (parts or follow_symlinks):
                symlinks += 1
                if symlinks > SYMLINKS_MAX:
                    raise Invalid("too many levels of symbolic links", path=path[:256])
                target = await self.readlink(child.ino)
                if target.startswith(b"/"):
                    attr, ancestors = root, []
                parts = _components(target) + parts
                continue
            ancestors.append(attr)
            attr = child
        return attr

    async def resolve_parent(self, path: bytes) -> tuple[Attr, bytes]:
        """(the directory that holds the last component of ``path``, that name)."""
        head, _, name = path.rstrip(b"/").rpartition(b"/")
        check_name(name)
        parent = await self.resolve(head or b"/")
        if not parent.is_dir:
            raise NotDir("not a directory", ino=parent.ino)
        return parent, name


def _components(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p and p != b"."]


__all__ = ["SYMLINKS_MAX", "PathResolution", "check_name"]
