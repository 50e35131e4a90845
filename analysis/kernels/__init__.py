"""Compiled kernels, and how they run in parallel.

``logit_kernels`` (per-row statistics of logits: phi, the attacks' signals, OOD scores, Shokri's
features), ``stats`` (IN/OUT running sums, partners, leave-one-out moments, Gaussian fits from
sums), ``metrics`` and ``roc_scan`` (ROC, AUROC, TPR at fixed FPR), ``bootstrap`` (their confidence
intervals), ``threads`` (the analysis' thread count and its thread pool). Arrays in, arrays out:
nothing here reads a store or imports another folder of ``analysis``.
"""
