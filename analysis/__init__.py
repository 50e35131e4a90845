"""Reducing side of mia-hpc: reads a shadow store with xarray/dask; never imports torch.

One folder per role (import the modules directly; this package imports nothing heavy on its own):

``kernels/``   compiled kernels and how they run in parallel: ``logit_kernels``, ``stats``,
               ``metrics``, ``roc_scan``, ``bootstrap``, ``threads``
``store_io/``  reading the store (``load``, the one pass over the logits ``passes``) and writing
               outputs safely: ``spill``, ``atomic``, ``figures``, ``distributed`` (dask client),
               ``numfmt`` (number format)
``attacks/``   membership attacks: LiRA (``lira``, ``lira_reference``), RMIA, Shokri, Song, Yeom, ...
``studies/``   the paper's studies: ``memorization``, ``privacy``, ``theory``, ``complexity``,
               ``sweep``, ``ood``, ``groups``, ``dp_compare``, ``planner``, ``watch``
``output/``    what a person reads: ``report`` (the ``analyze`` orchestrator), ``tables``, ``roc``,
               ``scores``, ``html_report``, ``adaptive_figure``
``tools/``     developer tools: ``analyze_bench``, ``synthetic_store``

Imports go one way: kernels <- store_io <- attacks <- studies <- output <- tools
(``tests/test_layers.py`` checks it).
``analysis.analyze`` is :func:`analysis.output.report.analyze` (imported on first use).
"""

import warnings as _warnings

# Consolidated metadata is zarr-python's (and xarray's) fast path for opening stores; its "not in
# the v3 spec" notice is noise for users, who only ever read our stores with zarr-python.
_warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)

__all__ = ["analyze"]


def __getattr__(name: str):
    if name == "analyze":  # the one public entry, without importing the analysis at package import
        from analysis.output.report import analyze

        return analyze
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
