"""Optimizers: AdamW and SGD with weight decay and frozen parameters, against a NumPy
AdamW; the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.train import optim, param_groups

SHAPES = {"embedding": {"kernel": (2, 2, 1, 3), "bias": (3,)},
          "Transformer": {"encoder_norm": {"scale": (3,)}},
          "head": {"kernel": (3, 4), "bias": (4,)}}
LR, WD, B1, B2, EPS = 0.1, 0.05, 0.9, 0.999, 1e-8


def _tree(seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES,
                                  is_leaf=lambda x: isinstance(x, tuple))


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _numpy_adamw(params, grads, steps, decayed, trainable):
    """Decoupled weight decay (Loshchilov & Hutter) on `decayed` names; Adam's bias-corrected
    moments; parameters not in `trainable` keep their values."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: 0.0 for k in params}
    v = {k: 0.0 for k in params}
    for t in range(1, steps + 1):
        for k in trainable:
            g = grads[t - 1][k]
            m[k] = B1 * m[k] + (1 - B1) * g
            v[k] = B2 * v[k] + (1 - B2) * g * g
            update = (m[k] / (1 - B1 ** t)) / (np.sqrt(v[k] / (1 - B2 ** t)) + EPS)
            if k in decayed:
                update = update + WD * params[k]
            params[k] = params[k] - LR * update
    return params


@pytest.mark.parametrize("frozen", [False, True], ids=["all_train", "linear_probe"])
def test_adamw_weight_decay_with_frozen_parameters_matches_numpy(frozen):
    mask = param_groups.frozen_mask_fn(trainable=r"^head/") if frozen else None
    tx = optim.make_optimizer("adamw", LR, weight_decay=WD, b1=B1, b2=B2, frozen_mask=mask)
    params = _tree(0)
    grads = [_tree(s) for s in (1, 2, 3)]
    state = tx.init(params)
    current = params
    for g in grads:
        updates, state = tx.update(g, state, current)
        current = jax.tree_util.tree_map(lambda p, u: p + u, current, updates)

    names = _flat(params)
    trainable = [k for k in names if "'head'" in k] if frozen else list(names)
    # Only >=2-d kernels decay: head/kernel and the embedding's conv kernel.
    decayed = {"['embedding']['kernel']", "['head']['kernel']"}
    expected = _numpy_adamw(names, [_flat(g) for g in grads], 3, decayed, trainable)
    got = _flat(current)
    assert list(got) == list(names)
    for k in names:
        if k in trainable:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-5, err_msg=k)
            assert not np.array_equal(got[k], names[k]), k
        else:
            np.testing.assert_array_equal(got[k], names[k], err_msg=k)  # not one bit moves
    if frozen:  # frozen parameters carry no Adam moments
        moments = [leaf for leaf in jax.tree_util.tree_leaves(state) if np.ndim(leaf) > 0]
        assert sum(np.size(x) for x in moments) == 2 * (3 * 4 + 4)


def test_sgd_weight_decay_with_frozen_parameters():
    mask = param_groups.frozen_mask_fn(trainable=r"^head/")
    tx = optim.make_optimizer("sgd", LR, weight_decay=WD, momentum=0.0, frozen_mask=mask)
    params, grads = _tree(0), _tree(1)
    updates, _ = tx.update(grads, tx.init(params), params)
    got, p, g = _flat(updates), _flat(params), _flat(grads)
    np.testing.assert_allclose(got["['head']['kernel']"], -LR * (g["['head']['kernel']"] + WD * p["['head']['kernel']"]),
                               rtol=1e-6)
    np.testing.assert_allclose(got["['head']['bias']"], -LR * g["['head']['bias']"], rtol=1e-6)
    for k in got:
        if "'head'" not in k:
            assert not np.any(got[k]), k


def test_decay_mask_selects_matrix_kernels_only():
    mask = _flat(optim.decay_mask(jax.tree_util.tree_map(jnp.asarray, _tree(0))))
    assert mask == {"['embedding']['bias']": False, "['embedding']['kernel']": True,
                    "['Transformer']['encoder_norm']['scale']": False,
                    "['head']['bias']": False, "['head']['kernel']": True}
