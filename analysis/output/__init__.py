"""What a person reads: the ``analyze`` orchestrator (``report``), tables, ROC data and figures,
``scores.zarr``, the HTML report, the one number format (``numfmt``) and the adaptive run's figure.
"""
