"""mia-hpc: membership inference via memorization, at HPC scale.

The package root imports nothing heavy: ``mia_hpc.schema`` and ``mia_hpc.spec`` must stay
importable without torch so that the analysis side (``analysis/``) runs on CPU-only nodes.
"""

__version__ = "0.1.0"

import warnings as _warnings

# Consolidated metadata is zarr-python's (and xarray's) fast path for opening stores; its "not in
# the v3 spec" notice is noise for users, who only ever read our stores with zarr-python.
_warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
