"""Every benchmark runs end to end on tiny shapes and writes its JSON.

Not timed: the numbers mean nothing at these sizes. The PyTorch peer runs where this Python
has torch (the peers venv), and is reported as skipped otherwise.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import gan, input_pipeline, vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HAS_TORCH = importlib.util.find_spec("torch") is not None
FAST = ["--steps", "1", "--rounds", "1", "--min-burst-seconds", "0"]


def check_peer(result, peer="peer"):
    if HAS_TORCH:
        assert result[peer]["best"] > 0
        assert result["ratio_jaxvision_over_peer"] > 0
    else:
        assert "not installed" in result[f"{peer}_threads1"]["skipped"]
        assert result["ratio_jaxvision_over_peer"] is None


def test_vit_benchmark(tmp_path):
    out = tmp_path / "vit.json"
    vit.main(["--preset", "tiny", "--mode", "both", "--threads", "1", *FAST, "--out", str(out)])
    result = json.loads(out.read_text())
    for mode in ("train", "infer"):
        ours = result[mode]["jaxvision"]
        assert ours["best"] > 0 and ours["unit"] == "img/s" and ours["peak_rss_bytes"] > 0
        assert ours["achieved_tflops"] > 0 and ours["mfu"] is None  # no known peak on a CPU
        check_peer(result[mode])
    assert result["forward_gflops_per_image"] == pytest.approx(vit.forward_flops(vit.preset_config("tiny")) / 1e9)


def test_vit_flops_match_the_reference_anchor():
    cfg = dict(vit.preset_config("b16"), pool="cls")
    assert vit.forward_flops(cfg) / 1e9 == pytest.approx(35.1, abs=0.1)  # REFERENCE.md: ViT-B/16


def test_gan_benchmark(tmp_path):
    out = tmp_path / "gan.json"
    gan.main(["--preset", "tiny", "--threads", "1", "--steps-per-dispatch", "2", *FAST, "--out", str(out)])
    result = json.loads(out.read_text())["train"]
    assert result["jaxvision"]["best"] > 0 and result["jaxvision"]["unit"] == "it/s"
    assert result["jaxvision"]["items_per_call"] == 2  # two iterations per dispatch
    check_peer(result)


def test_gan_benchmark_experiment_preset_is_the_experiments_default_network():
    preset = gan.experiment_preset()  # puts experiments/ on sys.path, as the experiments expect
    from dcgan_fashion_mnist import get_config

    model = get_config("default").model
    assert set(preset) == set(gan.PRESETS["fmnist"]) | {"upsample", "cpu_reductions"}
    assert (preset["g_width"], preset["d_width"], preset["latent_dim"], preset["upsample"]) == (
        model.g_width, model.d_width, model.latent_dim, model.upsample)
    assert preset["cpu_reductions"] == get_config("default").cpu_reductions == "ynnpack"
    assert preset["batch_size"] == get_config("default").global_batch_size and preset["image_size"] == 28


def test_gan_quality_peer_from_takes_the_earlier_peers_samples_fid_and_budget(tmp_path):
    from benchmarks import gan_quality

    samples = tmp_path / "peer_samples.npz"
    samples.write_bytes(b"npz")
    earlier = {"wall_seconds": {"ours": 900.0, "peer_budget": 853.0, "peer_train": 853.02},
               "peer": {"samples_file": str(samples), "ema": {"fd_vit": 6.5, "fid": 42.57, "fid_seconds": 1810.8}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    assert gan_quality.earlier_peer(path) == (samples, {"fid": 42.57, "fid_seconds": 1810.8}, 853.0)
    del earlier["peer"]["ema"]["fid"]  # an earlier run with FID off: the FID is measured again
    path.write_text(json.dumps(earlier))
    assert gan_quality.earlier_peer(path)[1] is None
    samples.unlink()
    with pytest.raises(SystemExit, match="which is gone: train the peer again"):
        gan_quality.earlier_peer(path)
    from jaxvision import config as config_lib
    from jaxvision.tasks import gan as gan_task

    run = tmp_path / "ours"  # a finished run of ours, as far as main reads it before the peer
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_lib.to_dict(gan_task.GANConfig())))
    (run / "results.json").write_text(json.dumps({"wall_seconds": 800.0}))
    with pytest.raises(SystemExit, match="which is gone"):  # main reaches the same reader
        gan_quality.main(["--ours", str(run), "--peer-from", str(path), "--out", str(tmp_path / "q.json")])
    path.write_text(json.dumps({"train": {}}))  # a step benchmark's JSON, not a side-by-side's
    with pytest.raises(SystemExit, match="not the JSON output of an earlier gan_quality run"):
        gan_quality.earlier_peer(path)
    with pytest.raises(SystemExit):  # argparse: one earlier peer at most
        gan_quality.main(["--ours", "x", "--peer-from", str(path), "--peer-samples", str(samples)])


def test_input_pipeline_benchmark(tmp_path, tfds_data_dir):
    """The pipeline side only (--no-train): each side is a process importing TensorFlow and
    JAX, and the training sides are the ViT benchmark's step, tested above."""
    out = tmp_path / "pipeline.json"
    input_pipeline.main(["--batch-size", "16", "--threads", "1", "--no-train", "--data-dir", tfds_data_dir,
                         *FAST, "--out", str(out)])
    result = json.loads(out.read_text())["results"]
    assert result["pipeline_threads1"]["best"] > 0
    assert result["pipeline_threads1"]["pipeline_threads"] == 1


def test_fid_features_benchmark(tmp_path):
    """In a fresh process: fid_features runs pytorch-fid in-process, and importing torch into
    a process that already holds TensorFlow (other tests load it) can crash."""
    out = tmp_path / "fid.json"
    args = ["--num-images", "2", "--batch-size", "2", "--image-size", "8", "--repeats", "1", "--out", str(out)]
    code = f"from benchmarks import fid_features; fid_features.main({args!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": ROOT})
    result = json.loads(out.read_text())
    assert result["jaxvision"]["img_per_s"] > 0
    if importlib.util.find_spec("pytorch_fid") is None or not HAS_TORCH:
        assert "skipped" in result["pytorch_fid"]
