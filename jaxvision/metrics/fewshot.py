"""Few-shot linear probe: closed-form ridge regression on frozen features.

As big_vision's few-shot evaluator does: features of k labelled examples per class
(pre_logits of a frozen model) are centred, regressed onto +-1 one-hot targets with an
L2 penalty in closed form, and test examples take the class of the largest output.
No training loop, no learning rate: a cheap, deterministic measure of how linearly
separable the new classes are in the pretrained feature space.

One eigendecomposition of the (D, D) Gram matrix serves every L2 strength, so the
strength is chosen by k-fold cross-validation on the *training* shots (never on the test
set); with one shot per class there is nothing to validate on and the middle of the
grid is used. Strengths are relative to the features' scale: lambda = alpha * trace(X^T X) / D.

This module takes arrays (or a feature function and batches), never a model class.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["DEFAULT_ALPHAS", "extract_features", "fewshot_accuracy", "fit_ridge", "predict_ridge"]

DEFAULT_ALPHAS = tuple(float(a) for a in 2.0 ** np.arange(-12, 7))


def extract_features(feature_fn: Callable, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Run `feature_fn(images) -> [B, D]` over batches {"image", "label"[, "mask"]};
    returns (features [N, D] float64, labels [N]) without the padding."""
    feats, labels = [], []
    for batch in batches:
        f = np.asarray(feature_fn(batch["image"]), np.float64)
        keep = np.asarray(batch.get("mask", np.ones(len(f), bool)), bool)
        feats.append(f[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(feats), np.concatenate(labels)


class _Ridge:
    """Centred ridge regression to +-1 targets, solved for many strengths at once."""

    def __init__(self, x, y, num_classes):
        x = np.asarray(x, np.float64)
        self.mean = x.mean(axis=0)
        xc = x - self.mean
        targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
        self.target_mean = targets.mean(axis=0)
        self.evals, self.evecs = np.linalg.eigh(xc.T @ xc)
        self.evals = np.clip(self.evals, 0.0, None)
        self.proj = self.evecs.T @ (xc.T @ (targets - self.target_mean))
        self.scale = max(float(self.evals.sum()) / x.shape[1], 1e-12)

    def weights(self, alpha):
        lam = alpha * self.scale
        return self.evecs @ (self.proj / (self.evals + lam)[:, None])

    def scores(self, x, alpha):
        return (np.asarray(x, np.float64) - self.mean) @ self.weights(alpha) + self.target_mean


def fit_ridge(x, y, num_classes: int, alpha: float):
    """(weights [D, C], bias [C]) of the ridge probe; scores = x @ weights + bias."""
    model = _Ridge(x, y, num_classes)
    w = model.weights(alpha)
    return w, model.target_mean - model.mean @ w


def predict_ridge(x, weights, bias) -> np.ndarray:
    return np.argmax(np.asarray(x, np.float64) @ weights + bias, axis=1)


def _folds(y, folds: int) -> np.ndarray:
    """Fold id per example: its rank within its class, modulo `folds` (stratified,
    deterministic)."""
    fold = np.zeros(len(y), int)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        fold[members] = np.arange(len(members)) % folds
    return fold


def fewshot_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    num_classes: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    alpha: float | None = None,
    folds: int = 5,
) -> dict:
    """Accuracy on (test_x, test_y) of a ridge probe fitted on (train_x, train_y).

    alpha: fixed relative L2 strength; None selects it from `alphas` by `folds`-fold
    cross-validation on the training examples (folds = min(folds, shots per class)).
    Returns {"accuracy", "alpha", "l2_reg", "cv_accuracy", "shots_per_class",
    "num_train", "num_test"}.
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    num_classes = int(num_classes or max(train_y.max(), test_y.max()) + 1)
    counts = np.bincount(train_y, minlength=num_classes)
    shots = int(counts[counts > 0].min())
    cv_accuracy = None
    if alpha is None:
        k = min(folds, shots)
        if k < 2:
            alpha = float(alphas[len(alphas) // 2])
        else:
            fold = _folds(train_y, k)
            correct = np.zeros(len(alphas))
            for f in range(k):
                tr, va = fold != f, fold == f
                model = _Ridge(train_x[tr], train_y[tr], num_classes)
                for i, a in enumerate(alphas):
                    correct[i] += np.sum(np.argmax(model.scores(train_x[va], a), 1) == train_y[va])
            best = int(np.argmax(correct))  # ties: the smallest strength
            alpha, cv_accuracy = float(alphas[best]), float(correct[best] / len(train_y))
    model = _Ridge(train_x, train_y, num_classes)
    predictions = np.argmax(model.scores(test_x, alpha), 1)
    return {
        "accuracy": float(np.mean(predictions == test_y)),
        "alpha": float(alpha),
        "l2_reg": float(alpha * model.scale),
        "cv_accuracy": cv_accuracy,
        "shots_per_class": shots,
        "num_train": int(len(train_y)),
        "num_test": int(len(test_y)),
    }
