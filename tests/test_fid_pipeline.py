"""The pytorch-fid pipeline around the network: PyTorch-exact resize, uint8 quantisation,
batching, FID / IS / KID against pytorch-fid and the reference formulas, the statistics
cache, the image sources and the command line.

Everything here uses a tiny stand-in FeatureNet (the real network is tested in
test_fid_inception.py), so it is fast; live PyTorch comparisons skip without PyTorch.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.metrics import cli, fid, sources

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "fid_golden.npz")


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def tiny_net(name="tiny-test-net"):
    """16x16 input, 4x4 average patches -> 8 'pool' features and 5 logits."""
    rng = np.random.default_rng(0)
    variables = {"w": jnp.asarray(rng.normal(0, 0.3, (48, 8)), jnp.float32),
                 "fc": jnp.asarray(rng.normal(0, 1.0, (8, 5)), jnp.float32)}

    def apply(v, x):
        b = x.shape[0]
        patches = x.reshape(b, 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(b, 48)
        pool = jax.nn.softplus(patches @ v["w"])
        return {"pool": pool, "logits": pool @ v["fc"]}

    return fid.FeatureNet(apply=apply, variables=variables, name=name, input_size=16)


def tiny_reference(images_uint8):
    """The same tiny net in NumPy float64 on pytorch-fid's preprocessing."""
    net = tiny_net()
    x = jnp.asarray(images_uint8)
    out = net.apply(net.variables, fid.preprocess(x, 16))
    return np.asarray(out["pool"]), np.asarray(out["logits"])


def _images(n, h=20, w=24, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


live = pytest.mark.skipif(not _have_torch(), reason="live comparison needs PyTorch")


# --- resize and quantisation --------------------------------------------------------------------

@pytest.mark.parametrize("case", ["up", "down"])
def test_resize_matches_torch_golden(golden, case):
    x, want = golden[f"resize_{case}_in"], golden[f"resize_{case}_out"]
    got = np.asarray(fid.resize_bilinear(x, want.shape[1:3]))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_resize_is_not_antialiased_and_identity_at_same_size():
    x = np.random.default_rng(1).random((1, 40, 40, 1), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(fid.resize_bilinear(x, 40)), x)
    # Downsampling by 2 exactly: align_corners=False samples midway -> the 2x2 mean,
    # whereas an antialiased resize (jax.image.resize) blurs over a wider window.
    got = np.asarray(fid.resize_bilinear(x, 20))
    np.testing.assert_allclose(got, x.reshape(1, 20, 2, 20, 2, 1).mean((2, 4)), atol=1e-6)
    assert np.abs(np.asarray(jax.image.resize(x, (1, 20, 20, 1), "bilinear")) - got).max() > 1e-2


@live
@pytest.mark.parametrize("shape,size", [((2, 28, 28, 3), 299), ((1, 500, 417, 3), 299), ((2, 7, 13, 1), (5, 31))])
def test_resize_matches_torch_live(shape, size):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    size = (size, size) if isinstance(size, int) else size
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), size=size, mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(fid.resize_bilinear(x, size)), ref, rtol=0, atol=1e-5)


def test_quantize_matches_torchvision_save_image(golden):
    got = fid.quantize_uint8(golden["quant_in"], (-1.0, 1.0))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, golden["quant_out"])
    got_jax = fid.quantize_uint8(jnp.asarray(golden["quant_in"]), (-1, 1))
    assert isinstance(got_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(got_jax), golden["quant_out"])
    # [0, 1] images: 0.5 -> 128 (round half up), out of range clipped.
    np.testing.assert_array_equal(fid.quantize_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.3]), (0, 1)),
                                  [0, 0, 128, 255, 255])


def test_preprocess_grayscale_and_scaling():
    gray = _images(2, 10, 10, 1)
    rgb = np.repeat(gray, 3, axis=-1)
    a = np.asarray(fid.preprocess(gray, 10))
    np.testing.assert_array_equal(a, np.asarray(fid.preprocess(rgb, 10)))
    np.testing.assert_array_equal(np.asarray(fid.preprocess(gray[..., 0], 10)), a)  # [N, H, W]
    np.testing.assert_allclose(a, 2 * rgb.astype(np.float32) / 255 - 1, atol=1e-7)
    assert a.shape == (2, 10, 10, 3) and a.dtype == np.float32
    with pytest.raises(ValueError, match="value_range"):
        fid.preprocess(rgb.astype(np.float32), 10)
    with pytest.raises(ValueError, match="1 or 3"):
        fid.preprocess(np.zeros((1, 4, 4, 4), np.uint8), 10)
    # Float images are quantised to uint8 first (as if saved to PNG).
    f = rgb.astype(np.float32) / 127.5 - 1.0 + 1e-3
    np.testing.assert_array_equal(np.asarray(fid.preprocess(f, 10, value_range=(-1, 1))), a)


