"""Preemption and crashes: a run killed at a random step (SIGKILL) or preempted
(SIGTERM) and restarted in the same workdir ends bit-identical to one never stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tree_difference
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


def interrupt(args, workdir, data_dir, sig, at_step):
    """Start a run, send `sig` once it has logged step `at_step` and finished a checkpoint
    (so the restart has one to resume from), wait for it to die."""
    proc = subprocess.Popen(command(args, workdir, data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    log = Path(workdir) / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and finished_checkpoints(workdir) and any(
                json.loads(x)["step"] >= at_step for x in log.read_text().splitlines() if x):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def train_log(workdir):
    records = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "images_per_second" not in k} for r in records if "train/loss" in r]


def assert_identical(a, b, context=""):
    """Same parameter tree (structure and key paths first, then every leaf bit for bit)
    and the same train log."""
    difference = tree_difference(load_params(a), load_params(b))
    assert difference is None, f"{context}: {difference}"
    assert train_log(a) == train_log(b), context


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
