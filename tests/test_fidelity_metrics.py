"""Improved precision/recall, density/coverage and the class histogram against brute-force
NumPy references written here (explicit differences, loops), plus known answers."""

import tracemalloc

import numpy as np
import pytest
import scipy.stats

from jaxvision.metrics import (
    METRICS,
    class_histogram,
    conditional_accuracy,
    density_coverage,
    knn_radii,
    precision_recall,
    precision_recall_density_coverage,
)


def _brute(real, fake, k_pr=3, k_dc=5):
    """The papers' definitions, read literally: full distance matrices from explicit
    differences, radii by sorting each row without the point itself, loops for balls."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(x, k):
        d = dist(x, x)
        return np.array([np.sort(np.delete(d[i], i))[k - 1] for i in range(len(x))])

    rf = dist(real, fake)  # [N, M]
    r_pr, f_pr, r_dc = radii(real, k_pr), radii(fake, k_pr), radii(real, k_dc)
    n, m = rf.shape
    precision = sum(any(rf[i, j] <= r_pr[i] for i in range(n)) for j in range(m)) / m
    recall = sum(any(rf[i, j] <= f_pr[j] for j in range(m)) for i in range(n)) / n
    density = sum(rf[i, j] <= r_dc[i] for i in range(n) for j in range(m)) / (k_dc * m)
    coverage = sum(any(rf[i, j] <= r_dc[i] for j in range(m)) for i in range(n)) / n
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def _sets(seed, n=60, m=45, d=5, offset=0.0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 2.0, d)  # anisotropic, so no metric is 0 or 1 by symmetry
    real = rng.standard_normal((n, d)) * scales + offset
    fake = rng.standard_normal((m, d)) * scales * 1.4 + 0.4 + offset
    return real, fake


@pytest.mark.parametrize("seed,n,m,d,k_pr,k_dc,offset", [
    (0, 60, 45, 5, 3, 5, 0.0),
    (1, 40, 70, 3, 1, 2, 0.0),
    (2, 50, 50, 8, 4, 7, 0.0),
    (3, 60, 45, 5, 3, 5, 1e7),  # far from the origin: the Gram expansion must not lose the distances
])
def test_prdc_matches_brute_force(seed, n, m, d, k_pr, k_dc, offset):
    real, fake = _sets(seed, n, m, d, offset)
    want = _brute(real, fake, k_pr, k_dc)
    got = precision_recall_density_coverage(real, fake, k_pr=k_pr, k_dc=k_dc)
    assert set(got) == set(want)
    for key in want:
        assert isinstance(got[key], float)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
    # Discriminating fixtures: every metric strictly between its extremes.
    assert 0 < want["precision"] < 1 and 0 < want["recall"] < 1 and 0 < want["coverage"] < 1
    assert want["density"] > 0
    # The pairs alone give the same numbers.
    assert precision_recall(real, fake, k=k_pr) == {k: got[k] for k in ("precision", "recall")}
    assert density_coverage(real, fake, k=k_dc) == {k: got[k] for k in ("density", "coverage")}


def test_knn_radii_match_sorted_distances():
    x = np.random.default_rng(4).standard_normal((30, 4))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    for k in (1, 3, 29):
        want = [np.sort(np.delete(d[i], i))[k - 1] for i in range(len(x))]
        np.testing.assert_allclose(knn_radii(x, k), want, rtol=1e-10)
    with pytest.raises(ValueError, match="need k \\+ 1 = 31 samples"):
        knn_radii(x, 30)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_radii(x, 0)


def test_float32_input_is_computed_in_float64():
    real, fake = _sets(5)
    r32, f32 = real.astype(np.float32), fake.astype(np.float32)
    assert precision_recall_density_coverage(r32, f32) == _brute(r32.astype(np.float64), f32.astype(np.float64))


def test_blocking_does_not_change_results():
    real, fake = _sets(6, n=83, m=61)
    full = precision_recall_density_coverage(real, fake, max_bytes=2**40)  # one block
    for max_bytes in (1, 24 * 83 * 7, 24 * 61 * 10):  # one row a block; uneven last blocks
        assert precision_recall_density_coverage(real, fake, max_bytes=max_bytes) == full


def test_memory_stays_under_the_budget():
    # 3000 x 3000 float64 distances are 72 MB; a 4 MiB budget must hold without them.
    rng = np.random.default_rng(7)
    real, fake = rng.standard_normal((3000, 8)), rng.standard_normal((3000, 8))
    tracemalloc.start()
    try:
        precision_recall_density_coverage(real, fake, max_bytes=4 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * 2**20, peak / 2**20


def test_identical_sets_precision_recall_coverage_are_one():
    x = np.random.default_rng(8).standard_normal((200, 6))
    got = precision_recall_density_coverage(x, x.copy())
    assert got["precision"] == got["recall"] == got["coverage"] == 1.0


def test_disjoint_far_apart_sets_are_zero():
    rng = np.random.default_rng(9)
    real = rng.standard_normal((150, 6))
    fake = rng.standard_normal((120, 6)) + 100.0
    assert precision_recall_density_coverage(real, fake) == {
        "precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_identical_gaussians_density_one_coverage_097():
    # Same distribution, N = M = 2000, k = 5. E[density] = 1 exactly (a fake is among a
    # real's k nearest of the N points it joins with probability k/N). A real is uncovered
    # iff its k nearest among the N-1+M others are all real: E[coverage] =
    # 1 - prod_j (N-1-j)/(N-1+M-j) = 0.9689 (-> 1 - 2^-5 = 0.969 for large N).
    # Spread over 12 seeds at this size (16-d): density sd 0.020, coverage sd 0.0044;
    # averaging 4 seeds halves them, and the tolerances are 5 of those halved sd.
    n, k = 2000, 5
    runs = [density_coverage(*np.random.default_rng(s).standard_normal((2, n, 16))) for s in range(4)]
    density = np.mean([r["density"] for r in runs])
    coverage = np.mean([r["coverage"] for r in runs])
    expected_coverage = 1 - np.prod([(n - 1 - j) / (2 * n - 1 - j) for j in range(k)])
    assert abs(density - 1.0) < 0.05, density
    assert abs(coverage - expected_coverage) < 0.011, coverage


def test_prdc_bad_input_names_the_fix():
    real, fake = _sets(10)
    with pytest.raises(ValueError, match="dimensions differ: real 5 vs fake 4.*same feature network"):
        precision_recall(real, fake[:, :4])
    with pytest.raises(ValueError, match="real features: need k \\+ 1 = 4 samples.*got 3.*smaller k"):
        precision_recall(real[:3], fake)
    with pytest.raises(ValueError, match="fake features: need k \\+ 1 = 4 samples"):
        precision_recall(real, fake[:3])
    # Density/coverage use real balls only: one fake sample is enough, five reals are not.
    assert set(density_coverage(real, fake[:1])) == {"density", "coverage"}
    with pytest.raises(ValueError, match="real features: need k \\+ 1 = 6 samples"):
        density_coverage(real[:5], fake)
    bad = fake.copy()
    bad[[7, 9], 2] = np.nan
    with pytest.raises(ValueError, match="fake features has NaN or inf in 2 of 45 rows \\(first: row 7\\).*drop"):
        precision_recall(real, bad)
    with pytest.raises(ValueError, match="real features must be a 2-D array.*flatten"):
        density_coverage(real[0], fake)
    for k in (0, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            precision_recall(real, fake, k=k)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            density_coverage(real, fake, k=k)
    with pytest.raises(ValueError, match="nothing to compute"):
        precision_recall_density_coverage(real, fake, k_pr=None, k_dc=None)


# --- class histogram ----------------------------------------------------------------------------

def test_class_histogram_matches_counting_loop():
    rng = np.random.default_rng(11)
    labels = rng.choice(7, size=500, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.0])
    counts = [0] * 7
    for y in labels:
        counts[y] += 1
    shares = np.array(counts) / len(labels)
    got = class_histogram(labels, 7)
    np.testing.assert_allclose(got["shares"], shares, rtol=1e-15)
    np.testing.assert_allclose(got["entropy"], scipy.stats.entropy(shares), rtol=1e-12)  # skips 0 log 0
    np.testing.assert_allclose(got["entropy_normalized"], scipy.stats.entropy(shares) / np.log(7), rtol=1e-12)
    assert got["min_share"] == 0.0 and got["max_share"] == shares.max()
    # Logits: the argmax class of each row.
    logits = rng.standard_normal((500, 7))
    logits[np.arange(500), labels] += 10.0
    for key, value in class_histogram(logits, 7).items():
        np.testing.assert_array_equal(value, got[key], err_msg=key)


def test_class_histogram_known_answers():
    uniform = class_histogram(np.repeat(np.arange(10), 30), 10)
    np.testing.assert_allclose(uniform["entropy_normalized"], 1.0, rtol=1e-15)
    np.testing.assert_allclose(uniform["entropy"], np.log(10), rtol=1e-15)
    assert uniform["min_share"] == uniform["max_share"] == 0.1
    single = class_histogram(np.full(40, 3), 10)
    assert single["entropy"] == 0.0 and single["entropy_normalized"] == 0.0
    assert single["max_share"] == 1.0 and single["min_share"] == 0.0


def test_conditional_accuracy_matches_loop():
    rng = np.random.default_rng(12)
    drawn = rng.integers(0, 10, size=300)
    pred = np.where(rng.random(300) < 0.8, drawn, rng.integers(0, 10, size=300))
    want = sum(int(p == d) for p, d in zip(pred, drawn)) / 300
    assert conditional_accuracy(pred, drawn, 10) == want
    assert 0.7 < want < 0.95
    logits = np.eye(10)[pred] * 5.0
    assert conditional_accuracy(logits, drawn, 10) == want


def test_class_histogram_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="logits have 5 classes but num_classes=10"):
        class_histogram(np.zeros((4, 5)), 10)
    with pytest.raises(ValueError, match="must lie in \\[0, 10\\), got range \\[0, 10\\]"):
        class_histogram(np.array([0, 10]), 10)
    with pytest.raises(ValueError, match="labels must be integers.*astype"):
        class_histogram(np.array([0.0, 1.0]), 10)
    with pytest.raises(ValueError, match="logits contain NaN"):
        class_histogram(np.array([[0.0, np.nan]]), 2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        class_histogram(np.array([0, 0]), 1)
    with pytest.raises(ValueError, match="no samples"):
        class_histogram(np.array([], np.int64), 3)
    with pytest.raises(ValueError, match="3 predictions but 2 drawn labels"):
        conditional_accuracy(np.array([0, 1, 2]), np.array([0, 1]), 3)


def test_registry():
    assert METRICS["precision_recall"] is precision_recall
    assert METRICS["density_coverage"] is density_coverage
    assert METRICS["prdc"] is precision_recall_density_coverage
    assert METRICS["class_histogram"] is class_histogram


# --- evaluators of samples ----------------------------------------------------------------------

def test_precision_recall_and_class_histogram_evaluators():
    from jaxvision.metrics import evaluators  # jax imported here, not at collection

    rng = np.random.default_rng(13)
    proj = rng.standard_normal((16, 3)).astype(np.float32)

    def features(x):
        return np.asarray(x, np.float32).reshape(len(x), -1) @ proj

    train = np.tanh(rng.normal(size=(90, 4, 4, 1))).astype(np.float32)
    fake = np.tanh(rng.normal(size=(100, 4, 4, 1)) * 1.5 + 0.3).astype(np.float32)

    def samples(num_images, batch_size):
        return (fake[i:i + batch_size] for i in range(0, num_images, batch_size))

    ev = evaluators.make_evaluator("precision_recall", features=features, reference=[train[:40], train[40:]],
                                   num_images=70, batch_size=30)
    grid = np.round(np.clip((fake[:70] + 1) * 127.5, 0, 255)) / 127.5 - 1  # the uint8 grid of real images
    want = _brute(features(train[:70]), features(grid))
    got = ev(samples)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)

    def classifier(x):  # 4 classes from the sign pattern of two pixels
        x = np.asarray(x).reshape(len(x), -1)
        return np.eye(4)[(x[:, 0] > 0) * 2 + (x[:, 5] > 0)]

    hist = evaluators.make_evaluator("class_histogram", classifier=classifier, num_classes=4,
                                     num_images=70, batch_size=30)(samples)
    shares = np.bincount(classifier(grid).argmax(1), minlength=4) / 70
    assert hist == pytest.approx({"class_entropy": scipy.stats.entropy(shares) / np.log(4),
                                  "class_share_min": shares.min(), "class_share_max": shares.max()}, rel=1e-12)


def test_classifier_evaluator_is_every_metric_in_one_pass():
    from jaxvision.metrics import evaluators
    from jaxvision.metrics.frechet import feature_statistics, frechet_distance

    rng = np.random.default_rng(17)
    proj = rng.standard_normal((16, 3)).astype(np.float32)
    train = np.tanh(rng.normal(size=(90, 4, 4, 1))).astype(np.float32)
    test = np.tanh(rng.normal(size=(80, 4, 4, 1))).astype(np.float32)
    fake = np.tanh(rng.normal(size=(100, 4, 4, 1)) * 1.5 + 0.3).astype(np.float32)
    calls = []

    def classifier(x):
        calls.append(len(x))
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        return np.eye(4)[(x[:, 0] > 0) * 2 + (x[:, 5] > 0)], x @ proj

    def samples(num_images, batch_size):
        return (fake[i:i + batch_size] for i in range(0, num_images, batch_size))

    drawn = np.arange(70) % 4
    ev = evaluators.make_evaluator("classifier", classifier=classifier, num_classes=4, reference=[train],
                                   floor=[test], num_images=70, batch_size=30,
                                   drawn_labels=lambda n, bs: drawn[:n], sample_key="ema", floor_key="floor")
    calls.clear()
    got = ev(samples)
    assert calls == [30, 30, 30]  # one classifier pass over the samples (the source rounds up)
    grid = np.round(np.clip((fake[:70] + 1) * 127.5, 0, 255)) / 127.5 - 1
    logits, feats = classifier(grid)
    real = train[:70].reshape(70, -1) @ proj
    want = _brute(real, feats)
    want["ema"] = frechet_distance(*feature_statistics(real), *feature_statistics(feats))
    want["floor"] = frechet_distance(*feature_statistics(real), *feature_statistics(test[:70].reshape(70, -1) @ proj))
    shares = np.bincount(logits.argmax(1), minlength=4) / 70
    want.update(class_entropy=scipy.stats.entropy(shares) / np.log(4), class_share_min=shares.min(),
                class_share_max=shares.max(), conditional_accuracy=np.mean(logits.argmax(1) == drawn))
    assert set(got) == set(want)
    for key in want:  # float32 features: BLAS may block 90 rows unlike 70
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
