"""Inpainting masks (deterministic per example and seed, each kind's geometry), the
pipeline's feature dict, and the harmonic fill baseline against exact harmonic functions."""

import numpy as np
import pytest

from jaxvision.data.masks import KINDS, add_masks, inpainting_batches, make_mask
from jaxvision.inpainting import harmonic_fill, harmonic_fill_batch


@pytest.mark.parametrize("kind", KINDS)
def test_masks_are_deterministic_binary_and_partial(kind):
    masks = [make_mask(kind, 7, i, 16, 20) for i in range(12)]
    again = [make_mask(kind, 7, i, 16, 20) for i in range(12)]
    other_seed = [make_mask(kind, 8, i, 16, 20) for i in range(12)]
    for m, a in zip(masks, again):
        np.testing.assert_array_equal(m, a)
        assert m.shape == (16, 20, 1) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        assert 0 < m.sum() < m.size  # never all known, never all missing
    if kind != "centre":  # random kinds: examples and seeds differ
        assert len({m.tobytes() for m in masks}) > 6
        assert any(not np.array_equal(a, b) for a, b in zip(masks, other_seed))


def test_centre_box_geometry():
    m = make_mask("centre", 0, 3, 16, 16)[..., 0]
    expected = np.zeros((16, 16))
    expected[4:12, 4:12] = 1
    np.testing.assert_array_equal(m, expected)


def test_mixed_draws_every_kind():
    centre = make_mask("centre", 0, 0, 16, 16)
    mixed = [make_mask("mixed", 0, i, 16, 16) for i in range(30)]
    n_centre = sum(np.array_equal(m, centre) for m in mixed)
    assert 0 < n_centre < 30
    with pytest.raises(ValueError, match="Unknown mask kind"):
        make_mask("circle", 0, 0, 16, 16)


def test_pipeline_feature_dict_and_indices():
    images = np.random.default_rng(0).uniform(-1, 1, (6, 16, 16, 1)).astype(np.float32)
    batches = [{"image": images[:3], "label": np.arange(3)}, {"image": images[3:], "label": np.arange(3)}]
    out = list(inpainting_batches(iter(batches), kind="boxes", seed=5, first_index=100))
    assert set(out[0]) == {"image", "label", "target", "hole", "masked"}
    np.testing.assert_array_equal(out[1]["hole"][2], make_mask("boxes", 5, 105, 16, 16))
    np.testing.assert_array_equal(out[1]["target"], images[3:])
    hole = out[1]["hole"] > 0.5
    assert np.all(out[1]["masked"][hole] == 0) and np.array_equal(out[1]["masked"][~hole], images[3:][~hole])
    # A resumed stream (first_index of a later batch) gives the same masks as the full one.
    np.testing.assert_array_equal(add_masks(batches[1], kind="boxes", seed=5, first_index=103)["hole"],
                                  out[1]["hole"])


def test_harmonic_fill_is_exact_on_a_ramp_and_keeps_known_pixels():
    yy, xx = np.mgrid[0:16, 0:16]
    ramp = np.stack([0.1 * yy - 0.05 * xx + 0.3, 0.02 * xx], -1).astype(np.float64)
    hole = make_mask("strokes", 1, 0, 16, 16)
    hole[0, :] = hole[-1, :] = 0  # an interior hole: the border rows/cols are known
    hole[:, 0] = hole[:, -1] = 0
    filled = harmonic_fill(np.where(hole > 0, 9.0, ramp), hole)
    np.testing.assert_allclose(filled, ramp, atol=1e-10)
    # A saddle x*y (harmonic: d2/dx2 + d2/dy2 = 0) is filled exactly too; a bowl x^2 + y^2
    # is not (its Laplacian is 4): the fill obeys the discrete mean-value property.
    saddle = (xx * yy / 100.0)[..., None]
    np.testing.assert_allclose(harmonic_fill(saddle * (1 - hole), hole), saddle, atol=1e-10)
    bowl = ((xx ** 2 + yy ** 2) / 100.0)[..., None]
    assert np.abs(harmonic_fill(bowl * (1 - hole), hole) - bowl).max() > 1e-3


def test_harmonic_fill_mean_value_property_and_errors():
    img = np.random.default_rng(2).uniform(size=(12, 12, 3))
    hole = make_mask("boxes", 3, 4, 12, 12)
    f = harmonic_fill_batch(img[None], hole[None])[0].astype(np.float64)
    padded = np.pad(f, ((1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones((12, 12, 1)), ((1, 1), (1, 1), (0, 0)))
    nsum = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    count = ones[:-2, 1:-1] + ones[2:, 1:-1] + ones[1:-1, :-2] + ones[1:-1, 2:]
    h = hole[..., 0] > 0
    np.testing.assert_allclose(f[h], (nsum / count)[h], atol=1e-5)  # each hole pixel: mean of neighbours
    np.testing.assert_allclose(f[~h], img[~h], atol=1e-6)
    with pytest.raises(ValueError, match="whole image"):
        harmonic_fill(img, np.ones((12, 12)))
