"""Interoperability with other membership-inference code bases (torch-free).

* :mod:`mia_hpc.interop.lira_format`: the experiment-folder layout of the LiRA reference code
  (Carlini et al., tensorflow/privacy ``research/mi_lira_2021``): ``import_lira`` and ``export_lira``.
* :mod:`mia_hpc.interop.synth`: ``synth_store``, the engine of ``mia-hpc synth-store``.
"""

from mia_hpc.interop.lira_format import LiraFormatError, export_lira, import_lira, scan_lira
from mia_hpc.interop.synth import synth_store

__all__ = ["LiraFormatError", "export_lira", "import_lira", "scan_lira", "synth_store"]
