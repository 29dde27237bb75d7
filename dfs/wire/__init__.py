"""The wire: framing, message conventions, errors, the authentication handshake, the
operations' definitions and the connection core (``conn.py``).

Everything in this package is pure: bytes and dicts in, bytes and dicts out. It imports no
``asyncio``, ``socket``, ``time``, ``os`` or ``threading`` (``tests/unit/test_boundaries.py``
checks this), so every process (metaserver, chunkserver, client) and every test uses the
same code. The I/O that carries these frames lives in the connection core's two drivers,
``dfs.rpc`` (asyncio) and ``dfs.client.conn`` (anyio).
"""
