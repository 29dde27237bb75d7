"""The chunk core: what the leader decides about chunks' replicas (placement, repair,
trimming, rebalancing, draining), as decisions without I/O. See ``policy`` for what the
operator decides and the namespace keeps."""
