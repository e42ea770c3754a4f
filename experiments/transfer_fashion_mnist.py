"""Transfer learning, offline: pretrain on half of Fashion-MNIST's classes, transfer to
the other half with 1% of its labels.

    .venv/bin/python experiments/transfer_fashion_mnist.py --workdir runs/transfer
    .venv/bin/python experiments/transfer_fashion_mnist.py --workdir runs/transfer_random --preset random_split

Presets (the class split):
  default       pretrain on classes 0-4 (T-shirt/top, trouser, pullover, dress, coat),
                transfer to 5-9 (sandal, shirt, sneaker, bag, ankle boot).
  random_split  the split np.random.default_rng(0).permutation(10) gives: pretrain on
                pullover, dress, coat, shirt, sneaker; transfer to T-shirt/top, trouser,
                sandal, bag, ankle boot.

Stages (each its own run folder under --workdir, resumable, run one after the other):
  pretrain  a small ViT (width 64, depth 4, 4x4 patches, GAP) on the first half of the
            classes, all of their 30,000 training images, AdamW.
  finetune  from the pretrain checkpoint on the other half with 1% of its training labels
            (60 per class, 300 images, the same ones for every stage): the standard
            fine-tune recipe (SGD momentum 0.9, no weight decay, clip 1.0, warmup then
            cosine, new zero-initialised head), scaled to 300 images (batch 100, 300
            steps). Also measures the few-shot ridge probe (closed form on the frozen
            pretrained features) with 1, 5, 10 and 60 (= all of the 1%) labels per class.
  probe     a trained linear probe: the same, with only the head trainable.
  scratch   the same ViT from scratch on the same 300 labels (AdamW, the from-scratch
            recipe of vit_fashion_mnist.py, 300 steps).
Everything is evaluated on the 5,000 test images of the transfer classes.

--stages=finetune,probe runs a subset; any field can be overridden, e.g.
--config.pretrain.total_steps=1500 or --config.scratch.optim.learning_rate=3e-3.
Results: <workdir>/summary.json and a Markdown table on stdout.
Measured (2-core CPU, shared): about 10 minutes for all four stages; see the README.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxvision import cli  # noqa: E402
from jaxvision.tasks import classification as cls  # noqa: E402
from jaxvision.tasks import finetune  # noqa: E402

LABEL_FRACTION = 0.01
STAGES = ("pretrain", "finetune", "probe", "scratch")
# preset -> (pretraining classes, transfer classes)
SPLITS = {
    # First half / second half: tops, trousers, dresses -> footwear, shirts, bags.
    "default": ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
    # np.random.default_rng(0).permutation(10): pullover, dress, coat, shirt, sneaker ->
    # T-shirt/top, trouser, sandal, bag, ankle boot.
    "random_split": ((2, 3, 4, 6, 7), (0, 1, 5, 8, 9)),
}


@dataclasses.dataclass(frozen=True)
class TransferDemoConfig:
    pretrain: cls.ClassificationConfig
    finetune: finetune.FinetuneConfig
    probe: finetune.FinetuneConfig
    scratch: cls.ClassificationConfig


def get_config(preset: str = "default") -> TransferDemoConfig:
    pretrain_classes, transfer_classes = SPLITS[preset]
    model = cls.ModelConfig(variant="Ti/4", width=64, depth=4, mlp_dim=128, num_heads=4, pool="gap")
    pretrain = cls.ClassificationConfig(
        model=model,
        data=cls.DataConfig(dataset="fashion_mnist", augment="flip", classes=pretrain_classes),
        optim=cls.OptimConfig(name="adamw", learning_rate=2e-3, warmup_steps=100, weight_decay=0.05,
                              grad_clip_norm=1.0, label_smoothing=0.1),
        global_batch_size=128, total_steps=800, log_every=50, eval_every=0, checkpoint_every=400,
        progress=False,
    )
    few_labels = cls.DataConfig(dataset="fashion_mnist", augment="flip", classes=transfer_classes,
                                label_fraction=LABEL_FRACTION)
    # The standard fine-tune recipe, scaled to 300 labelled images: batch 100 instead of
    # 512, 300 steps (100 epochs) with 30 warmup steps instead of 10k with 500.
    tuned = finetune.standard_recipe(
        "fashion_mnist", image_size=None, total_steps=300, learning_rate=0.01,
        data=few_labels, global_batch_size=100, eval_every=0, checkpoint_every=300, progress=False,
    )
    tuned = dataclasses.replace(
        tuned,
        optim=dataclasses.replace(tuned.optim, warmup_steps=30),
        transfer=dataclasses.replace(tuned.transfer, fewshot=(1, 5, 10, 60)),
    )
    probe = dataclasses.replace(
        tuned,
        optim=dataclasses.replace(tuned.optim, learning_rate=0.1),
        transfer=dataclasses.replace(tuned.transfer, freeze="linear_probe", fewshot=()),
    )
    scratch = dataclasses.replace(
        pretrain, data=few_labels, global_batch_size=100, total_steps=300, checkpoint_every=300,
        optim=dataclasses.replace(pretrain.optim, learning_rate=1e-3, warmup_steps=30),
    )
    return TransferDemoConfig(pretrain=pretrain, finetune=tuned, probe=probe, scratch=scratch)


def main(argv=None):
    stages, rest = cli.parse_stages(argv, STAGES)
    config, args = cli.parse(rest, get_config, tuple(SPLITS), description=__doc__)
    root = Path(args.workdir)
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"
    summary["split"] = {"preset": args.preset, "pretrain_classes": list(config.pretrain.data.classes),
                        "transfer_classes": list(config.finetune.data.classes)}
    init = str(root / "pretrain")
    for stage in STAGES:
        if stage not in stages:
            continue
        t0 = time.perf_counter()
        cfg = getattr(config, stage)
        if stage in ("finetune", "probe"):
            cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, init=init))
            results = finetune.run(cfg, root / stage)
        else:
            results = cls.run(cfg, root / stage)
        summary[stage] = {
            "test_accuracy": results.get("test_accuracy"),
            "steps": results.get("steps"),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            **{k: v for k, v in results.items() if k.startswith("fewshot_")},
        }
        root.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"{stage}: {summary[stage]}", flush=True)
    print(table(summary))
    return summary


def table(summary: dict) -> str:
    split = summary.get("split", {})
    target = "transfer classes" + (f" {tuple(split['transfer_classes'])}" if split else "")
    rows = [f"| run | labels of the {target} | test accuracy ({target}) | steps | wall |",
            "|---|---|---|---|---|"]
    if "pretrain" in summary:
        p = summary["pretrain"]
        rows.append(f"| pretrain (the other 5 classes, all 30,000 labels; their own test set) | - | "
                    f"{p['test_accuracy']:.4f} | {p['steps']} | {p['wall_seconds']:.0f} s |")
    for stage, label in (("scratch", "from scratch"), ("probe", "linear probe (trained head, frozen backbone)"),
                         ("finetune", "fine-tune (all layers)")):
        if stage in summary:
            s = summary[stage]
            rows.append(f"| {label} | 300 (1%) | {s['test_accuracy']:.4f} | {s['steps']} | {s['wall_seconds']:.0f} s |")
    if "finetune" in summary:
        for k in (1, 5, 10, 60):
            key = f"fewshot_{k}shot_accuracy"
            if key in summary["finetune"]:
                rows.append(f"| few-shot ridge probe on frozen pretrained features | {5 * k} ({k}/class) | "
                            f"{summary['finetune'][key]:.4f} | closed form | - |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
