"""The paper's studies, each from the kernels' sums and the attacks' scores.

``memorization`` (Feldman-Zhang), ``privacy`` (Carlini et al.'s privacy score), ``theory``
(Hellinger bounds, Corollary 1), ``complexity`` (sample complexity), ``sweep`` (shadow-count sweep),
``ood`` (OOD scores vs vulnerability), ``groups`` (challenge sets and the names of sample sets),
``dp_compare`` (memorization with and without DP-SGD), ``planner`` (shadow budget from a pilot),
``watch`` (the watched values of an adaptive run's wave).
"""