# --- feature extraction -------------------------------------------------------------------------

def test_extractor_batches_pads_and_matches_unbatched():
    images = _images(11)
    ex = fid.FeatureExtractor(tiny_net(), batch_size=4)
    # Uneven incoming batches, a NumPy and a JAX one; padded last batch.
    fs = ex([images[:3], jnp.asarray(images[3:9]), images[9:]])
    ref_pool, ref_logits = tiny_reference(images)
    assert fs.num_images == 11 and fs.pool.shape == (11, 8) and fs.logits.shape == (11, 5)
    np.testing.assert_allclose(fs.pool, ref_pool, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fs.logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert fs.mu.dtype == fs.sigma.dtype == np.float64
    np.testing.assert_allclose(fs.sigma, np.cov(fs.pool.astype(np.float64), rowvar=False), rtol=1e-12)
    assert fs.meta["net"] == "tiny-test-net" and fs.meta["protocol"] == fid.PROTOCOL
    # num_images cuts the stream; shorter than one batch runs at its own size.
    assert fid.FeatureExtractor(tiny_net(), 64)([images], num_images=5).num_images == 5
    with pytest.raises(ValueError, match="only 11"):
        ex([images], num_images=20)


def test_extractor_mixed_sizes_and_float_generator_batches():
    ex = fid.FeatureExtractor(tiny_net(), batch_size=4)
    a, b = _images(3, 20, 24), _images(2, 16, 16, seed=1)
    fs = ex([a, b])
    np.testing.assert_allclose(fs.pool, np.concatenate([tiny_reference(a)[0], tiny_reference(b)[0]]),
                               rtol=1e-5, atol=1e-6)
    # A generator's float output in [-1, 1] (device arrays) == its uint8 PNG version.
    gen = jnp.asarray(a.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(np.asarray(fid.quantize_uint8(gen, (-1, 1))), a)
    fs_gen = ex([gen], value_range=(-1.0, 1.0))
    np.testing.assert_allclose(fs_gen.pool, ex([a]).pool, rtol=1e-6)  # another compile: 1-ulp fusion noise


# --- metrics against pytorch-fid and the reference formulas -------------------------------------

def test_fid_is_kid_match_references(golden):
    fa, fb = golden["feat_a"], golden["feat_b"]
    a = fid.FeatureSet.from_features(fa, golden["is_logits"])
    b = fid.FeatureSet.from_features(fb)
    with pytest.warns(UserWarning, match="singular"):  # 10 samples of 24-d features
        fid.compute_metrics(fid.FeatureSet.from_features(fa[:10]), b, ("fid",))
    out = fid.compute_metrics(a, b, ("fid", "is"))
    np.testing.assert_allclose(out["fid"], float(golden["fid_expected"]), rtol=1e-6)
    np.testing.assert_allclose([out["is_mean"], out["is_std"]], golden["is_expected"], rtol=1e-6)
    kid = fid.compute_metrics(fid.FeatureSet.from_features(fa[:180]), b, ("kid",), kid_subsets=1,
                              kid_subset_size=180)
    np.testing.assert_allclose(kid["kid_mean"], float(golden["kid_expected"]), rtol=1e-6)
    assert kid["kid_std"] == 0.0


@live
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid's own sqrtm(disp=False)
def test_fid_matches_pytorch_fid_live():
    pytest.importorskip("pytorch_fid")
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(5)
    fa, fb = np.abs(rng.normal(0, 1, (300, 32))), np.abs(rng.normal(0.1, 1.2, (250, 32)))
    a, b = fid.FeatureSet.from_features(fa), fid.FeatureSet.from_features(fb)
    ref = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    np.testing.assert_allclose(fid.compute_metrics(a, b, ("fid",))["fid"], ref, rtol=1e-6)


def test_metrics_explain_missing_inputs(golden):
    stats_only = fid.FeatureSet.from_features(golden["feat_a"]).without_features()
    full = fid.FeatureSet.from_features(golden["feat_b"], np.zeros((180, 3)))
    with pytest.raises(ValueError, match="KID needs the pool"):
        fid.compute_metrics(stats_only, full, ("kid",))
    with pytest.raises(ValueError, match="IS needs the logits"):
        fid.compute_metrics(stats_only, full, ("is",))
    with pytest.raises(ValueError, match="two image sets"):
        fid.compute_metrics(full, None, ("fid",))
    no_fc = fid.FeatureSet.from_features(golden["feat_b"], np.zeros((180, 0)))  # default_1.pt's weights
    assert fid.has_logits(full) and not fid.has_logits(no_fc)
    with pytest.raises(ValueError, match="no fc layer"):
        fid.compute_metrics(no_fc, full, ("is",))
    assert set(fid.compute_metrics(no_fc, full, ("fid",))) == {"fid"}
    with pytest.raises(ValueError, match="unknown metrics"):
        fid.compute_metrics(full, full, ("fjd",))


# --- statistics files and the cache -------------------------------------------------------------

def test_feature_set_npz_round_trip_and_pytorch_fid_format(tmp_path, golden):
    fs = fid.FeatureSet.from_features(golden["feat_a"], golden["is_logits"][:100].repeat(2, 0),
                                      {"net": "x"})
    fs.save(tmp_path / "full.npz")
    back = fid.FeatureSet.load(tmp_path / "full.npz")
    np.testing.assert_array_equal(back.mu, fs.mu)
    np.testing.assert_array_equal(back.pool, fs.pool)
    assert back.num_images == 200 and back.meta == {"net": "x"}
    fs.save(tmp_path / "stats.npz", features=False)
    assert fid.FeatureSet.load(tmp_path / "stats.npz").pool is None
    # pytorch-fid's --save-stats files: only mu and sigma.
    np.savez(tmp_path / "pf.npz", mu=fs.mu, sigma=fs.sigma)
    pf = fid.FeatureSet.load(tmp_path / "pf.npz")
    assert pf.num_images == -1 and np.array_equal(pf.sigma, fs.sigma)
    np.savez(tmp_path / "empty.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="no statistics"):
        fid.FeatureSet.load(tmp_path / "empty.npz")


def test_cache_keyed_by_dataset_split_count_protocol(tmp_path, golden):
    calls = []

    def compute(n=200):
        calls.append(n)
        return fid.FeatureSet.from_features(golden["feat_a"][:n], golden["feat_a"][:n, :5])

    key = {"dataset": "cifar10", "split": "train[:90%]", "num_images": 200, "protocol": fid.PROTOCOL, "net": "n1"}
    a = fid.cached_feature_set(key, compute, cache_dir=tmp_path)
    b = fid.cached_feature_set(key, compute, cache_dir=tmp_path)
    assert calls == [200] and np.array_equal(a.sigma, b.sigma) and b.pool is None  # stats only
    path = fid.cache_path(key, tmp_path)
    assert path.name.startswith("cifar10_train_90_200_") and path.is_file()
    # Features wanted (KID / IS) but only statistics cached: recomputed, then cached too.
    c = fid.cached_feature_set(key, compute, cache_dir=tmp_path, need_features=True)
    fid.cached_feature_set(key, compute, cache_dir=tmp_path, need_features=True)
    assert calls == [200, 200] and c.pool is not None
    # Any part of the key changes the entry.
    for change in ({"num_images": 150}, {"net": "n2"}, {"protocol": "other"}, {"split": "test"}):
        fid.cached_feature_set({**key, **change}, lambda: compute(150), cache_dir=tmp_path)
    assert calls == [200, 200, 150, 150, 150, 150]


# --- sources and the command line ---------------------------------------------------------------

def _write_pngs(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).save(folder / f"{i:03d}.png")


def _args(*argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


def test_cli_folders_npz_and_save_stats(tmp_path, capsys):
    a, b = _images(12, seed=1), _images(10, seed=2)
    _write_pngs(tmp_path / "a", a)
    _write_pngs(tmp_path / "b", b[..., :1])  # grayscale PNGs: repeated to RGB
    res = cli.run(_args(tmp_path / "a", tmp_path / "b", "--batch-size", 5, "--is-splits", 2,
                        "--kid-subset-size", 8, "--kid-subsets", 3, "--no-cache"), net_factory=tiny_net)
    pa, la = tiny_reference(a)
    pb, _ = tiny_reference(np.repeat(b[..., :1], 3, -1))
    ref = fid.compute_metrics(fid.FeatureSet.from_features(pa, la), fid.FeatureSet.from_features(pb),
                              ("fid", "kid"), kid_subsets=3, kid_subset_size=8)
    np.testing.assert_allclose(res["fid"], ref["fid"], rtol=1e-4)
    assert res["num_images"] == [12, 10] and {"kid_mean", "is_mean", "is2_mean"} <= set(res)

    # --save-stats with features, then compare npz vs folder: the same numbers.
    rc = cli.main([str(tmp_path / "a"), "--save-stats", str(tmp_path / "a.npz"), "--keep-features",
                   "--batch-size", "5"], net_factory=tiny_net)
    assert rc == 0 and "saved statistics" in capsys.readouterr().out
    res2 = cli.run(_args(tmp_path / "a.npz", tmp_path / "b", "--batch-size", 5, "--metrics", "fid",
                         "--no-cache"), net_factory=tiny_net)
    np.testing.assert_allclose(res2["fid"], res["fid"], rtol=1e-9)
    # Two statistics files need no network at all.
    cli.run(_args(tmp_path / "a.npz", "--save-stats", tmp_path / "a2.npz"), net_factory=None)
    out = tmp_path / "r.json"
    assert cli.main([str(tmp_path / "a.npz"), str(tmp_path / "a2.npz"), "--metrics", "fid",
                     "--json", str(out)]) == 0
    assert abs(json.loads(out.read_text())["fid"]) < 1e-6


def test_cli_errors(tmp_path, capsys, monkeypatch):
    _write_pngs(tmp_path / "a", _images(3))
    monkeypatch.setenv("JAXVISION_FID_WEIGHTS", str(tmp_path / "missing.npz"))
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "a"), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "inception_convert" in err
    assert cli.main([str(tmp_path / "nothing-here"), str(tmp_path / "a")]) == 1
    assert "registered scheme" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "a"), "--save-stats", "x.npz"],
                    net_factory=tiny_net) == 1


