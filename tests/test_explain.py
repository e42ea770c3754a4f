"""Attention maps and rollout (jaxvision.explain) against a NumPy reference written here
from the paper's definition, per example, for CLS and GAP ViTs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import explain
from jaxvision.models import ViT


def softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_rollout(attentions, head_fusion, discard_ratio):
    """Abnar & Zuidema 2020 for one example at a time: attentions [L, B, H, T, T]."""
    attentions = np.asarray(attentions, np.float64)
    n_layers, batch, _, t, _ = attentions.shape
    out = np.zeros((batch, t, t))
    for b in range(batch):
        joint = np.eye(t)
        for layer in range(n_layers):
            a = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](attentions[layer, b], axis=0)
            flat = a.reshape(-1).copy()
            k = int(discard_ratio * t * t)
            flat[np.argsort(flat, kind="stable")[:k]] = 0.0
            a = flat.reshape(t, t) + np.eye(t)
            a = a / a.sum(axis=1, keepdims=True)
            joint = a @ joint
        out[b] = joint
    return out


def random_attentions(seed, layers=3, batch=3, heads=2, tokens=5):
    rng = np.random.default_rng(seed)
    return softmax_rows(2.0 * rng.standard_normal((layers, batch, heads, tokens, tokens))).astype(np.float32)


@pytest.mark.parametrize("head_fusion", explain.HEAD_FUSIONS)
@pytest.mark.parametrize("discard_ratio", [0.0, 0.6])
def test_rollout_matches_numpy_reference(head_fusion, discard_ratio):
    attentions = random_attentions(1)
    got = jax.jit(explain.rollout, static_argnums=(1, 2))(attentions, head_fusion, discard_ratio)
    np.testing.assert_allclose(got, reference_rollout(attentions, head_fusion, discard_ratio), atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, atol=1e-5)  # rows stay distributions


def test_discard_is_per_example():
    """Each example is filtered by its own lowest entries: a batch gives what each
    example gives alone (vit-explain filters only the first example of a batch)."""
    attentions = random_attentions(2)
    rollout = jax.jit(explain.rollout, static_argnums=(1, 2))
    batch = rollout(attentions, "max", 0.8)
    for b in range(attentions.shape[1]):
        alone = rollout(attentions[:, b:b + 1], "max", 0.8)
        np.testing.assert_allclose(batch[b], alone[0], atol=1e-6, rtol=0)
    # and the filter changes the result of the later examples too
    unfiltered = rollout(attentions, "max", 0.0)
    assert np.abs(np.asarray(batch[1:]) - np.asarray(unfiltered[1:])).max() > 1e-3


def test_relevance_and_grid():
    joint = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    np.testing.assert_array_equal(explain.token_relevance(joint, 1), joint[:, 0, 1:])
    np.testing.assert_allclose(explain.token_relevance(joint, 0), joint.mean(axis=1))
    assert explain.grid_shape(8, (32, 16)) == (4, 2) and explain.grid_shape(49, (28, 28)) == (7, 7)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        explain.make_explainer(ViT(num_classes=2), head_fusion="median")
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        explain.make_explainer(ViT(num_classes=2), discard_ratio=1.0)


def tiny(pool, **kw):
    return ViT(num_classes=3, variant=None, width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=4, pool=pool, **kw)


def numpy_params(model, shape, seed=0):
    """Random values for every parameter (no initialiser to compile; the zero head made
    non-zero)."""
    tmpl = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), tmpl)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_explainer_on_a_vit(pool):
    """The jitted explainer: the model's own attention weights (rows of a softmax), the
    rollout and per-layer maps as the NumPy reference reads them, on an 8x12 patch grid;
    and the same for a model whose default attention is the fused kernel."""
    model = tiny(pool)
    params = numpy_params(model, (32, 48, 1))
    images = np.random.default_rng(5).uniform(-1, 1, (2, 32, 48, 1)).astype(np.float32)
    out = explain.make_explainer(model, head_fusion="mean", discard_ratio=0.5)({"params": params}, images)
    attentions = np.asarray(out["attention"])
    prefix = int(pool == "cls")
    assert attentions.shape == (2, 2, 2, 96 + prefix, 96 + prefix)
    np.testing.assert_allclose(attentions.sum(-1), 1.0, atol=1e-5)
    joint = reference_rollout(attentions, "mean", 0.5)
    expected = joint[:, 0, 1:] if prefix else joint.mean(axis=1)
    np.testing.assert_allclose(out["rollout"], expected.reshape(2, 8, 12), atol=2e-6, rtol=0)
    fused = attentions.mean(axis=2)
    layers = fused[:, :, 0, 1:] if prefix else fused.mean(axis=2)
    np.testing.assert_allclose(out["layers"], layers.reshape(2, 2, 8, 12), atol=1e-6, rtol=0)
    if pool == "cls":  # a model whose default attention is the fused kernel
        fused_default = tiny(pool, attention_implementation="cudnn")
        again = explain.make_explainer(fused_default, head_fusion="mean", discard_ratio=0.5)({"params": params}, images)
        np.testing.assert_allclose(again["rollout"], out["rollout"], atol=1e-6, rtol=0)


def test_overlay():
    image = np.linspace(-1, 1, 8 * 8).reshape(8, 8, 1).astype(np.float32)
    heat = np.array([[0.0, 1.0], [0.0, 0.0]])
    rgb = explain.overlay(image, heat, alpha=1.0)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    import matplotlib

    jet = np.round(255 * np.asarray(matplotlib.colormaps["jet"]([0.0, 1.0])[:, :3])).astype(np.uint8)
    np.testing.assert_array_equal(rgb[7, 0], jet[0])  # far from the hot patch: the colormap's low end
    np.testing.assert_array_equal(rgb[0, 7], jet[1])  # the hot corner
    plain = explain.overlay(image, heat, alpha=0.0)
    np.testing.assert_array_equal(plain[..., 0], np.round(255 * (image[..., 0] + 1) / 2).astype(np.uint8))


# --- the overlay command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A classification run folder as the task writes it (config.json + an orbax
    checkpoint of the state), without training: random parameters of a tiny CLS ViT."""
    import dataclasses
    import json

    from jaxvision.tasks import classification
    from jaxvision.train.checkpoint import Checkpointer

    run = tmp_path_factory.mktemp("run")
    model_cfg = classification.ModelConfig(variant=None, width=16, depth=1, mlp_dim=32, num_heads=2, pool="cls")
    model_cfg = dataclasses.replace(model_cfg, variant="Ti/4")
    model = classification.build_model(model_cfg, num_classes=3)
    params = numpy_params(model, (8, 8, 1), seed=3)
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model_cfg), "total_steps": 1}))
    ckpt = Checkpointer(run / "checkpoints", save_every=1, async_save=False)
    ckpt.save(1, {"params": params, "step": np.int32(1)}, force=True)
    ckpt.close()
    return run, model, params


