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
Both: scenes resized 64 -> 32 px (a 2-core CPU budget: 64 tokens of 4x4 patches instead
of 256, about 10x cheaper per step), flips, AdamW, DETR's set loss (matching costs and
loss weights class 1, L1 5, GIoU 2; no-object weight 0.1; auxiliary losses), 10 queries,
2 decoder layers. COCO AP / AP50 / AP75 (pycocotools) on the 2,000 test scenes, boxes in
the 64 px canvas's pixels. Results: <workdir>/summary.json, a Markdown table on stdout,
and <workdir>/<stage>/plots/detections.png (image | ground truth | prediction).

Measured (2-core AMD EPYC CPU VM shared with 5-6 other jobs, load average 9-18; 600 steps
of 32 scenes, about 4-6 minutes each; AP over the first 500 test scenes; classifier: the
main job's recipe stopped at 3,000 steps, 87.6% Fashion-MNIST test accuracy):
    head    init                   AP     AP50   AP75   train img/s (shared)
    center  main job's classifier  0.142  0.326  0.104   80
    center  scratch                0.140  0.319  0.104   65
    detr    main job's classifier  0.012  0.041  0.004  128
    detr    scratch                0.008  0.033  0.002  164
Far below the issue's AP50 >= 0.85 at this budget; the pretrained backbone is ahead, but
only just (see the README for what would close the gap). The default config (1200 steps
per stage, lr 2e-3, all 2,000 test scenes; estimated 20-25 minutes for both stages at the
throughput above) has NOT been measured yet: the shared CPU lock was busy until the deadline.
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
        detr=det.DetrConfig(num_queries=10, decoder_layers=2, num_heads=4),
        data=det.DetectionDataConfig(dataset="fashion_scenes/canvas64", image_size=32, augment="flip"),
        optim=cls.OptimConfig(name="adamw", learning_rate=2e-3, warmup_steps=100, weight_decay=1e-4,
                              grad_clip_norm=0.1, schedule="cosine"),
        global_batch_size=32, total_steps=1200, log_every=50, eval_every=0, checkpoint_every=400,
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
        t0 = time.perf_counter()
        cfg = getattr(config, stage)
        if stage == "pretrained":
            cfg = dataclasses.replace(cfg, init=config.init)
        results = det.run(cfg, root / stage)
        summary[stage] = {"init": cfg.init, "steps": results.get("steps"),
                          "wall_seconds": round(time.perf_counter() - t0, 1),
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
