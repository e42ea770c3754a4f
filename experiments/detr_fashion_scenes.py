"""DETR-style detection on `fashion_scenes` (SYNTHETIC scenes of 1-5 Fashion-MNIST items):
the main job's classifier as the backbone versus the same ViT from scratch.

    .venv/bin/python experiments/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist   # the main job
    .venv/bin/python experiments/detr_fashion_scenes.py --workdir runs/detr_scenes \\
        --config.init=runs/vit_fashion_mnist

Stages (each its own resumable run folder under --workdir; --stages=pretrained,scratch):
  pretrained  the backbone is the classifier run given by `init` (its architecture and
              newest weights; position embeddings resampled from 7x7 to the new grid,
              classification head dropped); decoder and heads start fresh.
  scratch     the same architecture, every weight fresh.
Both: the dense centre head (CenterNet-style heatmaps and side distances on the 8x8 token
grid, `center_upsample="none"`); DETR's set prediction with --config.pretrained.head=detr
--config.scratch.head=detr. Scenes from `fashion_scenes/canvas64_large` (60,000 train
scenes composed from Fashion-MNIST's train items; the same 2,000 test scenes as canvas64;
prepared once, about 2 minutes) resized 64 -> 32 px (a 2-core CPU budget: 64 tokens of 4x4
patches instead of 256), flips, AdamW lr 2e-3 cosine, batch 32, 9,000 steps, COCO AP /
AP50 / AP75 (pycocotools) on all 2,000 test scenes every 3,000 steps, boxes in the 64 px
canvas's pixels. Results: <workdir>/summary.json, a Markdown table on stdout, and
<workdir>/<stage>/plots/detections.png (image | ground truth | prediction).

Measured alone on the 2-core AMD EPYC VM (classifier: the main job, 91.21%):
    init                   AP     AP50   AP75   training + evaluations
    main job's classifier  0.368  0.601  0.391  850 s (about 14 min)
    scratch                0.354  0.587  0.374  869 s
The issue's AP50 >= 0.85 is NOT reached; see docs/dense_tasks.md for the head comparison,
the train/test gap that the larger scene set narrowed, the per-class APs and what limits
them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxvision import cli  # noqa: E402
from jaxvision.tasks import classification as cls  # noqa: E402
from jaxvision.tasks import detection as det  # noqa: E402

STAGES = ("pretrained", "scratch")


@dataclasses.dataclass(frozen=True)
class DetrDemoConfig:
    pretrained: det.DetectionConfig
    scratch: det.DetectionConfig
    init: str = "runs/vit_fashion_mnist"  # the main job's classifier run
    plot_images: int = 6


def get_config(preset: str = "default") -> DetrDemoConfig:
    # The main job's ViT (experiments/vit_fashion_mnist.py) without patch dropout: the
    # scratch stage uses it as is; the pretrained stage reads it from the init run.
    backbone = cls.ModelConfig(variant="Ti/4", width=64, depth=4, mlp_dim=128, num_heads=4, pool="gap",
                               stem="spt", locality_attention=True)
    # The dense centre-heatmap head, not DETR's set prediction: at this budget it clearly
    # wins (600 steps from the same pretrained backbone, 500 test scenes: AP50 0.326 vs
    # 0.041; see the README). DETR: --config.pretrained.head=detr --config.scratch.head=detr.
    base = det.DetectionConfig(
        backbone=backbone,
        head="center",
        center_upsample="none",
        detr=det.DetrConfig(num_queries=10, decoder_layers=2, num_heads=4),
        data=det.DetectionDataConfig(dataset="fashion_scenes/canvas64_large", image_size=32, augment="flip"),
        optim=cls.OptimConfig(name="adamw", learning_rate=2e-3, warmup_steps=100, weight_decay=1e-4,
                              grad_clip_norm=0.1, schedule="cosine"),
        global_batch_size=32, total_steps=9000, log_every=100, eval_every=3000, checkpoint_every=1000,
        progress=False,
    )
    return DetrDemoConfig(pretrained=base, scratch=base)


def main(argv=None):
    stages, rest = cli.parse_stages(argv, STAGES)
    config, args = cli.parse(rest, get_config, description=__doc__)
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"
    for stage in stages:
        cfg = getattr(config, stage)
        if stage == "pretrained":
            cfg = dataclasses.replace(cfg, init=config.init)
        results = det.run(cfg, root / stage)
        summary[stage] = {"init": cfg.init, "steps": results.get("steps"),
                          # the loop's time over every process of the run: a rerun of a
                          # finished stage keeps it (its own few seconds are not the run's)
                          "wall_seconds": round(results["wall_seconds_total"], 1),
                          **{k: results.get(f"test_{k}") for k in ("AP", "AP50", "AP75")}}
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"{stage}: {summary[stage]}", flush=True)
        _plot(cfg, root / stage, config.plot_images)
    print(table(summary))
    return summary


def _plot(cfg, workdir: Path, n: int) -> None:
    """image | ground truth | prediction (boxes, class names, scores) for the first `n` test scenes."""
    if n > 0:
        det.plot_predictions(cfg, workdir, n, score_threshold=0.3)


def table(summary: dict) -> str:
    rows = ["| backbone init | AP | AP50 | AP75 | steps | wall |", "|---|---|---|---|---|---|"]
    for stage, label in (("pretrained", "main job's classifier"), ("scratch", "from scratch")):
        if stage in summary:
            s = summary[stage]
            rows.append(f"| {label} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | {s['steps']} | "
                        f"{s['wall_seconds']:.0f} s |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
