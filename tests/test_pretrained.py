"""Checkpoint import/export: timm parity (golden fixture always, live where PyTorch and
timm are installed), official and big_vision .npz fixtures, export round trips,
position-embedding resampling, and the load report's messages."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))

import make_npz_fixtures as npz_fixtures  # noqa: E402
import vit_golden  # noqa: E402

from jaxvision.models import ViT  # noqa: E402
from jaxvision.pretrained import (  # noqa: E402
    PretrainedLoadError,
    detect_format,
    from_timm,
    infer_vit_config,
    load_pretrained,
    resample_pos_embedding,
    save_npz,
    save_timm,
    to_timm,
)
from jaxvision.pretrained.layout import POSEMB, flatten, unflatten  # noqa: E402
from jaxvision.pretrained.resample import interpolation_matrix  # noqa: E402
from jaxvision.pretrained.safetensors_io import read_safetensors, write_safetensors  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
OFFICIAL = os.path.join(FIXTURES, "vit_official_tiny.npz")
BIG_VISION = os.path.join(FIXTURES, "vit_big_vision_tiny.npz")
TINY = dict(variant=None, width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=4)


def template(model, image_shape):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))["params"]


_APPLY = {}


def logits(model, params, images):
    """Jitted forward pass, one compilation per model configuration and input shape."""
    if repr(model) not in _APPLY:
        _APPLY[repr(model)] = jax.jit(model.apply)
    return np.asarray(_APPLY[repr(model)]({"params": params}, images)[0])


def assert_trees_equal(a, b):
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=key)


# ----------------------------------------------------------------------------- timm parity


@pytest.mark.parametrize("kind", ["cls", "gap"])
def test_golden_timm_logits(kind, tmp_path):
    """Frozen timm logits (tests/fixtures/timm_vit_golden.json) reproduced after importing
    the rule-generated state dict from a .safetensors file, without PyTorch."""
    golden = np.array(vit_golden.load_golden()[kind]["logits"])
    path = tmp_path / "w.safetensors"
    write_safetensors(vit_golden.timm_state_dict(kind), path)
    model = ViT(**vit_golden.jaxvision_model_kwargs(kind))
    params, report = load_pretrained(path, template(model, vit_golden.IMAGE_SHAPE), model=model)
    assert report.format == "timm" and report.ok and report.hints == {"gelu_approximate": False}
    np.testing.assert_allclose(logits(model, params, vit_golden.inputs()), golden, atol=1e-4, rtol=0)
    tanh = ViT(**{**vit_golden.jaxvision_model_kwargs(kind), "gelu_approximate": True})
    if kind == "cls":  # the GELU form matters at this tolerance: the tanh approximation is outside it
        assert np.abs(logits(tanh, params, vit_golden.inputs()) - golden).max() > 1e-4
    with pytest.raises(ValueError, match="gelu_approximate=False"):
        load_pretrained(path, template(model, vit_golden.IMAGE_SHAPE), model=tanh)


@pytest.mark.parametrize("kind", ["cls", "gap"])
def test_live_timm_parity(kind, tmp_path):
    """timm's VisionTransformer and our ViT with the same random (timm-initialised) weights
    give the same logits; our export loads strictly into timm; .pth files import."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    kwargs = vit_golden.timm_model_kwargs(kind)
    reference = VisionTransformer(**kwargs).eval()
    with torch.no_grad():  # timm zero-initialises some entries: make every one non-trivial
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = vit_golden.inputs()
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    model = ViT(**vit_golden.jaxvision_model_kwargs(kind))
    pth = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), pth)
    params, report = load_pretrained(pth, template(model, vit_golden.IMAGE_SHAPE), model=model)
    assert report.ok
    np.testing.assert_allclose(logits(model, params, images), expected, atol=1e-4, rtol=0)

    # Export -> timm (strict load) -> same logits; and the golden rule is still what timm computes.
    roundtrip = VisionTransformer(**kwargs).eval()
    roundtrip.load_state_dict({k: torch.from_numpy(v) for k, v in to_timm(params).items()}, strict=True)
    from jaxvision.pretrained import timm_kwargs

    assert timm_kwargs(params) == {**kwargs, "img_size": (kwargs["img_size"],) * 2,
                                   "patch_size": (kwargs["patch_size"],) * 2}
    with torch.no_grad():
        np.testing.assert_allclose(roundtrip(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy(), expected,
                                   atol=1e-5, rtol=0)
        golden_model = VisionTransformer(**kwargs).eval()
        golden_model.load_state_dict({k: torch.from_numpy(v) for k, v in vit_golden.timm_state_dict(kind).items()},
                                     strict=True)
        np.testing.assert_allclose(golden_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy(),
                                   np.array(vit_golden.load_golden()[kind]["logits"]), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def cls_model_params():
    model = ViT(num_classes=10, pool="cls", representation_size=16, **TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))["params"]
    # Perturb the zero-initialised head and CLS so the round trip checks real values.
    params = jax.tree_util.tree_map(lambda x: x + 0.01 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size,
                                    params)
    return model, params


def test_export_import_is_identity(cls_model_params, tmp_path):
    model, params = cls_model_params
    assert_trees_equal(from_timm(to_timm(params), num_heads=2).params, flatten(params))
    tmpl = template(model, (16, 16, 3))
    save_timm(params, tmp_path / "m.safetensors")
    loaded, report = load_pretrained(tmp_path / "m.safetensors", tmpl)
    assert report.ok and report.format == "timm"
    assert_trees_equal(loaded, params)
    save_npz(params, tmp_path / "m.npz")
    loaded, report = load_pretrained(tmp_path / "m.npz", tmpl)
    assert report.ok and report.format == "official" and not report.adapted
    assert_trees_equal(loaded, params)


def test_big_vision_export_import_same_function(cls_model_params, tmp_path):
    """big_vision adds position embeddings before the CLS token: the export folds our CLS
    entry into `cls`, the import puts a zero entry back - different numbers, same model."""
    model, params = cls_model_params
    save_npz(params, tmp_path / "bv.npz", layout="big_vision", prefix="params/")
    assert detect_format(tmp_path / "bv.npz") == "big_vision"
    loaded, report = load_pretrained(tmp_path / "bv.npz", template(model, (16, 16, 3)))
    assert report.ok and "zero CLS entry" in report.adapted[POSEMB]
    np.testing.assert_array_equal(loaded["Transformer"]["posembed_input"]["pos_embedding"][0, 0], 0)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(logits(model, loaded, images), logits(model, params, images), atol=1e-5)

    gap = ViT(num_classes=10, pool="gap", **TINY)
    gap_params = jax.jit(gap.init)(jax.random.PRNGKey(4), jnp.zeros((1, 16, 16, 3)))["params"]
    save_npz(gap_params, tmp_path / "gap.npz", layout="big_vision")
    loaded, report = load_pretrained(tmp_path / "gap.npz", template(gap, (16, 16, 3)))
    assert report.ok
    assert_trees_equal(loaded, gap_params)


def test_safetensors_reader_roundtrip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
               "c": np.ones((0, 4), np.float16)}
    write_safetensors(tensors, tmp_path / "t.safetensors")
    from jaxvision.pretrained import safetensors_io

    for read in (read_safetensors, lambda p: safetensors_io._read(p)):
        back = read(tmp_path / "t.safetensors")
        for k, v in tensors.items():
            np.testing.assert_array_equal(back[k], v)
            assert back[k].dtype == v.dtype


