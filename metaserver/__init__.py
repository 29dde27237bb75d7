"""The metadata server: a Raft group whose state machine is the namespace."""
