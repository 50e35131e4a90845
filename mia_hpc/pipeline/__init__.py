"""The pipeline: from a spec to a finished run, on this machine or on Slurm.

* :mod:`~mia_hpc.pipeline.experiment`: a spec's store, built (data, keep masks, queries) and
  allocated; :mod:`~mia_hpc.pipeline.resources`: will it fit (memory, disk) before anything runs.
* :mod:`~mia_hpc.pipeline.stages`: staged specs (oracle -> selection -> attack -> analysis);
  :mod:`~mia_hpc.pipeline.adaptive`: adaptive shadow budgets (waves until the watched values settle).
* :mod:`~mia_hpc.pipeline.plan`: how many shadows a question needs, from a pilot;
  :mod:`~mia_hpc.pipeline.train_bench`: training throughput (``mia-hpc bench train``);
  :mod:`~mia_hpc.pipeline.tiny`: a spec's ``--tiny`` form.

The launchers are :mod:`mia_hpc.launch`; :mod:`mia_hpc.api` decides which of these runs a spec.
The pipeline may import every layer (contract, training, analysis); nothing below imports it.
"""