# ----------------------------------------------------------------------------- .npz fixtures


def test_official_npz_fixture_loads():
    raw = dict(np.load(OFFICIAL))
    assert detect_format(OFFICIAL) == "official"
    arch = infer_vit_config(OFFICIAL)
    assert arch == dict(width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=(4, 4), pool="cls",
                        representation_size=16, num_classes=10, gelu_approximate=True, in_channels=3,
                        image_size=(16, 16))
    model = ViT(num_classes=10, pool="cls", representation_size=16, **TINY)
    params, report = load_pretrained(OFFICIAL, template(model, (16, 16, 3)))
    assert report.ok and len(report.loaded) == len(raw) and not report.adapted
    assert_trees_equal(params, unflatten(raw))
    assert np.isfinite(logits(model, params, np.zeros((1, 16, 16, 3), np.float32))).all()

    # Fine-tuning form: representation layer dropped on request, new zero head.
    plain = ViT(num_classes=3, pool="cls", **TINY)
    params, report = load_pretrained(OFFICIAL, template(plain, (16, 16, 3)), head="reset",
                                     drop_representation=True)
    assert report.ok and set(report.dropped) == {"pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias"}
    assert not np.any(params["head"]["kernel"]) and params["head"]["kernel"].shape == (16, 3)


def test_big_vision_npz_fixture_loads():
    raw = dict(np.load(BIG_VISION))
    assert detect_format(BIG_VISION) == "big_vision"
    model = ViT(num_classes=10, pool="cls", **TINY)
    params, report = load_pretrained(BIG_VISION, template(model, (16, 16, 3)))
    assert report.ok and report.ignored == 1  # opt/mu/... is optimizer state, not a parameter
    flat = flatten(params)
    renames = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
               "MlpBlock_0": "MlpBlock_3"}
    for key, value in raw.items():
        if not key.startswith("params/") or key == "params/pos_embedding":
            continue
        name = key[len("params/"):]
        for old, new in renames.items():
            name = name.replace(f"/{old}/", f"/{new}/")
        np.testing.assert_array_equal(flat[name], value, err_msg=key)
    posemb = flat[POSEMB]
    np.testing.assert_array_equal(posemb[:, 1:], raw["params/pos_embedding"])
    np.testing.assert_array_equal(posemb[:, 0], 0)

    # The scanned layout (blocks stacked over depth) gives the same parameters.
    scanned = {k: v for k, v in raw.items() if "/encoderblock_" not in k}
    for key in [k for k in raw if "/encoderblock_0/" in k]:
        rest = key.split("/encoderblock_0/")[1]
        scanned[f"params/Transformer/encoderblock/{rest}"] = np.stack(
            [raw[f"params/Transformer/encoderblock_{i}/{rest}"] for i in range(2)])
    params_scanned, report = load_pretrained(scanned, template(model, (16, 16, 3)))
    assert report.ok and report.format == "big_vision"
    assert_trees_equal(params_scanned, params)


