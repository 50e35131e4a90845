"""Shokri et al. (S&P 2017): an attack classifier trained on shadow models' outputs.

Features of a (model, sample) pair, from the identity query's logits: the softmax vector sorted in
decreasing order (C values; sorting makes one classifier serve every class, instead of Shokri's
per-class attack models), the true-class probability ``p_y``, its log ``log p_y`` (clipped at -50;
the loss, which the probabilities resolve badly near 1) and the correctness of the argmax. They
are standardised (fitted on the training rows) and fed to sklearn's ``MLPClassifier`` with one
hidden layer of 64 ReLU units (the paper's Appendix C), labelled IN/OUT by ``keep``.

Only other shadows: k-fold cross-fitting over shadows. Shadow s (position among the done shadows)
is in fold ``s % k`` (default k = 5); the targets of fold f are scored by a classifier trained on
shadows outside fold f only, so no target ever contributes a training row to the classifier that
scores it, and k classifiers (not T) are trained. Training rows are subsampled to bound the cost:
at most ``max_rows`` (default 20,000) per classifier, drawn from at most ``max_shadows`` (16)
random shadows outside the fold, an equal random set of train samples per shadow. Minibatches of
500 rows (sklearn's default is 200): half the fitting time, with AUROCs within the spread between
random draws of the training rows (measured on a 500-shadow synthetic store).

The score is the classifier's member log-odds (its output unit's pre-activation: the ranking of
the member probability without its saturation at 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.kernels.logit_kernels import shokri_rows

from ._common import AttackContext, AttackResult

__all__ = ["run_shokri", "fit_shokri", "ShokriModel", "shokri_features", "shokri_folds"]


def shokri_features(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Features (..., C + 3) float32 from logits (..., C) and labels (...) (one compiled loop per
    row: :func:`analysis.kernels.logit_kernels.shokri_rows`)."""
    return shokri_rows(z, y)


