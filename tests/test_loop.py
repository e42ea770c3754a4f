"""The loop's periodic actions on a tiny synthetic task: SIGTERM at any point of a step,
finished runs started again, evaluation statistics finished by the task, the progress bar
and the workdir probe."""

import dataclasses
import json
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import assert_tree_equal, synthetic_batch, synthetic_data, tiny_task, tiny_vit, train_log
from jaxvision.train import Checkpointer, load_params, loop
from jaxvision.train import workdir as workdir_lib

KW = dict(global_batch_size=8, seed=0, log_every=2, checkpoint_every=3, progress=False)


def run(task, wd, total_steps=8, data=synthetic_data, **kw):
    return loop.train(task, workdir=wd, total_steps=total_steps, train_data=data, **{**KW, **kw})


def restore(task, wd):
    checkpointer = Checkpointer(Path(wd) / "checkpoints", save_every=1)
    restored = checkpointer.restore(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    checkpointer.close()
    return restored


def eval_batches():
    return (synthetic_batch(1000 + i) for i in range(2))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """8 uninterrupted steps: what every interrupted run below must end equal to."""
    wd = tmp_path_factory.mktemp("straight")
    run(tiny_task(), wd, eval_every=1)
    return wd


def sigterm_in_hook(at_step):
    def hook(step, state):
        if step == at_step:
            signal.raise_signal(signal.SIGTERM)
        return {}
    return hook


def sigterm_in_data(at_batch):
    def data(start):
        for i, batch in enumerate(synthetic_data(start), start):
            if i == at_batch:
                signal.raise_signal(signal.SIGTERM)
            yield batch
    return data


@pytest.mark.parametrize("when", ["evaluating", "reading a batch"])
def test_sigterm_at_any_point_of_a_step_saves_the_step_it_stops_at(straight, tmp_path, when):
    """The signal lands after the step decided it had nothing to save (in an eval hook of
    step 4) or before a step (reading batch 4, the one of step 5): either way the run
    stops after step 5 with a checkpoint there (not a periodic one: every 3 steps), exits
    143, and the resumed run ends bit for bit equal to one never stopped."""
    task = tiny_task()
    if when == "evaluating":
        interrupted, kw = dataclasses.replace(task, hooks=(sigterm_in_hook(4),)), {}
    else:
        interrupted, kw = task, dict(data=sigterm_in_data(4), prefetch_batches=0)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        run(interrupted, tmp_path, eval_every=1, **kw)
    assert exit_info.value.code == loop.PREEMPTED_EXIT_CODE == 143
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 5
    assert train_log(tmp_path)[-1]["step"] == 5
    assert signal.getsignal(signal.SIGTERM) is handler  # the loop's own handler is gone

    results = run(task, tmp_path, eval_every=1)
    assert results["resumed_from_step"] == 5
    assert_tree_equal(restore(task, tmp_path)[0], restore(task, straight)[0])
    assert train_log(tmp_path) == train_log(straight)


def test_a_finished_run_started_again_keeps_its_results(tmp_path):
    task = tiny_task()
    first = run(task, tmp_path, total_steps=6, eval_data=eval_batches)
    assert {"test_accuracy", "test_loss", "train_loss"} <= set(first) and first["steps"] == 6
    written = (tmp_path / "results.json").read_text()
    log = (tmp_path / "metrics.jsonl").read_text()

    assert run(task, tmp_path, total_steps=6, eval_data=eval_batches) == first
    assert (tmp_path / "results.json").read_text() == written  # not rewritten
    assert (tmp_path / "metrics.jsonl").read_text() == log

    # results.json lost: the copy saved with the final checkpoint (its times taken at the save).
    (tmp_path / "results.json").unlink()
    again = run(task, tmp_path, total_steps=6, eval_data=eval_batches)
    times = ("wall_seconds", "wall_seconds_total")
    assert {k: v for k, v in again.items() if k not in times} == {k: v for k, v in first.items() if k not in times}
    assert json.loads((tmp_path / "results.json").read_text()) == again

    # results.json truncated (a kill mid-write by an older version): recovered the same way.
    (tmp_path / "results.json").write_text(json.dumps(again)[:40])
    assert run(task, tmp_path, total_steps=6, eval_data=eval_batches) == again
    assert json.loads((tmp_path / "results.json").read_text()) == again
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind

    # Checkpoints of older versions hold no results: the same numbers from metrics.jsonl.
    rebuilt = workdir_lib.results_from_log(tmp_path, 6)
    skip = (*times, "resumed_from_step")
    assert {k: v for k, v in rebuilt.items() if k not in skip} == {k: v for k, v in first.items() if k not in skip}


def test_evaluation_runs_at_the_listed_steps_and_the_periodic_ones_only(tmp_path):
    """A progressive GAN's phase ends (coprime step counts) are evaluated without evaluating
    (and logging) every step: the hook sees exactly those steps, the period and the last."""
    seen = []
    task = dataclasses.replace(tiny_task(), hooks=(lambda step, state: seen.append(step) or {},))
    run(task, tmp_path, total_steps=11, log_every=50, eval_every=4, eval_steps=frozenset({3, 7}))
    assert seen == [3, 4, 7, 8, 11]
    logged = [r["step"] for r in train_log(tmp_path, train_only=True)]
    assert logged == [3, 4, 6, 7, 8, 9, 11]  # evaluations and checkpoints (every 3), not every step


def test_wall_seconds_total_adds_the_time_before_a_resume(tmp_path):
    task = tiny_task()
    with pytest.raises(KeyboardInterrupt):
        run(task, tmp_path, total_steps=7, data=lambda start: synthetic_data(start, fail_at=4))
    _, metadata, step = restore(task, tmp_path)
    before = metadata["results"]["wall_seconds_total"]
    assert step == 3 and before > 0
    results = run(task, tmp_path, total_steps=7)
    assert results["resumed_from_step"] == 3
    assert results["wall_seconds_total"] == pytest.approx(before + results["wall_seconds"], rel=1e-12)
    assert json.loads((tmp_path / "results.json").read_text())["wall_seconds_total"] == results["wall_seconds_total"]


NUM_CLASSES = 4


def miou_task():
    """The tiny classifier evaluated as a dense task: a confusion matrix accumulated over
    the evaluation set (padding examples masked out), finished into per-class IoU and mIoU."""
    model = tiny_vit()

    def eval_step(state, batch):
        logits, _ = model.apply({"params": state.params}, batch["image"], train=False)
        index = batch["label"] * NUM_CLASSES + logits.argmax(-1)
        counts = jax.numpy.zeros(NUM_CLASSES * NUM_CLASSES).at[index].add(batch["mask"].astype(np.float32))
        return {"confusion": counts.reshape(NUM_CLASSES, NUM_CLASSES)}

    def finalize(totals):
        confusion = totals["confusion"]
        hits = np.diag(confusion)
        iou = hits / (confusion.sum(0) + confusion.sum(1) - hits)
        return {"iou": iou, "miou": np.nanmean(iou)}

    return dataclasses.replace(tiny_task(), eval_step=eval_step, finalize=finalize), model


def masked_eval_batches():
    """Three batches of 8; the last holds 5 real examples and 3 of padding."""
    for i in range(3):
        batch = synthetic_batch(2000 + i)
        batch["mask"] = np.arange(8) < (5 if i == 2 else 8)
        yield batch


@pytest.mark.parametrize("form", ["mesh", "pmap"])
def test_eval_statistics_finished_by_the_task_give_miou(tmp_path, form):
    task, model = miou_task()
    results = run(task, tmp_path, total_steps=4, eval_data=masked_eval_batches, parallel_form=form)

    params = load_params(tmp_path)
    labels, preds = [], []
    for batch in masked_eval_batches():
        logits, _ = model.apply({"params": params}, batch["image"], train=False)
        labels.append(batch["label"][batch["mask"]])
        preds.append(np.asarray(logits).argmax(-1)[batch["mask"]])
    labels, preds = np.concatenate(labels), np.concatenate(preds)
    assert len(labels) == 21
    with np.errstate(invalid="ignore"):
        iou = np.array([np.sum((labels == c) & (preds == c)) / np.sum((labels == c) | (preds == c))
                        for c in range(NUM_CLASSES)])
    np.testing.assert_allclose(results["test_iou"], iou, rtol=1e-6)
    assert results["test_miou"] == pytest.approx(np.nanmean(iou), rel=1e-6)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["test/miou"] for r in logged if "test/miou" in r] == [results["test_miou"]]


