"""Compiled kernels and the one pass over the logits.

``logit_kernels`` (per-row statistics of logits: phi, the attacks' signals, OOD scores, Shokri's
features), ``passes`` (the single read of a store's logits and every per-sample sum of it),
``stats`` (IN/OUT running sums, partners, leave-one-out moments, Gaussian fits from sums),
``metrics`` and ``roc_scan`` (ROC, AUROC, TPR at fixed FPR), ``bootstrap`` (their confidence
intervals). Nothing here imports the attacks, the studies or the output.
"""
