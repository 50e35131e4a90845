"""Per-sample privacy score of Carlini et al. §VII-B (paper §4 footnote 4, Algorithm 1 line 21).

``score = |mu_in - mu_out| / (sigma_in + sigma_out)`` on the identity query's phi over the IN and
the OUT shadows of the sample: how far apart a sample's member and non-member confidence
distributions are, in units of their spread (higher = more vulnerable).

sigma uses the sample standard deviation (ddof=1): with M/2 models per side the unbiased variance
is the natural estimator, and it matches the ``var`` of Algorithm 1 read as an estimate; with the
paper's 1000 models per side the choice changes the score by a factor ~1.0005. Samples with fewer
than 2 IN or 2 OUT shadows (e.g. the test split) get NaN. A sample whose two spreads are both 0
gets +inf if the means differ and NaN if they do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.kernels.stats import GaussianSums, gaussian_sums

__all__ = ["privacy_score_from_stats", "privacy_score_from_sums", "privacy_score"]


def privacy_score_from_stats(mu_in: Any, sd_in: Any, mu_out: Any, sd_out: Any) -> np.ndarray:
    """``|mu_in - mu_out| / (sd_in + sd_out)`` elementwise (NaN propagates)."""
    mu_in, sd_in, mu_out, sd_out = (np.asarray(a, dtype=np.float64) for a in (mu_in, sd_in, mu_out, sd_out))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(mu_in - mu_out) / (sd_in + sd_out)


def privacy_score_from_sums(sums: GaussianSums, query: int = 0) -> np.ndarray:
    """Privacy score per sample from running sums over all shadows, on query ``query``; shape (N,)."""
    mu_in, var_in, mu_out, var_out = sums.moments(ddof=1)
    # the shift is common to both means and cancels in the difference
    return privacy_score_from_stats(mu_in[..., query], np.sqrt(var_in[..., query]),
                                    mu_out[..., query], np.sqrt(var_out[..., query]))


def privacy_score(phi: Any, keep: Any) -> np.ndarray:
    """Privacy score per sample, computed now.

    Parameters
    ----------
    phi : array-like, shape (M, N)
        Identity-query phi of each shadow on each sample.
    keep : array-like of bool, shape (M, N)
        Membership.

    Returns
    -------
    ndarray of float64, shape (N,)
    """
    phi = np.asarray(phi, dtype=np.float64)[..., None]
    keep = np.asarray(keep, dtype=bool)
    return privacy_score_from_sums(gaussian_sums(phi, keep))
