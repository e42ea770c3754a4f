"""Hybrid R50+ViT-B/16 inference speed: jaxvision against timm's vit_base_r50_s16_384.

    PYTHONPATH=. python benchmarks/hybrid.py [--image 224] [--batch 4] [--dtype float32] \\
        [--peer-python /path/to/venv-with-timm/bin/python] [--out runs/bench/hybrid.json]

Both sides run the same architecture (ResNet-v2 stem (3, 4, 9) with weight-standardised
convs and GroupNorm, 1x1 patch embedding, ViT-B encoder, CLS, 1000 classes) on random
weights and random inputs, forward only (ours: jitted ``ViT.apply``, train=False; timm:
``torch.inference_mode`` in eval mode), each in its own process with short timed bursts
alternating between them (benchmarks/common.py); img/s excludes compilation. On a GPU
``--dtype bfloat16`` runs ours with bf16 compute (float32 params) and timm under
``torch.autocast``. The peer is skipped cleanly where PyTorch or timm is not installed
(``--peer-python`` names another interpreter that has them). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

VARIANT = "R50+B/16"
TIMM_NAME = "vit_base_r50_s16_384"


class Ours(common.Bench):
    def __init__(self, image: int, batch: int, dtype: str):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from jaxvision.models import ViT

        self.model = ViT(num_classes=1000, variant=VARIANT, dtype=getattr(jnp, dtype))
        shapes = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3)))
        rng = np.random.default_rng(0)  # random values without compiling the initialiser
        self.variables = jax.device_put(jax.tree_util.tree_map(
            lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), shapes))
        self.images = jax.device_put(rng.uniform(-1, 1, (batch, image, image, 3)).astype(np.float32))
        self.forward = jax.jit(lambda v, x: self.model.apply(v, x, train=False)[0])
        self.items_per_call = batch
        self.backend = jax.default_backend()

    def run(self, n: int) -> None:
        out = None
        for _ in range(n):
            out = self.forward(self.variables, self.images)
        out.block_until_ready()

    def info(self) -> dict:
        import jax

        return {"framework": f"jax {jax.__version__}", "backend": self.backend}


class Timm(common.Bench):
    def __init__(self, image: int, batch: int, dtype: str, threads: int | None = None):
        import timm
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = timm.create_model(TIMM_NAME, pretrained=False, img_size=image).eval().to(self.device)
        self.images = torch.rand(batch, 3, image, image, device=self.device) * 2 - 1
        self.autocast = dtype == "bfloat16"
        self.items_per_call = batch
        self.versions = f"torch {torch.__version__}, timm {timm.__version__}"

    def run(self, n: int) -> None:
        import torch

        with torch.inference_mode(), torch.autocast(self.device, torch.bfloat16, enabled=self.autocast):
            for _ in range(n):
                out = self.model(self.images)
        if self.device == "cuda":
            torch.cuda.synchronize()
        float(out[0, 0])

    def info(self) -> dict:
        import torch

        return {"framework": self.versions, "threads": torch.get_num_threads(), "device": self.device}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=int, default=224, help="Side in pixels (the checkpoint's is 384).")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=1, help="Forward calls per timed burst.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-python", default=None, help="Interpreter with torch + timm (default: this one).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own).")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    if args.image % 16:
        parser.error(f"--image {args.image} is not divisible by the hybrid's stride 16")
    kw = dict(image=args.image, batch=args.batch, dtype=args.dtype)
    with common.start("jaxvision", "benchmarks.hybrid:Ours", kw) as ours, \
            common.start("timm", "benchmarks.hybrid:Timm", {**kw, "threads": args.threads},
                         python=args.peer_python) as peer:
        results = common.compare({"jaxvision": ours, "timm": peer}, steps=args.steps, rounds=args.rounds)
    result = {"benchmark": "hybrid R50+ViT-B/16 inference", "variant": VARIANT, "peer_model": TIMM_NAME, **kw,
              "machine": common.machine(), "results": results,
              "ratio_ours_over_timm": common.ratio(results, "jaxvision", "timm")}
    print(f"R50+ViT-B/16 inference, {args.image}x{args.image}, batch {args.batch}, {args.dtype}, on "
          f"{result['machine'].get('cpu', '?')} ({result['machine']['cpu_count']} CPUs), load "
          f"{results['load_average_before_after']}")
    for name in ("jaxvision", "timm"):
        common.print_side(name, results[name])
    if result["ratio_ours_over_timm"] is not None:
        print(f"jaxvision / timm: {result['ratio_ours_over_timm']:.2f}")
    if args.out:
        common.write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
