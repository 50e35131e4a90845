"""mia-hpc: membership inference via memorization, at HPC scale.

The package root imports nothing heavy: the contract (``mia_hpc.contract``: ``spec``, ``store``,
``verify``, ...) must stay importable without torch so that the analysis side (``analysis/``) runs
on CPU-only nodes. The layers and what each may import: ``tests/test_layers.py``.
"""

__version__ = "0.1.0"

import warnings as _warnings

# Consolidated metadata is zarr-python's (and xarray's) fast path for opening stores; its "not in
# the v3 spec" notice is noise for users, who only ever read our stores with zarr-python.
_warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