def test_attention_app_writes_overlays_and_refuses_bad_input(tiny_run, tmp_path):
    import json

    from PIL import Image

    from jaxvision.apps import attention

    run, model, params = tiny_run
    assert attention.input_shape(model, params) == (8, 8, 1)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (36, 20, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / "grey.png")
    written = attention.main(["--run", str(run), "--images", str(folder), "--out", str(tmp_path / "out"),
                              "--head-fusion", "max", "--discard-ratio", "0.5"])
    assert [p.name for p in written] == ["colour_attention.png", "grey_attention.png"]
    with Image.open(written[1]) as im:  # 3 panels of 8 px x 14 (>= 112 px) and two 4 px gaps
        assert im.size == (3 * 112 + 2 * 4, 112) and im.mode == "RGB"
        panel = np.asarray(im)[:, :112]
    with Image.open(folder / "grey.png") as im:  # the first panel is the input, upscaled
        np.testing.assert_array_equal(panel[::14, ::14, 0], np.asarray(im))
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted(predictions) == ["colour.png", "grey.png"] and 0 <= predictions["grey.png"]["class"] < 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        attention.main(["--run", str(run), "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not a run folder"):
        attention.main(["--run", str(tmp_path), "--images", str(folder), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="discard-ratio"):
        attention.main(["--run", str(run), "--images", str(folder), "--out", str(tmp_path / "o"),
                        "--discard-ratio", "1.5"])
