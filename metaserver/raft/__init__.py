"""Raft consensus library: pure core, storage, asyncio driver, simulator. No file-system knowledge."""
