"""Benchmarks (``scripts/bench``, ``python -m tools.bench``): ``main`` the command line and
the raft benchmark, ``cluster`` a local cluster against the local disk, ``fs`` the
file-system referee against its peers, ``plot`` their SVG charts."""