# ----------------------------------------------------------------------------- resolution change


def test_resample_same_grid_is_identity():
    posemb = np.random.default_rng(0).normal(size=(1, 1 + 6 * 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample_pos_embedding(posemb, (6, 4), old_grid=(6, 4)), posemb)
    np.testing.assert_array_equal(resample_pos_embedding(posemb[:, 1:], (6, 4), num_prefix=0, old_grid=(6, 4)),
                                  posemb[:, 1:])
    model = ViT(num_classes=10, pool="cls", representation_size=16, **TINY)
    params, report = load_pretrained(OFFICIAL, template(model, (16, 16, 3)), grid=(4, 4))
    assert POSEMB not in report.adapted
    np.testing.assert_array_equal(params["Transformer"]["posembed_input"]["pos_embedding"],
                                  np.load(OFFICIAL)[POSEMB])


def test_resample_is_bilinear():
    """Corner-aligned bilinear: a function linear in the grid coordinates stays exactly
    linear at any new (non-square) size; matches scipy.ndimage.zoom(order=1)."""
    h, w, nh, nw = 3, 5, 7, 4
    i, j = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    grid = np.stack([2 * i + 3 * j, i - j], -1)
    posemb = np.concatenate([np.full((1, 1, 2), 9.0), grid.reshape(1, -1, 2)], axis=1)
    out = resample_pos_embedding(posemb, (nh, nw), old_grid=(h, w))
    ni, nj = np.meshgrid(np.linspace(0, 1, nh), np.linspace(0, 1, nw), indexing="ij")
    np.testing.assert_allclose(out[0, 1:].reshape(nh, nw, 2), np.stack([2 * ni + 3 * nj, ni - nj], -1), atol=1e-12)
    np.testing.assert_array_equal(out[0, 0], 9.0)  # CLS entry kept aside
    assert np.allclose(interpolation_matrix(5, 9).sum(1), 1) and np.allclose(
        interpolation_matrix(9, 5, align_corners=False).sum(1), 1)
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    random_grid = np.random.default_rng(1).normal(size=(4, 6, 3))
    from jaxvision.pretrained.resample import resample_grid

    np.testing.assert_allclose(resample_grid(random_grid, (7, 9)),
                               scipy_ndimage.zoom(random_grid, (7 / 4, 9 / 6, 1), order=1), atol=1e-12)


def test_resized_model_runs():
    """16x16 checkpoint (4x4 grid) into a 24x32 model (6x8 grid, non-square)."""
    model = ViT(num_classes=10, pool="cls", representation_size=16, **TINY)
    params, report = load_pretrained(OFFICIAL, template(model, (24, 32, 3)), image_size=(24, 32))
    assert report.ok and "resampled 4x4 -> 6x8" in report.adapted[POSEMB]
    posemb = params["Transformer"]["posembed_input"]["pos_embedding"]
    assert posemb.shape == (1, 1 + 6 * 8, 16)
    np.testing.assert_array_equal(posemb[:, 0], np.load(OFFICIAL)[POSEMB][:, 0])
    out = logits(model, params, np.random.default_rng(0).uniform(-1, 1, (2, 24, 32, 3)).astype(np.float32))
    assert out.shape == (2, 10) and np.isfinite(out).all()
    with pytest.raises(PretrainedLoadError, match="not a square grid"):
        load_pretrained(OFFICIAL, template(model, (24, 32, 3)))  # 48 patches: which grid? say so

    # A non-square checkpoint: same count kept as is; to another grid with source_grid.
    same, report = load_pretrained(params, template(model, (24, 32, 3)))
    assert report.ok and POSEMB not in report.adapted
    square, report = load_pretrained(params, template(model, (32, 32, 3)), source_grid=(6, 8))
    assert report.ok and "resampled 6x8 -> 8x8" in report.adapted[POSEMB]
    np.testing.assert_array_equal(square["Transformer"]["posembed_input"]["pos_embedding"][0, 1], posemb[0, 1])


# ----------------------------------------------------------------------------- reports


def test_mismatches_and_partial_loads_are_reported():
    model = ViT(num_classes=7, pool="cls", **{**TINY, "depth": 3, "num_heads": 4})
    tmpl = template(model, (16, 16, 1))
    with pytest.raises(PretrainedLoadError) as err:
        load_pretrained(OFFICIAL, tmpl)
    report, text = err.value.report, str(err.value)
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in report.mismatched
    query = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    assert "num_heads 2 vs 4" in report.mismatched[query]
    assert "input channels 3 vs 1" in report.mismatched["embedding/kernel"]
    assert "num_classes 10 vs 7" in report.mismatched["head/kernel"] and "head='reset'" in text
    assert "Transformer/encoderblock_2/LayerNorm_0/scale" in report.missing
    assert "2 encoder blocks" in report.missing["Transformer/encoderblock_2/LayerNorm_0/scale"]
    assert "drop_representation=True" in report.unexpected["pre_logits/kernel"]

    params, report = load_pretrained(OFFICIAL, tmpl, strict=False, head="reset", drop_representation=True,
                                     adapt_channels=True)
    assert not report.ok and "embedding/kernel" in report.loaded
    assert isinstance(params["Transformer"]["encoderblock_2"]["LayerNorm_0"]["scale"], jax.ShapeDtypeStruct)
    from jaxvision.pretrained import merge_params

    fresh = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))["params"]
    merged = merge_params(fresh, params)
    assert np.isfinite(logits(model, merged, np.zeros((1, 16, 16, 1), np.float32))).all()


