"""Inception feature extraction speed: jaxvision's pipeline vs pytorch-fid, same images,
same weights (seeded random FID-Inception weights unless --weights names real ones).

    PYTHONPATH=. python benchmarks/fid_features.py --num-images 64 --batch-size 16 \
        --image-size 32 --out runs/bench/fid_features.json

Both sides do the whole protocol from uint8 images: /255, bilinear resize to 299,
2x - 1, FID-Inception to pool3 (+ the 1008 logits on our side). pytorch-fid runs on the
CPU (``--threads`` torch threads); ours runs on JAX's default device (CPU here, or a GPU).
Times exclude compilation / the first batch (reported separately) and image decoding:
the images are in memory as a NumPy array. Needs PyTorch + pytorch-fid for the
comparison; without them only our side is timed. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


def _machine() -> dict:
    return {**common.machine(), "jax": jax.__version__, "jax_devices": [str(d) for d in jax.devices()]}


def bench_ours(images, batch_size, variables, repeats):
    from jaxvision.metrics.fid import FeatureExtractor
    from jaxvision.pretrained.inception import fid_inception

    ex = FeatureExtractor(fid_inception(variables=variables), batch_size=batch_size)
    t0 = time.perf_counter()
    ex([images[:batch_size]])  # compile + first batch
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fs = ex([images])
        times.append(time.perf_counter() - t0)
    return fs.pool, {"img_per_s": len(images) / min(times), "seconds": min(times), "all_seconds": times,
                     "compile_and_first_batch_s": first, "device": str(jax.devices()[0])}


def bench_pytorch_fid(images, batch_size, state_dict, repeats, threads):
    import torch

    from jaxvision.pretrained.torch_reference import pytorch_fid_network

    torch.set_num_threads(threads)
    net = pytorch_fid_network(state_dict)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def run():
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(net(x[i:i + batch_size].float().div(255))[0].squeeze(3).squeeze(2).numpy())
        return np.concatenate(out)

    t0 = time.perf_counter()
    with torch.no_grad():
        net(x[:batch_size].float().div(255))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pool = run()
        times.append(time.perf_counter() - t0)
    return pool, {"img_per_s": len(images) / min(times), "seconds": min(times), "all_seconds": times,
                  "first_batch_s": first, "torch": torch.__version__, "threads": threads}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=32, help="source images are resized to 299")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side (best is reported)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    p.add_argument("--weights", default=None, help="real FID-Inception .npz (default: seeded random weights)")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--out", default="runs/bench/fid_features.json")
    args = p.parse_args(argv)

    from jaxvision.pretrained import inception as inc

    if args.weights:
        variables = inc.load_variables(args.weights)
        state_dict = None  # pytorch-fid side needs the torch layout: only with random weights here
    else:
        state_dict = inc.random_state_dict(0)
        variables = inc.convert_state_dict(state_dict)
    images = np.random.default_rng(0).integers(0, 256, (args.num_images, args.image_size, args.image_size, 3),
                                               dtype=np.uint8)
    result = {"config": vars(args), "machine": _machine()}
    pool_ours, result["jaxvision"] = bench_ours(images, args.batch_size, variables, args.repeats)
    print(f"jaxvision:   {result['jaxvision']['img_per_s']:.2f} img/s on {result['jaxvision']['device']} "
          f"(compile + first batch {result['jaxvision']['compile_and_first_batch_s']:.1f} s)")
    if not args.skip_torch and state_dict is not None:
        try:
            import pytorch_fid  # noqa: F401
            import torch  # noqa: F401
        except ImportError as err:
            result["pytorch_fid"] = {"skipped": f"not installed: {err}"}
            print(f"pytorch-fid: skipped ({err})")
        else:
            pool_ref, result["pytorch_fid"] = bench_pytorch_fid(images, args.batch_size, state_dict,
                                                                args.repeats, args.threads)
            result["ratio_jaxvision_over_pytorch_fid"] = (result["jaxvision"]["img_per_s"]
                                                          / result["pytorch_fid"]["img_per_s"])
            result["max_abs_feature_diff"] = float(np.abs(pool_ours - pool_ref).max())
            print(f"pytorch-fid: {result['pytorch_fid']['img_per_s']:.2f} img/s on CPU, {args.threads} threads")
            print(f"ratio (ours / pytorch-fid): {result['ratio_jaxvision_over_pytorch_fid']:.2f}; "
                  f"max |feature diff| {result['max_abs_feature_diff']:.2e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
