"""ViT training and inference speed: jaxvision against PyTorch, same shapes, same machine.

    PYTHONPATH=. python benchmarks/vit.py --preset fmnist --micro-batches 1,8 --out runs/bench/vit_fmnist.json
    PYTHONPATH=. python benchmarks/vit.py --preset b16 --peer timm --peer-compile   # GPU

Presets:
  fmnist  the main job's model, read from experiments/vit_fashion_mnist.py (its width, depth,
          MLP, heads, patch, pooling, AdamW settings, label smoothing, clipping), batch 128,
          28x28x1, float32. The CPU target: ours / PyTorch >= 1.0.
  b16     ViT-B/16 at 224x224x3, 1000 classes, batch 256, bf16 compute with float32 params,
          AdamW; GAP pooling by default (--pool cls for 197 tokens). For a GPU.
  tiny    a 1-block toy for the test suite.

Peers (--peer): "plain" is a plain-PyTorch ViT written here (nn.TransformerEncoderLayer with
norm_first=True, batch_first=True, the same GELU, LayerNorm eps 1e-6, Conv2d patch embedding,
learned position embedding, GAP or CLS pooling, final LayerNorm, linear head); "timm" is
timm's VisionTransformer configured to the same shapes (class_token / global_pool to match
the pooling, fc_norm=False so the final norm comes before pooling, like ours). Both train
with torch.optim.AdamW (decay on >=2-d weights only, like ours), the same warm-up + cosine
learning rate, label-smoothed cross-entropy and global-norm clipping; bf16 runs use
torch.autocast with float32 parameters. --peer-compile wraps the model in torch.compile.

On a CPU the fast path is micro-batching: --micro-batches 8 computes the batch of 128 in
pieces of 16 inside the step (lax.scan, gradient sums: the same update), whose activations
stay in the core's cache; "--micro-batches 1,8" times both side by side. --peer-micro-batches
gives the peer the same chunking, for comparison. The peer runs once per --threads value
(on a CPU 1 and all cores: torch's OpenMP threads can collapse on a loaded machine) and the
ratio is taken against the fastest.

Each side runs in its own child process; short timed bursts alternate between them
(benchmarks/common.py) and the best burst of each is reported, with the load average.
img/s excludes compilation (reported as warm-up). MFU = img/s x FLOPs per image / peak, with
3x the forward FLOPs for training; the peak comes from --peak-tflops, or 798 TFLOP/s
(REFERENCE.md's measured bf16 matmul peak) on H100/H200 in bf16; otherwise only the
achieved TFLOP/s are reported. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

PRESETS = ("fmnist", "b16", "tiny")
# Measured bf16 dense matmul peak on H100/H200 (REFERENCE.md section 6); spec sheets say 989.
KNOWN_PEAK_TFLOPS = {"H100": 798.0, "H200": 798.0}


# --- configuration ---------------------------------------------------------------------------

def preset_config(name: str) -> dict:
    if name == "fmnist":
        from experiments.vit_fashion_mnist import get_config

        c = get_config()
        m, o = c.model, c.optim
        from jaxvision.models.vit import parse_variant

        v = parse_variant(m.variant)
        return dict(
            width=m.width or v["width"], depth=m.depth or v["depth"], mlp_dim=m.mlp_dim or v["mlp_dim"],
            num_heads=m.num_heads or v["num_heads"], patch=v["patch_size"][0], pool=m.pool,
            gelu_approximate=m.gelu_approximate, image_size=28, channels=1, num_classes=10,
            batch_size=c.global_batch_size, dtype="float32", learning_rate=o.learning_rate,
            warmup_steps=o.warmup_steps, total_steps=c.total_steps, weight_decay=o.weight_decay,
            grad_clip_norm=o.grad_clip_norm, label_smoothing=o.label_smoothing, micro_batches=c.micro_batches,
        )
    if name == "b16":
        return dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch=16, pool="gap",
                    gelu_approximate=True, image_size=224, channels=3, num_classes=1000, batch_size=256,
                    dtype="bfloat16", learning_rate=1e-3, warmup_steps=100, total_steps=10_000,
                    weight_decay=0.05, grad_clip_norm=1.0, label_smoothing=0.0)
    if name == "tiny":
        return dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch=7, pool="gap", gelu_approximate=True,
                    image_size=28, channels=1, num_classes=10, batch_size=8, dtype="float32",
                    learning_rate=1e-3, warmup_steps=0, total_steps=100, weight_decay=0.05,
                    grad_clip_norm=1.0, label_smoothing=0.1)
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


def forward_flops(cfg: dict) -> float:
    """Forward FLOPs per image (2 per multiply-add) of matmuls/convs; norms etc. ignored.
    ViT-B/16 at 224 with CLS gives 35.1 G (REFERENCE.md)."""
    d, m, p = cfg["width"], cfg["mlp_dim"], cfg["patch"]
    n = (cfg["image_size"] // p) ** 2
    t = n + (1 if cfg["pool"] == "cls" else 0)
    embed = 2 * n * p * p * cfg["channels"] * d
    block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
    return float(embed + cfg["depth"] * block + 2 * d * cfg["num_classes"])


# --- our side --------------------------------------------------------------------------------

class _OursViT(common.Bench):
    def __init__(self, cfg: dict, mode: str):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from jaxvision.tasks import classification as cls
        from jaxvision.train import parallel
        from jaxvision.train.multistep import multi_step, stack_batches

        self.jax = jax
        model_cfg = cls.ModelConfig(
            variant=f"Ti/{cfg['patch']}", width=cfg["width"], depth=cfg["depth"], mlp_dim=cfg["mlp_dim"],
            num_heads=cfg["num_heads"], pool=cfg["pool"], dtype=cfg["dtype"],
            attention_implementation=cfg.get("attention"), gelu_approximate=cfg["gelu_approximate"],
            scan_layers=cfg.get("scan_layers", False), remat=cfg.get("remat", False),
            stem=cfg.get("stem", "patch"), locality_attention=cfg.get("locality_attention", False),
            patch_dropout=cfg.get("patch_dropout", 0.0),
        )
        model = cls.build_model(model_cfg, cfg["num_classes"])
        shape = (cfg["image_size"], cfg["image_size"], cfg["channels"])
        rng = np.random.default_rng(0)
        b = cfg["batch_size"]
        images = rng.uniform(-1, 1, (b, *shape)).astype(np.float32)
        labels = rng.integers(0, cfg["num_classes"], b).astype(np.int32)
        self.items_per_call = b
        self.mode = mode
        self.micro_batches = int(cfg.get("micro_batches", 1)) if mode == "train" else 1
        if mode == "train":
            optim = cls.OptimConfig(name="adamw", learning_rate=cfg["learning_rate"],
                                    warmup_steps=cfg["warmup_steps"], weight_decay=cfg["weight_decay"],
                                    grad_clip_norm=cfg["grad_clip_norm"], label_smoothing=cfg["label_smoothing"])
            tx, lr = cls.build_optimizer(optim, cfg["total_steps"])
            task = cls.make_task(model, tx, image_shape=shape, learning_rate=lr,
                                 label_smoothing=cfg["label_smoothing"],
                                 micro_batches=int(cfg.get("micro_batches", 1)))
            # The loop's own parallel form: jit + NamedSharding, donated state.
            form = parallel.make("mesh")
            form.prepare(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
            self.state = form.init(task.init, jax.random.PRNGKey(0))
            k = int(cfg.get("steps_per_dispatch", 1))
            self.k = k
            if k == 1:
                self.step = form.compile_step(task.train_step)
                self.batch = form.put_batch({"image": images, "label": labels})
            else:
                self.step = jax.jit(multi_step(task.train_step, k), donate_argnums=0)
                self.batch = jax.device_put(stack_batches([{"image": images, "label": labels}] * k))
                self.items_per_call = b * k
        else:
            variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
            self.params = variables

            @jax.jit
            def infer(variables, x):
                return model.apply(variables, x, train=False)[0]

            self.infer = infer
            self.images = jax.device_put(images)

    def run(self, n):
        out = None
        for _ in range(n):
            if self.mode == "train":
                self.state, out = self.step(self.state, self.batch)
            else:
                out = self.infer(self.params, self.images)
        self.jax.block_until_ready(out)

    def info(self):
        import jax

        device = jax.devices()[0]
        return {"framework": f"jax {jax.__version__}", "device": str(device),
                "device_kind": getattr(device, "device_kind", ""), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "micro_batches": self.micro_batches}


def ours(cfg: dict, mode: str):
    return _OursViT(cfg, mode)


# --- the PyTorch side ------------------------------------------------------------------------

def _torch_model(cfg: dict, peer: str):
    import functools

    import torch
    from torch import nn
    from torch.nn import functional as F

    approximate = "tanh" if cfg["gelu_approximate"] else "none"
    if peer == "timm":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=cfg["image_size"], patch_size=cfg["patch"], in_chans=cfg["channels"],
            num_classes=cfg["num_classes"], embed_dim=cfg["width"], depth=cfg["depth"],
            num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_dim"] / cfg["width"],
            class_token=cfg["pool"] == "cls", global_pool="token" if cfg["pool"] == "cls" else "avg",
            fc_norm=False, act_layer=functools.partial(nn.GELU, approximate=approximate),
            norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        )

    class PlainViT(nn.Module):
        """Pre-norm ViT: Conv2d patches, learned positions, TransformerEncoder, LN, pool, head."""

        def __init__(self):
            super().__init__()
            d, p = cfg["width"], cfg["patch"]
            n = (cfg["image_size"] // p) ** 2
            self.embedding = nn.Conv2d(cfg["channels"], d, p, p)
            self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg["pool"] == "cls" else None
            self.pos = nn.Parameter(torch.randn(1, n + (self.cls is not None), d) * 0.02)
            layer = nn.TransformerEncoderLayer(
                d, cfg["num_heads"], cfg["mlp_dim"], dropout=0.0,
                activation=lambda x: F.gelu(x, approximate=approximate), layer_norm_eps=1e-6,
                batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg["depth"], enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d, eps=1e-6)
            self.head = nn.Linear(d, cfg["num_classes"])

        def forward(self, x):
            x = self.embedding(x).flatten(2).transpose(1, 2)
            if self.cls is not None:
                x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.norm(self.encoder(x + self.pos))
            return self.head(x[:, 0] if self.cls is not None else x.mean(1))

    return PlainViT()


class _TorchViT(common.Bench):
    def __init__(self, cfg: dict, mode: str, peer: str, compile: bool, threads: int | None, device: str):
        import torch
        from torch.nn import functional as F

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch, self.device, self.mode = torch, torch.device(device), mode
        torch.manual_seed(0)
        model = _torch_model(cfg, peer).to(self.device)
        b, s, c = cfg["batch_size"], cfg["image_size"], cfg["channels"]
        self.x = (torch.rand(b, c, s, s, device=self.device) * 2 - 1).contiguous()
        self.y = torch.randint(0, cfg["num_classes"], (b,), device=self.device)
        self.items_per_call = b
        bf16 = cfg["dtype"] == "bfloat16"
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else None
        self.fn = torch.compile(model) if compile else model
        self.threads = torch.get_num_threads()
        self.peer, self.compiled = peer, compile
        if mode == "train":
            model.train()
            decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n and "cls" not in n]
            other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos" not in n and "cls" not in n)]
            self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                          {"params": other, "weight_decay": 0.0}], lr=cfg["learning_rate"])
            warm, total = cfg["warmup_steps"], cfg["total_steps"]

            def factor(step):
                if step < warm:
                    return step / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(total - warm, 1))))

            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)
            self.params = list(model.parameters())
            self.clip, self.smoothing, self.F = cfg["grad_clip_norm"], cfg["label_smoothing"], F
            self.micro_batches = int(cfg.get("peer_micro_batches", 1))
        else:
            model.eval()

    def _train_step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        k = self.micro_batches
        for x, y in zip(self.x.chunk(k), self.y.chunk(k)):  # k == 1: the whole batch at once
            if self.autocast:
                with self.autocast():
                    logits = self.fn(x)
            else:
                logits = self.fn(x)
            loss = self.F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)
            (loss / k if k > 1 else loss).backward()
        self.y_last = y
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
        return loss.detach(), (logits.detach().argmax(1) == self.y_last).float().mean()

    def run(self, n):
        torch = self.torch
        if self.mode == "train":
            for _ in range(n):
                out = self._train_step()
        else:
            with torch.inference_mode():
                for _ in range(n):
                    if self.autocast:
                        with self.autocast():
                            out = self.fn(self.x)
                    else:
                        out = self.fn(self.x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        else:
            out[0].item() if isinstance(out, tuple) else out.sum().item()

    def info(self):
        torch = self.torch
        kind = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"framework": f"torch {torch.__version__}", "device": str(self.device), "device_kind": kind,
                "peer": self.peer, "torch_compile": self.compiled, "torch_threads": self.threads,
                "micro_batches": getattr(self, "micro_batches", 1)}


def peer_side(cfg: dict, mode: str, peer: str = "plain", compile: bool = False, threads: int | None = None,
              device: str = "auto"):
    return _TorchViT(cfg, mode, peer, compile, threads, device)


# --- driver ----------------------------------------------------------------------------------

def _thread_counts(args) -> list:
    if args.threads != "auto":
        return [int(t) for t in args.threads.split(",")]
    gpu = args.peer_device == "cuda" or (args.peer_device == "auto" and os.path.exists("/dev/nvidiactl"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [None] if gpu or cores == 1 else [1, cores]


def _peak_tflops(args, device: str, dtype: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if dtype == "bfloat16":
        for name, peak in KNOWN_PEAK_TFLOPS.items():
            if name in device:
                return peak
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="fmnist", choices=PRESETS)
    for name in ("width", "depth", "mlp-dim", "heads", "patch", "image-size", "batch-size"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--pool", choices=("gap", "cls"), default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--attention", choices=("xla", "cudnn"), default=None, help="default: fastest valid")
    p.add_argument("--scan-layers", action="store_true")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--stem", choices=("patch", "conv", "spt"), default="patch", help="ours only")
    p.add_argument("--locality-attention", action="store_true", help="ours only (LSA)")
    p.add_argument("--patch-dropout", type=float, default=0.0, help="ours only: fraction of tokens dropped")
    p.add_argument("--steps-per-dispatch", type=int, default=1, help="ours: k steps per call (lax.scan)")
    p.add_argument("--micro-batches", default=None,
                   help="ours: the batch in this many pieces per step (the CPU fast path; default: the "
                        "preset's); a comma list runs one side per value, the first being 'jaxvision'")
    p.add_argument("--peer-micro-batches", type=int, default=1, help="the peer's batch in pieces too")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="train")
    p.add_argument("--steps", type=int, default=5, help="steps per timed burst (at least)")
    p.add_argument("--min-burst-seconds", type=float, default=1.0, help="bursts are lengthened to this")
    p.add_argument("--rounds", type=int, default=3, help="timed bursts per side, interleaved; best is reported")
    p.add_argument("--peer", choices=("plain", "timm", "none"), default="plain")
    p.add_argument("--peer-compile", action="store_true", help="torch.compile the peer's model")
    p.add_argument("--peer-python", default=None, help="python with torch (default: this one)")
    p.add_argument("--peer-device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", default="auto",
                   help="comma list of torch CPU thread counts, one peer process each, e.g. '1,2'; the "
                        "ratio is taken against the fastest (auto: 1 and all cores on a CPU; torch's own "
                        "default with a GPU)")
    p.add_argument("--xla-flags", default=None, help="XLA_FLAGS for our side (default: inherited)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default="runs/bench/vit.json")
    args = p.parse_args(argv)

    cfg = preset_config(args.preset)
    overrides = dict(width=args.width, depth=args.depth, mlp_dim=args.mlp_dim, num_heads=args.heads,
                     patch=args.patch, image_size=args.image_size, batch_size=args.batch_size, pool=args.pool,
                     dtype=args.dtype)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.update(attention=args.attention, scan_layers=args.scan_layers, remat=args.remat,
               stem=args.stem, locality_attention=args.locality_attention, patch_dropout=args.patch_dropout,
               steps_per_dispatch=args.steps_per_dispatch, peer_micro_batches=args.peer_micro_batches)
    micro = ([int(k) for k in args.micro_batches.split(",")] if args.micro_batches
             else [cfg.get("micro_batches", 1)])
    cfg["micro_batches"] = micro[0]
    flops = forward_flops(cfg)
    result = {"config": {**cfg, "preset": args.preset, "peer": args.peer, "peer_compile": args.peer_compile,
                         "rounds": args.rounds, "steps": args.steps},
              "forward_gflops_per_image": flops / 1e9, "machine": common.machine()}
    env = {} if args.xla_flags is None else {"XLA_FLAGS": args.xla_flags}
    modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    print(f"ViT {cfg['width']}x{cfg['depth']} mlp {cfg['mlp_dim']} heads {cfg['num_heads']} patch {cfg['patch']} "
          f"{cfg['pool']} at {cfg['image_size']}px, batch {cfg['batch_size']}, {cfg['dtype']}; "
          f"{flops / 1e9:.3f} GFLOP/image forward; load {common.load_average()}")
    for mode in modes:
        sides = {}
        for i, k in enumerate(micro if mode == "train" else micro[:1]):
            name = "jaxvision" if i == 0 else f"jaxvision_mb{k}"
            sides[name] = common.start(name, "benchmarks.vit:ours", dict(cfg={**cfg, "micro_batches": k}, mode=mode),
                                       env=env)
        if args.peer != "none":
            for threads in _thread_counts(args):
                name = "peer" if threads is None else f"peer_threads{threads}"
                sides[name] = common.start(name, "benchmarks.vit:peer_side",
                                           dict(cfg=cfg, mode=mode, peer=args.peer, compile=args.peer_compile,
                                                threads=threads, device=args.peer_device),
                                           python=args.peer_python)
        try:
            r = common.compare(sides, steps=args.steps, rounds=args.rounds, min_seconds=args.min_burst_seconds)
        finally:
            for w in sides.values():
                w.close()
        peers = [n for n in sides if not n.startswith("jaxvision") and "best" in r[n]]
        if peers:
            r["peer"] = dict(r[max(peers, key=lambda n: r[n]["best"])], fastest_of=peers)
        factor = 3.0 if mode == "train" else 1.0
        for name in list(sides) + (["peer"] if "peer" in r and "peer" not in sides else []):
            side = r[name]
            if "best" not in side:
                continue
            side["achieved_tflops"] = side["best"] * factor * flops / 1e12
            peak = _peak_tflops(args, side.get("device_kind", ""), cfg["dtype"])
            side["mfu"] = side["achieved_tflops"] / peak if peak else None
            side["peak_tflops_used"] = peak
        r["ratio_jaxvision_over_peer"] = common.ratio(r, "jaxvision", "peer")
        ours_sides = [n for n in sides if n.startswith("jaxvision")]
        if len(ours_sides) > 1:
            r["ratios_over_peer"] = {n: common.ratio(r, n, "peer") for n in ours_sides}
        result[mode] = r
        print(f"[{mode}]")
        for name in ours_sides:
            k = r[name].get("micro_batches", 1)
            common.print_side(f"  {name}" + (f" ({k} micro-batches)" if k > 1 else ""), r[name])
        for name in sides:
            if not name.startswith("jaxvision"):
                threads = r[name].get("torch_threads")
                compiled = " compiled" if args.peer_compile else ""
                label = f"  {args.peer}{compiled} (torch{f', {threads} thr' if threads else ''})"
                common.print_side(label, r[name])
        for name in ours_sides:
            if common.ratio(r, name, "peer") is not None:
                print(f"  ratio {name} / fastest peer (best-of-{args.rounds}): {common.ratio(r, name, 'peer'):.2f}")
        print(f"  load average before/after {r['load_average_before_after']}")
    common.write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
