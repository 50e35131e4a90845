"""mia-hpc: membership inference via memorization, at HPC scale.

The package root imports nothing heavy: ``mia_hpc.schema`` and ``mia_hpc.spec`` must stay
importable without torch so that the analysis side (``analysis/``) runs on CPU-only nodes.
"""

__version__ = "0.1.0"
