"""Inception Score (Salimans et al. 2016), TF/original protocol.

IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the mean prediction over the split. The
samples are cut into ``num_splits`` runs of *consecutive* samples (as in the original
TF code: split i is rows [i*N//S, (i+1)*N//S)), the score is computed per split and the
mean and std (ddof=0) over splits are reported. With the TF-compatible Inception the
inputs are the 1008 logits (pool3 @ W, no bias) of 50k samples, 10 splits.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(
    logits_or_probs, num_splits: int = 10, *, from_logits: bool = True
) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), in float64.

    ``logits_or_probs`` is [N, C]: logits (softmax taken here in float64) by default, or
    probabilities with ``from_logits=False`` (rows must be >= 0 and sum to 1; zero
    entries contribute 0 to the KL, the usual 0 log 0 = 0 convention).
    The score lies in [1, C]: 1 for identical predictions, C for confident predictions
    spread evenly over the C classes.
    """
    a = np.asarray(logits_or_probs, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected [num_samples, num_classes], got shape {a.shape}")
    n = a.shape[0]
    if not 1 <= num_splits <= n:
        raise ValueError(f"num_splits must be in [1, {n}] for {n} samples, got {num_splits}")
    if from_logits:
        log_p = _log_softmax(a)
        p = np.exp(log_p)
    else:
        if np.any(a < 0) or not np.allclose(a.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("probabilities must be >= 0 with rows summing to 1 "
                             "(pass from_logits=True for logits)")
        p = a
        with np.errstate(divide="ignore"):
            log_p = np.log(p)

    scores = np.empty(num_splits)
    for i in range(num_splits):
        lo, hi = i * n // num_splits, (i + 1) * n // num_splits
        p_s, log_p_s = p[lo:hi], log_p[lo:hi]
        # p log(p / p_y), with 0 * anything = 0 (where p = 0 the logs may be -inf; the
        # masked-out entries may compute 0 * inf = nan, hence the silenced warnings).
        with np.errstate(divide="ignore", invalid="ignore"):
            log_py = np.log(p_s.mean(axis=0))
            kl = np.where(p_s > 0, p_s * (log_p_s - log_py), 0.0).sum(axis=1)
        scores[i] = np.exp(kl.mean())
    return float(scores.mean()), float(scores.std())
