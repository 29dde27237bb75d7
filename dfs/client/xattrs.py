"""Extended attributes, and a subtree's usage as the ``dfs.usage`` one: ``XattrCalls``,
mixed into ``FsClient``.

What it owns: the xattr requests (``fs.getxattr``, cached; ``fs.listxattr``,
``fs.setxattr``, ``fs.removexattr``), ``admin.usage``, and keeping the client's caches and
directory leases true to its own xattr changes. What it must not do: hold state of its own
(the caches and leases are ``FsClient``'s) or import asyncio.
"""

from __future__ import annotations

from dfs.client.cache import MetaCache
from dfs.client.dirleases import DirLeases
from dfs.client.meta import MetaClient
from dfs.client.records import Attr
from dfs.wire.errors import NoAttr, ProtocolError
from dfs.wire.messages import field

# setxattr flags.
XATTR_CREATE = 1
XATTR_REPLACE = 2

# The virtual xattr a mount answers with a subtree's usage (``getfattr -n dfs.usage DIR``),
# and its fields, in order (docs/PROTOCOL.md, admin.usage).
USAGE_XATTR = b"dfs.usage"
USAGE_FIELDS = ("bytes", "physical_bytes", "files", "dirs", "trash_files", "trash_bytes",
                "garbage_chunks")  # fmt: skip


class XattrCalls:
    """The xattr calls and ``usage`` of ``FsClient``."""

    meta: MetaClient
    cache: MetaCache
    dirleases: DirLeases

    def _known(self, ino: int) -> Attr | None:
        raise NotImplementedError

    async def usage(self, ino: int) -> dict[str, int]:
        """The subtree's usage (``admin.usage``: the namespace's recursive statistics,
        one call), after what this client queued under its directory leases landed."""
        await self.dirleases.flush()
        header = await self.meta.read("admin.usage", ino=ino)
        return {k: field(header, k, int) for k in USAGE_FIELDS}

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value of extended attribute ``name`` (``NoAttr`` if absent); cached.
        ``dfs.usage`` (``USAGE_XATTR``) is not stored: it answers ``usage`` as one
        ``key=value`` line, never cached."""
        if name == USAGE_XATTR:
            u = await self.usage(ino)
            return (" ".join(f"{k}={u[k]}" for k in USAGE_FIELDS) + "\n").encode()
        # An inode made here under a lease still held, or a directory leased here: only
        # this client changes its xattrs (dirleases.py, ``made_here``; another client's
        # change of a leased directory's recalls the lease), so what it knows stays true.
        kept = self.dirleases.made_here(ino) or self.dirleases.dir_attr(ino) is not None
        known, value = self.cache.xattr(
            ino, name, kept=kept, attr=self._known(ino) if kept else None
        )
        if not known:
            epoch = self.cache.xattr_epoch
            try:
                header = await self.meta.read("fs.getxattr", ino=ino, name=name)
            except NoAttr:
                self.cache.put_xattr(ino, name, None, epoch=epoch)
                raise
            value = field(header, "value", bytes)
            self.cache.put_xattr(ino, name, value, epoch=epoch)
        if value is None:
            raise NoAttr("no such xattr (cached)", name=name)
        return value

    async def listxattr(self, ino: int) -> list[bytes]:
        names = field(await self.meta.read("fs.listxattr", ino=ino), "names", list)
        if not all(isinstance(n, bytes) for n in names):
            raise ProtocolError("listxattr: names must be bytes")
        return names

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """Set ``name`` to ``value``; ``flags``: ``XATTR_CREATE`` (``Exists`` if set),
        ``XATTR_REPLACE`` (``NoAttr`` if not)."""
        self.cache.drop_xattrs(ino)  # before: a getxattr on its way must not cache the old
        try:
            await self.meta.mutate("fs.setxattr", ino=ino, name=name, value=value, flags=flags)
        finally:
            self.cache.drop_attr(ino)  # ctime
            self.dirleases.forget_attr(ino)
            self.cache.drop_xattrs(ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        self.cache.drop_xattrs(ino)
        try:
            await self.meta.mutate("fs.removexattr", ino=ino, name=name)
        finally:
            self.cache.drop_attr(ino)
            self.dirleases.forget_attr(ino)
            self.cache.drop_xattrs(ino)


__all__ = ["USAGE_FIELDS", "USAGE_XATTR", "XATTR_CREATE", "XATTR_REPLACE", "XattrCalls"]
