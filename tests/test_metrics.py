"""Fréchet distance, KID and Inception Score against independent references."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from jaxvision.metrics import (
    METRICS,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_score,
    kernel_inception_distance,
)


def _features(seed, n=500, d=64, shift=0.0):
    # One fixed mixing matrix (correlated features): seeds draw samples of one distribution.
    mix = np.random.default_rng(1234).standard_normal((d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).standard_normal((n, d)) @ mix + shift


# --- Fréchet distance -------------------------------------------------------------------------

def test_feature_statistics_float64_unbiased():
    f = _features(0, n=50, d=4).astype(np.float32)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    f64 = f.astype(np.float64)
    centred = f64 - f64.mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / (len(f) - 1), rtol=1e-12)
    np.testing.assert_allclose(mu, f64.mean(0), rtol=1e-12)


def test_frechet_identical_statistics_is_zero():
    mu, sigma = feature_statistics(_features(1))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_equal_covariances_is_mean_distance():
    mu, sigma = feature_statistics(_features(2))
    mu2 = mu + np.linspace(-1, 1, mu.size)
    np.testing.assert_allclose(frechet_distance(mu, sigma, mu2, sigma),
                               np.sum((mu - mu2) ** 2), rtol=1e-8)


def test_frechet_matches_scipy_sqrtm_reference():
    mu1, s1 = feature_statistics(_features(3))
    mu2, s2 = feature_statistics(_features(4, shift=0.3) * 1.5)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)  # imaginary part is round-off on these full-rank fixtures
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # Symmetric in its two arguments.
    np.testing.assert_allclose(frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-9)
    np.testing.assert_allclose(frechet_distance_from_features(
        _features(3), _features(4, shift=0.3) * 1.5), got, rtol=1e-9)


def test_frechet_shape_errors():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="means"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(mu, sigma, mu, np.eye(4))
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance_from_features(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance_from_features(np.zeros((5, 2)), np.zeros((5, 3)))


def test_frechet_few_samples_warns_or_raises():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance_from_features(_features(5, n=1, d=8), _features(6, n=10, d=8))
    f = _features(7, n=20, d=64)
    with pytest.warns(UserWarning, match="singular"):
        fd = frechet_distance_from_features(f, f)
    # Rank-deficient covariances stay real and ~0 for identical sets (sqrtm struggles here).
    _, s = feature_statistics(f)
    assert np.isfinite(fd) and abs(fd) < 1e-6 * np.trace(s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough samples: no warning
        frechet_distance_from_features(_features(8, n=30, d=8), _features(9, n=30, d=8))


# --- KID ------------------------------------------------------------------------------------

def _mmd2_double_loop(x, y):
    m, d = x.shape
    k = lambda a, b: (np.dot(a, b) / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_double_loop_on_whole_set():
    x = _features(10, n=12, d=5)
    y = _features(11, n=12, d=5, shift=0.5)
    # subset_size is clipped to 12: the one subset is a permutation of each whole set.
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=1000)
    np.testing.assert_allclose(mean, _mmd2_double_loop(x, y), rtol=1e-10)
    assert std == 0.0


def test_kid_same_distribution_near_zero_shifted_positive():
    a = _features(12, n=300, d=16)
    b = _features(13, n=300, d=16)
    c = _features(14, n=300, d=16, shift=0.5)
    same, _ = kernel_inception_distance(a, b, num_subsets=20, subset_size=100)
    shifted, _ = kernel_inception_distance(a, c, num_subsets=20, subset_size=100)
    # Unbiased: the same-distribution estimate scatters around 0 (it may be negative);
    # here |same| ~ 0.02 (subset spread 0.04) against ~0.9 for the shifted set.
    assert abs(same) < 0.05
    assert shifted > 0.5


def test_kid_is_reproducible_and_validates():
    a, b = _features(15, n=50, d=4), _features(16, n=40, d=4)
    assert (kernel_inception_distance(a, b, num_subsets=5, subset_size=20, seed=3)
            == kernel_inception_distance(a, b, num_subsets=5, subset_size=20, seed=3))
    with pytest.raises(ValueError):
        kernel_inception_distance(a, np.zeros((40, 5)))
    with pytest.raises(ValueError):
        kernel_inception_distance(a[:1], b)


# --- Inception Score -------------------------------------------------------------------------

def test_is_uniform_predictions_is_one():
    mean, std = inception_score(np.zeros((100, 10)), num_splits=10)
    np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
    assert std < 1e-12


def test_is_confident_and_spread_is_num_classes():
    c = 10
    labels = np.tile(np.arange(c), 20)  # every split of 20 consecutive rows holds each class
    probs = np.eye(c)[labels]
    mean, std = inception_score(probs, num_splits=10, from_logits=False)
    np.testing.assert_allclose(mean, c, rtol=1e-12)
    assert std < 1e-9
    # The same from (very confident) logits: softmax underflows to exact 0/1 in float64.
    mean, _ = inception_score(1000.0 * probs, num_splits=10)
    np.testing.assert_allclose(mean, c, rtol=1e-12)


def test_is_matches_scipy_formula_on_random_logits():
    rng = np.random.default_rng(17)
    logits = 3.0 * rng.standard_normal((103, 7)).astype(np.float32)  # uneven splits
    splits = 4
    p = scipy.special.softmax(logits.astype(np.float64), axis=1)
    scores = []
    for i in range(splits):
        part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
        py = part.mean(0)
        kl = [scipy.stats.entropy(row, py) for row in part]  # KL(p(y|x) || p(y))
        scores.append(np.exp(np.mean(kl)))
    mean, std = inception_score(logits, num_splits=splits)
    np.testing.assert_allclose(mean, np.mean(scores), rtol=1e-10)
    np.testing.assert_allclose(std, np.std(scores), rtol=1e-8)
    # Probabilities give the same score.
    np.testing.assert_allclose(inception_score(p, splits, from_logits=False)[0], mean,
                               rtol=1e-10)


def test_is_validates():
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(np.zeros((5, 3)), num_splits=10)
    with pytest.raises(ValueError, match="rows summing to 1"):
        inception_score(np.ones((5, 3)), num_splits=1, from_logits=False)
    with pytest.raises(ValueError, match="num_classes"):
        inception_score(np.zeros(5))


def test_registry():
    assert METRICS["fid"] is frechet_distance_from_features
    assert METRICS["kid"] is kernel_inception_distance
    assert METRICS["is"] is inception_score


# --- evaluators of samples ----------------------------------------------------------------------

def _linear_features(d=6, seed=5):
    from jaxvision.metrics import evaluators  # noqa: F401 - jax imported here, not at collection

    proj = np.random.default_rng(seed).standard_normal((4 * 4, d)).astype(np.float32)
    return proj, lambda x: np.asarray(x, np.float32).reshape(len(x), -1) @ proj


def test_fd_evaluator_matches_numpy_on_quantised_samples_and_masked_references():
    from jaxvision.metrics import evaluators

    proj, features = _linear_features()
    rng = np.random.default_rng(0)
    train = np.tanh(rng.normal(size=(90, 4, 4, 1))).astype(np.float32)
    test = np.tanh(rng.normal(size=(70, 4, 4, 1)) + 0.2).astype(np.float32)
    fake = np.tanh(rng.normal(size=(120, 4, 4, 1)) * 1.3).astype(np.float32)
    # Eval batches are padded: the mask drops the padding rows (NaN here, so any leak shows).
    padded = np.concatenate([test, np.full((10, 4, 4, 1), np.nan, np.float32)])
    mask = np.arange(80) < 70
    calls = []

    def samples(num_images, batch_size):
        calls.append((num_images, batch_size))
        return (fake[i:i + batch_size] for i in range(0, num_images, batch_size))

    ev = evaluators.make_evaluator("fd", features=features, reference=[train[:50], train[50:]], num_images=60,
                                   floor=[{"image": padded, "mask": mask}], batch_size=25, sample_key="ema",
                                   floor_key="floor")
    got = ev(samples)
    assert calls == [(60, 25)]

    def stats(x):
        f = x.reshape(len(x), -1).astype(np.float64) @ proj.astype(np.float64)
        return f.mean(0), np.cov(f, rowvar=False)

    def fd(a, b):
        (m1, s1), (m2, s2) = a, b
        return np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))

    grid = np.round(np.clip((fake[:60] + 1) * 127.5, 0, 255)) / 127.5 - 1  # the uint8 grid of real images
    np.testing.assert_allclose(got["ema"], fd(stats(train[:60]), stats(grid)), rtol=1e-4)
    np.testing.assert_allclose(got["floor"], fd(stats(train[:60]), stats(test[:60])), rtol=1e-4)
    assert set(got) == {"ema", "floor"}
    # Statistics given directly: no floor, the same distance.
    direct = evaluators.make_evaluator("fd", features=features, reference=ev.reference, num_images=60, batch_size=25)
    assert direct(samples) == {"samples": got["ema"]}


def test_evaluator_registry():
    from jaxvision.metrics import evaluators

    assert {"fd", "fid"} <= set(evaluators.EVALUATORS)
    with pytest.raises(ValueError, match="Unknown evaluator 'nope'.*fd"):
        evaluators.make_evaluator("nope")
    evaluators.register_evaluator("constant")(lambda *, value: (lambda samples: {"value": value}))
    try:
        assert evaluators.make_evaluator("constant", value=3.0)(None) == {"value": 3.0}
    finally:
        del evaluators.EVALUATORS["constant"]
