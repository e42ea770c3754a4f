"""Hybrid ResNet + ViT (R50+B/16): variants, shapes, parameter counts against the
reference models, the stride error, parity with timm (golden fixture always, live where
PyTorch and timm are installed; the official implementation's logits through the same
fixture) and the official .npz layout round trip."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import ViT, parse_variant
from jaxvision.models.resnet import ResidualUnit, standardize
from jaxvision.models.vit import VARIANTS
from jaxvision.pretrained import (PretrainedLoadError, from_timm, infer_vit_config, load_pretrained, save_npz,
                                  to_timm)
from jaxvision.pretrained.layout import flatten
from jaxvision.pretrained.safetensors_io import write_safetensors
from tests.helpers import tree_difference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
import make_hybrid_golden as golden  # noqa: E402

TINY = dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=1, resnet_stages=(1, 1),
            resnet_width=32)


def count(model, size):
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
    return sum(int(np.prod(x.shape)) for x in flatten(shapes).values()), flatten(shapes)


def test_hybrid_variants():
    assert parse_variant("R50+B/16") == dict(VARIANTS["B"], patch_size=(1, 1), resnet_stages=(3, 4, 9))
    assert parse_variant("R26+S/32") == dict(VARIANTS["S"], patch_size=(1, 1), resnet_stages=(2, 2, 2, 2))
    assert parse_variant("R50+B/32")["patch_size"] == (2, 2)  # stride 32 = ResNet 16 x patch 2
    assert "resnet_stages" not in parse_variant("B/16")
    with pytest.raises(ValueError, match="unknown hybrid ResNet 'R34'"):
        parse_variant("R34+B/16")
    with pytest.raises(ValueError, match="not a multiple of the R50 stem's stride 16.*'R50\\+B/16'"):
        parse_variant("R50+B/8")


def test_parameter_counts_equal_the_reference_models():
    """Golden counts from timm 1.0.31 (sum of numel over parameters, pretrained=False):
    vit_base_r50_s16_384 98,950,952; vit_small_r26_s32_384 36,468,392."""
    n, flat = count(ViT(num_classes=1000, variant="R50+B/16"), 384)
    assert n == 98_950_952
    assert flat["conv_root/kernel"].shape == (7, 7, 3, 64)
    assert flat["block3/unit9/conv3/kernel"].shape == (1, 1, 256, 1024)
    assert flat["block2/unit1/conv_proj/kernel"].shape == (1, 1, 256, 512)
    assert flat["embedding/kernel"].shape == (1, 1, 1024, 768)
    assert flat["Transformer/posembed_input/pos_embedding"].shape == (1, 577, 768)  # 24 x 24 + CLS
    assert not any(k.startswith("block4") for k in flat) and "block1/unit3/gn3/scale" in flat
    assert count(ViT(num_classes=1000, variant="R26+S/32"), 384)[0] == 36_468_392


def test_stride_error_names_the_fix():
    with pytest.raises(ValueError, match="not divisible by the hybrid's stride 16.*resize or crop to 96 or 112"):
        count(ViT(num_classes=10, variant="R50+B/16"), 100)
    with pytest.raises(ValueError, match="stem='patch'"):
        count(ViT(num_classes=10, stem="conv", **TINY), 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        count(ViT(num_classes=10, **{**TINY, "resnet_width": 24}), 32)


def test_weight_standardisation_conventions():
    """Official: (w - mean) / (std + eps); timm (F.batch_norm over the filter): (w - mean)
    / sqrt(var + eps); statistics per output filter over (kh, kw, in)."""
    w = np.random.default_rng(0).normal(0.0, 0.01, (3, 3, 4, 5)).astype(np.float64)
    mean, std = w.mean(axis=(0, 1, 2)), w.std(axis=(0, 1, 2))
    np.testing.assert_allclose(standardize(jnp.asarray(w, jnp.float32), 1e-5, "official"),
                               (w - mean) / (std + 1e-5), rtol=2e-5)
    np.testing.assert_allclose(standardize(jnp.asarray(w, jnp.float32), 1e-8, "timm"),
                               (w - mean) / np.sqrt(std**2 + 1e-8), rtol=2e-5)
    # the two differ by about eps / std = 1e-3 here: outside float32 noise
    assert np.abs(np.asarray(standardize(jnp.asarray(w), 1e-5, "official"))
                  - np.asarray(standardize(jnp.asarray(w), 1e-5, "timm"))).max() > 1e-4


@pytest.fixture(scope="module")
def tiny_hybrid():
    """The golden fixture's tiny official-convention hybrid (stages (2, 1), width 32), random
    NumPy values for every parameter (no init: compiling the initialiser costs more than
    the whole test), and one jitted forward shared by the tests."""
    model = ViT(**golden.jaxvision_official_kwargs())
    images = golden.images()
    tmpl = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *images.shape[1:])))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), tmpl)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return model, params, images, apply


def test_shapes_and_zero_initialised_units(tiny_hybrid):
    model, params, images, apply = tiny_hybrid
    logits, inter = apply(params, images)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
    assert inter["resnet_features"].shape == (2, 4, 4, 256)  # stride 8, 4 x 2 x width channels
    assert inter["patch_embeddings"].shape == (2, 16, 32)
    (_, tall), _ = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), jnp.zeros((2, 64, 32, 3)))
    assert tall["resnet_features"].shape == (2, 8, 4, 256) and tall["encoded"].shape == (2, 33, 32)
    # The last GroupNorm of a unit starts at zero scale (the unit starts as the identity path).
    unit = ResidualUnit(32, (2, 2))
    variables = jax.jit(unit.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 64)))["params"]
    assert not np.any(variables["gn3"]["scale"]) and np.all(variables["gn1"]["scale"] == 1)
    assert variables["conv_proj"]["kernel"].shape == (1, 1, 64, 128) and "bias" not in variables["conv2"]


def test_golden_timm_parity(tmp_path):
    """timm's logits on the fixture's weights (tests/fixtures/hybrid_golden.npz) reproduced
    after importing a .safetensors state dict, without PyTorch."""
    state, images, expected = golden.load()
    path = tmp_path / "hybrid.safetensors"
    write_safetensors(state, path)
    model = ViT(**golden.jaxvision_model_kwargs())
    tmpl = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *images.shape[1:])))["params"]
    params, report = load_pretrained(path, tmpl, model=model)
    assert report.ok and report.format == "timm"
    assert report.hints == {"gelu_approximate": False, "std_conv_eps": 1e-8, "resnet_convention": "timm"}
    np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, images)[0], expected, atol=1e-5, rtol=0)
    official = ViT(**{**golden.jaxvision_model_kwargs(), "std_conv_eps": 1e-5, "resnet_convention": "official"})
    with pytest.raises(ValueError, match="build the ViT with std_conv_eps=1e-08"):
        load_pretrained(path, tmpl, model=official)


def test_golden_official_parity(tiny_hybrid, tmp_path):
    """The official vision_transformer hybrid's logits (its own code, fixture's rule
    weights; its Linen names are the per-type numbered ones) reproduced from an .npz."""
    model, template, _, apply = tiny_hybrid  # its random parameters serve as the template
    flat, images, expected = golden.load_official()
    np.savez(tmp_path / "R_official.npz", **flat)
    params, report = load_pretrained(tmp_path / "R_official.npz", template, model=model)
    assert report.ok and "block1/unit2/conv3/kernel" in flatten(params)
    np.testing.assert_allclose(apply(params, images)[0], expected, atol=1e-5, rtol=0)


def test_official_npz_round_trip_and_timm_export(tiny_hybrid, tmp_path):
    model, params, images, apply = tiny_hybrid
    save_npz(params, tmp_path / "R_tiny.npz")
    with np.load(tmp_path / "R_tiny.npz") as f:
        keys = set(f.files)
    assert {"conv_root/kernel", "gn_root/scale", "block1/unit1/conv2/kernel", "block2/unit1/gn_proj/bias",
            "embedding/kernel", "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"} <= keys
    tmpl = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    loaded, report = load_pretrained(tmp_path / "R_tiny.npz", tmpl, model=model)
    assert report.ok and report.hints == {"std_conv_eps": 1e-5, "resnet_convention": "official"}
    assert tree_difference(loaded, jax.device_get(params)) is None
    bigger = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))["params"]
    resized, report = load_pretrained(tmp_path / "R_tiny.npz", bigger, image_size=48)  # stride 8: 4x4 -> 6x6
    assert "resampled 4x4 -> 6x6" in report.adapted["Transformer/posembed_input/pos_embedding"]
    config = infer_vit_config(tmp_path / "R_tiny.npz")
    assert (config["resnet_stages"], config["resnet_width"], config["in_channels"], config["image_size"],
            config["patch_size"]) == ((2, 1), 32, 3, (32, 32), (1, 1))
    # timm names and back: exact.
    back = from_timm(to_timm(params), num_heads=2)
    assert back.hints["resnet_convention"] == "timm"
    assert sorted(back.params) == sorted(flatten(params))
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(back.params[k], np.asarray(v), err_msg=k)
    np.testing.assert_array_equal(apply(loaded, images)[0], apply(params, images)[0])


def test_checkpoint_of_another_depth_is_refused(tiny_hybrid, tmp_path):
    model, params, _, _ = tiny_hybrid
    save_npz(params, tmp_path / "R_tiny.npz")
    deeper = ViT(num_classes=5, **{**TINY, "resnet_stages": (1, 2)})
    tmpl = jax.eval_shape(deeper.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    with pytest.raises(PretrainedLoadError, match=r"stages \(2, 1\), the model .*stages \(1, 2\).*resnet_stages=\(2, 1\)"):
        load_pretrained(tmp_path / "R_tiny.npz", tmpl)
    plain = ViT(num_classes=3, variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8)
    tmpl = jax.eval_shape(plain.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    with pytest.raises(PretrainedLoadError, match="model no ResNet stem.*resnet_stages=\\(2, 1\\)"):
        load_pretrained(tmp_path / "R_tiny.npz", tmpl)


def test_live_timm_parity(tmp_path):
    """timm's own hybrid with timm-initialised (then perturbed) weights; its .pth imports
    and gives the same logits; our export loads strictly back into timm."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = golden.timm_model()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = golden.images()
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    torch.save(reference.state_dict(), tmp_path / "hybrid.pth")
    model = ViT(**golden.jaxvision_model_kwargs())
    tmpl = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *images.shape[1:])))["params"]
    params, report = load_pretrained(tmp_path / "hybrid.pth", tmpl, model=model)
    assert report.ok
    np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, images)[0], expected, atol=1e-5, rtol=0)
    roundtrip = golden.timm_model()
    roundtrip.load_state_dict({k: torch.from_numpy(v) for k, v in to_timm(params).items()}, strict=True)
    with torch.no_grad():
        again = roundtrip(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(again, expected, atol=1e-6, rtol=0)
    # The fixture's rule is still what timm computes.
    state, _, stored = golden.load()
    roundtrip.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(roundtrip(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy(), stored,
                                   atol=1e-5, rtol=0)


def test_finetuning_reads_a_hybrid_architecture_from_the_checkpoint(tiny_hybrid, tmp_path):
    """The fine-tune task builds what the checkpoint holds: a plain ViT config given, a
    hybrid checkpoint read, the model's parameter tree equals the checkpoint's."""
    from jaxvision.tasks import classification as cls
    from jaxvision.tasks.finetune import model_config_from_checkpoint

    _, params, _, _ = tiny_hybrid
    save_npz(params, tmp_path / "R_tiny.npz")
    cfg = model_config_from_checkpoint(cls.ModelConfig(variant="B/16"), infer_vit_config(tmp_path / "R_tiny.npz"))
    assert cfg.resnet_stages == (2, 1) and cfg.resnet_convention == "official"
    built = cls.build_model(cfg, num_classes=params["head"]["bias"].shape[0])
    shapes = jax.eval_shape(built.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(params)))
