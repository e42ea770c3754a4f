"""DCGAN training speed: jaxvision's GAN step against a plain-PyTorch DCGAN, same shapes.

    PYTHONPATH=. python benchmarks/gan.py --preset fmnist --out runs/bench/gan_fmnist.json
    PYTHONPATH=. python benchmarks/gan.py --preset dcgan64      # a GPU: 64x64x3, batch 128
    PYTHONPATH=. python benchmarks/gan.py --upsample subpixel   # G's 2x layer, on both sides
    PYTHONPATH=. python benchmarks/gan.py --preset experiment   # the DCGAN experiment's default net

One iteration = one discriminator step + one generator step, as jaxvision's GAN task does
it (non-saturating loss, Adam 2e-4 / beta1 0.5, BatchNorm in G, the EMA of G's weights
updated in the step). The peer is the same network written here in plain PyTorch
(Linear + BatchNorm2d + ConvTranspose2d 4x4/2 generator, Conv2d 4x4/2 + LeakyReLU
discriminator without normalisation, like ours), eager mode (or torch.compile with
--peer-compile), D frozen during the G step, the same EMA with torch._foreach_lerp_.
Random real images and normal noise; float32.

Ours can run k iterations per host dispatch (--steps-per-dispatch k: jaxvision.train.
multistep); it pays where a step is a few milliseconds (a GPU). Each side runs in its own
child process, bursts interleaved, best-of-N reported (benchmarks/common.py). Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

PRESETS = {
    "fmnist": dict(image_size=28, channels=1, batch_size=64, latent_dim=100, g_width=64, d_width=64),
    "dcgan64": dict(image_size=64, channels=3, batch_size=128, latent_dim=100, g_width=64, d_width=64),
    "tiny": dict(image_size=28, channels=1, batch_size=4, latent_dim=8, g_width=8, d_width=8),
}


def experiment_preset() -> dict:
    """The network and batch of experiments/dcgan_fashion_mnist.py's default preset (what a user
    trains by default: widths 32, sub-pixel G at the time of writing), read from there."""
    experiments = str(Path(__file__).resolve().parents[1] / "experiments")
    if experiments not in sys.path:  # the experiments import each other as top-level modules
        sys.path.insert(0, experiments)
    import dcgan_fashion_mnist

    c = dcgan_fashion_mnist.get_config("default")
    return dict(image_size=c.model.image_size or 28, channels=1, batch_size=c.global_batch_size,
                latent_dim=c.model.latent_dim, g_width=c.model.g_width, d_width=c.model.d_width,
                upsample=c.model.upsample, cpu_reductions=c.cpu_reductions)


class _OursGAN(common.Bench):
    unit = "it/s"

    def __init__(self, cfg: dict):
        import jax
        import numpy as np

        from jaxvision.tasks import gan
        from jaxvision.train import parallel
        from jaxvision.train.multistep import multi_step, stack_batches

        self.jax = jax
        model_cfg = gan.GANModelConfig(latent_dim=cfg["latent_dim"], g_width=cfg["g_width"],
                                       d_width=cfg["d_width"], image_size=cfg["image_size"],
                                       upsample=cfg.get("upsample", "transpose"))
        shape = (cfg["image_size"], cfg["image_size"], cfg["channels"])
        generator, discriminator = gan.build_networks(model_cfg, cfg["image_size"], cfg["channels"], None)
        task = gan.make_task(generator, discriminator, gan.GANOptimConfig(), image_shape=shape,
                             cpu_reductions=cfg.get("cpu_reductions", "xla"))
        form = parallel.make("mesh")
        form.prepare(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
        self.state = form.init(task.init, jax.random.PRNGKey(0))
        images = np.random.default_rng(0).uniform(-1, 1, (cfg["batch_size"], *shape)).astype(np.float32)
        k = int(cfg.get("steps_per_dispatch", 1))
        if k == 1:
            self.step = form.compile_step(task.train_step, task.compiler_options)
            self.batch = form.put_batch({"image": images})
        else:
            self.step = jax.jit(multi_step(task.train_step, k), donate_argnums=0,
                                compiler_options=task.compiler_options)
            self.batch = jax.device_put(stack_batches([{"image": images}] * k))
        self.items_per_call = k

    def run(self, n):
        out = None
        for _ in range(n):
            self.state, out = self.step(self.state, self.batch)
        self.jax.block_until_ready(out)

    def info(self):
        import jax

        device = jax.devices()[0]
        return {"framework": f"jax {jax.__version__}", "device": str(device),
                "device_kind": getattr(device, "device_kind", "")}


def ours(cfg: dict):
    return _OursGAN(cfg)


def _torch_networks(cfg: dict):
    from torch import nn

    size, c = cfg["image_size"], cfg["channels"]
    base = {28: 7, 32: 4, 64: 4}[size]
    n = (size // base).bit_length() - 1

    def up(ch_in, ch_out, bias):  # the same 2x layer as ours (jaxvision.models.dcgan.Upsample2x)
        method = cfg.get("upsample", "transpose")
        if method == "transpose":
            return [nn.ConvTranspose2d(ch_in, ch_out, 4, 2, 1, bias=bias)]
        if method == "resize_conv":
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=bias)]
        return [nn.Conv2d(ch_in, 4 * ch_out, 3, 1, 1, bias=bias), nn.PixelShuffle(2)]

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            ch = cfg["g_width"] * 2 ** (n - 1)
            self.ch = ch
            self.project = nn.Linear(cfg["latent_dim"], base * base * ch, bias=False)
            layers = [nn.BatchNorm2d(ch), nn.ReLU()]
            for _ in range(n - 1):
                layers += [*up(ch, ch // 2, False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
                ch //= 2
            layers += [*up(ch, c, True), nn.Tanh()]
            self.net = nn.Sequential(*layers)

        def forward(self, z):
            return self.net(self.project(z).view(z.shape[0], self.ch, base, base))

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            layers, ch_in, s = [], c, size
            for i in range(n):
                ch = cfg["d_width"] * 2 ** i
                layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
                ch_in, s = ch, s // 2
            self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch_in * s * s, 1))

        def forward(self, x):
            return self.net(x)[:, 0]

    return Generator(), Discriminator()


class _TorchGAN(common.Bench):
    unit = "it/s"

    def __init__(self, cfg: dict, compile: bool, threads: int | None, device: str):
        import torch
        from torch.nn import functional as F

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch, self.F, self.device = torch, F, torch.device(device)
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(0)
        g, d = _torch_networks(cfg)
        self.g, self.d = g.to(self.device).train(), d.to(self.device).train()
        self.g_fn = torch.compile(self.g) if compile else self.g
        self.d_fn = torch.compile(self.d) if compile else self.d
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.ema = [p.detach().clone() for p in self.g.parameters()]
        self.b, self.latent = cfg["batch_size"], cfg["latent_dim"]
        s, c = cfg["image_size"], cfg["channels"]
        self.real = torch.rand(self.b, c, s, s, device=self.device) * 2 - 1
        self.steps, self.compiled, self.threads = 0, compile, torch.get_num_threads()

    def _iteration(self):
        torch, F = self.torch, self.F
        z = torch.randn(self.b, self.latent, device=self.device)
        fake = self.g_fn(z).detach()
        d_loss = F.softplus(-self.d_fn(self.real)).mean() + F.softplus(self.d_fn(fake)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        for p in self.d.parameters():
            p.requires_grad_(False)
        z = torch.randn(self.b, self.latent, device=self.device)
        g_loss = F.softplus(-self.d_fn(self.g_fn(z))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        for p in self.d.parameters():
            p.requires_grad_(True)
        decay = min(0.999, (1.0 + self.steps) / (10.0 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, list(self.g.parameters()), 1.0 - decay)
        self.steps += 1
        return g_loss

    def run(self, n):
        for _ in range(n):
            out = self._iteration()
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        else:
            out.item()

    def info(self):
        return {"framework": f"torch {self.torch.__version__}", "device": str(self.device),
                "torch_compile": self.compiled, "torch_threads": self.threads}


def peer_side(cfg: dict, compile: bool = False, threads: int | None = None, device: str = "auto"):
    return _TorchGAN(cfg, compile, threads, device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="fmnist", choices=sorted([*PRESETS, "experiment"]))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--upsample", default=None, choices=("transpose", "resize_conv", "subpixel"),
                   help="G's 2x layer, the same on both sides (default: the preset's, else transpose)")
    p.add_argument("--cpu-reductions", default=None, choices=("xla", "ynnpack"),
                   help="our step's CPU reductions (jaxvision.tasks.adversarial.CPU_REDUCTIONS; default: the "
                        "preset's, else xla)")
    p.add_argument("--steps-per-dispatch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="iterations per timed burst (at least)")
    p.add_argument("--min-burst-seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peer", choices=("torch", "none"), default="torch")
    p.add_argument("--peer-compile", action="store_true")
    p.add_argument("--peer-python", default=None)
    p.add_argument("--peer-device", default="auto")
    p.add_argument("--threads", default="auto", help="comma list of torch CPU thread counts (see vit.py)")
    p.add_argument("--out", default="runs/bench/gan.json")
    args = p.parse_args(argv)

    cfg = experiment_preset() if args.preset == "experiment" else dict(PRESETS[args.preset])
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    cfg["steps_per_dispatch"] = args.steps_per_dispatch
    cfg["upsample"] = args.upsample or cfg.get("upsample", "transpose")
    cfg["cpu_reductions"] = args.cpu_reductions or cfg.get("cpu_reductions", "xla")
    result = {"config": {**cfg, "preset": args.preset, "peer_compile": args.peer_compile, "rounds": args.rounds},
              "machine": common.machine()}
    print(f"DCGAN {cfg['image_size']}x{cfg['image_size']}x{cfg['channels']}, batch {cfg['batch_size']}, "
          f"G upsampling {cfg['upsample']}, our CPU reductions {cfg['cpu_reductions']}, one D + one G step per "
          f"iteration; load {common.load_average()}")
    sides = {"jaxvision": common.start("jaxvision", "benchmarks.gan:ours", dict(cfg=cfg))}
    if args.peer != "none":
        from benchmarks.vit import _thread_counts

        for threads in _thread_counts(args):
            name = "peer" if threads is None else f"peer_threads{threads}"
            sides[name] = common.start(name, "benchmarks.gan:peer_side",
                                       dict(cfg=cfg, compile=args.peer_compile, threads=threads,
                                            device=args.peer_device), python=args.peer_python)
    try:
        r = common.compare(sides, steps=args.steps, rounds=args.rounds, min_seconds=args.min_burst_seconds)
    finally:
        for w in sides.values():
            w.close()
    peers = [n for n in sides if n != "jaxvision" and "best" in r[n]]
    if peers:
        r["peer"] = dict(r[max(peers, key=lambda n: r[n]["best"])], fastest_of=peers)
    r["ratio_jaxvision_over_peer"] = common.ratio(r, "jaxvision", "peer")
    result["train"] = r
    common.print_side("  jaxvision", r["jaxvision"])
    for name in sides:
        if name != "jaxvision":
            common.print_side(f"  PyTorch{' compiled' if args.peer_compile else ''} "
                              f"({r[name].get('torch_threads', '?')} thr)", r[name])
    if r["ratio_jaxvision_over_peer"] is not None:
        print(f"  ratio (ours / peer, best-of-{args.rounds}): {r['ratio_jaxvision_over_peer']:.2f}; "
              f"load average before/after {r['load_average_before_after']}")
    common.write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