def test_the_progress_bar_shows_the_task_s_progress_metrics(tmp_path, monkeypatch):
    shown = []

    class Bar:
        def update(self, n):
            pass

        def set_postfix(self, **kw):
            shown.append(kw)

        def close(self):
            pass

    monkeypatch.setattr(loop, "_progress", lambda *a, **kw: Bar())
    task = dataclasses.replace(tiny_task(), progress_metrics=("accuracy", "grad_norm"))
    run(task, tmp_path, total_steps=4)
    logged = [r for r in (json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert [set(kw) for kw in shown] == [{"accuracy", "grad_norm", "img_s"}] * len(logged) and len(logged) == 3
    assert [kw["grad_norm"] for kw in shown] == [f"{r['train/grad_norm']:.4f}" for r in logged]


def test_the_progress_bar_closes_at_the_last_step_before_the_final_evaluation(tmp_path, monkeypatch):
    # tqdm renders its elapsed time and rate when it closes: closed after a final FID
    # evaluation (minutes), it reported a training rate several times too low.
    events = []

    class Bar:
        def update(self, n):
            events.append("step")

        def set_postfix(self, **kw):
            pass

        def close(self):
            events.append("close")

    monkeypatch.setattr(loop, "_progress", lambda *a, **kw: Bar())
    monkeypatch.setattr(loop, "_evaluate_all", lambda *a, **kw: events.append("evaluate") or {})
    run(tiny_task(), tmp_path, total_steps=4, eval_every=2)
    assert events[:events.index("close") + 2] == ["step", "step", "evaluate", "step", "step", "close", "evaluate"]


def test_processes_sharing_a_workdir_probe_it_under_their_own_names(tmp_path, monkeypatch):
    """On a shared filesystem, process 1's whole check may run between process 0's write
    of its probe file and its removal."""
    write_text = Path.write_text
    interleaved = []

    def write_then_let_process_1_check(self, *args, **kwargs):
        written = write_text(self, *args, **kwargs)
        if self.name.startswith(".write_test") and not interleaved:
            interleaved.append(self.name)
            with monkeypatch.context() as m:
                m.setattr(jax, "process_index", lambda: 1)
                workdir_lib.check_writable(tmp_path)
        return written

    monkeypatch.setattr(Path, "write_text", write_then_let_process_1_check)
    workdir_lib.check_writable(tmp_path)
    assert interleaved and not list(tmp_path.glob(".write_test*"))
