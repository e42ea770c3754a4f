"""Command line shared by the experiment scripts.

    python experiments/vit_fashion_mnist.py --workdir runs/vit [--preset long] \
        [--config.optim.learning_rate=3e-4 ...]

Every field of the experiment's config can be overridden; unknown fields and values
of the wrong type are refused before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxvision import config as config_lib


def parse(argv, get_config, presets=("default",), description: str | None = None):
    """Returns (config, args). `get_config(preset)` builds the experiment's config."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Override any config field with --config.FIELD=VALUE (e.g. --config.total_steps=500).",
    )
    parser.add_argument("--workdir", required=True, help="Run folder: checkpoints, logs, plots, results.")
    parser.add_argument("--preset", default=presets[0], choices=presets, help="Named config variant.")
    parser.add_argument("--print-config", action="store_true", help="Print the final config and exit.")
    parser.add_argument("--coordinator-address", default=None,
                        help="Multi-host: host:port of process 0 (or set JAX_COORDINATOR_ADDRESS).")
    parser.add_argument("--num-processes", type=int, default=None, help="Multi-host: number of processes.")
    parser.add_argument("--process-id", type=int, default=None, help="Multi-host: this process's index.")
    parser.add_argument("--deterministic-gpu", action="store_true",
                        help="Run-to-run identical GPU results (XLA deterministic ops; slower, no autotuning).")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}; config overrides look like --config.FIELD=VALUE")
        overrides.append(item)
    try:
        cfg = config_lib.apply_overrides(get_config(args.preset), overrides)
    except config_lib.ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        import json

        print(json.dumps(config_lib.to_dict(cfg), indent=2))
        sys.exit(0)
    if args.deterministic_gpu:
        enable_gpu_determinism()
    from jaxvision.train import distributed

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    return cfg, args


def enable_gpu_determinism():
    """XLA's deterministic GPU ops: bit-identical reruns on GPU, at a speed cost (it also
    turns autotuning off, so never benchmark with it). Must run before JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def parse_stages(argv, stages) -> tuple[list[str], list[str]]:
    """`--stages a,b` of a multi-stage experiment (pretrain, fine-tune, ...): (the stages
    asked for, in the given order, and the other arguments for `parse`). Default: all.
    An unknown stage name stops the script with the list of known ones."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stages", default=",".join(stages))
    known, rest = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    chosen = [s for s in known.stages.split(",") if s]
    unknown = sorted(set(chosen) - set(stages))
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from {tuple(stages)}")
    return chosen, rest
