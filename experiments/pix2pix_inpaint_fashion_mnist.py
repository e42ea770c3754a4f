"""Inpainting on Fashion-MNIST: a classical fill, a U-Net trained on L1 alone, and pix2pix.

Command (after the README's set-up; FD-ViT needs a Fashion-MNIST classifier run, by default
the main job's runs/vit_fashion_mnist, trained first if that folder holds none):
    .venv/bin/python experiments/pix2pix_inpaint_fashion_mnist.py --workdir runs/pix2pix_inpaint
    .venv/bin/python experiments/pix2pix_inpaint_fashion_mnist.py --workdir runs/p2p --config.total_steps=200

It trains the same U-Net twice on the same data, holes and seed, once on L1 alone
(workdir/l1) and once as pix2pix (workdir/pix2pix: + the conditional PatchGAN loss), then
scores both and the harmonic fill (jaxvision.inpainting) on the test split, every image
with its own deterministic hole (mask kind "mixed": centre box, random boxes or strokes):
L1 and PSNR over the hole, SSIM over the image, and the Fréchet distance of the
completed test images to the real test images in our ViT classifier's feature space
(FD-ViT; the real train images' FD to the same reference is the floor). FID of completed
images (pytorch-fid protocol, `fid_samples` images, 1000 by default because FID-Inception
runs at about 1 s an image on this CPU) is added when the FID-Inception weights are
installed; without them the column says so. The table goes to workdir/comparison.md and
comparison.json. Both trainings resume where they stopped; a finished one is kept.

Measured with these defaults (2-core AMD EPYC CPU VM shared with ~6 other jobs; run under
the shared CPU lock, 2026-12-02, FD-ViT classifier: a 3000-step ViT of experiments/
vit_fashion_mnist.py, test accuracy 87.6%): the whole command took about 8 minutes (each
training 1000 steps of 32 images, 260-330 img/s, about 2-4 minutes; scoring about 10 s a
method). First 5000 test images, "mixed" holes, mask seed 0:

    | method                     | L1 hole | PSNR hole (dB) | SSIM   | FD-ViT |
    |----------------------------|---------|----------------|--------|--------|
    | harmonic fill (NumPy)      | 0.1687  | 14.52          | 0.6874 | 1.881  |
    | U-Net, L1 only             | 0.1103  | 16.26          | 0.7619 | 0.684  |
    | pix2pix (U-Net + PatchGAN) | 0.1111  | 16.20          | 0.7569 | 0.721  |

    FD-ViT floor (5000 real train images against the same test reference): 0.071.
    FID (the command rerun on the finished folder with --config.fid_samples=2000, 2-core
    Intel Xeon, about 8.5 min a method): harmonic 48.56, L1 only 24.10, pix2pix 30.84.

Both learned models beat the classical fill clearly (+1.7 dB, half the FD-ViT). pix2pix
stays within 0.06 dB PSNR of the L1-only U-Net, but at this budget it does NOT win on
FD-ViT (0.721 vs 0.684) nor on FID (30.84 vs 24.10): the issue's target (the GAN wins on
FID within 1 dB) is not met by this run. Scored with the generators' EMA weights instead (a separate check, same
protocol) the order flips (pix2pix 0.773 vs L1 0.796, PSNR 16.24 vs 16.39): at half an
epoch the gap is within what the choice of weights moves, so no winner can be claimed.
D wins early (D(real) 0.93, D(fake) 0.06 at step 1000); longer training, within the
30-minute budget (this run used 8 minutes), is the next thing to measure.

With --config.total_steps=3000 (2026-12-03, 2-core AMD EPYC with another run sharing the
CPU, 8-11 min per training; FD-ViT classifier: the main job's full run, 91.21%, so FD-ViT
differs in scale from the table above; FID of 2,000 images): L1 only PSNR 17.41 dB, FD-ViT
0.330, FID 21.83; pix2pix 17.34 dB, FD-ViT 0.316, FID 22.27. pix2pix wins on FD-ViT and
loses on FID, also with a 34 px D (--config.model.d_layers=2: 0.289, 22.52), with EMA
weights, and with a resize-conv decoder (--config.model.upsample=resize_conv): not met.
A second seed (--config.seed=1): L1 only 21.75, pix2pix 25.20. --config.weights=ema scores
both U-Nets' moving averages with BatchNorm statistics recomputed for them, better for both
(seed 0: L1 only 17.46 dB / FID 21.40, pix2pix 17.38 dB / 22.09; seed 1: 21.53, 24.39), the
GAN still behind. docs/image_to_image.md has the tables.

--preset long (3,000 steps, L1 weight 300, i.e. a third of the adversarial term; FID of 2,000;
2026-12-03, 2-core AMD EPYC with another run sharing the CPU; 9 min per training, 6-11 min
of scoring per method, 45-55 min in all):
    harmonic fill 14.52 dB, FD-ViT 1.483, FID 48.56; L1 only 17.39 dB, 0.326, 21.97;
    pix2pix 17.39 dB (-0.01), 0.301, 21.72.
pix2pix ahead on FID and FD-ViT within 0.01 dB of PSNR: the issue's target is met, narrowly.
Seed 1 (same task code): pix2pix 21.46 vs 21.75 for the L1-only U-Net; with EMA weights
pix2pix is ahead for seed 1 (21.24 vs 21.53) and behind for seed 0 (21.58 vs 21.40).

Override any field: --config.total_steps=500 --config.model.g_width=16
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxvision import cli  # noqa: E402
from jaxvision.inpainting import harmonic_fill_batch  # noqa: E402
from jaxvision.metrics.image_quality import inpainting_metrics  # noqa: E402
from jaxvision.tasks import pix2pix  # noqa: E402

import vit_fashion_mnist  # noqa: E402  (the FD-ViT classifier's recipe)

PRESETS = ("compare", "long")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(pix2pix.Pix2PixConfig):
    fd_classifier_workdir: str = "runs/vit_fashion_mnist"
    fd_classifier_steps: int = 1000  # when the classifier must be trained first
    fd_num_images: int = 5000  # the first test images: all metrics and FD-ViT are over these
    fid_samples: int = 1000  # FID is slow on CPU: a documented smaller count
    # Which weights of the two U-Nets are scored: "generator" (their own) or "ema" (their
    # moving average, BatchNorm statistics recomputed for it: pix2pix.load_completer).
    weights: str = "generator"


def get_config(preset: str = "compare") -> ExperimentConfig:
    cfg = ExperimentConfig(
        # Width 16 (a quarter of the paper's 64), batch 32, 1000 steps (about half an epoch):
        # sized so both trainings and the scoring fit 30 minutes of the shared 2-core CPU
        # (width 32 ran at 17 img/s there under load, too slow for the budget).
        model=pix2pix.Pix2PixModelConfig(g_width=16, d_width=16, dropout=0.5, norm="batch"),
        data=pix2pix.InpaintDataConfig(dataset="fashion_mnist", mask_kind="mixed", mask_seed=0),
        optim=pix2pix.GANOptimConfig(loss="non_saturating", g_learning_rate=2e-4, d_learning_rate=2e-4, b1=0.5),
        l1_weight=100.0,
        d_loss_weight=0.5,
        global_batch_size=32,
        total_steps=1000,
        eval_every=1000,
        checkpoint_every=250,
        log_every=50,
    )
    if preset == "long":
        # 3,000 steps (1.6 epochs) and a weaker adversarial term: at L1 weight 100 the GAN
        # lost FID to its L1-only twin on both seeds measured (by 0.4 and 3.5), at 300 it is
        # ahead on both (the docstring's table). FID from 2,000 images: less biased than 1,000.
        cfg = dataclasses.replace(cfg, total_steps=3000, eval_every=3000, l1_weight=300.0, fid_samples=2000)
    return cfg


def _task_config(cfg: ExperimentConfig, adversarial: bool) -> pix2pix.Pix2PixConfig:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(pix2pix.Pix2PixConfig)}
    return pix2pix.Pix2PixConfig(**{**fields, "adversarial": adversarial})


def _fd_evaluator(cfg: ExperimentConfig, reference_images: np.ndarray):
    from jaxvision import data
    from jaxvision.metrics import evaluators
    from jaxvision.tasks import classification

    classifier = Path(cfg.fd_classifier_workdir)
    classification.ensure_classifier(classifier, vit_fashion_mnist.get_config(), cfg.fd_classifier_steps,
                                     purpose="FD-ViT")
    floor = data.eval_batches(cfg.data.dataset, cfg.data.train_split, global_batch_size=500,
                              data_dir=cfg.data.data_dir)
    n = len(reference_images)
    return evaluators.make_evaluator(
        "fd", features=classification.feature_fn_from_run(classifier), num_images=n,
        reference=[reference_images[i:i + 500] for i in range(0, n, 500)], floor=floor, batch_size=500,
        sample_key="fd_vit", floor_key="fd_vit_floor_train_images")


def _fid_evaluator(cfg: ExperimentConfig):
    from jaxvision.metrics import evaluators

    if not cfg.fid_samples:
        return None
    return evaluators.fid_evaluator_or_none(reference=f"tfds:{cfg.data.dataset}:{cfg.data.eval_split}",
                                            num_images=cfg.fid_samples, data_dir=cfg.data.data_dir,
                                            purpose="pix2pix inpainting: FID", metrics=("fid",))


def _source(images: np.ndarray):
    return lambda num_images, batch_size: (images[i:i + batch_size] for i in range(0, num_images, batch_size))


def score(name: str, complete, cfg: ExperimentConfig, fd, fid) -> dict:
    """Metrics of `complete(batch) -> completed images` on the first fd_num_images test images."""
    t0 = time.perf_counter()
    metrics_fn = jax.jit(inpainting_metrics)
    sums, done = {}, []
    for batch in pix2pix.eval_batches(cfg.data, cfg.fd_num_images):
        out = np.asarray(complete(batch), np.float32)
        for k, v in metrics_fn(out, batch["target"], batch["hole"]).items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v)[np.asarray(batch["mask"])]))
        done.append(out[np.asarray(batch["mask"])])
    done = np.concatenate(done)
    row = {k: v / len(done) for k, v in sums.items()}
    row.update(fd(_source(done)))
    if fid is not None:
        row.update(fid(_source(done)))
    row["images"], row["eval_seconds"] = len(done), time.perf_counter() - t0
    print(name, row, flush=True)
    return row


def table(rows: dict, fid_note: str) -> str:
    lines = ["| method | L1 hole (0-1) | PSNR hole (dB) | SSIM | FD-ViT | FID |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        fid = f"{r['fid']:.2f}" if "fid" in r else fid_note
        lines.append(f"| {name} | {r['hole_l1']:.4f} | {r['hole_psnr']:.2f} | {r['ssim']:.4f} | {r['fd_vit']:.3f} "
                     f"| {fid} |")
    return "\n".join(lines)


def main(argv=None):
    cfg, args = cli.parse(argv, get_config, PRESETS, description=__doc__)
    if cfg.weights not in pix2pix.WEIGHTS:  # before hours of training, not after
        raise SystemExit(f"error: --config.weights={cfg.weights!r}: choose one of {pix2pix.WEIGHTS}.")
    workdir = Path(args.workdir)
    trained = {}
    for name, adversarial in (("l1", False), ("pix2pix", True)):
        results = pix2pix.run(_task_config(cfg, adversarial), workdir / name)
        trained[name] = {k: results.get(k) for k in ("steps", "wall_seconds_total", "train_images_per_second")}

    targets = np.concatenate([b["target"][b["mask"]] for b in pix2pix.eval_batches(cfg.data, cfg.fd_num_images)])
    fd, fid = _fd_evaluator(cfg, targets), _fid_evaluator(cfg)
    fid_note = ("not measured (fid_samples=0)" if not cfg.fid_samples else
                f"FID of {cfg.fid_samples}" if fid else "n/a: no FID-Inception weights")
    methods = {
        "harmonic fill (NumPy)": lambda b: harmonic_fill_batch(b["masked"], b["hole"]),
        "U-Net, L1 only": pix2pix.load_completer(workdir / "l1", weights=cfg.weights)[0],
        "pix2pix (U-Net + PatchGAN)": pix2pix.load_completer(workdir / "pix2pix", weights=cfg.weights)[0],
    }
    rows = {name: score(name, fn, cfg, fd, fid) for name, fn in methods.items()}
    text = table(rows, fid_note)
    gan, l1 = rows["pix2pix (U-Net + PatchGAN)"], rows["U-Net, L1 only"]
    verdict = (f"pix2pix vs L1 only ({cfg.weights} weights): FD-ViT {gan['fd_vit']:.3f} vs {l1['fd_vit']:.3f}, "
               f"PSNR {gan['hole_psnr'] - l1['hole_psnr']:+.2f} dB"
               + (f", FID {gan['fid']:.2f} vs {l1['fid']:.2f}" if "fid" in gan else ""))
    print(text, "\n" + verdict)
    # Each choice of weights has its own files: scoring the EMA never overwrites the other.
    stem = "comparison" if cfg.weights == "generator" else f"comparison_{cfg.weights}"
    (workdir / f"{stem}.md").write_text(text + "\n\n" + verdict + "\n")
    (workdir / f"{stem}.json").write_text(json.dumps({"methods": rows, "training": trained, "weights": cfg.weights,
                                                      "fd_floor": gan.get("fd_vit_floor_train_images")}, indent=2))
    return rows


if __name__ == "__main__":
    main()
