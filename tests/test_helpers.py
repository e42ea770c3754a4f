"""The tests' own tree comparison: it must tell structures apart before values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_equal, tree_difference, tree_equal


def _tree():
    return {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.zeros(3, np.float32)},
            "b": [np.int32(1), np.float32(np.nan)], "step": jnp.asarray(3, jnp.int32)}


def test_equal_trees_compare_equal_across_array_types():
    a, b = _tree(), jax.tree_util.tree_map(jnp.asarray, _tree())
    assert tree_equal(a, b) and tree_difference(a, b) is None  # NaN equals NaN: same bits
    assert_tree_equal(a, b)


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v for k, v in t.items() if k != "step"}, "structures differ"),  # a truncated tree
    (lambda t: {**t, "b": t["b"][:1]}, "structures differ"),  # a shorter list
    (lambda t: {"c" if k == "a" else k: v for k, v in t.items()}, r"only in the second: \[\"\['c'\]"),  # renamed
    (lambda t: {**t, "step": np.int64(3)}, r"\['step'\]: int32\[\] vs int64"),  # another dtype
    (lambda t: {**t, "a": {**t["a"], "bias": np.zeros(4, np.float32)}}, r"float32\[4\]"),  # another shape
    (lambda t: {**t, "a": {**t["a"], "bias": np.float32([0, 0, 1e-30])}}, r"\['bias'\]: values differ"),
])
def test_any_difference_is_found_and_named(change, message):
    a, b = _tree(), change(_tree())
    assert not tree_equal(a, b) and not tree_equal(b, a)
    with pytest.raises(AssertionError, match=message):
        assert_tree_equal(a, b)


def test_a_prefix_of_the_leaves_is_not_equal():
    """The defect this guards against: zipping leaves stops at the shorter tree."""
    full = [np.float32(1), np.float32(2)]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(full), [np.float32(1)]))
    assert not tree_equal(full, [np.float32(1)])
