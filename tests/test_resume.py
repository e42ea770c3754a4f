"""Preemption and crashes: a run killed at a random step (SIGKILL) or preempted
(SIGTERM) and restarted in the same workdir ends bit-identical to one never stopped:
the ViT experiment, and the image-to-image GAN experiments (pix2pix with its two
trainings, CycleGAN with its image pools) killed by a real SIGKILL mid-training."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from orbax import checkpoint as ocp

from helpers import train_log, tree_difference
from jaxvision.train import load_params

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--config.log_every=1", "--config.checkpoint_every=2", "--config.progress=false"]
VIT = ["vit_fashion_mnist.py", "--config.total_steps=10", "--config.global_batch_size=32",
       "--config.optim.warmup_steps=2", "--config.model.width=16", "--config.model.depth=1",
       "--config.model.mlp_dim=32", "--config.model.num_heads=2", "--config.model.dropout=0.1",
       "--config.data.train_split=train[:2048]", "--config.data.eval_split=test[:64]",
       "--config.data.augment=pad_crop_flip", "--config.eval_every=0"]


def command(args, workdir, data_dir):
    script, *rest = args
    return [sys.executable, str(ROOT / "experiments" / script), "--workdir", str(workdir), *rest, *COMMON,
            f"--config.data.data_dir={data_dir}"]


def run(args, workdir, data_dir):
    proc = subprocess.run(command(args, workdir, data_dir), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def finished_checkpoints(workdir):
    # orbax renames "<step>.orbax-checkpoint-tmp-*" to "<step>" once a save is complete.
    folder = Path(workdir) / "checkpoints"
    return [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def interrupt(args, workdir, data_dir, sig, at_step, stage=""):
    """Start a run, send `sig` once it (its `stage` subfolder, for experiments of several
    trainings) has logged step `at_step` and finished a checkpoint (so the restart has one
    to resume from), wait for it to die."""
    proc = subprocess.Popen(command(args, workdir, data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    watched = Path(workdir) / stage
    log = watched / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and finished_checkpoints(watched) and any(
                json.loads(x)["step"] >= at_step for x in log.read_text().splitlines() if x):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def assert_identical(a, b, context=""):
    """Same parameter tree (structure and key paths first, then every leaf bit for bit)
    and the same train log."""
    difference = tree_difference(load_params(a), load_params(b))
    assert difference is None, f"{context}: {difference}"
    assert train_log(a, train_only=True) == train_log(b, train_only=True), context


@pytest.fixture(scope="module")
def straight_vit(tmp_path_factory, tfds_data_dir):
    workdir = tmp_path_factory.mktemp("vit_straight")
    run(VIT, workdir, tfds_data_dir)
    return workdir


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(straight_vit, tmp_path, tfds_data_dir):
    # The kill is task-independent (the loop and orbax's atomic saves); the GAN's state
    # (both networks and optimisers, EMA, BatchNorm statistics) resumes bit for bit in
    # test_gan_task.py::test_kill_and_resume_is_bit_identical through the same loop.
    seed = 13  # fixed: a failure reproduces with the same kill step
    at = random.Random(seed).randint(2, 8)
    code, err = interrupt(VIT, tmp_path / "killed", tfds_data_dir, signal.SIGKILL, at)
    assert code == -signal.SIGKILL, f"run ended before the kill at step {at} (seed {seed}): {err[-2000:]}"
    proc = run(VIT, tmp_path / "killed", tfds_data_dir)
    assert "Resuming from the checkpoint" in proc.stderr, f"killed at step {at} (seed {seed})"
    assert_identical(straight_vit, tmp_path / "killed", f"killed at step {at} (seed {seed})")


def test_sigterm_saves_a_checkpoint_and_resumes_bit_identical(straight_vit, tmp_path, tfds_data_dir):
    code, err = interrupt(VIT, tmp_path / "preempted", tfds_data_dir, signal.SIGTERM, 3)
    assert code == 143, err[-2000:]
    saved = int(err.split("saved a checkpoint at step ")[1].split(";")[0])
    assert (tmp_path / "preempted" / "checkpoints" / str(saved)).is_dir()
    proc = run(VIT, tmp_path / "preempted", tfds_data_dir)
    assert f"Resuming from the checkpoint at step {saved}" in proc.stderr
    assert_identical(straight_vit, tmp_path / "preempted")


# --- the image-to-image GAN experiments --------------------------------------------------------

PIX2PIX = ["pix2pix_inpaint_fashion_mnist.py", "--config.total_steps=12", "--config.global_batch_size=8",
           "--config.eval_every=0", "--config.model.g_width=4", "--config.model.d_width=4",
           "--config.data.train_split=train[:256]", "--config.data.eval_batch_size=16",
           "--config.fd_num_images=32", "--config.fid_samples=0", "--config.num_samples_grid=4"]
CYCLEGAN = ["cyclegan_fashion_mnist.py", "--config.total_steps=12", "--config.global_batch_size=4",
            "--config.sample_every=6", "--config.optim.lr_decay_steps=6", "--config.model.g_width=4",
            "--config.model.d_width=4", "--config.model.num_blocks=1", "--config.loss.pool_size=6",
            "--config.eval.num_images=16", "--config.eval.num_grid=2", "--config.eval.fid_images=0",
            "--config.eval.classifier_workdir="]


def newest_state(workdir):
    """Every leaf of the newest finished checkpoint: parameters, optimiser states, BatchNorm
    statistics, EMA, image pools, step and rng key."""
    step = max(int(p.name) for p in finished_checkpoints(workdir))
    return ocp.StandardCheckpointer().restore((Path(workdir) / "checkpoints" / str(step) / "state").absolute())


def kill_mid_training_and_rerun(args, tmp_path, data_dir, stage, seed):
    """The experiment run straight, and run again after a SIGKILL at a random step of its
    `stage` training; every training folder of both ends with the same state and train log."""
    at = random.Random(seed).randint(3, 8)
    run(args, tmp_path / "straight", data_dir)
    code, err = interrupt(args, tmp_path / "killed", data_dir, signal.SIGKILL, at, stage=stage)
    assert code == -signal.SIGKILL, f"run ended before the kill at step {at} (seed {seed}): {err[-2000:]}"
    assert not (tmp_path / "killed" / stage / "results.json").exists()  # killed before its training ended
    proc = run(args, tmp_path / "killed", data_dir)
    assert "Resuming from the checkpoint" in proc.stderr, f"killed at step {at} (seed {seed})"
    for folder in sorted({p.parent.relative_to(tmp_path / "straight")
                          for p in (tmp_path / "straight").rglob("checkpoints")}):
        a, b = tmp_path / "straight" / folder, tmp_path / "killed" / folder
        difference = tree_difference(newest_state(a), newest_state(b))
        assert difference is None, f"{folder}, killed at step {at} (seed {seed}): {difference}"
        assert train_log(a, train_only=True) == train_log(b, train_only=True), \
            f"{folder}, killed at step {at} (seed {seed})"


def test_pix2pix_experiment_killed_mid_training_reruns_to_the_same_results(straight_vit, tmp_path,
                                                                           tfds_data_dir):
    # Killed in its second training (pix2pix), after the L1-only U-Net has finished: the rerun
    # keeps the finished one, resumes the other and scores both.
    args = [*PIX2PIX, f"--config.fd_classifier_workdir={straight_vit}"]
    kill_mid_training_and_rerun(args, tmp_path, tfds_data_dir, "pix2pix", seed=5)
    rows = [json.loads((tmp_path / name / "comparison.json").read_text())["methods"] for name in ("straight", "killed")]
    for row in rows:
        for method in row.values():
            del method["eval_seconds"]
    assert rows[0] == rows[1] and len(rows[0]) == 3  # every method's L1, PSNR, SSIM and FD-ViT


def test_cyclegan_experiment_killed_mid_training_resumes_with_its_image_pools(tmp_path, tfds_data_dir):
    kill_mid_training_and_rerun(CYCLEGAN, tmp_path, tfds_data_dir, "", seed=7)
    pools = newest_state(tmp_path / "killed")["extra"]["pool"]
    assert {k: int(v["count"]) for k, v in pools.items()} == {"a": 6, "b": 6}  # full pools resumed
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("straight", "killed")]
    for key in ("a2b_cycle_l1", "b2a_cycle_l1"):
        assert results[0][key] == results[1][key], key
