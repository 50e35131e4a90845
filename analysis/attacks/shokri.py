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
random shadows outside the fold, an equal random set of train samples per shadow.

The score is the classifier's member log-odds (its output unit's pre-activation: the ranking of
the member probability without its saturation at 1).
"""

from __future__ import annotations

import numpy as np

from ._common import AttackContext, AttackResult, _log_softmax

__all__ = ["run_shokri", "shokri_features", "shokri_folds"]


def shokri_features(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Features (..., C + 3) from logits (..., C) and labels (...)."""
    logf, _ = _log_softmax(z)
    f = np.exp(logf)
    yy = np.broadcast_to(np.asarray(y, dtype=np.int64), logf.shape[:-1])[..., None]
    logp = np.take_along_axis(logf, yy, -1)[..., 0]
    correct = (np.asarray(z).argmax(-1) == yy[..., 0]).astype(np.float64)
    return np.concatenate([-np.sort(-f, axis=-1), np.exp(logp)[..., None], np.maximum(logp, -50.0)[..., None],
                           correct[..., None]], axis=-1)


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


def _log_odds(clf):
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
        h = (x.astype(np.float32) - mean) / scale
        for w, b in zip(ws[:-1], bs[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return (h @ ws[-1] + bs[-1])[:, 0].astype(np.float64)

    return f


def run_shokri(ctx: AttackContext, k: int = 5, max_rows: int = 20000, max_shadows: int = 16, hidden: int = 64,
               max_iter: int = 200, seed: int = 0) -> AttackResult:
    """Scores (T, N_train): log-odds of the fold's attack classifier that the sample is a member."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    import warnings

    tr = np.flatnonzero(ctx.train)
    scores = np.empty((ctx.n_targets, tr.size))
    folds = shokri_folds(ctx.n_shadows, ctx.n_targets, k, max_shadows, seed)
    rng = np.random.default_rng([seed, 2])
    used: dict[int, list[int]] = {}
    for f, (targets, shadows) in folds.items():
        per = max(1, min(tr.size, max_rows // shadows.size))
        rows_x, rows_y = [], []
        for s in shadows:
            idx = np.sort(rng.choice(tr, per, replace=False))
            z = np.asarray(ctx.logits[int(s), idx, 0, :].compute(), dtype=np.float64)
            rows_x.append(shokri_features(z, ctx.label[idx]))
            rows_y.append(ctx.keep[s, idx])
        xs, ys = np.concatenate(rows_x), np.concatenate(rows_y)
        clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu",
                                                            max_iter=max_iter, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xs, ys.astype(int))
        used[f] = [int(s) for s in shadows]
        if len(clf.classes_) < 2:  # every training row on one side: no information
            scores[targets] = 0.0
            continue
        log_odds = _log_odds(clf)
        step = max(1, ctx.batch_bytes // max(1, tr.size * ctx.n_classes * 8 * 4))
        for start in range(0, targets.size, step):
            tb = targets[start:start + step]
            feats = shokri_features(ctx.target_logits(tb)[:, tr], ctx.label[tr][None, :])
            scores[tb] = log_odds(feats.reshape(-1, feats.shape[-1])).reshape(len(tb), tr.size)
    return ctx.result("shokri", scores, 0, k=max(2, min(k, ctx.n_shadows)), max_rows=max_rows,
                      train_shadows=used, fold_of_target={int(t): f for f, (ts, _) in folds.items() for t in ts},
                      features="sorted softmax, p_y, log p_y, correct (identity query)")
