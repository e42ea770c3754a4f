import json

import jax
import numpy as np
import optax
import pytest

from helpers import as_jnp, synthetic_batch, synthetic_data, tiny_task, tree_equal
from jaxvision.train import Checkpointer, NonFiniteLossError, load_params, loop, optim, parallel
from jaxvision.train import workdir as workdir_lib

TRAIN_KW = dict(global_batch_size=8, seed=0, log_every=2, checkpoint_every=3, progress=False)


def run(task, workdir, total_steps=6, fail_at=None, **kw):
    return loop.train(task, workdir=workdir, total_steps=total_steps,
                      train_data=lambda start: synthetic_data(start, fail_at=fail_at), **{**TRAIN_KW, **kw})


def restore_state(task, workdir):
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    checkpointer = Checkpointer(workdir / "checkpoints", save_every=1)
    restored = checkpointer.restore(abstract)
    checkpointer.close()
    return restored


def test_training_lowers_the_loss(tmp_path):
    run(tiny_task(), tmp_path, total_steps=40)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_restore_gives_identical_params_and_next_step(tmp_path):
    task = tiny_task()
    run(task, tmp_path, total_steps=3)
    state, metadata, step = restore_state(task, tmp_path)
    assert step == 3 and metadata["step"] == 3 and int(state.step) == 3
    assert metadata["results"]["steps"] == 3 and metadata["results"]["train_loss"] > 0
    params = load_params(tmp_path)
    assert tree_equal(params, state.params)

    # The next step from the restored state equals the next step of a run that continues.
    step_fn = jax.jit(task.train_step)
    batch = as_jnp(synthetic_batch(3))
    a, _ = step_fn(state, batch)
    state2, _, _ = restore_state(task, tmp_path)
    b, _ = step_fn(state2, batch)
    assert tree_equal(a, b)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    task = tiny_task()
    straight = tmp_path / "straight"
    run(task, straight, total_steps=7)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run(task, crashed, total_steps=7, fail_at=4)  # checkpoint at 3, crash before step 5
    results = run(task, crashed, total_steps=7)
    assert results["resumed_from_step"] == 3
    a, _, _ = restore_state(task, straight)
    b, _, _ = restore_state(task, crashed)
    assert tree_equal(a, b)  # bit-identical on CPU
    log = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if "images_per_second" not in k} for r in rs]
    assert strip(log(straight)) == strip(log(crashed))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    task = tiny_task()

    def poisoned(start):
        for batch in synthetic_data(start):
            if start >= 4:
                batch["image"][:] = np.nan
            start += 1
            yield batch

    with pytest.raises(NonFiniteLossError, match="last good checkpoint \\(step 3\\)"):
        loop.train(task, workdir=tmp_path, total_steps=6, train_data=poisoned, **TRAIN_KW)
    state, _, step = restore_state(task, tmp_path)
    assert step == 3
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="Pass a writable --workdir"):
        run(tiny_task(), blocker / "run")


def test_a_workdir_in_use_is_refused(tmp_path):
    with workdir_lib.lock(tmp_path, True):
        with pytest.raises(RuntimeError, match="in use by another run"):
            run(tiny_task(), tmp_path)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    task = tiny_task()
    run(task, tmp_path, total_steps=6)
    for f in (tmp_path / "checkpoints" / "6" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    state, _, step = restore_state(task, tmp_path)
    assert step == 3 and int(state.step) == 3
    assert "unreadable" in caplog.text


def test_gradient_accumulation_equals_one_big_batch():
    batch = as_jnp(synthetic_batch(0, batch_size=8))
    one = tiny_task(micro_batches=1)
    four = tiny_task(micro_batches=4)
    state = jax.jit(one.init)(jax.random.PRNGKey(0))
    a, ma = jax.jit(one.train_step)(state, batch)
    b, mb = jax.jit(four.train_step)(state, batch)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)


def test_schedule_and_weight_decay_mask():
    lr = optim.schedule(1.0, total_steps=110, warmup_steps=10, decay="cosine")
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))
    params = {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.ones(3)},
              "LayerNorm_0": {"scale": np.ones(3)}, "pos_embedding": np.ones((1, 4, 3))}
    assert optim.decay_mask(params) == {"Dense_0": {"kernel": True, "bias": False},
                                        "LayerNorm_0": {"scale": False}, "pos_embedding": False}
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optim.make_optimizer("lamb", 0.1)


def test_frozen_parameters_do_not_change():
    params = {"backbone": {"kernel": np.ones((2, 2), np.float32)}, "head": {"kernel": np.ones((2, 2), np.float32)}}
    tx = optim.make_optimizer("sgd", 0.1, frozen_mask={"backbone": {"kernel": True}, "head": {"kernel": False}})
    grads = jax.tree_util.tree_map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["backbone"]["kernel"], params["backbone"]["kernel"])
    assert not np.array_equal(new["head"]["kernel"], params["head"]["kernel"])


def test_global_batch_must_divide_the_device_count():
    class FakeMesh:
        devices = np.empty(8)

    with pytest.raises(ValueError, match="not divisible by the 8 devices.*e.g. 128"):
        parallel.check_global_batch(130, FakeMesh())
