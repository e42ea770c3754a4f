"""FID, Inception Score and KID between two image sources (pytorch-fid's protocol).

    python -m jaxvision.metrics.cli SOURCE_A SOURCE_B [--metrics fid,kid,is] [--num-images N]
    python -m jaxvision.metrics.cli SOURCE --metrics is
    python -m jaxvision.metrics.cli SOURCE --save-stats OUT.npz [--keep-features]

A SOURCE is a folder of images (PNG/JPEG/...), a ``.npz`` of statistics or features
(ours or pytorch-fid's), ``tfds:NAME[:SPLIT]`` (e.g. ``tfds:cifar10:train``; the
statistics are cached under ~/.cache/jaxvision/fid_stats), ``checkpoint:WORKDIR`` (EMA
samples of one of our GAN runs: registered by the task layer, see below), or a scheme
registered in ``jaxvision.metrics.sources.SOURCES``.

Weights: pytorch-fid's FID-Inception, converted once to .npz with
``python -m jaxvision.pretrained.inception_convert pt_inception-2015-12-05-6726825d.pth``
(nothing is downloaded). Only sources that are images need them.

This module (lazily) wires ``pretrained`` (the weights) and ``data`` (tfds) into
``metrics``; it never imports ``tasks``. Run as ``python -m jaxvision.metrics.cli`` it
hands over to the top-level entry point ``jaxvision.fid_cli``, which first registers
the sources of the layers above (``checkpoint:WORKDIR``); ``main`` here has only the
built-in sources.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jaxvision.metrics import sources as sources_lib
from jaxvision.metrics.fid import PROTOCOL, compute_metrics, default_stats_cache_dir, has_logits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxvision.metrics.cli",
        description="FID / Inception Score / KID with pytorch-fid's protocol and FID-Inception.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="one or two of: image folder, .npz statistics/features, tfds:NAME[:SPLIT], "
                        f"or a registered scheme ({', '.join(sorted(sources_lib.SOURCES))})")
    p.add_argument("--metrics", default=None,
                   help="comma-separated subset of fid,kid,is (default: fid,kid,is for two sources, "
                        "is for one)")
    p.add_argument("--weights", default=None,
                   help="FID-Inception .npz (or pytorch-fid's .pth when PyTorch is installed); default "
                        "$JAXVISION_FID_WEIGHTS or ~/.cache/jaxvision/fid_inception_v3.npz")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--num-images", type=int, default=None, help="use the first N images of each source")
    p.add_argument("--is-splits", type=int, default=10)
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="KID subset sampling")
    p.add_argument("--cache-dir", default=None,
                   help=f"reference statistics cache (default {default_stats_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the statistics cache")
    p.add_argument("--data-dir", default=None, help="TFDS data dir")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz",
                   help="with one source: save its statistics (pytorch-fid compatible mu/sigma)")
    p.add_argument("--keep-features", action="store_true",
                   help="with --save-stats: also save pool features and logits (for KID / IS later)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--progress", action="store_true", help="progress bars")
    return p


def run(args: argparse.Namespace, net_factory=None) -> dict:
    """The command without argument parsing or printing; ``net_factory`` (a callable
    returning a ``FeatureNet``) replaces the pretrained FID-Inception (tests)."""
    if len(args.sources) > 2:
        raise ValueError(f"at most two sources, got {len(args.sources)}")
    if args.metrics is None:
        metrics = ("fid", "kid", "is") if len(args.sources) == 2 else ("is",)
    else:
        metrics = tuple(m.strip().lower() for m in args.metrics.split(",") if m.strip())
    if args.save_stats:
        if len(args.sources) != 1:
            raise ValueError("--save-stats takes exactly one source")
        if args.metrics is None:
            metrics = ()
    if net_factory is None:
        def net_factory():
            from jaxvision.pretrained.inception import fid_inception

            return fid_inception(args.weights)

    ctx = sources_lib.SourceContext(
        net_factory=net_factory,
        batch_size=args.batch_size,
        num_images=args.num_images,
        need_features=bool({"kid", "is"} & set(metrics)) or bool(args.save_stats and args.keep_features),
        cache_dir=None if args.no_cache else (args.cache_dir or default_stats_cache_dir()),
        data_dir=args.data_dir,
        progress=args.progress,
    )
    t0 = time.perf_counter()
    sets = [sources_lib.resolve(s, ctx) for s in args.sources]
    result = {
        "sources": list(args.sources),
        "num_images": [fs.num_images for fs in sets],
        "protocol": PROTOCOL,
        "net": ctx._extractor.net.name if ctx._extractor is not None else sets[0].meta.get("net"),
    }
    if args.save_stats:
        path = sets[0].save(args.save_stats, features=args.keep_features)
        result["saved"] = str(path)
    if args.metrics is None and not has_logits(sets[0]):
        metrics = tuple(m for m in metrics if m != "is")  # weights without an fc layer: no IS
    if metrics:
        result.update(compute_metrics(
            sets[0], sets[1] if len(sets) == 2 else None, metrics, is_splits=args.is_splits,
            kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, seed=args.seed))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _format(result: dict) -> str:
    lines = []
    if "fid" in result:
        lines.append(f"FID: {result['fid']:.6f}")
    if "kid_mean" in result:
        lines.append(f"KID: {result['kid_mean']:.6g} +- {result['kid_std']:.3g}")
    if "is_mean" in result:
        lines.append(f"IS ({result['sources'][0]}): {result['is_mean']:.6f} +- {result['is_std']:.4f}")
    if "is2_mean" in result:
        lines.append(f"IS ({result['sources'][1]}): {result['is2_mean']:.6f} +- {result['is2_std']:.4f}")
    if "saved" in result:
        lines.append(f"saved statistics to {result['saved']}")
    lines.append(f"images: {', '.join(map(str, result['num_images']))}; net: {result['net']}; "
                 f"{result['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None, net_factory=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from jaxvision.pretrained.inception import WeightsNotFoundError

    try:
        result = run(args, net_factory)
    except WeightsNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(_format(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    # The documented command: the top-level entry point, which adds `checkpoint:WORKDIR`.
    from jaxvision import fid_cli

    sys.exit(fid_cli.main())
