"""The contract: what every side agrees on, torch-free (numpy, zarr, crc32c, tomllib).

* :mod:`~mia_hpc.contract.spec`: the experiment spec (TOML -> validated, hashed dataclasses);
  :mod:`~mia_hpc.contract.recipes`: named training recipes a spec may start from.
* :mod:`~mia_hpc.contract.store`: the Zarr store schema (create, open, write a shadow, digests);
  :mod:`~mia_hpc.contract.verify`: its integrity checks; :mod:`~mia_hpc.contract.shards`: which
  shard owns which shadows.
* :mod:`~mia_hpc.contract.seeding`, :mod:`~mia_hpc.contract.keep`, :mod:`~mia_hpc.contract.queries`:
  seeds by purpose, the IN/OUT keep masks, the query augmentations.
* :mod:`~mia_hpc.contract.errors` (why a shard worker stops), :mod:`~mia_hpc.contract.faults`
  (kill-and-resume fault injection), :mod:`~mia_hpc.contract.jsonfile` (atomic JSON files).

Modules here import only each other and third-party packages: training (``mia_hpc.data``,
``mia_hpc.models``, ``mia_hpc.train``) and analysis (``analysis/``) both stand on them
(``tests/test_layers.py``).
"""