@pytest.mark.filterwarnings("ignore:FID from 7 images")
def test_registered_source_hook(tmp_path):
    images = _images(7, seed=3)

    def fake_generator(rest, ctx):
        assert rest == "run42/step100"
        gen = [jnp.asarray(images[i:i + 3].astype(np.float32) / 127.5 - 1.0) for i in range(0, 7, 3)]
        return ctx.extract(gen, value_range=(-1.0, 1.0), num_images=ctx.num_images or 7)

    sources.register_source("fakegen", fake_generator)
    try:
        _write_pngs(tmp_path / "a", images)
        res = cli.run(_args("fakegen:run42/step100", tmp_path / "a", "--metrics", "fid", "--no-cache",
                            "--batch-size", 4), net_factory=tiny_net)
        assert abs(res["fid"]) < 1e-6  # float samples == their PNGs
    finally:
        del sources.SOURCES["fakegen"]


def test_tfds_source_cached(tmp_path, tfds_data_dir):
    ctx = sources.SourceContext(net_factory=tiny_net, batch_size=32, num_images=40, cache_dir=tmp_path,
                                data_dir=tfds_data_dir, need_features=True)
    fs = sources.resolve("tfds:fashion_mnist:test", ctx)
    assert fs.num_images == 40 and fs.pool.shape == (40, 8)
    from jaxvision.data import image_batches

    _, batches = image_batches("fashion_mnist", "test", batch_size=40, num_images=40, data_dir=tfds_data_dir)
    raw = next(iter(batches))
    assert raw.dtype == np.uint8 and raw.shape == (40, 28, 28, 1)
    np.testing.assert_allclose(fs.pool, tiny_reference(raw)[0], rtol=1e-5, atol=1e-6)
    (entry,) = tmp_path.glob("fashion_mnist_test_40_*.npz")
    assert fid.FeatureSet.load(entry).meta["key"]["net"] == "tiny-test-net"
    assert sources.resolve("tfds:fashion_mnist:test", ctx).meta["key"]["num_images"] == 40  # cache hit


