"""The chunk server: chunk files with per-block checksums, served over dfs.wire."""
