"""End-to-end: the experiment scripts, run as a user runs them, on tiny settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = [
    "--config.total_steps=6", "--config.global_batch_size=32", "--config.log_every=2", "--config.eval_every=3",
    "--config.checkpoint_every=3", "--config.optim.warmup_steps=2", "--config.model.width=16",
    "--config.model.depth=1", "--config.model.mlp_dim=32", "--config.model.num_heads=2",
    "--config.data.train_split=train[:1024]", "--config.data.eval_split=test[:256]", "--config.progress=false",
]


def run_script(script, workdir, *args, check=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--workdir", str(workdir), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, tfds_data_dir):
    workdir = tmp_path_factory.mktemp("vit")
    run_script("vit_fashion_mnist.py", workdir, *TINY_VIT, f"--config.data.data_dir={tfds_data_dir}")
    return workdir


def test_vit_experiment_writes_every_output(vit_run):
    results = json.loads((vit_run / "results.json").read_text())
    for key in ("test_accuracy", "steps", "wall_seconds", "train_images_per_second"):
        assert key in results
    assert results["steps"] == 6 and 0.0 <= results["test_accuracy"] <= 1.0
    records = [json.loads(x) for x in (vit_run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records) and any("test/accuracy" in r for r in records)
    assert list((vit_run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (vit_run / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    assert (vit_run / "plots" / "loss.png").stat().st_size > 0
    assert (vit_run / "plots" / "accuracy.png").stat().st_size > 0
    assert (vit_run / "plots" / "attention_rollout.png").stat().st_size > 0
    config = json.loads((vit_run / "config.json").read_text())
    assert config["model"]["width"] == 16 and config["total_steps"] == 6
    run_info = json.loads((vit_run / "run.json").read_text())
    assert run_info["backend"] == "cpu"
    assert run_info["host_cpu"].endswith(f", {os.cpu_count()} cores")  # timings name their machine


def test_rerunning_a_finished_run_keeps_its_results(vit_run):
    before = {name: (vit_run / name).read_text() for name in ("metrics.jsonl", "results.json")}
    proc = run_script("vit_fashion_mnist.py", vit_run, *TINY_VIT)
    assert "Resuming from the checkpoint at step 6" in proc.stderr
    assert "had already finished at step 6" in proc.stderr
    # Nothing is trained, evaluated or rewritten: the test accuracy stays in results.json.
    assert {name: (vit_run / name).read_text() for name in before} == before
    assert "test_accuracy" in json.loads(before["results.json"])


@pytest.mark.parametrize("override, message", [
    ("--config.model.variant=Q/16", "Unknown ViT variant|variant"),
    ("--config.total_steps=many", "expects an int"),
    ("--config.modle.width=3", "Unknown config field 'modle'"),
    ("--config.data.dataset=no_such_dataset_xyz", "Unknown tfds dataset"),
    ("--config.model.patch_size=5", "Unknown config field 'patch_size'"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, override, message):
    proc = run_script("vit_fashion_mnist.py", tmp_path / "run", *TINY_VIT, override, check=False)
    assert proc.returncode != 0
    import re

    assert re.search(message, proc.stderr), proc.stderr[-2000:]


def test_dcgan_experiment_writes_every_output(vit_run, tmp_path, tfds_data_dir):
    workdir = tmp_path / "gan"
    run_script(
        "dcgan_fashion_mnist.py", workdir, "--config.total_steps=4", "--config.global_batch_size=16",
        "--config.log_every=2", "--config.sample_every=2", "--config.checkpoint_every=2",
        "--config.model.g_width=8", "--config.model.d_width=8", "--config.model.latent_dim=8",
        "--config.num_samples_grid=16", f"--config.fd.classifier_workdir={vit_run}", "--config.fd.num_samples=64",
        "--config.fd.fid_samples=0", "--config.data.train_split=train[:512]", f"--config.data.data_dir={tfds_data_dir}", "--config.progress=false",
    )
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 4
    assert results["fd_vit_ema_samples"] > 0 and results["fd_vit_real_test_floor"] >= 0
    for key in ("precision", "recall", "coverage", "class_entropy", "class_share_min", "class_share_max"):
        assert 0 <= results[f"vit_{key}"] <= 1, key
    assert results["vit_density"] >= 0 and "vit_conditional_accuracy" not in results  # unconditional
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in records for k in r}
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"} <= logged
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == ["samples_0000002.png", "samples_0000004.png"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "plots" / "loss.png").is_file() and (workdir / "plots" / "discriminator.png").is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]


def test_fid_command_line_reads_our_gan_checkpoint(tmp_path, vit_run, tfds_data_dir, monkeypatch):
    """`checkpoint:WORKDIR` is a source of the FID command line (tiny stand-in network)."""
    import numpy as np

    from jaxvision import fid_cli
    from jaxvision.metrics import fid, sources
    from jaxvision.tasks import gan

    workdir = tmp_path / "gan"
    run_script("dcgan_fashion_mnist.py", workdir, "--config.total_steps=2", "--config.global_batch_size=8",
               "--config.model.g_width=8", "--config.model.d_width=8", "--config.model.latent_dim=8",
               "--config.num_samples_grid=4", "--config.fd.num_samples=0", "--config.fd.fid_samples=0",
               "--config.data.train_split=train[:64]", f"--config.data.data_dir={tfds_data_dir}",
               "--config.progress=false")
    sample_fn, state, cfg, _ = gan.load_generator(workdir)
    assert cfg.model.image_size == 28

    def mean_pixel_net():
        return fid.FeatureNet(apply=lambda variables, x: {"pool": x.mean(axis=(1, 2)), "logits": x[:, 0, 0]},
                              variables={},
                              name="mean-pixel", input_size=32)

    gan.register_checkpoint_source()
    ctx = sources.SourceContext(net_factory=mean_pixel_net, num_images=16, batch_size=8)
    features = sources.resolve(f"checkpoint:{workdir}", ctx)
    assert features.mu.shape == (3,) and np.isfinite(features.mu).all()

    # The command line registers the scheme itself at start-up: with no such entry in the
    # registry it reads the same samples (same seed) and saves the same statistics.
    monkeypatch.delitem(sources.SOURCES, "checkpoint")
    out = tmp_path / "stats.npz"
    argv = [f"checkpoint:{workdir}", "--num-images=16", "--batch-size=8", "--no-cache", f"--save-stats={out}"]
    assert fid_cli.main(argv, net_factory=mean_pixel_net) == 0
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["mu"], features.mu)
        np.testing.assert_array_equal(saved["sigma"], features.sigma)
        assert int(saved["num_images"]) == 16


def _write_idx(path, array):
    import gzip

    import numpy as np

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def test_recipe_sweep_runs_a_trial_on_idx_files(tmp_path):
    """experiments/sweeps/vit_fashion_mnist_recipe.py: reads IDX files, trains, evaluates."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from experiments.sweeps import vit_fashion_mnist_recipe as sweep

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    arrays = {"train-images": rng.integers(0, 256, (256, 28, 28)), "train-labels": rng.integers(0, 10, 256),
              "t10k-images": rng.integers(0, 256, (64, 28, 28)), "t10k-labels": rng.integers(0, 10, 64)}
    for name, array in arrays.items():
        _write_idx(data / f"{name}-idx{3 if 'images' in name else 1}-ubyte.gz", array)
    x_train, y_train, x_test, y_test = sweep.load(data)
    np.testing.assert_array_equal(x_train[..., 0], arrays["train-images"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels"])

    trials = [{"name": "tiny", "overrides": ["total_steps=4", "global_batch_size=32", "micro_batches=2",
                                             "optim.warmup_steps=1", "model.depth=1", "model.width=16",
                                             "model.mlp_dim=32", "model.num_heads=2"], "eval_at": [2]}]
    (tmp_path / "trials.json").write_text(json.dumps(trials))
    subprocess.run([sys.executable, str(ROOT / "experiments" / "sweeps" / "vit_fashion_mnist_recipe.py"),
                    "--data", str(data), "--trials", str(tmp_path / "trials.json"), "--out", str(tmp_path / "out")],
                   check=True, capture_output=True, cwd=ROOT, timeout=300)
    (result,) = [json.loads(line) for line in (tmp_path / "out" / "trials-0.jsonl").read_text().splitlines()]
    assert "error" not in result, result
    assert result["steps"] == 4 and [c["step"] for c in result["curve"]] == [2, 4]
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["epochs"] == 4 * 32 / 256