def test_metrics_never_import_tasks_or_models():
    """`metrics` takes features or feature functions: no import of `tasks` or `models`
    anywhere in it, lazy imports included (the CLI's task-layer sources are registered
    by the top-level `jaxvision.fid_cli`)."""
    import ast
    from pathlib import Path

    import jaxvision.metrics

    found = []
    for path in Path(jaxvision.metrics.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [(path.name, n) for n in names if n.startswith(("jaxvision.tasks", "jaxvision.models"))]
    assert found == []
    assert len(list(Path(jaxvision.metrics.__file__).parent.glob("*.py"))) >= 8  # the glob saw the package


def test_top_level_fid_command_registers_the_checkpoint_source(tmp_path, monkeypatch, capsys):
    from jaxvision import fid_cli

    monkeypatch.delitem(sources.SOURCES, "checkpoint", raising=False)
    assert cli.main([f"checkpoint:{tmp_path}", "--no-cache"], net_factory=tiny_net) == 1  # metrics alone: unknown
    assert "registered scheme" in capsys.readouterr().err
    # The entry point registers it: the source is then read (and finds no run here).
    assert fid_cli.main([f"checkpoint:{tmp_path}", "--no-cache"], net_factory=tiny_net) == 1
    assert "config.json" in capsys.readouterr().err
    assert "checkpoint" in sources.SOURCES
