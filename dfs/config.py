"""Daemon config files: the one reader every daemon's config goes through (the metaserver,
the chunkserver, the Raft benchmark's key-value server).

Format: TOML (version 1 of each daemon's keys, listed in its own config module:
``metaserver/config.py``, ``metaserver/raft/config.py``, ``chunkserver/config.py``). What
this module owns: reading the file, refusing keys the daemon does not know, and checking a
value's type (``get``), an address (``address``), a port (``port``); every error is a
``ValueError`` that starts with the file's path and names the key, which ``dfs/daemon.py``
prints (exit code 2) instead of a traceback. What it must not do: know any daemon's keys or
defaults (one home each: the daemon's config module).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar, overload

T = TypeVar("T")
_REQUIRED: Any = object()


class ConfigFile:
    """One config file, read and checked for unknown keys: ``ConfigFile.load(path, keys)``."""

    def __init__(self, path: Path | str, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw

    @classmethod
    def load(cls, path: Path, known: frozenset[str] | set[str]) -> ConfigFile:
        """Read ``path``; ``ValueError`` if it is not TOML or has a key not in ``known``."""
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
        config = cls(path, raw)
        unknown = set(raw) - set(known)
        if unknown:
            raise config.error(f"unknown keys {sorted(unknown)} (known: {sorted(known)})")
        return config

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    @overload
    def get(self, key: str, tp: type[T]) -> T: ...
    @overload
    def get(self, key: str, tp: type[T], default: T) -> T: ...

    def get(self, key: str, tp: type[T], default: Any = _REQUIRED) -> T:
        """``key``'s value, of type ``tp`` exactly (a bool is no int, an int no float... but
        an int is taken where a float is asked); ``default`` when absent (none: required)."""
        if key not in self.raw:
            if default is _REQUIRED:
                raise self.error(f"missing key {key!r}")
            return default  # type: ignore[no-any-return]
        value = self.raw[key]
        if tp is float and type(value) is int:
            return float(value)  # type: ignore[return-value]
        if type(value) is not tp:
            raise self.error(f"{key} must be a {tp.__name__}, not {value!r}")
        return value

    def optional_path(self, key: str) -> Path | None:
        """An optional path's value; None when absent or empty."""
        text = self.get(key, str, "")
        return Path(text) if text else None

    def address(self, key: str, value: Any, *, port_zero: bool = False) -> tuple[str, int]:
        """``"host:port"`` (IPv6 hosts in brackets) as (host, port). Port 0 ("any free
        port") only where ``port_zero``: a local choice to listen on, never an address."""
        text = value if isinstance(value, str) else ""
        host, _, port_text = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        low = 0 if port_zero else 1
        if not host or not port_text.isdigit() or not low <= int(port_text) < 65536:
            raise self.error(f"{key} must be 'host:port', not {value!r}")
        return host, int(port_text)

    def port(self, key: str) -> int | None:
        """An optional port number (0: any free one); None when absent."""
        if key not in self.raw:
            return None
        value = self.raw[key]
        if type(value) is not int or not 0 <= value < 65536:
            raise self.error(f"{key} must be a port number (0: any free one), not {value!r}")
        return value


__all__ = ["ConfigFile"]