def shokri_folds(n_shadows: int, n_targets: int, k: int = 5, max_shadows: int = 16, seed: int = 0
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Fold f -> (targets in f, training shadows for f), for the folds that hold targets.

    Shadow s is in fold ``s % k``; training shadows are at most ``max_shadows`` random shadows
    *not* in fold f.
    """
    k = max(2, min(k, n_shadows))
    rng = np.random.default_rng([seed, 1])
    pos = np.arange(n_shadows)
    out = {}
    for f in range(k):
        targets = pos[:n_targets][pos[:n_targets] % k == f]
        if targets.size == 0:
            continue
        pool = pos[pos % k != f]
        train = np.sort(rng.choice(pool, min(max_shadows, pool.size), replace=False))
        out[f] = (targets, train)
    return out


@dataclass
class ShokriModel:
    """The k fitted attack classifiers of one context, and which targets each scores.

    Attributes
    ----------
    params : dict
        The :func:`fit_shokri` settings that made it (a precomputed model is reused only for the
        same settings).
    k : int
        Folds; target position ``t`` is scored by fold ``t % k``'s classifier.
    folds : dict fold -> (targets, training shadows)
        As :func:`shokri_folds`.
    nets : dict fold -> callable or None
        Each fold's member log-odds of feature rows (``None``: its training rows were all on one
        side, and its targets score 0).
    """

    params: dict
    k: int
    folds: dict
    nets: dict

    def score(self, z: np.ndarray, positions: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Log-odds (B, N) float32 of targets at ``positions`` from their logits ``z`` (B, N, C)."""
        return self.score_features(shokri_features(z, np.asarray(label)[None, :]), positions)

    def score_features(self, feats: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Log-odds (B, N) float32 of targets at ``positions`` from their features (B, N, C + 3)."""
        out = np.zeros(feats.shape[:2], dtype=np.float32)
        folds = np.asarray(positions) % self.k
        for f in np.unique(folds):
            net = self.nets.get(int(f))
            if net is None:
                continue
            rows = np.flatnonzero(folds == f)
            out[rows] = net(feats[rows].reshape(-1, feats.shape[-1])).reshape(len(rows), feats.shape[1])
        return out

    def info(self) -> dict:
        return {"k": self.k, "max_rows": self.params["max_rows"],
                "train_shadows": {int(f): [int(x) for x in sh] for f, (_, sh) in self.folds.items()},
                "fold_of_target": {int(t): int(f) for f, (ts, _) in self.folds.items() for t in ts},
                "features": "sorted softmax, p_y, log p_y, correct (identity query)"}


def _log_odds(clf, block: int = 8192):
    """The fitted pipeline's member log-odds, as a float32 forward pass.

    The MLP's output unit is logistic, so its pre-activation *is* the log-odds: no probability is
    formed (none saturates at 0 or 1) and float32 matrix products are several times faster than
    ``predict_proba``'s float64 path on the T x N rows.
    """
    scaler, mlp = clf[0], clf[-1]
    mean = scaler.mean_.astype(np.float32)
    scale = scaler.scale_.astype(np.float32)
    ws = [w.astype(np.float32) for w in mlp.coefs_]
    bs = [b.astype(np.float32) for b in mlp.intercepts_]
    if mlp.activation != "relu" or mlp.out_activation_ != "logistic":
        raise ValueError("shokri: expected a ReLU MLP with a logistic output")

    def f(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[0], dtype=np.float32)
        for r0 in range(0, x.shape[0], block):  # blocks whose hidden activations stay in cache
            h = (x[r0:r0 + block].astype(np.float32) - mean) / scale
            for w, b in zip(ws[:-1], bs[:-1]):
                h = h @ w
                h += b
                np.maximum(h, 0.0, out=h)
            out[r0:r0 + block] = (h @ ws[-1])[:, 0] + bs[-1][0]
        return out

    return f


def fit_shokri(logits, keep: np.ndarray, label: np.ndarray, train: np.ndarray, n_targets: int, *, k: int = 5,
               max_rows: int = 20000, max_shadows: int = 16, hidden: int = 64, max_iter: int = 200,
               batch_size: int = 500, seed: int = 0) -> ShokriModel:
    """Fit the k fold classifiers (reads only the training shadows' sampled rows).

    ``logits`` is the (M, N, Q, C) dask array of the done shadows; the rest as
    :class:`analysis.attacks.AttackContext`. Settings: see the module docstring.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    import warnings

    params = {"k": k, "max_rows": max_rows, "max_shadows": max_shadows, "hidden": hidden, "max_iter": max_iter,
              "batch_size": batch_size, "seed": seed}
    keep = np.asarray(keep, dtype=bool)
    label = np.asarray(label, dtype=np.int64)
    n_shadows = keep.shape[0]
    tr = np.flatnonzero(np.asarray(train, dtype=bool))
    folds = shokri_folds(n_shadows, n_targets, k, max_shadows, seed)
    rng = np.random.default_rng([seed, 2])
    # every fold's training shadows in one read (identity query), then the sampled rows of each
    used = np.unique(np.concatenate([sh for _, sh in folds.values()])) if folds else np.zeros(0, dtype=int)
    z_used = np.asarray(logits[used][:, :, 0, :].compute()) if used.size else None
    nets: dict[int, Any] = {}
    for f, (_, shadows) in folds.items():
        per = max(1, min(tr.size, max_rows // shadows.size))
        rows_x, rows_y = [], []
        for s in shadows:
            idx = np.sort(rng.choice(tr, per, replace=False))
            z = z_used[np.searchsorted(used, s), idx]
            rows_x.append(shokri_features(z, label[idx]))
            rows_y.append(keep[s, idx])
        xs, ys = np.concatenate(rows_x).astype(np.float64), np.concatenate(rows_y)
        clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu",
                                                            max_iter=max_iter, batch_size=min(batch_size, len(ys)),
                                                            random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xs, ys.astype(int))
        # every training row on one side: no information, the fold's targets score 0
        nets[f] = _log_odds(clf) if len(clf.classes_) == 2 else None
    return ShokriModel(params=params, k=max(2, min(k, n_shadows)), folds=folds, nets=nets)


def run_shokri(ctx: AttackContext, k: int = 5, max_rows: int = 20000, max_shadows: int = 16, hidden: int = 64,
               max_iter: int = 200, batch_size: int = 500, seed: int = 0) -> AttackResult:
    """Scores (T, N_train): log-odds of the fold's attack classifier that the sample is a member.

    Uses ``ctx.precomputed["shokri"]`` (a model and its (T, N_train) scores or a function returning
    them, e.g. from the report's one pass over the logits) when it was made with the same settings; else fits the classifiers
    and reads the targets' logits a batch at a time.
    """
    params = {"k": k, "max_rows": max_rows, "max_shadows": max_shadows, "hidden": hidden, "max_iter": max_iter,
              "batch_size": batch_size, "seed": seed}
    pre = ctx.precomputed.get("shokri")
    if pre is not None and pre[0].params == params:
        model, scores = ctx.precomputed.pop("shokri")  # handed over: the context keeps no reference
        scores = scores() if callable(scores) else scores  # may wait on disk until needed
    else:
        model = fit_shokri(ctx.logits, ctx.keep, ctx.label, ctx.train, ctx.n_targets, **params)
        tr = np.flatnonzero(ctx.train)
        scores = np.empty((ctx.n_targets, tr.size), dtype=np.float32)
        for sl in ctx.target_batches():
            scores[sl] = model.score(ctx.target_logits(sl)[:, tr], np.arange(sl.start, sl.stop), ctx.label[tr])
    return ctx.result("shokri", scores, 0, **model.info())
