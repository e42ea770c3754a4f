"""Sample quality side by side: one of our finished DCGAN runs against a plain PyTorch
DCGAN trained for the same wall time on the same CPU, both scored with our evaluators.

    PYTHONPATH=. python benchmarks/gan_quality.py --ours /work/runs/lead/dcgan_subpixel_9k \
        --torch-python /work/torchenv/bin/python --out runs/bench/gan_quality.json

The peer is benchmarks/gan.py's PyTorch DCGAN ("fmnist" preset: widths 64, transposed
4x4/2 convolutions, BatchNorm in G, no normalisation in D), trained with that file's own
iteration (one D + one G step, non-saturating loss, Adam 2e-4 / (0.5, 0.999), batch 64,
the EMA of G's weights) on Fashion-MNIST train, read through our pipeline and shuffled
every epoch, eager mode, 2 torch threads, until the run's `wall_seconds` (results.json;
that figure also holds ours' compilation, sampling hooks and final evaluation, so the
peer's budget is the larger). It runs in a child process of `--torch-python` (PyTorch
need not be installed next to JAX) and hands back uint8 samples in an .npz, drawn from
its EMA weights with BatchNorm statistics recomputed for them (as our runs'
`ema_batch_stats="recompute"`), and from its raw G in eval mode (the usual way).

Scored here, in the feature spaces the run used: FD-ViT, precision/recall (k=3),
density/coverage (k=5) and the class histogram on the run's classifier
(`tasks.gan.vit_space_evaluator`), and FID against the training split
(`tasks.gan.fid_of_samples`, pytorch-fid protocol) when FID-Inception weights are found.
Ours' figures come from the run's results.json (or, --rescore-ours, its checkpoint
sampled again), ours' FID from results.json or --ours-fid-json (a `fid_cli --json`
output). `--peer-from EARLIER.json` scores another run of ours against an earlier
side-by-side's peer (its samples scored again, its FID taken over) when the peer's budget
still covers ours. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.gan import PRESETS  # noqa: E402

# benchmarks/gan.py's "fmnist" preset with the paper's transposed convolutions: its DCGAN at 28 px.
PEER_CFG = {**PRESETS["fmnist"], "upsample": "transpose"}
# (results.json key, label, higher is better)
METRICS = (("fid", "FID", False), ("fd_vit", "FD-ViT", False), ("precision", "precision", True),
           ("recall", "recall", True), ("density", "density", True), ("coverage", "coverage", True),
           ("class_share_min", "smallest class", True), ("class_entropy", "class entropy", True))


# --- child: the PyTorch side (runs under --torch-python; imports no JAX) ----------------------

def peer_worker(spec: dict) -> None:
    import copy

    import numpy as np
    import torch
    from torch import nn

    from benchmarks.gan import _TorchGAN

    threads, seconds, b = spec["threads"], spec["seconds"], PEER_CFG["batch_size"]
    torch.set_num_threads(threads)
    images = np.load(spec["data"])["image"]  # uint8 [N, 28, 28, 1]
    real = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
    t0 = time.perf_counter()  # the budget covers building the networks, as ours' covers its init
    bench = _TorchGAN(PEER_CFG, compile=False, threads=threads, device="cpu")
    torch.manual_seed(spec["seed"])
    order = torch.Generator().manual_seed(spec["seed"])
    steps, epochs, last_log, g_loss, loads = 0, 0, t0, float("nan"), []
    while time.perf_counter() - t0 < seconds:
        perm = torch.randperm(len(real), generator=order)
        for i in range(0, len(real) - b + 1, b):  # drop the last partial batch, as ours does
            bench.real = real[perm[i:i + b]]  # gan.py's iteration trains on `self.real`
            loss = bench._iteration()
            steps += 1
            now = time.perf_counter()
            if now - last_log >= 30:
                g_loss, last_log = loss.item(), now
                loads.append(os.getloadavg()[0])  # other jobs on the CPU slow a 2-thread torch a lot
                print(f"peer: step {steps}, {steps / (now - t0):.1f} it/s, g_loss {g_loss:.3f}, "
                      f"load {loads[-1]:.2f}", file=sys.stderr)
            if now - t0 >= seconds:
                break
        epochs += 1
    train_seconds = time.perf_counter() - t0

    def draw(g, n, seed):
        gen, out = torch.Generator().manual_seed(seed), []
        with torch.no_grad():
            for i in range(0, n, 500):
                x = g(torch.randn(min(500, n - i), PEER_CFG["latent_dim"], generator=gen))
                out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(out)

    # EMA weights with BatchNorm statistics of their own: momentum 1 keeps one calibration
    # batch's statistics (1024 noise vectors, like our ema_stats_samples).
    ema_g = copy.deepcopy(bench.g)
    with torch.no_grad():
        for p, e in zip(ema_g.parameters(), bench.ema):
            p.copy_(e)
        for m in ema_g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0
        ema_g.train()(torch.randn(1024, PEER_CFG["latent_dim"], generator=torch.Generator().manual_seed(0x57A7)))
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "steps": steps,
            "epochs_started": epochs, "train_seconds": train_seconds, "iterations_per_second": steps / train_seconds,
            "last_logged_g_loss": g_loss, "max_load_average_1min": max(loads, default=None), "network": "benchmarks/gan.py _torch_networks", **PEER_CFG}
    n = spec["num_samples"]
    np.savez_compressed(spec["out"], ema=draw(ema_g.eval(), n, spec["seed"] + 1),
                        raw=draw(bench.g.eval(), n, spec["seed"] + 1), info=json.dumps(info))


# --- parent: data out, samples in, scoring -------------------------------------------------

def torch_version(python: str) -> str:
    r = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"PyTorch is not importable by {python} (the peer needs it): pass --torch-python "
                         "with the python of an environment that has torch (e.g. /work/torchenv/bin/python), "
                         f"or `pip install torch` there. ({(r.stderr.strip().splitlines() or ['?'])[-1]})")
    return r.stdout.strip()


def train_peer(args, cfg, seconds: float, samples_path: Path) -> None:
    """Fashion-MNIST train through our pipeline -> uint8 .npz -> the PyTorch child."""
    import numpy as np

    from jaxvision import data

    batches = data.eval_batches(cfg.data.dataset, cfg.data.train_split, global_batch_size=1000,
                                data_dir=cfg.data.data_dir, value_range=(0.0, 255.0))
    images = np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"])] for b in batches])
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "train.npz", image=np.round(images).astype(np.uint8))
        spec = dict(data=str(Path(tmp) / "train.npz"), seconds=seconds, threads=args.threads, seed=cfg.seed,
                    num_samples=args.num_samples, out=str(samples_path))
        env = {**os.environ, "PYTHONPATH": str(common.ROOT), "OMP_NUM_THREADS": str(args.threads)}
        print(f"training the PyTorch DCGAN for {seconds:.0f} s on {len(images)} images ...", file=sys.stderr)
        subprocess.run([args.torch_python, str(Path(__file__).resolve()), "--peer-worker", json.dumps(spec)],
                       check=True, env=env, cwd=str(common.ROOT))


def array_source(images):
    """`samples(num_images, batch_size)` over uint8 NHWC images, as floats in [-1, 1]."""
    import numpy as np

    def samples(num_images, batch_size):
        if num_images > len(images):
            raise ValueError(f"{num_images} samples asked, {len(images)} drawn: rerun with --num-samples {num_images}")
        for i in range(0, num_images, batch_size):
            yield images[i:min(i + batch_size, num_images)].astype(np.float32) / 127.5 - 1.0
    return samples


def vit_keys(scores: dict) -> dict:
    return {("fd_vit" if k == "ema_samples" else k): v for k, v in scores.items() if k != "real_test_floor"}


def ours_from_run(run: Path, results: dict, ours_fid_json: str | None) -> dict:
    out = {"fd_vit": results.get("fd_vit_ema_samples")}
    out.update({k: results[f"vit_{k}"] for k, _, _ in METRICS if f"vit_{k}" in results})
    if "fid_fid" in results:
        out["fid"], out["fid_source"] = results["fid_fid"], str(run / "results.json")
    elif ours_fid_json and Path(ours_fid_json).is_file():
        out["fid"], out["fid_source"] = json.loads(Path(ours_fid_json).read_text())["fid"], ours_fid_json
    elif ours_fid_json:
        print(f"warning: {ours_fid_json} does not exist (yet): ours' FID left out", file=sys.stderr)
    return out


def earlier_peer(path) -> tuple[Path, dict | None, float]:
    """(the peer's samples file, its FID {fid, fid_seconds} or None, its training budget in
    seconds) from an earlier side-by-side's output JSON (`--peer-from`)."""
    try:
        earlier = json.loads(Path(path).read_text())
        samples_path = Path(earlier["peer"]["samples_file"])
        ema, seconds = earlier["peer"]["ema"], earlier["wall_seconds"]["peer_budget"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--peer-from {path}: not the JSON output of an earlier gan_quality run ({e!r}); "
                         "pass the file its --out wrote") from None
    if not samples_path.is_file():
        raise SystemExit(f"{path} names the peer's samples {samples_path}, which is gone: "
                         "train the peer again (leave out --peer-from)")
    fid = {k: ema[k] for k in ("fid", "fid_seconds")} if "fid" in ema else None
    return samples_path, fid, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ours", help="our finished DCGAN run folder (config.json, results.json, checkpoints)")
    p.add_argument("--seconds", type=float, default=None, help="peer's training time (default: ours' wall_seconds)")
    p.add_argument("--out", default="runs/bench/gan_quality.json")
    p.add_argument("--torch-python", default=sys.executable, help="a python with torch (the peer's child process)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--num-samples", type=int, default=10_000, help="samples scored per side (and real images)")
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=None,
                   help="FID of the peer's EMA samples (default: on when FID-Inception weights are found)")
    p.add_argument("--ours-fid-json", default=None, help="ours' FID from a `jaxvision.fid_cli --json` output")
    p.add_argument("--rescore-ours", action=argparse.BooleanOptionalAction, default=True,
                   help="sample ours' checkpoint again and score it here, beside the peer (default; the "
                        "figures in results.json are reported too)")
    peer_source = p.add_mutually_exclusive_group()
    peer_source.add_argument("--peer-samples", default=None,
                              help="score this .npz of an earlier run instead of training")
    peer_source.add_argument("--peer-from", default=None, metavar="JSON",
                              help="an earlier side-by-side's output: score its peer's samples again and take the "
                                   "peer's FID from it (the same samples give the same FID) instead of training "
                                   "and measuring")
    p.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)  # the child's entry
    args = p.parse_args(argv)
    if args.peer_worker:
        return peer_worker(json.loads(args.peer_worker))
    if not args.ours:
        p.error("--ours RUN_DIR is required")
    run = Path(args.ours)
    if not (run / "config.json").is_file() or not (run / "results.json").is_file():
        raise SystemExit(f"{run} is not a finished GAN run (config.json and results.json): pass --ours RUN_DIR")
    results = json.loads((run / "results.json").read_text())
    seconds = args.seconds or results["wall_seconds"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = common.load_average()

    import dataclasses

    from jaxvision import config as config_lib
    from jaxvision.tasks import gan

    run_config = json.loads((run / "config.json").read_text())
    cfg = config_lib.from_dict(gan.GANConfig, run_config)
    cfg = dataclasses.replace(cfg, fd=dataclasses.replace(cfg.fd, num_samples=args.num_samples,
                                                          fid_samples=args.num_samples))
    earlier_fid = None
    if args.peer_from:
        samples_path, earlier_fid, seconds = earlier_peer(args.peer_from)
    elif args.peer_samples:
        samples_path = Path(args.peer_samples)
    else:
        torch_version(args.torch_python)
        samples_path = out.with_suffix(".peer_samples.npz")
        train_peer(args, cfg, seconds, samples_path)

    import numpy as np

    from jaxvision.pretrained.inception import find_weights
    from jaxvision.train.plots import save_image_grid

    drawn = np.load(samples_path)
    peer_info = json.loads(str(drawn["info"]))
    save_image_grid(drawn["ema"][:64].astype(np.float32) / 127.5 - 1, out.with_suffix(".peer_ema.png"))
    t0 = time.perf_counter()
    vit = gan.vit_space_evaluator(cfg)
    peer = {"ema": vit_keys(vit(array_source(drawn["ema"]))), "raw": vit_keys(vit(array_source(drawn["raw"])))}
    recorded = ours_from_run(run, results, args.ours_fid_json)
    ours = dict(recorded, vit_source=f"{run / 'results.json'} ({run_config['fd']['num_samples']} samples)")
    if args.rescore_ours:  # the run's own evaluation noise: the same samples its results.json scored
        sample_fn, state, _, _ = gan.load_generator(run)
        ours_samples = gan.sample_source(sample_fn, state, seed=cfg.seed, latent_dim=cfg.model.latent_dim,
                                         num_classes=None)
        ours.update(vit_keys(vit(ours_samples)), vit_source="scored here")
    vit_seconds = time.perf_counter() - t0
    fid_on = args.fid if args.fid is not None else find_weights() is not None

    def ratio(k):
        a, b = ours.get(k), peer["ema"].get(k)
        return None if a is None or b is None or b == 0 else a / b

    def report(fid_status: str) -> dict:
        """Write the JSON and print the table (before FID too: a run stopped during FID keeps the rest)."""
        r = {
            "machine": {**common.machine(), "load_average_before_after": [load_before, common.load_average()],
                        "other_jobs": "not controlled; see load averages"},
            "wall_seconds": {"ours": results["wall_seconds"], "peer_budget": seconds,
                             "peer_train": peer_info.get("train_seconds")},
            "ours": {"run": str(run.resolve()), "steps": results.get("steps"), "config": run_config["model"],
                     "samples": "EMA, recomputed BatchNorm statistics", **ours, "results_json": recorded},
            "peer": {**peer_info, "samples_file": str(samples_path), "ema": peer["ema"], "raw_g": peer["raw"]},
            "num_samples": args.num_samples, "vit_scoring_seconds": vit_seconds, "peer_fid": fid_status,
            "ratio_ours_over_peer_ema": {k: ratio(k) for k, _, _ in METRICS},
            "ours_better_than_peer_ema": {k: (None if ratio(k) is None else (ratio(k) > 1) == hi)
                                          for k, _, hi in METRICS},
        }
        common.write_json(r, out)
        rows = [("ours", ours)] + [("ours (results.json)", recorded)] * bool(args.rescore_ours) + [
            ("PyTorch DCGAN, EMA G", peer["ema"]), ("PyTorch DCGAN, raw G", peer["raw"])]
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        print(f"\n{r['machine'].get('cpu', '?')}, {args.threads} threads; ours {results['wall_seconds']:.0f} s "
              f"({results.get('steps')} steps), peer {fmt(peer_info.get('train_seconds'))} s "
              f"({peer_info.get('steps', '?')} steps, torch {peer_info.get('torch', '?')}); "
              f"{args.num_samples} samples; peer FID {fid_status}\n")
        print("| | " + " | ".join(label for _, label, _ in METRICS) + " |")
        print("|---" * (len(METRICS) + 1) + "|")
        for name, row in rows + [("ours / peer EMA", {k: ratio(k) for k, _, _ in METRICS})]:
            print(f"| {name} | " + " | ".join(fmt(row.get(k)) for k, _, _ in METRICS) + " |")
        return r

    if earlier_fid:
        peer["ema"].update(earlier_fid)
        return report(f"from {args.peer_from} (the same samples)")
    if not fid_on:
        return report("off")
    report("pending")
    fid = gan.fid_of_samples(cfg, array_source(drawn["ema"]))
    if fid:
        peer["ema"].update(fid=fid["fid"], fid_seconds=fid["seconds"])
    return report("measured" if fid else "skipped: no FID-Inception weights")


if __name__ == "__main__":
    main()
