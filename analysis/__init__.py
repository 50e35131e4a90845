"""Reducing side of mia-hpc: reads a shadow store with xarray/dask; never imports torch.

Modules (import them directly; this package imports nothing heavy on its own):

``load``          open a store, keep the done shadows, lazy phi / loss / correctness
``stats``         per-sample IN/OUT running sums and their leave-one-out moments
``memorization``  Feldman-Zhang memorization and its standard error
``privacy``       Carlini et al.'s per-sample privacy score
``lira``          LiRA online / offline / fixed-variance, each target against all other shadows
``metrics``       ROC, AUROC, TPR at fixed FPR (pooled and per target)
``report``        ``analyze(store, out)``: tables, plots, JSON; ``format_table``
``synthetic``     stores with a known answer (tests, demos, ``mia-hpc synth-store``)
"""

import warnings as _warnings

# Consolidated metadata is zarr-python's (and xarray's) fast path for opening stores; its "not in
# the v3 spec" notice is noise for users, who only ever read our stores with zarr-python.
_warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
