"""Launching: the per-shard worker (``worker``) and executors (``local``, ``slurm``); shard planning is :mod:`mia_hpc.contract.shards`."""
