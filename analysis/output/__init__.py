"""What a person reads: the ``analyze`` orchestrator (``report``), tables, ROC data and figures,
``scores.zarr``, the HTML report and the adaptive run's figure (the one number format they all use
is :mod:`analysis.store_io.numfmt`).
"""
