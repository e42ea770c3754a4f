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
    commands = [[sys.executable, str(HERE / "multiprocess_worker.py"), str(workdir), coordinator,
                 str(num_processes), str(i), form] for i in range(num_processes)]
    return _wait_all(workdir, commands, env)


def _wait_all(workdir, commands, env, expect=0, timeout=900):
    """Run one process per command (their output to files: a full pipe would block one
    process and, through the collectives, all); return their outputs once all have ended,
    asserting each exit code is `expect`. On timeout every process is killed."""
    logs = Path(f"{workdir}.logs")
    logs.mkdir(parents=True, exist_ok=True)
    files = [(open(logs / f"{i}.out", "w"), open(logs / f"{i}.err", "w")) for i in range(len(commands))]
    procs = [subprocess.Popen(c, env=env, stdout=out, stderr=err, text=True) for c, (out, err) in zip(commands, files)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    finally:
        for out, err in files:
            out.close()
            err.close()
    outs = [((logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text()) for i in range(len(commands))]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == expect, f"process {i} exited {p.returncode}, not {expect}: {err[-4000:]}"
    return outs


def assert_trees_close(a, b, atol):
    """Same structure and key paths first, then every leaf within `atol`."""
    import jax

    (paths_a, tree_a), (paths_b, tree_b) = (jax.tree_util.tree_flatten_with_path(t) for t in (a, b))
    keys = lambda paths: [jax.tree_util.keystr(k) for k, _ in paths]  # noqa: E731
    assert tree_a == tree_b and keys(paths_a) == keys(paths_b) and paths_a, (tree_a, tree_b)
    for (key, x), (_, y) in zip(paths_a, paths_b):
        np.testing.assert_allclose(x, y, atol=atol, err_msg=jax.tree_util.keystr(key))


def test_two_processes_match_one_process_with_the_same_devices(tmp_path, tfds_data_dir):
    """2 processes x 2 devices (gloo) vs 1 process x 4 devices: same global batches, so
    the same parameters up to the order of the cross-process reduction."""
    from jaxvision.train import load_params

    _run_processes(tmp_path / "one", 1, 4, "mesh", tfds_data_dir)
    _run_processes(tmp_path / "two", 2, 2, "mesh", tfds_data_dir)
    assert_trees_close(load_params(tmp_path / "one"), load_params(tmp_path / "two"), atol=1e-5)
    # Only process 0 writes logs and results; every process wrote its checkpoint part.
    assert (tmp_path / "two" / "results.json").is_file()
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == \
        len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())


SLOW_COMPILE_SECONDS = 35  # past the 30 s gloo waits for the other processes' first collective


def _tiny_processes(workdir, *extra):
    """2 processes x 2 devices of parallel_worker.py's tiny synthetic run; `extra[i]`:
    process i's own options."""
    coordinator = f"127.0.0.1:{_free_port()}"
    return [[sys.executable, str(HERE / "parallel_worker.py"), "multiprocess", str(workdir), coordinator, "2",
             str(i), *(extra[i] if i < len(extra) else [])] for i in range(2)]


@pytest.fixture(scope="module")
def two_processes_one_slow(tmp_path_factory):
    """10 steps on 2 processes; process 1 compiles its train step 35 s after process 0.
    The first step's collective opens gloo's connections, for which gloo waits only 30 s:
    the loop makes the processes meet after compiling, before that first step."""
    workdir = tmp_path_factory.mktemp("two_slow") / "run"
    outs = _wait_all(workdir, _tiny_processes(workdir, [], ["--slow-compile", str(SLOW_COMPILE_SECONDS)]), _env(2))
    return workdir, outs


def test_a_process_compiling_much_later_still_meets_the_other(two_processes_one_slow):
    from helpers import train_log

    workdir, outs = two_processes_one_slow
    results = [json.loads(out.split("RESULT ")[-1]) for out, _ in outs]
    assert [r["steps"] for r in results] == [10, 10]
    assert [r["step"] for r in train_log(workdir) if "train/loss" in r] == list(range(1, 11))


def test_sigterm_to_one_process_stops_both_at_the_same_step(two_processes_one_slow, tmp_path):
    """Process 1 alone is signalled (while reading batch 4, before step 5). The processes
    agree through an all-process OR read one step later: both save step 6 (checkpoints
    fall every 4 steps, so this one is the preemption's), exit 143, and the resumed run
    ends bit for bit equal to the uninterrupted one."""
    from helpers import assert_tree_equal, train_log

    from jaxvision.train import load_params

    straight, _ = two_processes_one_slow
    workdir = tmp_path / "run"
    outs = _wait_all(workdir, _tiny_processes(workdir, [], ["--sigterm-at-batch", "4"]), _env(2), expect=143)
    saved = [int(err.split("saved a checkpoint at step ")[1].split(";")[0]) for _, err in outs]
    assert saved == [6, 6], saved
    assert (workdir / "checkpoints" / "6").is_dir()

    outs = _wait_all(workdir, _tiny_processes(workdir), _env(2))
    assert all("Resuming from the checkpoint at step 6" in err for _, err in outs)
    assert_tree_equal(load_params(workdir), load_params(straight))
    assert train_log(workdir) == train_log(straight)


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
