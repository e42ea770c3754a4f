"""DCGAN recipe trials on Fashion-MNIST: each trial is the experiment command itself
(experiments/dcgan_fashion_mnist.py, a preset plus --config overrides), run on the CPU it
is judged on, and recorded as one JSON line: what differs from the preset, training time,
FD-ViT, precision/recall, density/coverage, class shares and, where measured, FID.

    # run the trials of a list (one after another; a finished trial is kept, not rerun)
    python experiments/sweeps/dcgan_trials.py --trials trials.json --out runs/dcgan_sweep \
        --record experiments/sweeps/results/dcgan_trials.jsonl
    # record run folders that exist already (e.g. runs of the experiment command)
    python experiments/sweeps/dcgan_trials.py --collect NAME=RUN_DIR ... --record FILE.jsonl
    # the table of a record
    python experiments/sweeps/dcgan_trials.py --table experiments/sweeps/results/dcgan_trials.jsonl

trials.json: [{"name": "...", "preset": "default", "overrides": ["total_steps=3000", ...]}].
FID of a run folder measured afterwards (`python -m jaxvision.fid_cli checkpoint:RUN ...
--json F`) is attached with NAME=RUN_DIR:FID_JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dcgan_fashion_mnist  # noqa: E402

from jaxvision import config as config_lib  # noqa: E402
from jaxvision.tasks import gan  # noqa: E402
from jaxvision.train.workdir import host_cpu, read_results  # noqa: E402

METRICS = ("steps", "wall_seconds", "train_images_per_second", "fd_vit_ema_samples", "fd_vit_real_test_floor",
           "vit_precision", "vit_recall", "vit_density", "vit_coverage", "vit_class_share_min",
           "vit_class_share_max", "vit_conditional_accuracy", "fid_fid", "fid_seconds")
# Fields that change what is logged or kept, not what is trained; the feature space
# (fd.classifier_workdir) is recorded beside the overrides instead.
BOOKKEEPING = ("model.image_size", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
               "num_samples_grid")
OBJECTIVE = ("model.conditional", "optim.loss")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(run_config: dict) -> tuple[str, list[str]]:
    """(the closest preset, overrides that turn it into a run's config.json `run_config`).

    Closest: the same objective (conditioning, loss), then the fewest model fields changed,
    then the fewest overrides; what a run trains for says more about it than its network,
    and its network more than its optimizer (an unconditional run at the conditional
    preset's learning rates is the default preset's model, not "conditional=False"; a
    non-saturating run at the WGAN-GP preset's width is the default's at another width).
    A field the run's config.json lacks (added later) counts at GANConfig's default, what
    the run trained with."""
    run_cfg = {**_flat(config_lib.to_dict(gan.GANConfig())), **_flat(run_config)}
    best = None
    for preset in dcgan_fashion_mnist.PRESETS:
        keys = _changed(preset, run_cfg)
        rank = (sum(k in OBJECTIVE for k in keys), sum(k.startswith("model.") for k in keys), len(keys))
        if best is None or rank < best[0]:
            best = (rank, preset, keys)
    return best[1], [f"{k}={run_cfg[k]}" for k in best[2]]


def _changed(preset: str, run_cfg: dict) -> list[str]:
    """The recipe fields of the flat run config `run_cfg` that differ from `preset`, sorted."""
    base = _flat(config_lib.to_dict(dcgan_fashion_mnist.get_config(preset)))
    return [k for k in sorted(run_cfg) if k in base and base[k] != run_cfg[k]
            and k not in BOOKKEEPING and not k.startswith("fd.")]


def record(name: str, run_dir, fid_json=None) -> dict:
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if results is None:
        raise SystemExit(f"{run_dir} has no results.json: the run has not finished (rerun its command to finish it)")
    run_config = json.loads((run_dir / "config.json").read_text())
    preset, overrides = config_diff(run_config)
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    fd_space = run_config.get("fd", {}).get("classifier_workdir")
    row = {"name": name, "run": str(run_dir), "preset": preset, "overrides": overrides, "fd_vit_space": fd_space,
           "cpu": run_info.get("host_cpu") or f"{host_cpu()} (where recorded; run.json names none)"}
    row.update({k: results[k] for k in METRICS if k in results})
    row["train_seconds"] = train_seconds(results, run_config)
    if "fid_fid" in row:  # FID's bias falls with the sample count: 2,000 reads far above 10,000
        row["fid_samples"] = run_config["fd"]["fid_samples"]
    if fid_json:
        fid = json.loads(Path(fid_json).read_text())
        row["fid_fid"] = fid.get("fid", fid.get("fid_fid"))
        counts = fid.get("num_images")  # fid_cli: [images of set A, of set B]; A is the run's samples
        row["fid_samples"] = counts[0] if isinstance(counts, list) else counts
        row["fid_note"] = f"measured afterwards: {fid_json}"
    return row


def train_seconds(results: dict, run_config: dict) -> float | None:
    """Seconds of training steps alone. wall_seconds also counts compilation, sampling,
    checkpoints and the end-of-run evaluation (FID's 10k Inception passes take longer than
    training); the loop's img/s leaves those out and times every step but the first, so
    (steps - 1) * images per step / img/s is the time of those steps; a step reads n_critic
    D batches (gan.run's read_batch, what the loop counts). None for a resumed run, whose
    img/s covers only its last process."""
    ips, steps = results.get("train_images_per_second"), results.get("steps")
    if not ips or not steps or results.get("resumed_from_step"):
        return None
    images_per_step = run_config["global_batch_size"] * run_config["optim"]["n_critic"]
    return (steps - 1) * images_per_step / ips


def append(path, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    kept = [r for r in kept if r["name"] != row["name"]]  # a trial recorded again replaces its line
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in [*kept, row]))
    os.replace(tmp, path)  # a kill never leaves half a record


def _of(row: dict) -> str:
    """' (of 2,000)' where FID was not measured on the protocol's 10,000 samples."""
    n = row.get("fid_samples")
    return f" (of {n:,})" if row.get("fid_fid") is not None and n and n != 10_000 else ""


def table(path) -> str:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    fmt = lambda r, k, f: format(r[k], f) if r.get(k) is not None else "-"  # noqa: E731
    lines = ["| trial | preset + overrides | train s | FD-ViT | precision | recall | coverage | class min/max "
             "| cond. acc. | FID | CPU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.get("fd_vit_ema_samples", 1e9)):
        shares = (f"{100 * r['vit_class_share_min']:.1f}/{100 * r['vit_class_share_max']:.1f}%"
                  if "vit_class_share_min" in r else "-")
        lines.append(f"| {r['name']} | {r['preset']} {' '.join(r['overrides'])} | {fmt(r, 'train_seconds', '.0f')} "
                     f"| {fmt(r, 'fd_vit_ema_samples', '.2f')} | {fmt(r, 'vit_precision', '.3f')} "
                     f"| {fmt(r, 'vit_recall', '.3f')} | {fmt(r, 'vit_coverage', '.3f')} | {shares} "
                     f"| {fmt(r, 'vit_conditional_accuracy', '.3f')} | {fmt(r, 'fid_fid', '.2f')}{_of(r)} "
                     f"| {r.get('cpu', '-').split(' (')[0]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", help="JSON list of {name, preset, overrides}")
    p.add_argument("--out", help="folder of the trials' run folders")
    p.add_argument("--collect", nargs="*", default=[], metavar="NAME=RUN_DIR[:FID_JSON]")
    p.add_argument("--record", help="JSONL file the trials are recorded in")
    p.add_argument("--table", help="print the Markdown table of a record")
    args = p.parse_args(argv)
    if (args.trials or args.collect) and not args.record:
        p.error("--trials and --collect need --record FILE.jsonl")
    if args.trials and not args.out:
        p.error("--trials needs --out (the folder of the trials' run folders)")
    for item in args.collect:
        name, sep, rest = item.partition("=")
        if not sep:
            p.error(f"--collect takes NAME=RUN_DIR[:FID_JSON], got {item!r}")
        run_dir, _, fid_json = rest.partition(":")
        append(args.record, record(name, run_dir, fid_json or None))
    if args.trials:
        for trial in json.loads(Path(args.trials).read_text()):
            run_dir = Path(args.out) / trial["name"].replace("/", "_")
            cmd = ["--workdir", str(run_dir), "--preset", trial.get("preset", "default")]
            dcgan_fashion_mnist.main(cmd + [f"--config.{o}" for o in trial.get("overrides", [])])
            append(args.record, record(trial["name"], run_dir))
    if args.table or args.record:
        print(table(args.table or args.record))


if __name__ == "__main__":
    main()
