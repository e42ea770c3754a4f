"""experiments/sweeps/dcgan_trials.py: a trial's record names exactly what differs from its
preset, keeps one line per trial, and its table reads the record."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


@pytest.fixture(scope="module")
def trials():
    from experiments.sweeps import dcgan_trials

    return dcgan_trials


def _fake_run(tmp_path, trials, preset, overrides: dict, results: dict):
    from jaxvision import config as config_lib

    cfg = config_lib.to_dict(trials.dcgan_fashion_mnist.get_config(preset))
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    run = tmp_path / f"run_{preset}_{len(overrides)}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "results.json").write_text(json.dumps(results))
    (run / "run.json").write_text(json.dumps({"host_cpu": "Test CPU, 2 cores"}))
    return run


def test_record_names_the_preset_and_only_the_recipe_overrides(tmp_path, trials):
    run = _fake_run(tmp_path, trials, "conditional",
                    {"model.g_width": 64, "total_steps": 123, "progress": False, "fd.classifier_workdir": "/c"},
                    {"fd_vit_ema_samples": 1.5, "vit_conditional_accuracy": 0.9, "unrelated": 7})
    row = trials.record("t", run)
    assert row["preset"] == "conditional"
    assert row["overrides"] == ["model.g_width=64", "total_steps=123"]  # bookkeeping and feature space left out
    assert row["fd_vit_space"] == "/c" and row["cpu"] == "Test CPU, 2 cores"
    assert row["fd_vit_ema_samples"] == 1.5 and "unrelated" not in row


def test_a_run_from_before_a_config_field_existed_is_recorded_at_that_fields_old_default(tmp_path, trials):
    run = _fake_run(tmp_path, trials, "default", {"total_steps": 100}, {"fd_vit_ema_samples": 3.0})
    cfg = json.loads((run / "config.json").read_text())
    del cfg["cpu_reductions"]  # config.json of a run from before the field: it trained with XLA's reductions
    (run / "config.json").write_text(json.dumps(cfg))
    row = trials.record("old", run)
    assert row["preset"] == "default" and row["overrides"] == ["cpu_reductions=xla", "total_steps=100"]


def test_a_trial_recorded_again_replaces_its_line_and_the_table_reads_it(tmp_path, trials):
    record = tmp_path / "r.jsonl"
    run = _fake_run(tmp_path, trials, "default", {}, {"fd_vit_ema_samples": 3.0, "wall_seconds": 10.0})
    trials.append(record, trials.record("a", run))
    trials.append(record, {**trials.record("a", run), "fd_vit_ema_samples": 2.0})
    trials.append(record, trials.record("b", run))
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert [r["name"] for r in lines] == ["a", "b"] and lines[0]["fd_vit_ema_samples"] == 2.0
    rows = trials.table(record).splitlines()[2:]
    assert rows[0].startswith("| a | default ") and "| 2.00 |" in rows[0]  # sorted by FD-ViT


def test_an_unfinished_run_is_a_clear_error(tmp_path, trials):
    run = _fake_run(tmp_path, trials, "default", {}, {})
    (run / "results.json").unlink()
    with pytest.raises(SystemExit, match="has not finished"):
        trials.record("x", run)


def test_train_seconds_leave_out_the_evaluation_and_a_resumed_run_has_none(tmp_path, trials):
    # The loop's img/s times every step but the first: 101 steps of 64 images at 640 img/s
    # are 10 s of training, whatever wall_seconds (here mostly FID) says.
    results = {"steps": 101, "train_images_per_second": 640.0, "wall_seconds": 3000.0, "resumed_from_step": 0}
    row = trials.record("t", _fake_run(tmp_path, trials, "default", {}, results))
    assert row["train_seconds"] == pytest.approx(10.0, rel=1e-12)
    resumed = _fake_run(tmp_path, trials, "conditional", {}, {**results, "resumed_from_step": 50})
    assert trials.record("r", resumed)["train_seconds"] is None
    # WGAN-GP reads n_critic=5 D batches a step, and the loop counts every image it reads.
    batch_128 = _fake_run(tmp_path, trials, "wgan_gp", {"global_batch_size": 128}, results)
    assert trials.record("b", batch_128)["train_seconds"] == pytest.approx(100.0, rel=1e-12)


def test_fid_keeps_its_sample_count_and_the_table_names_a_short_one(tmp_path, trials):
    # FID of 2,000 samples reads far above FID of 10,000 (its bias falls with n): a screen's
    # FID must not pass for the protocol's.
    screen = trials.record("s", _fake_run(tmp_path, trials, "default", {"fd.fid_samples": 2000}, {"fid_fid": 40.0}))
    full = trials.record("f", _fake_run(tmp_path, trials, "long", {}, {"fid_fid": 16.5}))
    assert (screen["fid_samples"], full["fid_samples"]) == (2000, 10_000)
    assert "fid_samples" not in trials.record("n", _fake_run(tmp_path, trials, "wgan_gp", {}, {"steps": 3}))
    afterwards = tmp_path / "fid.json"
    afterwards.write_text(json.dumps({"fid": 30.0, "num_images": [5000, 10000]}))
    later = trials.record("a", _fake_run(tmp_path, trials, "conditional", {}, {}), afterwards)
    assert (later["fid_fid"], later["fid_samples"]) == (30.0, 5000)
    record = tmp_path / "r.jsonl"
    for row in (screen, full, later):
        trials.append(record, row)
    text = trials.table(record)
    assert "| 40.00 (of 2,000) |" in text and "| 16.50 |" in text and "| 30.00 (of 5,000) |" in text


def test_the_closest_preset_is_the_one_with_the_same_network(tmp_path, trials):
    # The conditional preset keeps the paper's learning rates, so an unconditional run at them
    # differs from it in one model field and from the default in three optimizer fields: it is
    # still the default's network, recorded as the default plus its optimizer overrides.
    run = _fake_run(tmp_path, trials, "default", {"optim.g_learning_rate": 2e-4, "optim.d_learning_rate": 2e-4,
                                                  "optim.ema_decay": 0.999}, {})
    row = trials.record("paper_lr", run)
    assert row["preset"] == "default"
    assert row["overrides"] == ["optim.d_learning_rate=0.0002", "optim.ema_decay=0.999", "optim.g_learning_rate=0.0002"]


def test_recorded_rows_rebuild_the_recipe_each_run_trained_with(trials):
    """The figures the docs quote come from these rows: each row's preset + overrides must
    rebuild its run's recipe, so the default preset is the measured widths-48 run's (re-measure
    before changing it), the rows from before keep width 32 and the paper's Adam 2e-4 and EMA
    0.999, and the presets whose results were recorded at width 32 stay there."""
    from jaxvision import config as config_lib

    get_config = trials.dcgan_fashion_mnist.get_config
    record = ROOT / "experiments" / "sweeps" / "results" / "dcgan_trials.jsonl"
    rows = {r["name"]: r for r in map(json.loads, record.read_text().splitlines())}

    def rebuild(name):
        return config_lib.apply_overrides(get_config(rows[name]["preset"]), rows[name]["overrides"])

    recipe = lambda c: (c.optim.g_learning_rate, c.optim.d_learning_rate, c.optim.ema_decay, c.total_steps)  # noqa: E731
    widths = lambda c: (c.model.g_width, c.model.d_width)  # noqa: E731
    # Every run recorded before the default preset took YNNPACK's CPU reductions trained with XLA's.
    assert all(rebuild(name).cpu_reductions == "xla" for name in rows if "ynnpack" not in name)
    assert rebuild("default/w48/12500") == dataclasses.replace(get_config("default"), cpu_reductions="xla")
    assert rebuild("default/w48/12500/ynnpack") == get_config("default")
    assert get_config("default").cpu_reductions == "ynnpack"
    assert recipe(get_config("default")) == (8e-4, 8e-4, 0.9995, 12_500) and widths(get_config("default")) == (48, 48)
    assert recipe(rebuild("default/w32/24000/lr8e-4")) == (8e-4, 8e-4, 0.9995, 24_000)
    assert widths(rebuild("default/w32/24000/lr8e-4")) == (32, 32)
    assert rebuild("conditional/w32/18000/decay6000") == get_config("conditional")
    assert widths(get_config("conditional")) == widths(get_config("wgan_gp")) == (32, 32)
    assert recipe(rebuild("default/w32/21000")) == (2e-4, 2e-4, 0.999, 21_000)
    assert recipe(rebuild("subpixel/w32/9000")) == (2e-4, 2e-4, 0.999, 9000)
    assert recipe(rebuild("screen8k/lr8e-4")) == (8e-4, 8e-4, 0.999, 8000)
    long = get_config("long")
    assert rebuild("long/w64/40000/sn/outconv/ynnpack") == long and recipe(long)[:3] == (2e-4, 2e-4, 0.999)
    long_sn = dataclasses.replace(long, model=dataclasses.replace(long.model, g_output_conv=False), total_steps=50_000)
    assert rebuild("long/w64/50000/sn/ynnpack") == long_sn
    long_before = dataclasses.replace(long_sn, model=dataclasses.replace(long_sn.model, spectral_norm=False),
                                      cpu_reductions="xla", total_steps=55_000)
    assert rebuild("long/w64/55000") == long_before


def test_the_closest_preset_trains_the_same_objective_before_it_shares_the_network(tmp_path, trials):
    # The conditional and WGAN-GP presets are at width 32, the default at 48: a non-saturating,
    # unconditional width-32 run is the default at width 32, not either of them with its objective undone.
    run = _fake_run(tmp_path, trials, "default", {"model.g_width": 32, "model.d_width": 32, "total_steps": 24_000}, {})
    row = trials.record("w32", run)
    assert row["preset"] == "default"
    assert row["overrides"] == ["model.d_width=32", "model.g_width=32", "total_steps=24000"]
