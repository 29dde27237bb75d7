"""dfs: a chunked distributed file system (shared core and the client side)."""

__version__ = "0.1.0"