def test_unsupported_timm_entries_are_named():
    state = vit_golden.timm_state_dict("gap")
    state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    model = ViT(**vit_golden.jaxvision_model_kwargs("gap"))
    with pytest.raises(PretrainedLoadError) as err:
        load_pretrained(state, template(model, vit_golden.IMAGE_SHAPE))
    assert "fc_norm=False" in err.value.report.unexpected["fc_norm.weight"]
    assert "Transformer/encoder_norm/scale" in err.value.report.missing


def test_channel_adaptation_and_normalization_folding():
    rgb = ViT(num_classes=10, pool="cls", representation_size=16, **TINY)
    rgb_params, _ = load_pretrained(OFFICIAL, template(rgb, (16, 16, 3)))
    grey = ViT(num_classes=10, pool="cls", representation_size=16, **TINY)
    grey_params, report = load_pretrained(OFFICIAL, template(grey, (16, 16, 1)), adapt_channels=True)
    assert report.ok and "embedding/kernel" in report.adapted
    image = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(logits(grey, grey_params, image), logits(rgb, rgb_params, np.repeat(image, 3, -1)),
                               atol=1e-5)

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    folded, report = load_pretrained(OFFICIAL, template(rgb, (16, 16, 3)), input_normalization=(mean, std))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    normalized = (((x + 1) / 2 - np.array(mean)) / np.array(std)).astype(np.float32)
    np.testing.assert_allclose(logits(rgb, folded, x), logits(rgb, rgb_params, normalized), atol=1e-4)


