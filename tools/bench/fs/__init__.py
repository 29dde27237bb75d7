"""``scripts/bench fs``: the referee of issue 10. The same nine workloads (``cp -r``,
``tar x``, ``ls -lR``, ``rm -rf``, big and random reads and writes) on a dfs mount of a
local cluster, a plain directory of the same disk, a pass-through FUSE file system on the
same binding (``scripts/passthrough.py``) and, with ``--peer moosefs``, MooseFS 3; each
figure the median of ``--runs``, then dfs's ratio to each peer. docs/PERFORMANCE.md says
how to run it and what each workload is.

Modules, one concern each: ``workloads`` (what is measured), ``targets`` (dfs, local, the
pass-through), ``moosefs`` (the peer), ``report`` (medians, ratios, output), ``run`` (the
command line and the order of things). A benchmark, not part of the product: nothing in
``dfs``, ``metaserver`` or ``chunkserver`` imports it.
"""
