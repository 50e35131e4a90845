"""Why a shard worker stops without finishing: each error's ``str`` is the one line shown to users.

Torch-free, so the CLI, the local driver and the trainer can all raise and catch them. The CLI
turns every :class:`ShardFailed` into ``mia-hpc: error: ...`` and exit code 1, so a Slurm array
task that hits one is shown FAILED.
"""

from __future__ import annotations


class ShardFailed(RuntimeError):
    """A shard worker exited with an error; its finished shadows are kept, the rest are redone on re-run."""


class LeaseHeld(ShardFailed):
    """Another live worker holds the shard's lease (the message names it)."""


class LeaseLost(ShardFailed):
    """This worker's lease was taken over (it looked stale): it stops before writing anything more."""


class NonFiniteLoss(ShardFailed):
    """A shadow's training loss became NaN or infinite: the shadow diverged and is not stored."""
