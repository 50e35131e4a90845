"""Launching: shard planning (``shards``), the per-shard worker (``worker``) and executors (``local``)."""