def test_fixtures_are_reproducible_and_small(tmp_path):
    """The committed .npz fixtures are what make_npz_fixtures.py writes, and every fixture is small."""
    for name, entries, seed in (("vit_official_tiny.npz", npz_fixtures.official_entries(), 1),
                                ("vit_big_vision_tiny.npz", npz_fixtures.big_vision_entries(), 2)):
        stored = dict(np.load(os.path.join(FIXTURES, name)))
        regenerated = npz_fixtures.values(entries, seed)
        assert sorted(stored) == sorted(regenerated)
        for k in stored:
            np.testing.assert_array_equal(stored[k], regenerated[k])
    for name in os.listdir(FIXTURES):
        assert os.path.getsize(os.path.join(FIXTURES, name)) < 200_000, name


def test_shifted_patch_tokenization_checkpoints_load_and_resize(tmp_path):
    """stem="spt" (the main job's) has a Dense patch embedding: it loads as is, its position
    table is resampled to a new square grid, and a normalisation that cannot be folded
    into it is refused with the reason."""
    model = ViT(num_classes=3, pool="gap", stem="spt", **TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 1)))["params"]
    save_npz(params, tmp_path / "spt.npz")
    loaded, report = load_pretrained(tmp_path / "spt.npz", template(model, (16, 16, 1)), adapt_channels=True)
    assert report.ok
    assert_trees_equal(loaded, params)
    bigger, report = load_pretrained(tmp_path / "spt.npz", template(model, (24, 24, 1)), image_size=24)
    assert report.ok and bigger["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 36, 16)
    grid4 = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"]).reshape(4, 4, 16)
    grid6 = np.asarray(bigger["Transformer"]["posembed_input"]["pos_embedding"]).reshape(6, 6, 16)
    np.testing.assert_allclose(grid6[0, 0], grid4[0, 0], atol=1e-6)  # corners kept (align_corners)
    np.testing.assert_allclose(grid6[-1, -1], grid4[-1, -1], atol=1e-6)
    with pytest.raises(ValueError, match="Dense"):
        load_pretrained(tmp_path / "spt.npz", template(model, (16, 16, 1)), input_normalization=([0.5], [0.5]))
