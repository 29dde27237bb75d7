"""The wire: framing, message conventions, errors and the authentication handshake.

Everything in this package is pure: bytes and dicts in, bytes and dicts out. It imports no
``asyncio``, ``socket``, ``time``, ``os`` or ``threading`` (``tests/unit/test_boundaries.py``
checks this), so every process (metaserver, chunkserver, client) and every test uses the
same code. The I/O that carries these frames lives in ``dfs.rpc``.
"""
