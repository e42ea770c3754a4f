"""Parallel forms, multi-process runs and restores on other device counts (CPU, fake devices)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _env(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """One subprocess with 8 fake CPU devices runs both checks below (JAX fixes the
    device count at start-up, so it cannot run in the test process)."""
    proc = subprocess.run([sys.executable, str(HERE / "parallel_worker.py"), str(tmp_path_factory.mktemp("pw"))],
                          env=_env(8), capture_output=True, text=True, timeout=900, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_mesh_pmap_and_fsdp_steps_match_a_single_device(eight_devices):
    """3 AdamW steps of the same pure body on 8 fake devices vs 1 device, same global
    batch. Only the reduction order differs, so the parameters agree to float32 noise
    (1e-4 absolute after Adam's normalised updates of ~lr=1e-2 each)."""
    diffs = eight_devices
    for name in ("vit", "gan"):
        for form in ("mesh", "pmap", "fsdp"):
            assert diffs[f"{name}_{form}"] < 1e-4, (name, form, diffs)
        assert diffs[f"{name}_fsdp_sharded"] > 0  # FSDP really sharded some arrays


def test_a_checkpoint_resumes_on_another_device_count(eight_devices):
    """Saved on 1 device at step 3, resumed on 8 (mesh and pmap) to step 6. Tolerance
    as above, over twice the steps."""
    diffs = eight_devices
    assert diffs["resume_mesh"] < 1e-3 and diffs["resume_pmap"] < 1e-3, diffs


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(workdir, num_processes, devices_each, form, data_dir):
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {**_env(devices_each), "TFDS_DATA_DIR": data_dir}
    procs = [subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"), str(workdir), coordinator,
                               str(num_processes), str(i), form], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(num_processes)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return outs


def test_two_processes_match_one_process_with_the_same_devices(tmp_path, tfds_data_dir):
    """2 processes x 2 devices (gloo) vs 1 process x 4 devices: same global batches, so
    the same parameters up to the order of the cross-process reduction."""
    from jaxvision.train import load_params

    _run_processes(tmp_path / "one", 1, 4, "mesh", tfds_data_dir)
    _run_processes(tmp_path / "two", 2, 2, "mesh", tfds_data_dir)
    a, b = load_params(tmp_path / "one"), load_params(tmp_path / "two")
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-5)
    # Only process 0 writes logs and results; every process wrote its checkpoint part.
    assert (tmp_path / "two" / "results.json").is_file()
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == \
        len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())


def test_unreachable_coordinator_is_a_clear_error():
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from jaxvision.train import distributed\n"
            "distributed.initialize('127.0.0.1:%d', 2, 1, timeout_seconds=3)\n") % (str(HERE.parent), _free_port())
    proc = subprocess.run([sys.executable, "-c", code], env=_env(1), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not join the multi-process job" in proc.stderr and "process 0 is running" in proc.stderr


def test_coordinator_without_process_count_is_refused():
    from jaxvision.train import distributed

    with pytest.raises(ValueError, match="--num-processes and --process-id"):
        distributed.initialize("127.0.0.1:1234", None, None)
