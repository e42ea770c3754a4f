"""Fine-tuning: frozen groups, layer-wise learning rates, the few-shot ridge probe,
class/label subsets of a tfds split, and vit_finetune.py end to end."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import IMAGE_SHAPE, as_jnp, synthetic_batch, tiny_vit

from jaxvision.metrics import fewshot
from jaxvision.models.vit_layout import HEAD, layer_indices
from jaxvision.tasks import classification
from jaxvision.train import optim
from jaxvision.train import param_groups as groups

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _names(tree):
    from jaxvision.pretrained.layout import flatten

    return flatten(tree)


@pytest.mark.parametrize("optimizer", [dict(name="sgd", momentum=0.9), dict(name="adamw", weight_decay=0.05)],
                         ids=["sgd", "adamw"])
def test_frozen_parameters_do_not_change(optimizer):
    """A real fine-tune step (linear probe: only the head trains) leaves the rest untouched."""
    model = tiny_vit(pool="cls")
    tx, _ = classification.build_optimizer(
        classification.OptimConfig(learning_rate=0.1, grad_clip_norm=1.0, **optimizer),
        total_steps=10, frozen_mask=groups.frozen_mask_fn(trainable=HEAD),
        lr_multipliers=groups.layerwise_multipliers_fn(0.5, layer_indices))
    task = classification.make_task(model, tx, image_shape=IMAGE_SHAPE)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    new_state, metrics = jax.jit(task.train_step)(state, as_jnp(synthetic_batch(0)))
    before, after = _names(state.params), _names(new_state.params)
    assert np.isfinite(float(metrics["loss"]))
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        assert changed == name.startswith("head/"), name


def _sgd_updates(frozen_mask=None, lr_multipliers=None):
    """Updates of the fine-tuning optimizer for fixed random gradients on a ViT-shaped tree."""
    shapes = {"embedding": {"kernel": (2, 3), "bias": (3,)}, "cls": (1, 1, 3),
              "Transformer": {"posembed_input": {"pos_embedding": (1, 5, 3)},
                              "encoderblock_0": {"LayerNorm_0": {"scale": (3,)}},
                              "encoderblock_1": {"LayerNorm_0": {"scale": (3,)}},
                              "encoder_norm": {"scale": (3,)}},
              "head": {"kernel": (3, 4), "bias": (4,)}}
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=is_shape)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    params = treedef.unflatten([jnp.ones(s) for s in leaves])
    grads = treedef.unflatten([jax.random.normal(k, s) for k, s in zip(keys, leaves)])
    tx = optim.make_optimizer("sgd", 0.1, momentum=0.9, grad_clip_norm=1.0, frozen_mask=frozen_mask)
    if lr_multipliers is not None:
        tx = optax.chain(tx, groups.scale_by_multipliers(lr_multipliers))
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
    return _names(updates)


def test_frozen_groups_and_layerwise_learning_rates():
    params = {"embedding": {"kernel": 1.0}, "cls": 1.0,
              "Transformer": {"encoderblock_0": {"x": 1.0}, "encoderblock_1": {"x": 1.0}, "encoder_norm": {"x": 1.0}},
              "head": {"kernel": 1.0}}
    m = _names(groups.layerwise_multipliers_fn(0.5, layer_indices)(params))
    assert m == {"embedding/kernel": 0.125, "cls": 0.125, "Transformer/encoderblock_0/x": 0.25,
                 "Transformer/encoderblock_1/x": 0.5, "Transformer/encoder_norm/x": 1.0, "head/kernel": 1.0}
    rules = _names(groups.pattern_multipliers_fn(["^head/=10", ("encoderblock_1", 0.0)])(params))
    assert rules["head/kernel"] == 10 and rules["Transformer/encoderblock_1/x"] == 0 and rules["cls"] == 1

    base = _sgd_updates()
    stem = r"^(embedding|cls|Transformer/posembed_input)(/|$)"
    frozen = _sgd_updates(frozen_mask=groups.frozen_mask_fn(frozen=stem))
    decayed = _sgd_updates(lr_multipliers=groups.layerwise_multipliers_fn(0.5, layer_indices))
    factors = {"embedding": 0.125, "cls": 0.125, "Transformer/posembed_input": 0.125,
               "Transformer/encoderblock_0": 0.25, "Transformer/encoderblock_1": 0.5}
    for name in base:
        is_stem = name.split("/")[0] in ("embedding", "cls") or name.startswith("Transformer/posembed_input")
        assert (not np.any(frozen[name])) == is_stem, name
        if not is_stem:  # the frozen stem's gradients do not enter the clipping norm of the rest
            assert np.any(frozen[name]), name
        factor = next((f for prefix, f in factors.items() if name.startswith(prefix)), 1.0)
        np.testing.assert_allclose(decayed[name], factor * base[name], rtol=1e-6, err_msg=name)


def test_fewshot_ridge_probe():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16))

    def sample(n_per_class, noise):
        y = np.repeat(np.arange(4), n_per_class)
        return centres[y] + rng.normal(0, noise, (len(y), 16)), y

    train_x, train_y = sample(10, 0.3)
    test_x, test_y = sample(50, 0.3)
    result = fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y)
    assert result["accuracy"] > 0.95 and result["shots_per_class"] == 10 and result["cv_accuracy"] is not None
    assert fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y) == result  # deterministic
    # The closed form is ridge regression to +-1 targets on centred features.
    w, b = fewshot.fit_ridge(train_x, train_y, 4, alpha=0.5)
    xc = train_x - train_x.mean(0)
    targets = 2 * np.eye(4)[train_y] - 1
    lam = 0.5 * np.trace(xc.T @ xc) / 16
    w_ref = np.linalg.solve(xc.T @ xc + lam * np.eye(16), xc.T @ (targets - targets.mean(0)))
    np.testing.assert_allclose(w, w_ref, atol=1e-10)
    np.testing.assert_array_equal(fewshot.predict_ridge(test_x, w, b),
                                  np.argmax((test_x - train_x.mean(0)) @ w_ref + targets.mean(0), 1))
    one_shot = fewshot.fewshot_accuracy(train_x[::10], train_y[::10], test_x, test_y)
    assert one_shot["cv_accuracy"] is None and one_shot["shots_per_class"] == 1


def test_select_examples_is_deterministic_and_stratified():
    from jaxvision.data.pipeline import select_examples

    labels = np.random.default_rng(0).integers(0, 10, 5000)
    keep, new = select_examples(labels, classes=(7, 2), label_fraction=0.1)
    assert set(new.tolist()) == {0, 1} and np.all(np.diff(keep) > 0)
    assert np.all(labels[keep][new == 0] == 7) and np.all(labels[keep][new == 1] == 2)
    for c, i in ((7, 0), (2, 1)):
        assert np.sum(new == i) == round(0.1 * np.sum(labels == c))
    again, _ = select_examples(labels, classes=(7, 2), label_fraction=0.1)
    np.testing.assert_array_equal(keep, again)
    small, _ = select_examples(labels, classes=(7, 2), examples_per_class=5)
    assert set(small) <= set(keep)  # a smaller budget keeps a subset of a larger one
    with pytest.raises(ValueError, match="do not occur"):
        select_examples(labels, classes=(11,))


def test_class_subset_pipeline(tfds_data_dir):
    from jaxvision import data

    kw = dict(global_batch_size=50, seed=0, data_dir=tfds_data_dir, classes=(5, 6, 7, 8, 9), label_fraction=0.01)
    it = data.train_iterator("fashion_mnist", "train", **kw)
    assert it.steps_per_epoch == 6  # 1% of 5 x 6000 = 300 images
    batches = [next(it) for _ in range(6)]
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(np.bincount(labels).tolist()) == [60] * 5
    again = data.train_iterator("fashion_mnist", "train", start_step=4, **kw)
    np.testing.assert_array_equal(next(again)["image"], batches[4]["image"])  # resumable, deterministic
    count = sum(int(b["mask"].sum()) for b in data.eval_batches(
        "fashion_mnist", "test", global_batch_size=1000, data_dir=tfds_data_dir, classes=(5, 6, 7, 8, 9)))
    assert count == 5000


def test_vit_finetune_end_to_end(tfds_data_dir, tmp_path, capsys):
    """vit_finetune.py --init an official-layout .npz (RGB, 16 px, representation layer) on
    grey Fashion-MNIST classes 5-9 at 32 px with 1% of the labels: channels adapted,
    position embeddings resampled 4x4 -> 8x8, representation dropped, new head, frozen
    backbone (linear probe), few-shot probe measured; then a second fine-tune from
    that jaxvision run folder."""
    sys.path.insert(0, os.path.join(os.path.dirname(FIXTURES), "..", "experiments"))
    import vit_finetune

    from jaxvision.pretrained import load_pretrained
    from jaxvision.train import load_params

    common = ["--config.data.dataset=fashion_mnist", f"--config.data.data_dir={tfds_data_dir}",
              "--config.data.image_size=32", "--config.data.classes=(5,6,7,8,9)",
              "--config.data.eval_split=test[:1000]", "--config.data.augment=none",
              "--config.data.label_fraction=0.01", "--config.global_batch_size=100", "--config.total_steps=3",
              "--config.optim.warmup_steps=1", "--config.eval_every=0", "--config.checkpoint_every=3",
              "--config.progress=false"]
    workdir = tmp_path / "probe"
    results = vit_finetune.main(["--workdir", str(workdir), "--init", os.path.join(FIXTURES, "vit_official_tiny.npz"),
                                 "--preset", "linear_probe", "--config.transfer.fewshot=(2,)", *common])
    assert results["steps"] == 3 and 0.0 <= results["test_accuracy"] <= 1.0
    assert 0.0 <= results["fewshot_2shot_accuracy"] <= 1.0
    report = json.loads((workdir / "pretrained_load.json").read_text())
    assert "resampled 4x4 -> 8x8" in report["adapted"]["Transformer/posembed_input/pos_embedding"]
    assert "embedding/kernel" in report["adapted"] and "pre_logits/kernel" in report["dropped"]

    trained = _names(load_params(workdir))
    model = classification.build_model(
        classification.ModelConfig(variant="Ti/4", width=16, depth=2, mlp_dim=32, num_heads=2), 5)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
    expected, _ = load_pretrained(os.path.join(FIXTURES, "vit_official_tiny.npz"), template, head="reset",
                                  drop_representation=True, adapt_channels=True, image_size=(32, 32))
    for name, value in _names(expected).items():
        assert np.array_equal(trained[name], value) != name.startswith("head/"), name

    # A jaxvision run folder is a checkpoint too (its newest step, official names).
    from jaxvision.pretrained import infer_vit_config
    from jaxvision.tasks.finetune import _resolve_source

    arch = infer_vit_config(_resolve_source(str(workdir)))
    assert arch["num_classes"] == 5 and arch["in_channels"] == 1 and arch["image_size"] == (32, 32)


def test_every_stem_is_layer_zero():
    """Layer-wise decay gives every stem the embedding's rate, not the head's: shifted patch
    tokenization's norm, the conv stem and a hybrid's ResNet come before block 0."""
    from jaxvision.models import ViT

    for kw, size in ((dict(variant="Ti/4", stem="spt"), 16), (dict(variant="Ti/4", stem="conv"), 16),
                     (dict(variant="R50+Ti/16", resnet_stages=(1, 1, 1), resnet_width=32), 32)):
        model = ViT(num_classes=2, depth=1, width=32, num_heads=2, mlp_dim=32, **kw)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))["params"]
        index, top = layer_indices(_names(shapes))
        assert top == 2
        before = {n for n, i in index.items() if i == 0}
        assert before == {n for n in index if not n.startswith(("Transformer/encoder", "head/"))}, kw
        assert {i for n, i in index.items() if n.startswith("head/")} == {2}
