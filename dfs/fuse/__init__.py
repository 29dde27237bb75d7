"""The FUSE mount: the only importer of the FUSE binding (pyfuse3, libfuse3's low-level,
inode-based API on trio).

Modules: ``errno_map`` (the one, total map from ``ErrorCode`` to errno; no binding needed),
``operations`` (``DfsOperations``: the request handlers over ``FsClient``), ``mount`` (the
mountpoint checks, the trio loop, readahead, clean unmount). The package imports nothing
at its top, so ``errno_map`` can be used and tested without libfuse.
"""
